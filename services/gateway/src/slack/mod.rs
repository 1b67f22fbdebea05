//! Slack clicks → decisions. Both transports — HTTP interactivity ([`http`]) and Socket Mode
//! ([`socket`]) — reduce a `block_actions` interaction to a [`Click`]; [`Interactions::take`]
//! checks the approval button, publishes the [`Decision`] and then tells the user, through the
//! click's `response_url`, that the answer was recorded (or why it was not). Whether the answer
//! counts is for the runner to decide; it updates the message itself.

pub(crate) mod http;
pub(crate) mod socket;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::slack::{ApprovalButton, escape};
use quench_proto::{Actor, Decision, DecisionSchema, Via, subject};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::publish::Publisher;

/// How long the stream may take to acknowledge a decision: Slack wants its answer within 3 s.
const PUBLISH_WITHIN: Duration = Duration::from_secs(2);
/// Where Slack's `response_url`s point.
const SLACK_HOOKS: &str = "hooks.slack.com";

/// One button click, as either transport delivers it. Slack vouches for every field (the
/// request was signed, or came over the app's own Socket Mode connection); the button's
/// `action_id`, `block_id` and `value` are ours, round-tripped through Slack, and are parsed
/// strictly ([`ApprovalButton::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Click {
    pub(crate) team: String,
    pub(crate) user: String,
    pub(crate) username: Option<String>,
    pub(crate) action_id: String,
    pub(crate) block_id: Option<String>,
    pub(crate) value: Option<String>,
    /// When the button was clicked (`action_ts`), else the interaction's `trigger_id`: what
    /// makes the decision id the same when Slack delivers the click again.
    pub(crate) moment: String,
    pub(crate) response_url: Option<String>,
}

/// What became of a click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Published (or already published: `duplicate`); the runner decides whether it counts.
    Recorded { choice: String, duplicate: bool },
    /// Not an answer quench can take; nothing was published.
    Refused(String),
    /// Publishing failed; the user is asked to click again.
    Failed { choice: String },
}

/// Handles clicks from either transport; holds the publisher and the `response_url` poster.
#[derive(Debug)]
pub(crate) struct Interactions {
    publisher: Publisher,
    responder: Responder,
    /// The `response_url` posts still in flight (waited for at shutdown).
    pub(crate) tasks: TaskTracker,
}

impl Interactions {
    pub(crate) fn new(publisher: Publisher, test_response_url_prefix: Option<String>) -> Self {
        Interactions {
            publisher,
            responder: Responder {
                client: quench_common::http::http_client(),
                test_prefix: test_response_url_prefix,
            },
            tasks: TaskTracker::new(),
        }
    }

