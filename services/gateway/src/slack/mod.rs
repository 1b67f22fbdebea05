//! Slack clicks → decisions. Both transports — HTTP interactivity ([`http`]) and Socket Mode
//! ([`socket`]) — reduce a `block_actions` interaction to a [`Click`]; [`Interactions::take`]
//! checks the approval button, publishes the [`Decision`] and then tells the user, through the
//! click's `response_url`, that the answer was recorded (or why it was not). Whether the answer
//! counts is for the runner to decide; it updates the message itself.
//!
//! A button that asks for a comment (`ApprovalButton::ask`) is not an answer yet: the click
//! opens a form ([`form`]) and publishes nothing; the form's submission, reduced to a
//! [`Submission`], is the answer ([`Interactions::submit`]), with the comment.

pub(crate) mod form;
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
use form::{Asker, Submission};

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
    /// What lets the gateway open a form in front of the user (for 3 seconds, once).
    pub(crate) trigger_id: Option<String>,
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
    /// The choice needs a comment: a form asking for it was opened; nothing was published.
    Asked { choice: String },
}

/// What a verified interaction stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A decision to publish (a click, or a form's submission with its comment).
    Decision(Decision),
    /// A click on a choice that needs a comment: the form to open for this button.
    Ask(ApprovalButton),
}

/// Handles clicks and form submissions from either transport; holds the publisher, the
/// `response_url` poster and, with `slack.bot_token`, what opens forms.
#[derive(Debug)]
pub(crate) struct Interactions {
    publisher: Publisher,
    responder: Responder,
    /// Opens forms; `None` without a bot token, when a choice that needs a comment is refused.
    asker: Option<Arc<Asker>>,
    /// The `response_url` posts still in flight (waited for at shutdown).
    pub(crate) tasks: TaskTracker,
}

impl Interactions {
    pub(crate) fn new(
        publisher: Publisher,
        test_response_url_prefix: Option<String>,
        asker: Option<Asker>,
    ) -> Self {
        Interactions {
            publisher,
            responder: Responder {
                client: quench_common::http::http_client(),
                test_prefix: test_response_url_prefix,
            },
            asker: asker.map(Arc::new),
            tasks: TaskTracker::new(),
        }
    }

    /// Publishes the click's decision (or opens the form its choice needs), then (in the
    /// background) tells the user what happened.
    pub(crate) async fn take(self: &Arc<Self>, click: Click) -> Handled {
        let handled = match answer(&click, Utc::now()) {
            Err(reason) => Handled::Refused(reason),
            Ok(Answer::Decision(decision)) => self.publish(decision).await,
            Ok(Answer::Ask(button)) => self.ask(&click, button).await,
        };
        if let Handled::Refused(reason) = &handled {
            tracing::info!(actor = %format!("{}/{}", click.team, click.user), reason = %reason, "click refused");
        }
        if let Some(url) = click.response_url
            && let Some(text) = message(&handled)
        {
            let interactions = self.clone();
            self.tasks.spawn(async move {
                interactions.responder.post(&url, &text).await;
            });
        }
        handled
    }

    /// Publishes a form's answer: the decision by the submitting user, with the comment.
    /// `Refused` and `Failed` are shown in the form, which stays open.
    pub(crate) async fn submit(&self, submission: &Submission) -> Handled {
        let handled = match submission_decision(submission, Utc::now()) {
            Err(reason) => Handled::Refused(reason),
            Ok(decision) => self.publish(decision).await,
        };
        if let Handled::Refused(reason) = &handled {
            tracing::info!(actor = %format!("{}/{}", submission.team, submission.user), reason = %reason, "form refused");
        }
        handled
    }

