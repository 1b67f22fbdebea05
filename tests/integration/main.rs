//! quench's integration tests: one binary, a module per area, and shared `support`.

mod crash;
mod engine;
mod playbook_corpus;
mod proto_contracts;
mod shipped_playbooks;
mod support;
mod tidy;
mod validate_cli;
