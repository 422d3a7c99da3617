//! berth-pbs driven exactly as pbs_mom drives it (see tests/pbs/mom.rs).

mod harness;