    async fn publish(&self, decision: Decision) -> Handled {
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

    /// Opens the form a choice needs, in front of the user who clicked.
    async fn ask(&self, click: &Click, button: ApprovalButton) -> Handled {
        let Some(asker) = &self.asker else {
            return Handled::Refused(format!(
                "*{}* needs a comment, and this quench cannot ask for one in Slack (the gateway has no `slack.bot_token`); answer with `quench approve … --comment`",
                button.choice
            ));
        };
        let Some(trigger_id) = click.trigger_id.as_deref() else {
            return Handled::Refused(
                "the click carries no trigger_id to open a form with".to_owned(),
            );
        };
        match asker.open(trigger_id, &button).await {
            Ok(()) => {
                tracing::info!(run_id = %button.run_id, gate = %button.gate, choice = %button.choice, "form opened");
                Handled::Asked {
                    choice: button.choice,
                }
            }
            Err(problem) => {
                tracing::warn!(run_id = %button.run_id, %problem, "form not opened");
                Handled::Refused(format!(
                    "the form asking about *{}* could not be opened ({problem}); please click again",
                    button.choice
                ))
            }
        }
    }
}

/// What a (verified) HTTP interaction form stands for, as `POST /slack/interactions` derives
/// it before publishing or opening a form: `Ok(None)` when it is neither a button click nor a
/// form's submission, `Err` with what the caller or the user is told. Pure, so it can be fuzzed.
pub fn form_answer(body: &[u8], now: DateTime<Utc>) -> Result<Option<Answer>, String> {
    match http::parse(body).map_err(|refusal| refusal.to_string())?.1 {
        http::Interaction::Other => Ok(None),
        http::Interaction::Click(click) => answer(&click, now).map(Some),
        http::Interaction::Submission(submission) => {
            submission_decision(&submission, now).map(|decision| Some(Answer::Decision(decision)))
        }
    }
}

/// What a click stands for — a decision, or the form its choice needs — or why it stands for
/// nothing (told to the user).
fn answer(click: &Click, now: DateTime<Utc>) -> Result<Answer, String> {
    let button = ApprovalButton::parse(
        &click.action_id,
        click.block_id.as_deref(),
        click.value.as_deref(),
    )
    .map_err(|error| error.to_string())?;
    if button.ask.is_some() {
        return Ok(Answer::Ask(button));
    }
    let answerer = Answerer {
        team: &click.team,
        user: &click.user,
        username: click.username.as_deref(),
        moment: &click.moment,
    };
    decision(
        button,
        &answerer,
        None,
        slack_time(&click.moment).unwrap_or(now),
    )
    .map(Answer::Decision)
}

/// The decision a form's submission stands for: the button in its metadata, answered by the
/// user who submitted it, with the comment.
fn submission_decision(submission: &Submission, now: DateTime<Utc>) -> Result<Decision, String> {
    let (button, comment) = submission.answer()?;
    let answerer = Answerer {
        team: &submission.team,
        user: &submission.user,
        username: submission.username.as_deref(),
        moment: &submission.view_id,
    };
    // Slack stamps no time on a submission: it was decided when it arrived.
    decision(button, &answerer, Some(comment), now)
}

/// Who answered, as Slack vouches for it, and the moment (a click's `action_ts`, a form's view
/// id) that makes the decision id the same when Slack delivers the answer again.
struct Answerer<'a> {
    team: &'a str,
    user: &'a str,
    username: Option<&'a str>,
    moment: &'a str,
}

