//! The webhook endpoints. Each keeps budgets of its own — rate-limit buckets (`limit`), a replay
//! cache (`replay`) — and its refusals are counted under its name (`metrics`), so this sits
//! below all of them.

/// The webhook endpoints, each with its own buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    Slack,
    GitHub,
    Findings,
    /// OCSF findings, signed like findings (and sharing their replay cache).
    Ocsf,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Slack => "/slack/interactions",
            Endpoint::GitHub => "/webhooks/github",
            Endpoint::Findings => "/webhooks/findings",
            Endpoint::Ocsf => "/webhooks/ocsf",
        }
    }

    /// The endpoint's name in metrics and config (`gateway.replay.<name>`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::Slack => "slack",
            Endpoint::GitHub => "github",
            Endpoint::Findings => "findings",
            Endpoint::Ocsf => "ocsf",
        }
    }
}
