//! The Slack connector (slack-morphism 2.31.1): `slack.message`, and gate notices — a DM per
//! approver with one button per choice (the gate's token in each button's value), reminders,
//! escalations, and `chat.update` once the gate closes, showing the outcome without buttons.
//!
//! Recipients: an email (looked up with `users.lookupByEmail`, cached, then a DM through
//! `conversations.open`), a Slack user id (`U…`/`W…`, DM), a `#channel`, `group:<name>` from
//! the service config (each member as above), or `team:<name>` (`[teams]`: a message goes to the
//! team's channel when it has one, an approval to each member). Text from findings is escaped when the playbook is
//! rendered (see `engine::render`), so it cannot mention `@channel` or forge a link.
//! Errors: HTTP 429 honours `Retry-After`; `ok:false` codes are mapped (rate limits and Slack's
//! own failures retry; `users_not_found` and the like are permanent, naming the recipient).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use quench_common::slack::connector;
use quench_proto::slack::{
    ApprovalButton, block_id_of, closed_block_id_of, escape, item_block_id_of, mention,
};
use serde_json::{Value, json};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::config::Secret;
use crate::engine::{
    Action, ActionError, ActionFuture, Actions, Call, Delivery, Gate, GateMessage, ItemDecision,
    NoticeFuture, NoticeKind, NoticeRequest, Notifier, Success, item_id,
};

/// The Slack Web API client for one bot token.
pub struct Slack {
    client: SlackHyperClient,
    token: SlackApiToken,
    groups: BTreeMap<String, Vec<String>>,
    /// `[teams]`: `team:<name>` → its members, and the channel its messages go to.
    owners: Arc<crate::owners::Owners>,
    /// Email (lowercased) → Slack user id.
    users: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack").finish_non_exhaustive()
    }
}

/// Where a message goes.
#[derive(Debug, Clone)]
struct Destination {
    /// The recipient as named (an email, a user id, `#channel`).
    label: String,
    channel: String,
    /// (Slack user id, email) when an email was looked up.
    alias: Option<(String, String)>,
}

impl Slack {
    /// A client for `api_url` (`https://slack.com/api`, or a local fake in tests: plain
    /// `http://` is accepted only for loopback hosts, so the token never crosses a network in
    /// the clear).
    pub fn new(
        api_url: &str,
        bot_token: &Secret,
        groups: BTreeMap<String, Vec<String>>,
    ) -> Result<Slack, String> {
        Ok(Slack {
            client: SlackClient::new(connector(api_url)?),
            token: SlackApiToken::new(bot_token.expose().to_owned().into()),
            groups,
            owners: Arc::default(),
            users: Mutex::new(HashMap::new()),
        })
    }

    /// The same client, knowing `[teams]` for `team:<name>` recipients.
    pub fn with_owners(mut self, owners: Arc<crate::owners::Owners>) -> Slack {
        self.owners = owners;
        self
    }

    /// Registers `slack.message`.
    pub fn register(self: &Arc<Slack>, actions: &mut Actions) {
        actions.insert("slack.message", Arc::new(SlackMessageAction(self.clone())));
    }

