//! berth's runtime: everything that knows about images, plans, namespaces, mounts, host
//! injection and configuration. Frontends (the `berth` launcher, the SPANK plugin, `berth-pbs`)
//! turn what was asked into a [`request::Request`] (or a [`holder::Spec`]) and call
//! [`session`]; [`scheduler`] holds what the scheduler front ends share.
//!
//! Data flow: `request` -> `plan` (pure) -> `apply` (syscalls, through the `sys` trait) -> exec.
//! `docs/architecture.md` follows one job through it.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod image;
pub mod inject;
pub mod request;
pub mod rootpath;
pub mod safedir;

pub use error::{Error, Result};
pub(crate) mod apply;
pub mod container;
pub mod entrypoint;
pub(crate) mod env;
pub mod holder;
pub(crate) mod metadata;
pub mod named;
pub mod overlay;
pub mod plan;
pub(crate) mod privileged;
pub mod scheduler;
pub mod session;
pub(crate) mod sys;
