//! quench-gateway: the only internet-facing process. It proves who is calling, turns the call
//! into a [`quench_proto::Decision`] or [`quench_proto::Finding`] on NATS JetStream, and holds
//! nothing worth stealing: no store, no OpenAI credential, only the secrets that verify callers
//! and a NATS user that may publish findings and decisions and nothing else. It keeps no state
//! beyond a short replay cache, so it scales by running more copies.
//!
//! # Endpoints
//!
//! | endpoint | caller | verified with | publishes |
//! |---|---|---|---|
//! | `POST /slack/interactions` | Slack (HTTP interactivity) | `slack.signing_secret` | `quench.decisions.<run_id>` |
//! | Socket Mode (outbound WebSocket) | Slack | `slack.app_token` (the connection) | `quench.decisions.<run_id>` |
//! | `POST /webhooks/github` | GitHub secret scanning | `gateway.github_secret` | `quench.findings.<kind>` |
//! | `POST /webhooks/findings` | any scanner | `gateway.findings_secret` | `quench.findings.<kind>` |
//! | `GET /healthz`, `GET /readyz` | probes | — | — (`/readyz`: 200 while NATS is connected) |
//! | `GET /metrics` | Prometheus | — | — (keep it off the public route, as the health probes) |
//!
//! An endpoint whose secret is not configured answers 404. Every refusal is a 4xx (or 503)
//! with a JSON body `{"error": "…"}`, is logged with the endpoint, client address and reason
//! (never a secret or a body), and publishes nothing.
//!
//! # Signature schemes
//!
//! All MACs are HMAC-SHA256, hex-encoded, compared in constant time. Timestamps are Unix
//! seconds; a request more than 300 s older or newer than the gateway's clock is refused (401).
//!
//! - **Slack** (Slack's own scheme): `X-Slack-Request-Timestamp: <ts>`,
//!   `X-Slack-Signature: v0=<hex HMAC(signing_secret, "v0:" + ts + ":" + raw body)>`.
//! - **Findings** (quench's scheme, modelled on Slack's): `X-Quench-Timestamp: <ts>`,
//!   `X-Quench-Signature: sha256=<hex HMAC(findings_secret, "v1:" + ts + ":" + raw body)>`.
//!   The body is one Finding v1 (`quench.finding/v1`) as JSON. In a shell:
//!   `printf 'v1:%s:%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$secret"`.
//! - **GitHub** (GitHub's scheme): `X-Hub-Signature-256: sha256=<hex HMAC(github_secret, raw
//!   body)>`, with `X-GitHub-Event` and `X-GitHub-Delivery`. GitHub signs no timestamp, so
//!   there is no freshness check; a re-sent delivery keeps its `X-GitHub-Delivery` id, which is
//!   the finding's id and its `Nats-Msg-Id`, so JetStream (and the runner's seen-id check)
//!   drop it.
//!
//! A Slack or findings request whose signature was already accepted within the 300 s window
//! is refused as a replay (409). The replay cache is per process, one per endpoint, and keeps
//! each signature until its own timestamp leaves the window; behind several gateways the
//! decision's and finding's `Nats-Msg-Id` still make a replay a no-op. Its budgets are in
//! Limits below.
//!
//! # Slack clicks
//!
//! Approval buttons (`quench_proto::slack::ApprovalButton`, written by the runner's Slack
//! connector) carry `action_id = quench:<choice>`, `block_id = quench:<run_id>:<gate>` and the
//! value `{"run_id","gate","token","choice"}`, which is parsed strictly. The decision's actor is
//! `<team>/<user>` (`T…/U…`) via `slack`, its id is derived from the team, user, action timestamp
//! and button, so a click Slack delivers twice is one decision. The click is published (and
//! acknowledged by JetStream) before Slack gets its 200, and then the user is told through
//! `response_url` — "Recorded your answer *keep*", or why nothing was recorded. Whether the answer
//! counts is the runner's decision, which updates the message itself. `response_url` must be
//! `https://hooks.slack.com/…`.
//!
//! A button whose value has `ask` (a choice in the playbook's `comment_for`) publishes nothing:
//! the gateway opens a form with `views.open` (the click's `trigger_id`, `slack.bot_token`)
//! carrying the button's value in `private_metadata`. The form's `view_submission`, on the same
//! endpoint or over Socket Mode, is the decision by the submitting user, with the comment; what
//! cannot be recorded is answered `response_action: errors`, so the form stays open and says why.
//!
//! # Limits
//!
//! Bodies over `gateway.max_body_bytes` (256 KiB) are refused with 413 (findings over 64 KiB
//! too, as the runner would refuse them); each endpoint allows `gateway.rate_limit_per_second`
//! requests per second per client address after a burst of `gateway.rate_limit_burst` (429
//! with `Retry-After`); a request has 10 s to arrive and be answered (408).
//!
//! The replay cache holds at most `gateway.replay.<endpoint>.entries` signatures per endpoint
//! (Slack 20,000, findings 100,000: about `entries / 300` signed requests per second), of which
//! one client — a Slack team, a findings client address — holds at most
//! `gateway.replay.<endpoint>.per_client` (10,000; 25,000). A full budget refuses only that
//! endpoint or that client, with 503 and a `Retry-After` of when its oldest entry expires; it
//! never forgets a fresh signature to make room. `GET /metrics` exports the entries, the budgets
//! and every refusal by endpoint and reason.

pub mod cli;
mod endpoint;
mod findings;
pub mod github;
mod limit;
mod metrics;
mod publish;
mod refusal;
mod replay;
mod server;
pub mod signature;
pub mod slack;

pub use refusal::Refusal;
pub use server::{Error, Gateway};