    fn cached_user(&self, email: &str) -> Option<String> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(email)
            .cloned()
    }

    /// The Slack user id of an email (cached).
    async fn user_id(&self, email: &str) -> Result<String, ActionError> {
        let email = email.trim().to_lowercase();
        if let Some(id) = self.cached_user(&email) {
            return Ok(id);
        }
        let session = self.client.open_session(&self.token);
        let found = session
            .users_lookup_by_email(&SlackApiUsersLookupByEmailRequest::new(EmailAddress(
                email.clone(),
            )))
            .await
            .map_err(|error| classify("users.lookupByEmail", &email, error))?;
        let id = found.user.id.0;
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(email, id.clone());
        Ok(id)
    }

    async fn dm(&self, user: &str) -> Result<String, ActionError> {
        let session = self.client.open_session(&self.token);
        let opened = session
            .conversations_open(
                &SlackApiConversationsOpenRequest::new().with_users(vec![SlackUserId(user.into())]),
            )
            .await
            .map_err(|error| classify("conversations.open", user, error))?;
        Ok(opened.channel.id.0)
    }

    /// Resolves one recipient to where its messages go (a group to each member; a team to its
    /// channel when it has one and `channel` allows, else to each member).
    async fn resolve(
        &self,
        to: &str,
        channel: bool,
    ) -> Vec<Result<Destination, (String, ActionError)>> {
        let to = to.trim();
        if let Some(team) = to.strip_prefix("team:") {
            if channel && let Some(id) = self.owners.team_channel(team) {
                return vec![Ok(Destination {
                    label: to.to_owned(),
                    channel: id.to_owned(),
                    alias: None,
                })];
            }
            let Some(members) = self.owners.team_members(team) else {
                return vec![Err((
                    to.to_owned(),
                    ActionError::permanent(format!(
                        "team `{team}` is not defined in the service config (`[teams]`)"
                    )),
                ))];
            };
            let mut out = Vec::new();
            for member in &members {
                out.push(self.resolve_one(member).await);
            }
            return out;
        }
        if let Some(group) = to.strip_prefix("group:") {
            let Some(members) = self.groups.get(group) else {
                return vec![Err((
                    to.to_owned(),
                    ActionError::permanent(format!(
                        "approver group `{group}` is not defined in the service config (`[groups]`)"
                    )),
                ))];
            };
            let mut out = Vec::new();
            for member in members {
                out.push(self.resolve_one(member).await);
            }
            return out;
        }
        vec![self.resolve_one(to).await]
    }

    async fn resolve_one(&self, to: &str) -> Result<Destination, (String, ActionError)> {
        let failed = |error| (to.to_owned(), error);
        if let Some(channel) = to.strip_prefix('#') {
            return Ok(Destination {
                label: to.to_owned(),
                channel: channel.to_owned(),
                alias: None,
            });
        }
        if to.contains('@') {
            let user = self.user_id(to).await.map_err(failed)?;
            let channel = self.dm(&user).await.map_err(failed)?;
            return Ok(Destination {
                label: to.to_owned(),
                channel,
                alias: Some((user, to.to_lowercase())),
            });
        }
        if to.starts_with(['U', 'W']) {
            let channel = self.dm(to).await.map_err(failed)?;
            return Ok(Destination {
                label: to.to_owned(),
                channel,
                alias: None,
            });
        }
        Err(failed(ActionError::permanent(format!(
            "`{to}` is not an email, a Slack user id, a #channel, a group:<name> or a team:<name>"
        ))))
    }

    async fn post(
        &self,
        channel: &str,
        content: SlackMessageContent,
    ) -> Result<(String, String), ActionError> {
        let session = self.client.open_session(&self.token);
        let posted = session
            .chat_post_message(&SlackApiChatPostMessageRequest::new(
                SlackChannelId(channel.into()),
                content,
            ))
            .await
            .map_err(|error| classify("chat.postMessage", channel, error))?;
        Ok((posted.channel.0, posted.ts.0))
    }

    async fn update(
        &self,
        message: &GateMessage,
        content: SlackMessageContent,
    ) -> Result<(), ActionError> {
        let session = self.client.open_session(&self.token);
        session
            .chat_update(&SlackApiChatUpdateRequest::new(
                SlackChannelId(message.channel.clone()),
                content,
                SlackTs(message.ts.clone()),
            ))
            .await
            .map_err(|error| classify("chat.update", &message.channel, error))?;
        Ok(())
    }

    async fn notify(&self, request: &NoticeRequest) -> Delivery {
        let mut delivery = Delivery::default();
        if matches!(request.kind, NoticeKind::Closed | NoticeKind::Progress) {
            let content = if request.kind == NoticeKind::Closed {
                closed_message(&request.gate)
            } else {
                approval_message(request)
            };
            for message in &request.gate.messages {
                match self.update(message, content.clone()).await {
                    Ok(()) => delivery.updated += 1,
                    Err(error) => delivery.failed.push((message.to.clone(), error)),
                }
            }
            return delivery;
        }
        let content = approval_message(request);
        // One message per person per notice, however many ways the playbook names them (an
        // email and a group they are in, the same group twice, an escalation to someone asked).
        let mut asked = std::collections::HashSet::new();
        for recipient in &request.to {
            // Approval buttons go to each person, never to a team's channel.
            for destination in self.resolve(recipient, false).await {
                let destination = match destination {
                    Ok(destination) => destination,
                    Err(failure) => {
                        delivery.failed.push(failure);
                        continue;
                    }
                };
                if !asked.insert(destination.channel.clone()) {
                    delivery.aliases.extend(destination.alias);
                    continue;
                }
                match self.post(&destination.channel, content.clone()).await {
                    Ok((channel, ts)) => {
                        delivery.posted.push(GateMessage {
                            to: destination.label,
                            channel,
                            ts,
                        });
                        delivery.aliases.extend(destination.alias);
                    }
                    Err(error) => delivery.failed.push((destination.label, error)),
                }
            }
        }
        delivery
    }
}

impl Notifier for Slack {
    fn deliver<'a>(&'a self, request: &'a NoticeRequest) -> NoticeFuture<'a> {
        Box::pin(self.notify(request))
    }
}

