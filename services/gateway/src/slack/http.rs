//! `POST /slack/interactions`: Slack's HTTP interactivity. Rate limit and size cap, then the
//! signature (`X-Slack-Signature` over `v0:{ts}:{body}`, timestamp within 300 s, not seen
//! before), then the form's `payload=` JSON. The decision is published before Slack gets its
//! 200, which it wants within 3 seconds; the user hears back through `response_url`. A click on
//! a choice that needs a comment opens a form instead (within the same 3 seconds: its
//! `trigger_id` expires); the form's `view_submission` comes here too, and is answered with an
//! empty 200 (the form closes) or `{"response_action": "errors"}` (it stays open and says why).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::form::{INPUT_ACTION, INPUT_BLOCK, Submission};
use super::{Click, Handled, Interactions, form_error};
use crate::refusal::Refusal;
use crate::replay::ReplayCache;
use crate::signature::{now_unix, verify_slack};

/// The parts of an interaction payload the gateway reads; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    team: Option<Id>,
    user: Option<User>,
    #[serde(default)]
    actions: Vec<Action>,
    response_url: Option<String>,
    trigger_id: Option<String>,
    view: Option<View>,
}

/// The submitted view of a `view_submission`: its id, ours to read back (`callback_id`,
/// `private_metadata`), and its state, where the input's value is.
#[derive(Debug, Deserialize)]
struct View {
    id: String,
    callback_id: Option<String>,
    private_metadata: Option<String>,
    #[serde(default)]
    state: Value,
}

impl Payload {
    /// The team of the user who acted, else of the interaction.
    fn team(&self) -> Option<&str> {
        self.user
            .as_ref()
            .and_then(|user| user.team_id.as_deref())
            .or(self.team.as_ref().map(|team| team.id.as_str()))
    }
}

#[derive(Debug, Deserialize)]
struct Id {
    id: String,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    team_id: Option<String>,
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    block_id: Option<String>,
    value: Option<String>,
    action_ts: Option<String>,
}

/// Handles a request the server admitted (endpoint configured, client within its rate, body
/// within the cap): `replays` is the Slack endpoint's replay cache.
pub(crate) async fn receive(
    replays: &ReplayCache,
    interactions: &Arc<Interactions>,
    secret: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let now = now_unix();
    let verified = verify_slack(secret, headers, &body, now)?;
    let (team, interaction) = parse(&body)?;
    // Every Slack request is signed with the app's one secret; the client a budget is kept for is
    // the workspace (team) that sent it, so one busy workspace cannot refuse another's clicks.
    replays.admit(verified, &team, now)?;
    let click = match interaction {
        Interaction::Click(click) => click,
        Interaction::Submission(submission) => {
            let handled = interactions.submit(&submission).await;
            if matches!(handled, Handled::Failed { .. }) {
                // Sent again, it is signed anew; the cache need not keep this one.
                replays.forget(&verified);
            }
            return Ok(match form_error(&handled) {
                None => StatusCode::OK.into_response(),
                Some(error) => Json(json!({
                    "response_action": "errors",
                    "errors": {INPUT_BLOCK: error},
                }))
                .into_response(),
            });
        }
        // Not a button click or a form of ours (a shortcut, a closed view): acknowledged,
        // nothing to publish.
        Interaction::Other => return Ok(StatusCode::OK.into_response()),
    };
    let has_response_url = click.response_url.is_some();
    match interactions.take(click).await {
        Handled::Failed { .. } if !has_response_url => {
            replays.forget(&verified);
            Err(Refusal::Unavailable)
        }
        Handled::Failed { .. } => {
            // The user is told to click again (a new click is a new signature).
            replays.forget(&verified);
            Ok(StatusCode::OK.into_response())
        }
        Handled::Recorded { .. } | Handled::Refused(_) | Handled::Asked { .. } => {
            Ok(StatusCode::OK.into_response())
        }
    }
}

/// What an interaction form holds.
#[derive(Debug)]
pub(crate) enum Interaction {
    /// A `block_actions`: a button click.
    Click(Click),
    /// A `view_submission`: a form submitted.
    Submission(Submission),
    /// Anything else (a shortcut, a closed view): acknowledged, nothing published.
    Other,
}

/// The team that sent an interaction form (`payload=<JSON>`, empty when it names none) and what
/// it holds.
pub(crate) fn parse(body: &[u8]) -> Result<(String, Interaction), Refusal> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| Refusal::BadRequest("expected a form with a `payload` field".to_owned()))?;
    let payload: Payload = serde_json::from_str(&payload).map_err(|_| {
        Refusal::BadRequest("the `payload` field is not a Slack interaction".to_owned())
    })?;
    let team = payload.team().unwrap_or_default().to_owned();
    let interaction = match payload.kind.as_str() {
        "block_actions" => Interaction::Click(click(payload)?),
        "view_submission" => Interaction::Submission(submission(payload)?),
        _ => Interaction::Other,
    };
    Ok((team, interaction))
}

/// The submission in a `view_submission` payload: a view, by a known user.
fn submission(payload: Payload) -> Result<Submission, Refusal> {
    let bad = |what: &str| Refusal::BadRequest(format!("the interaction {what}"));
    let team = payload
        .team()
        .ok_or_else(|| bad("names no team"))?
        .to_owned();
    let user = payload.user.ok_or_else(|| bad("names no user"))?;
    let view = payload.view.ok_or_else(|| bad("has no view"))?;
    let comment = view
        .state
        .get("values")
        .and_then(|values| values.get(INPUT_BLOCK))
        .and_then(|block| block.get(INPUT_ACTION))
        .and_then(|input| input.get("value"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Submission {
        team,
        user: user.id,
        username: user.username,
        view_id: view.id,
        callback_id: view.callback_id,
        metadata: view.private_metadata,
        comment,
    })
}

/// The click in a `block_actions` payload: exactly one action, by a known user.
fn click(payload: Payload) -> Result<Click, Refusal> {
    let bad = |what: &str| Refusal::BadRequest(format!("the interaction {what}"));
    let team = payload
        .team()
        .ok_or_else(|| bad("names no team"))?
        .to_owned();
    let user = payload.user.ok_or_else(|| bad("names no user"))?;
    let [action] = <[Action; 1]>::try_from(payload.actions)
        .map_err(|_| bad("does not have exactly one action"))?;
    let moment = action
        .action_ts
        .or_else(|| payload.trigger_id.clone())
        .ok_or_else(|| bad("has neither an action_ts nor a trigger_id"))?;
    Ok(Click {
        trigger_id: payload.trigger_id,
        team,
        user: user.id,
        username: user.username,
        action_id: action.action_id,
        block_id: action.block_id,
        value: action.value,
        moment,
        response_url: payload.response_url,
    })
}
