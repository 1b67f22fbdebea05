//! quench's integration tests: one binary, a module per area, and shared `support`.

mod config;
mod connectors_http;
mod connectors_openai;
mod connectors_slack;
mod crash;
mod demo;
mod deploy;
mod discovery;
mod e2e;
mod engine;
mod gateway;
mod hostile;
mod intake;
mod operator;
mod playbook_corpus;
mod playbook_tests;
mod proto_contracts;
mod quickstart;
mod redaction;
mod schedule;
mod service;
mod shipped_playbooks;
mod store;
mod support;
mod tidy;
mod validate_cli;