    /// Publishes the click's decision, then (in the background) tells the user what happened.
    pub(crate) async fn take(self: &Arc<Self>, click: Click) -> Handled {
        let handled = match decision(&click, Utc::now()) {
            Err(reason) => Handled::Refused(reason),
            Ok(decision) => {
                let payload = serde_json::to_vec(&decision).expect("a decision serializes");
                match self
                    .publisher
                    .publish(
                        subject::decision(&decision.run_id),
                        &decision.id,
                        payload,
                        PUBLISH_WITHIN,
                    )
                    .await
                {
                    Ok(published) => {
                        tracing::info!(run_id = %decision.run_id, gate = %decision.gate, actor = %decision.actor.id, duplicate = published.duplicate, "decision published");
                        Handled::Recorded {
                            choice: decision.choice,
                            duplicate: published.duplicate,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(run_id = %decision.run_id, %error, "decision not published");
                        Handled::Failed {
                            choice: decision.choice,
                        }
                    }
                }
            }
        };
        if let Handled::Refused(reason) = &handled {
            tracing::info!(actor = %format!("{}/{}", click.team, click.user), reason = %reason, "click refused");
        }
        if let Some(url) = click.response_url {
            let text = message(&handled);
            let interactions = self.clone();
            self.tasks.spawn(async move {
                interactions.responder.post(&url, &text).await;
            });
        }
        handled
    }
}

/// The decision a (verified) HTTP interaction form stands for, as `POST /slack/interactions`
/// derives it before publishing: `Ok(None)` when it is not a button click, `Err` with what the
/// caller or the user is told. Pure, so it can be fuzzed.
pub fn form_decision(body: &[u8], now: DateTime<Utc>) -> Result<Option<Decision>, String> {
    match http::parse(body).map_err(|refusal| refusal.to_string())?.1 {
        None => Ok(None),
        Some(click) => decision(&click, now).map(Some),
    }
}

/// The decision a click stands for, or why it stands for none (told to the user).
fn decision(click: &Click, now: DateTime<Utc>) -> Result<Decision, String> {
    let value = ApprovalButton::parse(
        &click.action_id,
        click.block_id.as_deref(),
        click.value.as_deref(),
    )
    .map_err(|error| error.to_string())?;
    let id = {
        let mut hash = Sha256::new();
        for part in [
            &click.team,
            &click.user,
            &click.moment,
            &value.run_id,
            &value.gate,
            &value.choice,
            value.item.as_deref().unwrap_or_default(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        format!("slack-{}", &hex::encode(hash.finalize())[..40])
    };
    let decision = Decision {
        schema: DecisionSchema::V1,
        id,
        run_id: value.run_id,
        gate: value.gate,
        token: value.token,
        choice: value.choice,
        item: value.item,
        comment: None,
        actor: Actor {
            via: Via::Slack,
            id: format!("{}/{}", click.team, click.user),
            // Free text from the payload (decoded from the form): redacted like a finding's.
            name: click
                .username
                .as_deref()
                .filter(|name| !name.is_empty())
                .map(|name| quench_proto::redact_str(name).into_owned()),
        },
        decided_at: slack_time(&click.moment).unwrap_or(now),
    };
    // Through the runner's own parse: it redacts anything key-shaped (a Slack username can be
    // anything) before the decision is published and stored, and checks every field, so what
    // the gateway publishes is what the runner reads.
    let bytes = serde_json::to_vec(&decision).expect("a decision serializes");
    Decision::parse(&bytes).map_err(|error| {
        quench_proto::redact_str(&format!("the button is not a valid answer ({error})"))
            .into_owned()
    })
}

/// `1700000001.000200` → that instant.
fn slack_time(ts: &str) -> Option<DateTime<Utc>> {
    let (seconds, micros) = ts.split_once('.').unwrap_or((ts, "0"));
    let seconds: i64 = seconds.parse().ok()?;
    let micros: u32 = format!("{micros:0<6}").get(..6)?.parse().ok()?;
    DateTime::from_timestamp(seconds, micros * 1000)
}

/// What the user is told (ephemerally) about their click.
fn message(handled: &Handled) -> String {
    match handled {
        Handled::Recorded { choice, .. } => format!(
            "Recorded your answer *{}*. quench checks that you may answer this request and updates the message.",
            escape(choice)
        ),
        Handled::Refused(reason) => format!("Nothing was recorded: {}.", escape(reason)),
        Handled::Failed { choice } => format!(
            "Your answer *{}* could not be recorded: quench is not reachable right now. Please click again in a minute.",
            escape(choice)
        ),
    }
}

/// Posts ephemeral replies to `response_url`s — only to Slack's own host (or, in tests, the
/// configured fake), so a payload cannot make the gateway call anywhere else.
#[derive(Debug)]
struct Responder {
    client: reqwest::Client,
    test_prefix: Option<String>,
}

impl Responder {
    fn allowed(&self, url: &str) -> bool {
        // Compared as parsed (dot segments resolved), the way it would be requested.
        let Ok(parsed) = url::Url::parse(url) else {
            return false;
        };
        if let Some(prefix) = &self.test_prefix
            && parsed.as_str().starts_with(prefix.as_str())
        {
            return true;
        }
        parsed.scheme() == "https"
            && parsed.host_str() == Some(SLACK_HOOKS)
            && parsed.port().is_none()
            && parsed.username().is_empty()
            && parsed.password().is_none()
    }

    /// The URL is a capability (anyone holding it may post to the user), so it is never logged.
    async fn post(&self, url: &str, text: &str) {
        if !self.allowed(url) {
            tracing::warn!("a response_url that is not Slack's was not called");
            return;
        }
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        match self.client.post(url).json(&body).send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "Slack refused the reply to a click"
                )
            }
            Err(error) => {
                tracing::warn!(error = %error.without_url(), "could not reply to a click")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(value: &str) -> Click {
        Click {
            team: "T1".to_owned(),
            user: "U111".to_owned(),
            username: Some("alice".to_owned()),
            action_id: "quench:keep".to_owned(),
            block_id: Some("quench:run-1:decide".to_owned()),
            value: Some(value.to_owned()),
            moment: "1700000001.000200".to_owned(),
            response_url: None,
        }
    }

    const VALUE: &str = r#"{"run_id":"run-1","gate":"decide","token":"abc123","choice":"keep"}"#;

    #[test]
    fn a_quench_button_becomes_a_decision_with_a_stable_id() {
        let decision = decision(&click(VALUE), Utc::now()).expect("a decision");
        assert_eq!(decision.run_id, "run-1");
        assert_eq!(decision.gate, "decide");
        assert_eq!(decision.choice, "keep");
        assert_eq!(decision.actor.id, "T1/U111");
        assert_eq!(decision.actor.name.as_deref(), Some("alice"));
        assert_eq!(decision.actor.via, Via::Slack);
        assert_eq!(
            decision.decided_at.to_rfc3339(),
            "2023-11-14T22:13:21.000200+00:00"
        );
        let again = super::decision(&click(VALUE), Utc::now()).expect("a decision");
        assert_eq!(
            decision.id, again.id,
            "a re-delivered click is the same decision"
        );
        let mut later = click(VALUE);
        later.moment = "1700000002.000100".to_owned();
        assert_ne!(
            super::decision(&later, Utc::now()).expect("a decision").id,
            decision.id
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let refused = |click: Click| super::decision(&click, Utc::now()).err();
        let mut other = click(VALUE);
        other.action_id = "approve".to_owned();
        assert_eq!(
            refused(other).as_deref(),
            Some("this button is not a quench approval")
        );
        assert!(
            refused(click(
                r#"{"run_id":"run-1","gate":"decide","token":"abc123","choice":"keep","extra":1}"#
            ))
            .is_some(),
            "unknown fields are refused"
        );
        assert!(
            refused(click(
                r#"{"run_id":"run-1","gate":"decide","token":"abc123","choice":"revoke"}"#
            ))
            .is_some()
        );
        assert!(
            refused(click(
                r#"{"run_id":"run.>","gate":"decide","token":"abc123","choice":"keep"}"#
            ))
            .is_some()
        );
        assert!(
            refused(click(
                r#"{"run_id":"run-2","gate":"decide","token":"abc123","choice":"keep"}"#
            ))
            .is_some()
        );
        assert!(refused(click("not json")).is_some());
    }

    #[test]
    fn replies_go_only_to_slack() {
        let responder = Responder {
            client: quench_common::http::http_client(),
            test_prefix: Some("http://127.0.0.1:9/response/".to_owned()),
        };
        assert!(responder.allowed("https://hooks.slack.com/actions/T1/1/xyz"));
        assert!(responder.allowed("http://127.0.0.1:9/response/1"));
        for refused in [
            "http://hooks.slack.com/actions/T1/1/xyz",
            "https://hooks.slack.com.evil.example/actions",
            "https://hooks.slack.com@evil.example/actions",
            "https://user@hooks.slack.com/actions",
            "https://hooks.slack.com:8443/actions",
            "https://evil.example/?https://hooks.slack.com/",
            "http://127.0.0.1:9/other",
            "http://127.0.0.1:9/response/../admin",
            "file:///etc/passwd",
        ] {
            assert!(!responder.allowed(refused), "{refused}");
        }
    }
}
