//! What every quench process needs besides the wire contracts (`quench_proto`): the layered
//! service [`config`] with its `Secret`s, the outbound [`http`] client setup and URL policy
//! (base URLs, `http.allow_hosts` entries), the [`nats`] connect, the Slack API [`slack`]
//! connector, the command line of long-running processes ([`cli`]: config flags, exit codes,
//! logging, signals), and the small helpers the config check shares with the playbook checks
//! ([`suggest`], [`schema`]).
//!
//! `quench-gateway`, the internet-facing process, links this crate and `quench-proto` only: no
//! engine, store or template engine. Nothing here knows about runs or playbooks.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod schema;
pub mod slack;
pub mod suggest;