/// The text of an approval request and its buttons: one per choice, each carrying the run, the
/// gate and its token (`quench_proto::slack::ApprovalButton`), so the gateway can turn a click
/// into a decision — or, for a choice in `comment_for`, the question the gateway asks first.
fn approval_message(request: &NoticeRequest) -> SlackMessageContent {
    let gate = &request.gate;
    let lead = match request.kind {
        NoticeKind::Remind => "Reminder: an answer is still needed.\n",
        NoticeKind::Escalate => "This was escalated to you.\n",
        NoticeKind::Open | NoticeKind::Closed | NoticeKind::Progress => "",
    };
    let text = format!(
        "{lead}{}\n_{} · {} · answer by {}_",
        gate.question,
        escape(&request.playbook),
        escape(&request.run_key),
        gate.deadline.format("%Y-%m-%d %H:%M UTC"),
    );
    let buttons = |item: Option<&str>| -> SlackBlock {
        let elements: Vec<SlackActionBlockElement> = gate
            .choices
            .iter()
            .map(|choice| {
                let button = ApprovalButton {
                    run_id: gate.run_id.clone(),
                    gate: gate.step.clone(),
                    token: gate.token.clone(),
                    choice: choice.clone(),
                    item: item.map(str::to_owned),
                    ask: None,
                };
                // A choice that needs words carries its question: the gateway asks it in a
                // form, and the form's answer is the decision.
                let button = match gate.comment_for.get(choice) {
                    Some(question) => button.with_ask(question),
                    None => button,
                };
                SlackBlockButtonElement::new(pt!(choice.clone()))
                    .with_action_id(SlackActionId(button.action_id()))
                    .with_value(button.value())
                    .into()
            })
            .collect();
        let block_id = match item {
            None => block_id_of(&gate.run_id, &gate.step),
            Some(item) => item_block_id_of(&gate.run_id, &gate.step, item),
        };
        SlackActionsBlock::new(elements)
            .with_block_id(SlackBlockId(block_id))
            .into()
    };
    if gate.per_item() {
        // One section per item with its facts, and its buttons while it is open (a decided
        // item shows its outcome instead): at most 1 + 2 × 20 blocks, under Slack's 50.
        let mut blocks: Vec<SlackBlock> =
            vec![SlackSectionBlock::new().with_text(md!(text.clone())).into()];
        for item in &gate.items {
            let id = item_id(item);
            let decision = gate.item_decisions.get(id);
            blocks.push(
                SlackSectionBlock::new()
                    .with_text(md!(item_text(item, decision)))
                    .into(),
            );
            if decision.is_none() {
                blocks.push(buttons(Some(id)));
            }
        }
        return SlackMessageContent::new()
            .with_text(text)
            .with_blocks(blocks);
    }
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![
            SlackSectionBlock::new().with_text(md!(text)).into(),
            buttons(None),
        ])
}

/// What an approval message becomes once its gate closes: the outcome, who and when; no buttons.
fn closed_message(gate: &Gate) -> SlackMessageContent {
    let outcome = match &gate.decision {
        Some(decision) if decision.via == "timeout" => format!(
            "No answer by {}: *{}* was taken.",
            decision.decided_at.format("%Y-%m-%d %H:%M UTC"),
            escape(&decision.choice)
        ),
        Some(decision) => format!(
            "Decided: *{}* by {} (via {}) at {}.",
            escape(&decision.choice),
            decision
                .decided_by
                .iter()
                .map(|who| mention(who))
                .collect::<Vec<_>>()
                .join(", "),
            escape(&decision.via),
            decision.decided_at.format("%Y-%m-%d %H:%M UTC"),
        ),
        None => "Closed without a decision: the run ended.".to_owned(),
    };
    let mut text = format!("{}\n{outcome}", gate.question);
    if gate.per_item() {
        for item in &gate.items {
            text.push('\n');
            text.push_str(&item_text(item, gate.item_decisions.get(item_id(item))));
        }
        text = truncate(&text, SECTION_TEXT_MAX);
    }
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(slack_blocks![some_into(
            SlackSectionBlock::new()
                .with_text(md!(text))
                .with_block_id(SlackBlockId(closed_block_id_of(&gate.run_id, &gate.step)))
        )])
}

/// Slack's limit on a section block's text.
const SECTION_TEXT_MAX: usize = 3000;
/// Facts shown per item, and the length of each value.
const ITEM_FACTS: usize = 8;
const FACT_CHARS: usize = 80;

