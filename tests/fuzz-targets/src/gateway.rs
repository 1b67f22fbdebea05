//! Targets for the gateway: the three signature verifiers, the Slack interaction form, GitHub
//! secret-scanning events and signed findings.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use quench_gateway::Refusal;
use quench_gateway::github::{self, Outcome};
use quench_gateway::signature::{
    GITHUB_SIGNATURE, MAX_SKEW_SECS, QUENCH_SIGNATURE, QUENCH_TIMESTAMP, SLACK_SIGNATURE,
    SLACK_TIMESTAMP, Verified, sign_findings, sign_github, sign_slack, verify_findings,
    verify_github, verify_slack,
};
use quench_gateway::slack::Answer;
use quench_proto::slack::{ApprovalButton, MAX_ASK, MAX_COMMENT};
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding};
use serde_json::Value;

use crate::proto::{check_decision, check_finding};
use crate::{assert_no_key, lines};

/// The secret the verifier targets' gateway is configured with.
const SECRET: &str = "fuzz-signing-secret";
/// The gateway's clock in the verifier targets (Unix seconds).
const NOW: i64 = 1_700_000_000;

/// Headers from raw values; a value that is not a valid header value is absent, as a client
/// could not have sent it.
fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
    map
}

/// A scheme with a timestamp (Slack's, the findings webhook's), checked the same way.
struct Stamped {
    timestamp_header: &'static str,
    signature_header: &'static str,
    sign: fn(&str, i64, &[u8]) -> String,
    verify: fn(&str, &HeaderMap, &[u8], i64) -> Result<Verified, Refusal>,
}

const SLACK: Stamped = Stamped {
    timestamp_header: SLACK_TIMESTAMP,
    signature_header: SLACK_SIGNATURE,
    sign: sign_slack,
    verify: verify_slack,
};

const FINDINGS: Stamped = Stamped {
    timestamp_header: QUENCH_TIMESTAMP,
    signature_header: QUENCH_SIGNATURE,
    sign: sign_findings,
    verify: verify_findings,
};

impl Stamped {
    /// Input: the timestamp header, a line, the signature header, a line, the body. Whatever
    /// the headers say, a request is accepted only when its signature is the secret's MAC of
    /// this body at a timestamp within the window. Then, for the same body: a fresh signature
    /// is accepted, and one made with another secret, over another body, or outside the
    /// window is refused.
    fn check(&self, data: &[u8]) -> Option<Verified> {
        let ([timestamp, signature], body) = lines::<2>(data)?;
        let sent = headers(&[
            (self.timestamp_header, timestamp),
            (self.signature_header, signature),
        ]);
        let accepted = (self.verify)(SECRET, &sent, body, NOW).ok();
        if let Some(verified) = accepted {
            assert!((NOW - verified.timestamp).abs() <= MAX_SKEW_SECS);
            let made = (self.sign)(SECRET, verified.timestamp, body);
            assert!(
                made.ends_with(&hex::encode(verified.mac)),
                "accepted a signature the secret did not make"
            );
        }
        let signed = |secret: &str, at: i64, body: &[u8]| {
            let stamp = at.to_string();
            let signature = (self.sign)(secret, at, body);
            headers(&[
                (self.timestamp_header, stamp.as_bytes()),
                (self.signature_header, signature.as_bytes()),
            ])
        };
        let fresh = signed(SECRET, NOW - 5, body);
        assert!((self.verify)(SECRET, &fresh, body, NOW).is_ok());
        let other_secret = signed("another-secret", NOW, body);
        assert_eq!(
            (self.verify)(SECRET, &other_secret, body, NOW),
            Err(Refusal::BadSignature)
        );
        let longer = [body, b"\n"].concat();
        assert_eq!(
            (self.verify)(SECRET, &fresh, &longer, NOW),
            Err(Refusal::BadSignature)
        );
        let stale = signed(SECRET, NOW - MAX_SKEW_SECS - 1, body);
        assert_eq!(
            (self.verify)(SECRET, &stale, body, NOW),
            Err(Refusal::StaleTimestamp)
        );
        accepted
    }
}

/// Slack's signature over an interaction (see [`Stamped::check`] for the input).
pub fn slack_signature(data: &[u8]) {
    SLACK.check(data);
}

/// The findings webhook: its signature (see [`Stamped::check`]), then the body of an accepted
/// request as [`crate::finding`] checks a finding. The seeds are signed with the target's
/// secret and clock, so the fuzzer starts from requests the gateway accepts.
pub fn signed_finding(data: &[u8]) {
    if FINDINGS.check(data).is_some() {
        let ([_, _], body) = lines::<2>(data).expect("checked above");
        if let Ok(finding) = Finding::parse(body, DEFAULT_MAX_FINDING_BYTES) {
            check_finding(&finding);
        }
    }
}

