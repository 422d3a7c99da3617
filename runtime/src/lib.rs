//! berth's runtime: everything that knows about images, plans, namespaces, mounts, host
//! injection and configuration. Frontends (the `berth` launcher, the SPANK plugin, `berth-pbs`)
//! turn what was asked into a [`request::Request`] and call in here.
//!
//! Data flow: `request` -> `plan` (pure) -> `apply` (syscalls, through the `sys` trait) -> exec.

pub mod build;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod image;
pub mod inject;
pub mod request;
pub mod rootpath;

pub use error::{Error, Result};
pub mod apply;
pub mod container;
pub mod env;
pub mod metadata;
pub mod plan;
pub mod privileged;
pub mod shared;
pub mod sys;