/// An item of a per-item gate as Slack shows it: its label (or id), its id, its scalar facts
/// (escaped: they come from findings), and its outcome once decided.
fn item_text(item: &serde_json::Map<String, Value>, decision: Option<&ItemDecision>) -> String {
    let id = item_id(item);
    let label = item.get("label").and_then(Value::as_str).unwrap_or(id);
    let mut text = format!(
        "*{}* `{}`",
        escape(&truncate(label, FACT_CHARS)),
        escape(id)
    );
    let facts: Vec<String> = item
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "id" | "label"))
        .filter_map(|(name, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                Value::Array(list) if list.iter().all(Value::is_string) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => return None,
            };
            Some(format!(
                "{}: {}",
                escape(&truncate(name, 40)),
                escape(&truncate(&value, FACT_CHARS))
            ))
        })
        .take(ITEM_FACTS)
        .collect();
    if !facts.is_empty() {
        text.push('\n');
        text.push_str(&facts.join(" · "));
    }
    if let Some(decision) = decision {
        let by = if decision.defaulted {
            "no answer in time".to_owned()
        } else {
            decision
                .decided_by
                .iter()
                .map(|who| mention(who))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!("\n→ *{}* ({by})", escape(&decision.choice)));
    }
    truncate(&text, SECTION_TEXT_MAX)
}

/// At most `max` characters, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Maps a Slack error to the retry policy. Messages name the method and the recipient, never
/// the token.
fn classify(method: &str, subject: &str, error: SlackClientError) -> ActionError {
    match error {
        SlackClientError::RateLimitError(limit) => ActionError::Retryable {
            message: format!("Slack rate-limited {method}"),
            retry_after: limit.retry_after,
        },
        SlackClientError::ApiError(api) => match api.code.as_str() {
            "ratelimited"
            | "rate_limited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout" => {
                ActionError::retryable(format!("Slack could not complete {method} ({})", api.code))
            }
            "users_not_found" => ActionError::permanent(format!(
                "no Slack user has the email {subject} (users_not_found)"
            )),
            "user_not_found" | "user_not_visible" | "user_disabled" => {
                ActionError::permanent(format!("Slack cannot reach {subject} ({})", api.code))
            }
            "channel_not_found" | "not_in_channel" | "is_archived" => {
                ActionError::permanent(format!(
                    "Slack cannot post to {subject} ({}); invite the bot or check the name",
                    api.code
                ))
            }
            "invalid_auth" | "not_authed" | "token_revoked" | "account_inactive"
            | "missing_scope" => ActionError::permanent(format!(
                "Slack refused the bot token for {method} ({}); check slack.bot_token and the app's scopes",
                api.code
            )),
            code => ActionError::permanent(format!("Slack refused {method} ({code})")),
        },
        SlackClientError::HttpError(http) if http.status_code.is_server_error() => {
            ActionError::retryable(format!(
                "Slack answered {method} with HTTP {}",
                http.status_code
            ))
        }
        SlackClientError::HttpError(http) => ActionError::permanent(format!(
            "Slack answered {method} with HTTP {}",
            http.status_code
        )),
        SlackClientError::HttpProtocolError(_) | SlackClientError::EndOfStream(_) => {
            ActionError::retryable(format!("could not reach Slack for {method}"))
        }
        other => ActionError::permanent(format!(
            "unexpected answer from Slack to {method}: {}",
            quench_proto::redact_str(&other.to_string())
        )),
    }
}

/// `slack.message`: `to` (email, user id, `#channel`, `group:<name>`, `team:<name>`) and `text`.
#[derive(Debug)]
struct SlackMessageAction(Arc<Slack>);

impl SlackMessageAction {
    async fn send(&self, call: &Call) -> Result<Success, ActionError> {
        let input: crate::actions::SlackMessage = serde_json::from_value(call.input.clone())
            .map_err(|error| {
                ActionError::permanent(format!("invalid slack.message inputs: {error}"))
            })?;
        let content = SlackMessageContent::new().with_text(input.text.clone());
        let mut delivered = Vec::new();
        let mut first: Option<(String, String)> = None;
        for destination in self.0.resolve(&input.to, true).await {
            let destination = destination.map_err(|(_, error)| error)?;
            let (channel, ts) = self.0.post(&destination.channel, content.clone()).await?;
            delivered.push(json!({"to": destination.label, "channel": channel, "ts": ts}));
            first.get_or_insert((channel, ts));
        }
        let (channel, ts) = first.unwrap_or_default();
        Ok(Success::new(
            json!({"channel": channel, "ts": ts, "delivered": Value::Array(delivered)}),
        ))
    }
}

impl Action for SlackMessageAction {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.send(call))
    }
}

/// `slack.message` without a bot token, for a dry run (`quench up` with no credentials): the
/// message is recorded in the run's output and audit trail, marked as not delivered.
#[derive(Debug)]
struct UnconfiguredSlackMessage;

impl Action for UnconfiguredSlackMessage {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            Ok(Success::new(json!({
                "channel": null,
                "ts": null,
                "delivered": [],
                "not_sent": {"to": call.input.get("to"), "text": call.input.get("text")},
                "why": "slack.bot_token is not configured (dry run)",
            })))
        })
    }
}

/// Registers the dry-run `slack.message` used when no bot token is configured.
pub fn register_unconfigured(actions: &mut Actions) {
    actions.insert("slack.message", Arc::new(UnconfiguredSlackMessage));
}