/// GitHub's signature (no timestamp). Input: the `X-Hub-Signature-256` header, a line, the
/// body. Accepted only when it is the secret's MAC of the body; a fresh signature is accepted
/// and one of another secret or body refused.
pub fn github_signature(data: &[u8]) {
    let Some(([signature], body)) = lines::<1>(data) else {
        return;
    };
    let sent = headers(&[(GITHUB_SIGNATURE, signature)]);
    if verify_github(SECRET, &sent, body).is_ok() {
        let made = sign_github(SECRET, body);
        let claimed = String::from_utf8_lossy(signature).to_ascii_lowercase();
        assert_eq!(
            claimed, made,
            "accepted a signature the secret did not make"
        );
    }
    let good = sign_github(SECRET, body);
    assert!(
        verify_github(
            SECRET,
            &headers(&[(GITHUB_SIGNATURE, good.as_bytes())]),
            body
        )
        .is_ok()
    );
    let other = sign_github("another-secret", body);
    assert_eq!(
        verify_github(
            SECRET,
            &headers(&[(GITHUB_SIGNATURE, other.as_bytes())]),
            body
        ),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        verify_github(
            SECRET,
            &headers(&[(GITHUB_SIGNATURE, good.as_bytes())]),
            &[body, b" "].concat()
        ),
        Err(Refusal::BadSignature)
    );
}

fn received_at() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("a time")
}

/// A (signed) Slack interaction form, `payload=<JSON>`: a click or a form's submission. A
/// decision is one that the runner's own parse accepts unchanged (what the gateway publishes is
/// what the runner reads) and whose run id is one subject token; a comment (only a form's) is
/// trimmed, not empty and within the form's bound; a click that asks names a bounded question,
/// and its value is metadata the gateway reads back as the same button; what a refused caller
/// or user is told holds no key.
pub fn slack_interaction(data: &[u8]) {
    match quench_gateway::slack::form_answer(data, received_at()) {
        Ok(None) => {}
        Ok(Some(Answer::Decision(decision))) => {
            check_decision(&decision);
            assert!(
                !decision.run_id.is_empty() && !decision.run_id.contains(['.', '*', '>', ' ']),
                "the run id {:?} is not one subject token",
                decision.run_id
            );
            if let Some(comment) = &decision.comment {
                assert!(
                    !comment.is_empty()
                        && comment.trim() == comment
                        && comment.chars().count() <= MAX_COMMENT,
                    "comment {comment:?}"
                );
            }
        }
        Ok(Some(Answer::Ask(button))) => {
            let question = button
                .ask
                .as_deref()
                .expect("a button that asks has a question");
            assert!(question.chars().count() <= MAX_ASK, "question {question:?}");
            assert_eq!(
                ApprovalButton::from_metadata(&button.value()),
                Ok(button.clone()),
                "the form's metadata reads back as the button"
            );
        }
        Err(reason) => assert_no_key("a refused interaction's reason", &reason),
    }
}

/// A GitHub delivery. Input: `X-GitHub-Event`, a line, `X-GitHub-Delivery`, a line, the JSON
/// body. A finding made from it is one the runner accepts unchanged and holds nothing
/// key-shaped; the alert's `secret` never reaches it (unless the event repeats it elsewhere);
/// what the caller is told holds no key.
pub fn github_event(data: &[u8]) {
    let Some(([event, delivery], body)) = lines::<2>(data) else {
        return;
    };
    // Header values are text (the endpoint refuses others).
    let (Ok(event), Ok(delivery)) = (std::str::from_utf8(event), std::str::from_utf8(delivery))
    else {
        return;
    };
    match github::map(event, delivery, body, received_at()) {
        Ok(Outcome::Ping) => {}
        Ok(Outcome::Ignored(reason)) => assert_no_key("an ignored event's reason", &reason),
        Ok(Outcome::Finding(finding)) => {
            check_finding(&finding);
            let Some((secret, without)) = alert_secret(body) else {
                return;
            };
            // The same event without its secret makes the baseline: the secret's text may
            // also be the finding's own words.
            let Ok(Outcome::Finding(baseline)) =
                github::map(event, delivery, &without, received_at())
            else {
                panic!("an event maps to a finding with its secret but not without it");
            };
            let count = |finding: &Finding| {
                let mut json = serde_json::to_value(finding).expect("a finding serializes");
                if let Some(resource) = json["resource"].as_object_mut() {
                    resource.remove("redacted_value");
                }
                json.to_string().matches(&secret).count()
            };
            assert!(
                count(&finding) <= count(&baseline),
                "the alert's secret {secret:?} reached the finding: {finding:?}"
            );
        }
        Err(error) => assert_no_key("a refused event's error", &error.to_string()),
    }
}

/// The alert's `secret` as it appears in JSON (escaped, at least 8 characters), and the event
/// without it.
fn alert_secret(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut event: Value = serde_json::from_slice(body).ok()?;
    let secret = event.pointer_mut("/alert/secret")?.take();
    let secret = secret
        .as_str()
        .filter(|secret| secret.chars().count() >= 8)?;
    let escaped = serde_json::to_string(secret).ok()?;
    let without = serde_json::to_vec(&event).ok()?;
    Some((escaped.trim_matches('"').to_owned(), without))
}
