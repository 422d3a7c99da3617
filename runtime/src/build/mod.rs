pub mod def;
