//! quench's runner: the playbook language, the action registry and the `quench` command line.
//! The binary (`main.rs`) only calls [`cli::main`]; tests drive this library directly.

pub mod actions;
pub mod campaign;
pub mod cli;
pub mod cluster;
pub mod connectors;
pub mod engine;
pub mod evidence;
pub mod inventory;
pub mod metrics;
pub mod owners;
pub mod playbook;
pub mod service;
pub mod store;
pub mod testing;

// The service config is shared with `quench-gateway`; `crate::config` stays its name here.
pub use quench_common::config;