/// The decision for `button` by `answerer`, or why there is none (told to the user).
fn decision(
    button: ApprovalButton,
    answerer: &Answerer<'_>,
    comment: Option<String>,
    decided_at: DateTime<Utc>,
) -> Result<Decision, String> {
    let id = {
        let mut hash = Sha256::new();
        for part in [
            answerer.team,
            answerer.user,
            answerer.moment,
            &button.run_id,
            &button.gate,
            &button.choice,
            button.item.as_deref().unwrap_or_default(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        format!("slack-{}", &hex::encode(hash.finalize())[..40])
    };
    let decision = Decision {
        schema: DecisionSchema::V1,
        id,
        run_id: button.run_id,
        gate: button.gate,
        token: button.token,
        choice: button.choice,
        item: button.item,
        comment,
        actor: Actor {
            via: Via::Slack,
            id: format!("{}/{}", answerer.team, answerer.user),
            // Free text from the payload (decoded from the form): redacted like a finding's.
            name: answerer
                .username
                .filter(|name| !name.is_empty())
                .map(|name| quench_proto::redact_str(name).into_owned()),
        },
        decided_at,
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

/// What the user is told (ephemerally) about their click; nothing when a form opened (the
/// form is the answer).
fn message(handled: &Handled) -> Option<String> {
    Some(match handled {
        Handled::Recorded { choice, .. } => format!(
            "Recorded your answer *{}*. quench checks that you may answer this request and updates the message.",
            escape(choice)
        ),
        Handled::Refused(reason) => format!("Nothing was recorded: {}.", escape(reason)),
        Handled::Failed { choice } => format!(
            "Your answer *{}* could not be recorded: quench is not reachable right now. Please click again in a minute.",
            escape(choice)
        ),
        Handled::Asked { .. } => return None,
    })
}

/// What the user is told inside a form that stays open (its submission was not recorded), or
/// `None` when it was and the form closes.
pub(crate) fn form_error(handled: &Handled) -> Option<String> {
    match handled {
        Handled::Recorded { .. } | Handled::Asked { .. } => None,
        Handled::Refused(reason) => Some(format!("Nothing was recorded: {reason}.")),
        Handled::Failed { .. } => Some(
            "Your answer could not be recorded: quench is not reachable right now. Please send it again in a minute.".to_owned(),
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
            trigger_id: Some("1700000001.000200.trigger".to_owned()),
        }
    }

    /// The decision a click stands for (a click that opens a form is none).
    fn decided(click: &Click, now: DateTime<Utc>) -> Result<Decision, String> {
        match answer(click, now)? {
            Answer::Decision(decision) => Ok(decision),
            Answer::Ask(button) => Err(format!("asks first: {button:?}")),
        }
    }

    const VALUE: &str = r#"{"run_id":"run-1","gate":"decide","token":"abc123","choice":"keep"}"#;

    #[test]
    fn a_quench_button_becomes_a_decision_with_a_stable_id() {
        let decision = decided(&click(VALUE), Utc::now()).expect("a decision");
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
        let again = decided(&click(VALUE), Utc::now()).expect("a decision");
        assert_eq!(
            decision.id, again.id,
            "a re-delivered click is the same decision"
        );
        let mut later = click(VALUE);
        later.moment = "1700000002.000100".to_owned();
        assert_ne!(
            decided(&later, Utc::now()).expect("a decision").id,
            decision.id
        );
    }

    #[test]
    fn a_button_that_asks_opens_a_form_and_its_submission_is_the_decision() {
        let asking = ApprovalButton::parse("quench:keep", None, Some(VALUE))
            .expect("a button")
            .with_ask("What is this key for?");
        let mut click = click(&asking.value());
        assert_eq!(
            answer(&click, Utc::now()),
            Ok(Answer::Ask(asking.clone())),
            "nothing to publish yet"
        );
        click.value = Some(VALUE.to_owned());
        assert!(matches!(
            answer(&click, Utc::now()),
            Ok(Answer::Decision(_))
        ));

        let submission = Submission {
            team: "T1".to_owned(),
            user: "U222".to_owned(),
            username: Some("bob".to_owned()),
            view_id: "V0FORM1".to_owned(),
            callback_id: Some(form::CALLBACK_ID.to_owned()),
            metadata: Some(asking.value()),
            comment: Some(" the nightly billing export ".to_owned()),
        };
        let now = Utc::now();
        let decision = submission_decision(&submission, now).expect("a decision");
        assert_eq!(decision.choice, "keep");
        assert_eq!(decision.token, asking.token);
        assert_eq!(
            decision.comment.as_deref(),
            Some("the nightly billing export")
        );
        assert_eq!(
            decision.actor.id, "T1/U222",
            "the one who submitted answers"
        );
        assert_eq!(decision.decided_at, now);
        assert_eq!(
            submission_decision(&submission, Utc::now())
                .expect("a decision")
                .id,
            decision.id,
            "a re-delivered submission is the same decision"
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let refused = |click: Click| decided(&click, Utc::now()).err();
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
