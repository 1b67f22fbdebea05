//! A fake of the Slack Web API as slack-morphism 2.31.1 calls it, served over real HTTP on
//! 127.0.0.1, plus a receiver for `response_url` posts.
//!
//! It follows `/work/shared/reference/slack.md` (§2, §3, §6) and, for `views.open`, Slack's
//! method reference (docs.slack.dev/reference/methods/views.open): a `trigger_id` it issued
//! ([`SlackFake::trigger_id`]) opens one view, once, within 3 seconds (else
//! `exchanged_trigger_id`, `expired_trigger_id`, `invalid_trigger_id`); a modal must have a
//! plain-text `title` of at most 24 characters, typed blocks (at most 100), a `submit` when it
//! has an input, `private_metadata` of at most 3000 characters and a `callback_id` of at most
//! 255 (else `invalid_arguments`); the answer is the view with its `id`, `team_id`, `hash` and
//! empty `state`. [`SlackFake::view_submission`] is the payload Slack then sends when the user
//! submits the view. slack-morphism joins the base URL
//! and the method name (`{api_url}/chat.postMessage`), sends the token as
//! `Authorization: Bearer`, calls `users.lookupByEmail` as GET with `?email=` and the other
//! methods as POST with a JSON body. Answers are `Content-Type: application/json`, carry `error`
//! when they fail (HTTP 200, `ok: false`), and a rate limit is HTTP 429 with `Retry-After`.
//! Where the reference is silent the fake is lenient: every method takes its arguments from the
//! query string, a JSON body or an `application/x-www-form-urlencoded` body (`blocks` and
//! `users` as Slack's form encoding has them: a JSON string and a comma-separated list).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Map, Value, json};

/// A failure the fake returns for the next call of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlackFault {
    /// HTTP 200 with `{"ok": false, "error": <code>}` (slack-morphism's `ApiError`).
    Error(String),
    /// HTTP 429 with `Retry-After: <secs>` (slack-morphism's `RateLimitError`).
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// This HTTP status with `{"ok": false, "error": "fatal_error"}` (slack-morphism's `HttpError`).
    Status(u16),
}

/// One Web API call the fake received.
#[derive(Debug, Clone)]
pub(crate) struct SlackCall {
    /// The Slack method, e.g. `chat.postMessage`.
    pub(crate) method: String,
    /// The HTTP method, e.g. `POST`.
    pub(crate) http_method: String,
    /// Decoded query pairs.
    pub(crate) query: Vec<(String, String)>,
    /// The request's `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// The body: JSON as sent, form fields as a JSON object of strings, `null` when empty.
    pub(crate) body: Value,
    /// The `Authorization` header as sent.
    pub(crate) authorization: Option<String>,
}

impl SlackCall {
    /// Argument `name` from the body, else from the query string.
    pub(crate) fn param(&self, name: &str) -> Option<Value> {
        self.body.get(name).cloned().or_else(|| {
            self.query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| Value::String(value.clone()))
        })
    }
}

/// A message as it stands now, after any `chat.update`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlackMessage {
    /// The channel it is in (`D…` for a DM).
    pub(crate) channel: String,
    /// Its `ts`.
    pub(crate) ts: String,
    /// The current `text`.
    pub(crate) text: Option<String>,
    /// The current `blocks` (a JSON array), if any.
    pub(crate) blocks: Option<Value>,
    /// How many times `chat.update` changed it.
    pub(crate) updates: usize,
}

/// A view `views.open` opened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenedView {
    /// Its id (`V…`).
    pub(crate) id: String,
    /// The trigger it was opened with.
    pub(crate) trigger_id: String,
    /// The view as sent (a JSON object).
    pub(crate) view: Value,
}

/// One POST to a `response_url`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResponsePost {
    /// The URL it was posted to.
    pub(crate) url: String,
    /// The JSON posted (a body that is not JSON is kept as a string).
    pub(crate) body: Value,
}

const BOT_TOKEN: &str = "xoxb-fake-bot-token";
const APP_TOKEN: &str = "xapp-fake-app-token";
const TEAM_ID: &str = "T0FAKE";
const BOT_ID: &str = "B0FAKE";
/// 2026-01-05T09:00:00Z, the second part of the first `ts`.
const TS_EPOCH: u64 = 1_767_603_600;

#[derive(Default)]
struct SlackState {
    users_by_email: BTreeMap<String, String>,
    /// DM channel per user id.
    dms: BTreeMap<String, String>,
    /// Multi-person DMs by sorted member list.
    group_dms: BTreeMap<Vec<String>, String>,
    channels: Vec<String>,
    messages: Vec<SlackMessage>,
    calls: Vec<SlackCall>,
    faults: HashMap<String, VecDeque<SlackFault>>,
    socket_url: Option<String>,
    next_ts: u64,
    response_urls_issued: u64,
    responses: Vec<ResponsePost>,
    /// Trigger ids issued, with when, and whether a view was opened with it.
    triggers: BTreeMap<String, (std::time::Instant, bool)>,
    views: Vec<OpenedView>,
}

impl SlackState {
    fn next_ts(&mut self) -> String {
        self.next_ts += 1;
        let n = self.next_ts;
        format!("{}.{:06}", TS_EPOCH + n / 1_000_000, n % 1_000_000)
    }

    fn is_channel(&self, id: &str) -> bool {
        self.channels.iter().any(|channel| channel == id)
            || self.dms.values().any(|dm| dm == id)
            || self.group_dms.values().any(|dm| dm == id)
    }

    fn user_known(&self, user_id: &str) -> bool {
        self.users_by_email.values().any(|id| id == user_id)
    }

    /// The DM with a user, opening it if needed; the `bool` says whether it was open already.
    fn open_dm(&mut self, user_id: &str) -> (String, bool) {
        if let Some(dm) = self.dms.get(user_id) {
            return (dm.clone(), true);
        }
        let dm = format!("D{}", user_id.strip_prefix('U').unwrap_or(user_id));
        self.dms.insert(user_id.to_owned(), dm.clone());
        (dm, false)
    }
}

struct Shared {
    state: Mutex<SlackState>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SlackState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running fake. Dropping it stops the server.
pub(crate) struct SlackFake {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SlackFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackFake")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SlackFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlackFake {
    /// Binds 127.0.0.1 on a free port and serves in a background task.
    pub(crate) async fn start() -> SlackFake {
        // Tests talk to the fake with reqwest, which needs a crypto provider installed.
        quench_common::http::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Slack fake binds a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let shared = Arc::new(Shared {
            state: Mutex::new(SlackState::default()),
            addr,
        });
        let app = Router::new()
            .route("/api/{method}", any(web_api))
            .route("/response/{n}", post(response_url_post))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("Slack fake stopped: {error}");
            }
        });
        SlackFake { shared, task }
    }

    /// `http://127.0.0.1:PORT/api`, without a trailing slash, for `with_slack_api_url`.
    pub(crate) fn api_url(&self) -> String {
        format!("http://{}/api", self.shared.addr)
    }

    /// The bot token (`xoxb-…`) the fake accepts for the Web API methods.
    pub(crate) fn bot_token(&self) -> String {
        BOT_TOKEN.to_owned()
    }

    /// The app-level token (`xapp-…`) the fake accepts for `apps.connections.open`.
    pub(crate) fn app_token(&self) -> String {
        APP_TOKEN.to_owned()
    }

    /// Adds a workspace member that `users.lookupByEmail` finds.
    pub(crate) fn add_user(&self, email: &str, user_id: &str) {
        self.shared
            .lock()
            .users_by_email
            .insert(email.to_owned(), user_id.to_owned());
    }

    /// Adds a channel (e.g. `C0SECOPS`) the bot may post to.
    pub(crate) fn add_channel(&self, channel_id: &str) {
        self.shared.lock().channels.push(channel_id.to_owned());
    }

    /// The `url` that `apps.connections.open` returns (default: a `ws://` URL on this fake that
    /// nothing serves).
    pub(crate) fn set_socket_mode_url(&self, url: &str) {
        self.shared.lock().socket_url = Some(url.to_owned());
    }

    /// The next call of `method` (e.g. `users.lookupByEmail`) fails with `fault`; faults for
    /// one method are served in the order they were added.
    pub(crate) fn fail_next(&self, method: &str, fault: SlackFault) {
        self.shared
            .lock()
            .faults
            .entry(method.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Every Web API call received, in order (including refused and faulted ones).
    pub(crate) fn calls(&self) -> Vec<SlackCall> {
        self.shared.lock().calls.clone()
    }

    /// The calls of one method.
    pub(crate) fn calls_to(&self, method: &str) -> Vec<SlackCall> {
        self.calls()
            .into_iter()
            .filter(|call| call.method == method)
            .collect()
    }

    /// The messages in a channel as they stand now, oldest first.
    pub(crate) fn messages_in(&self, channel: &str) -> Vec<SlackMessage> {
        self.shared
            .lock()
            .messages
            .iter()
            .filter(|message| message.channel == channel)
            .cloned()
            .collect()
    }

    /// The DM channel opened with a user, if one was.
    pub(crate) fn dm_channel(&self, user_id: &str) -> Option<String> {
        self.shared.lock().dms.get(user_id).cloned()
    }

    /// A fresh `http://127.0.0.1:PORT/response/<n>` that records what is POSTed to it.
    pub(crate) fn response_url(&self) -> String {
        let mut state = self.shared.lock();
        state.response_urls_issued += 1;
        format!(
            "http://{}/response/{}",
            self.shared.addr, state.response_urls_issued
        )
    }

    /// `http://127.0.0.1:PORT/response/`: what every [`SlackFake::response_url`] starts with
    /// (the gateway's `test_response_url_prefix`).
    pub(crate) fn response_url_prefix(&self) -> String {
        format!("http://{}/response/", self.shared.addr)
    }

    /// Everything POSTed to the response URLs, in order.
    pub(crate) fn responses(&self) -> Vec<ResponsePost> {
        self.shared.lock().responses.clone()
    }

    /// A fresh `trigger_id`, as Slack puts in an interaction: good for one `views.open` within
    /// 3 seconds.
    pub(crate) fn trigger_id(&self) -> String {
        let mut state = self.shared.lock();
        let n = state.triggers.len() + 1;
        let trigger = format!("{n}.{TS_EPOCH}.{:012x}", n * 7919);
        state
            .triggers
            .insert(trigger.clone(), (std::time::Instant::now(), false));
        trigger
    }

    /// The views `views.open` opened, in order.
    pub(crate) fn views(&self) -> Vec<OpenedView> {
        self.shared.lock().views.clone()
    }

    /// The `view_submission` payload Slack sends when `user` submits `view` having typed
    /// `text` into its plain-text input (every input of the view gets it).
    pub(crate) fn view_submission(&self, view: &OpenedView, user: &str, text: &str) -> Value {
        let mut values = Map::new();
        for block in view.view["blocks"].as_array().into_iter().flatten() {
            if block["type"] == "input" {
                let action = block["element"]["action_id"].as_str().unwrap_or_default();
                values.insert(
                    block["block_id"].as_str().unwrap_or_default().to_owned(),
                    json!({action: {"type": "plain_text_input", "value": text}}),
                );
            }
        }
        let mut submitted = stateful(&view.id, &view.view);
        submitted["state"] = json!({"values": values});
        json!({
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "acme"},
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM_ID},
            "api_app_id": "A0QUENCH",
            "token": "legacy-verification-token",
            "trigger_id": format!("{}.submit", view.id),
            "view": submitted,
            "response_urls": [],
            "is_enterprise_install": false,
            "enterprise": null,
        })
    }
}

/// A view as Slack returns it: as sent, with its id, team, hash and state.
fn stateful(id: &str, view: &Value) -> Value {
    let mut out = view.clone();
    out["id"] = json!(id);
    out["team_id"] = json!(TEAM_ID);
    out["app_id"] = json!("A0QUENCH");
    out["bot_id"] = json!(BOT_ID);
    out["root_view_id"] = json!(id);
    out["previous_view_id"] = Value::Null;
    out["hash"] = json!(format!("{TS_EPOCH}.{id}"));
    out["state"] = json!({"values": {}});
    for key in ["private_metadata", "callback_id", "external_id"] {
        if out.get(key).is_none_or(Value::is_null) {
            out[key] = json!("");
        }
    }
    out
}

/// Why a modal `views.open` was given is not one Slack would open (`invalid_arguments`).
fn modal_problem(view: &Value) -> Option<&'static str> {
    let chars = |value: &Value| value.as_str().map(|text| text.chars().count());
    if view["type"] != "modal" {
        return Some("only modals are opened here");
    }
    let title = &view["title"];
    if title["type"] != "plain_text"
        || !chars(&title["text"]).is_some_and(|n| (1..=24).contains(&n))
    {
        return Some("title: plain_text of 1 to 24 characters");
    }
    let Some(blocks) = view["blocks"].as_array() else {
        return Some("blocks: an array");
    };
    if blocks.len() > 100 || blocks.iter().any(|block| !block["type"].is_string()) {
        return Some("blocks: at most 100, each typed");
    }
    let has_input = blocks.iter().any(|block| block["type"] == "input");
    for block in blocks.iter().filter(|block| block["type"] == "input") {
        if !chars(&block["label"]["text"]).is_some_and(|n| (1..=2000).contains(&n)) {
            return Some("input label: 1 to 2000 characters");
        }
        if !block["element"]["type"].is_string() {
            return Some("input element: typed");
        }
    }
    if has_input && view["submit"]["type"] != "plain_text" {
        return Some("submit: required with an input");
    }
    if chars(&view["private_metadata"]).is_some_and(|n| n > 3000) {
        return Some("private_metadata: at most 3000 characters");
    }
    if chars(&view["callback_id"]).is_some_and(|n| n > 255) {
        return Some("callback_id: at most 255 characters");
    }
    None
}

// ---- HTTP ----

fn ok(mut fields: Value) -> Response {
    if let Value::Object(object) = &mut fields {
        object.insert("ok".into(), Value::Bool(true));
    }
    (StatusCode::OK, axum::Json(fields)).into_response()
}

fn fail(code: &str) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"ok": false, "error": code})),
    )
        .into_response()
}

fn fault_response(fault: SlackFault) -> Response {
    match fault {
        SlackFault::Error(code) => fail(&code),
        SlackFault::RateLimited { retry_after_secs } => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        SlackFault::Status(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(json!({"ok": false, "error": "fatal_error"})),
        )
            .into_response(),
    }
}

fn parse_pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

/// The body as JSON: a JSON body as is, a form body as an object of strings.
fn parse_body(content_type: Option<&str>, bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let is_form =
        content_type.is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form && let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return value;
    }
    let fields: Map<String, Value> = parse_pairs(bytes)
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    Value::Object(fields)
}

async fn web_api(
    Extract(shared): Extract<Arc<Shared>>,
    Path(method): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    bytes: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let call = SlackCall {
        method: method.clone(),
        http_method: http_method.to_string(),
        query: raw_query
            .as_deref()
            .map(|raw| parse_pairs(raw.as_bytes()))
            .unwrap_or_default(),
        content_type: content_type.clone(),
        body: parse_body(content_type.as_deref(), &bytes),
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
    };
    let mut state = shared.lock();
    state.calls.push(call.clone());
    if let Some(fault) = state.faults.get_mut(&method).and_then(VecDeque::pop_front) {
        return fault_response(fault);
    }
    let string = |name: &str| -> Option<String> {
        match call.param(name)? {
            Value::String(text) if !text.is_empty() => Some(text),
            Value::String(_) | Value::Null => None,
            other => Some(other.to_string()),
        }
    };

    // Auth: the bearer header, or Slack's older `token` argument.
    let token = call
        .authorization
        .as_deref()
        .and_then(|header| header.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| string("token"));
    let Some(token) = token else {
        return fail("not_authed");
    };
    let wants_app_token = method == "apps.connections.open";
    match (token.as_str(), wants_app_token) {
        (BOT_TOKEN, false) | (APP_TOKEN, true) => {}
        (BOT_TOKEN, true) | (APP_TOKEN, false) => return fail("not_allowed_token_type"),
        _ => return fail("invalid_auth"),
    }

    match method.as_str() {
        "users.lookupByEmail" => {
            let Some(email) = string("email") else {
                return fail("invalid_arguments");
            };
            match state.users_by_email.get(&email) {
                Some(user_id) => ok(json!({
                    "user": {
                        "id": user_id,
                        "team_id": TEAM_ID,
                        "name": email.split('@').next().unwrap_or(&email),
                        "profile": {"email": email},
                    }
                })),
                None => fail("users_not_found"),
            }
        }
        "conversations.open" => {
            if let Some(channel) = string("channel") {
                return if state.is_channel(&channel) {
                    ok(json!({"channel": {"id": channel}, "no_op": true, "already_open": true}))
                } else {
                    fail("channel_not_found")
                };
            }
            let users: Vec<String> = match call.param("users") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().unwrap_or_default().to_owned())
                    .collect(),
                Some(Value::String(list)) => list
                    .split(',')
                    .map(|user| user.trim().to_owned())
                    .filter(|user| !user.is_empty())
                    .collect(),
                _ => Vec::new(),
            };
            if users.is_empty() {
                return fail("users_list_not_supplied");
            }
            if users.iter().any(|user| !state.user_known(user)) {
                return fail("user_not_found");
            }
            let (channel, already_open) = if let [user] = users.as_slice() {
                state.open_dm(user)
            } else {
                let mut members = users.clone();
                members.sort();
                let next = state.group_dms.len() + 1;
                let fresh = format!("G0FAKE{next:04}");
                let existing = state.group_dms.get(&members).cloned();
                match existing {
                    Some(channel) => (channel, true),
                    None => {
                        state.group_dms.insert(members, fresh.clone());
                        (fresh, false)
                    }
                }
            };
            if already_open {
                ok(json!({"channel": {"id": channel}, "no_op": true, "already_open": true}))
            } else {
                ok(json!({"channel": {"id": channel}}))
            }
        }
        "chat.postMessage" => {
            let Some(target) = string("channel") else {
                return fail("channel_not_found");
            };
            // Posting to a user id posts in the DM with them (and the answer names the D… channel).
            let channel = if state.is_channel(&target) {
                target
            } else if state.user_known(&target) {
                state.open_dm(&target).0
            } else {
                return fail("channel_not_found");
            };
            let (text, blocks) = match content(&call) {
                Ok(content) => content,
                Err(code) => return fail(code),
            };
            if text.is_none() && blocks.as_ref().is_none_or(is_empty_array) {
                return fail("no_text");
            }
            let ts = state.next_ts();
            state.messages.push(SlackMessage {
                channel: channel.clone(),
                ts: ts.clone(),
                text: text.clone(),
                blocks: blocks.clone(),
                updates: 0,
            });
            let mut message = json!({"type": "message", "ts": ts, "bot_id": BOT_ID});
            if let Some(text) = text {
                message["text"] = json!(text);
            }
            if let Some(blocks) = blocks {
                message["blocks"] = blocks;
            }
            ok(json!({"channel": channel, "ts": ts, "message": message}))
        }
        "chat.update" => {
            let Some(channel) = string("channel").filter(|channel| state.is_channel(channel))
            else {
                return fail("channel_not_found");
            };
            let Some(ts) = string("ts") else {
                return fail("message_not_found");
            };
            let (text, blocks) = match content(&call) {
                Ok(content) => content,
                Err(code) => return fail(code),
            };
            if text.is_none() && blocks.is_none() {
                return fail("no_text");
            }
            let Some(message) = state
                .messages
                .iter_mut()
                .find(|message| message.channel == channel && message.ts == ts)
            else {
                return fail("message_not_found");
            };
            // As Slack documents: a field left out keeps its value; `blocks: []` removes blocks.
            if let Some(text) = text {
                message.text = Some(text);
            }
            if let Some(blocks) = blocks {
                message.blocks = (!is_empty_array(&blocks)).then_some(blocks);
            }
            message.updates += 1;
            let mut updated = json!({});
            if let Some(text) = &message.text {
                updated["text"] = json!(text);
            }
            if let Some(blocks) = &message.blocks {
                updated["blocks"] = blocks.clone();
            }
            ok(json!({
                "channel": channel,
                "ts": ts,
                "text": message.text,
                "message": updated,
            }))
        }
        "views.open" => {
            let view = match call.param("view") {
                Some(Value::String(encoded)) => serde_json::from_str::<Value>(&encoded).ok(),
                Some(view @ Value::Object(_)) => Some(view),
                _ => None,
            };
            let Some(view) = view.filter(|view| modal_problem(view).is_none()) else {
                return fail("invalid_arguments");
            };
            let Some(trigger) = string("trigger_id") else {
                return fail("invalid_arguments");
            };
            let Some((issued, used)) = state.triggers.get_mut(&trigger) else {
                return fail("invalid_trigger_id");
            };
            if *used {
                return fail("exchanged_trigger_id");
            }
            if issued.elapsed() > std::time::Duration::from_secs(3) {
                return fail("expired_trigger_id");
            }
            *used = true;
            let id = format!("V0FAKE{:04}", state.views.len() + 1);
            state.views.push(OpenedView {
                id: id.clone(),
                trigger_id: trigger,
                view: view.clone(),
            });
            ok(json!({"view": stateful(&id, &view)}))
        }
        "apps.connections.open" => {
            let url = state
                .socket_url
                .clone()
                .unwrap_or_else(|| format!("ws://{}/link/?ticket=fake-ticket", shared.addr));
            ok(json!({"url": url}))
        }
        _ => fail("unknown_method"),
    }
}

fn is_empty_array(value: &Value) -> bool {
    value.as_array().is_some_and(Vec::is_empty)
}

/// `text` and `blocks` of a post or update; `blocks` may come as a JSON string (form encoding).
fn content(call: &SlackCall) -> Result<(Option<String>, Option<Value>), &'static str> {
    let text = match call.param("text") {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    };
    let blocks = match call.param("blocks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(Value::Array(items)),
        Some(Value::String(encoded)) => match serde_json::from_str::<Value>(&encoded) {
            Ok(Value::Array(items)) => Some(Value::Array(items)),
            _ => return Err("invalid_blocks"),
        },
        Some(_) => return Err("invalid_blocks"),
    };
    if let Some(Value::Array(items)) = &blocks
        && items.iter().any(|block| !block["type"].is_string())
    {
        return Err("invalid_blocks");
    }
    Ok((text, blocks))
}

async fn response_url_post(
    Extract(shared): Extract<Arc<Shared>>,
    Path(n): Path<u64>,
    bytes: Bytes,
) -> Response {
    let mut state = shared.lock();
    if n == 0 || n > state.response_urls_issued {
        return (StatusCode::NOT_FOUND, "no such response_url").into_response();
    }
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    state.responses.push(ResponsePost {
        url: format!("http://{}/response/{n}", shared.addr),
        body,
    });
    ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, `Retry-After`, `Content-Type` and JSON body of an answer.
    struct Answer {
        status: u16,
        retry_after: Option<String>,
        content_type: Option<String>,
        body: Value,
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the fake answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("ascii header").to_owned())
        };
        let status = response.status().as_u16();
        let retry_after = header("retry-after");
        let content_type = header("content-type");
        let body = response.json().await.expect("a JSON body");
        Answer {
            status,
            retry_after,
            content_type,
            body,
        }
    }

    /// A POST with a JSON body and the bot token, the way slack-morphism sends it.
    async fn post_json(fake: &SlackFake, method: &str, body: Value) -> Answer {
        answer(
            reqwest::Client::new()
                .post(format!("{}/{method}", fake.api_url()))
                .bearer_auth(fake.bot_token())
                .json(&body),
        )
        .await
    }

    async fn lookup(fake: &SlackFake, email: &str) -> Answer {
        answer(
            reqwest::Client::new()
                .get(format!(
                    "{}/users.lookupByEmail?email={email}",
                    fake.api_url()
                ))
                .bearer_auth(fake.bot_token()),
        )
        .await
    }

    fn blocks(label: &str) -> Value {
        json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": label}},
            {"type": "actions", "block_id": "req-42", "elements": [
                {"type": "button", "action_id": "approve", "text": {"type": "plain_text", "text": "Approve"},
                 "value": "req-42", "style": "primary"}
            ]}
        ])
    }

    #[tokio::test]
    async fn the_approval_flow_of_slack_morphism_round_trips() {
        let fake = SlackFake::start().await;
        assert!(fake.api_url().starts_with("http://127.0.0.1:"));
        assert!(fake.api_url().ends_with("/api"));
        assert!(fake.bot_token().starts_with("xoxb-"));
        fake.add_user("alice@example.com", "U0ALICE");

        let found = lookup(&fake, "alice@example.com").await;
        assert_eq!(found.status, 200);
        assert_eq!(found.content_type.as_deref(), Some("application/json"));
        assert_eq!(found.body["ok"], true);
        assert_eq!(found.body["user"]["id"], "U0ALICE");

        let opened = post_json(&fake, "conversations.open", json!({"users": ["U0ALICE"]})).await;
        assert_eq!(opened.body["ok"], true);
        let dm = opened.body["channel"]["id"]
            .as_str()
            .expect("channel id")
            .to_owned();
        assert!(dm.starts_with('D'));
        assert_eq!(fake.dm_channel("U0ALICE").as_deref(), Some(dm.as_str()));
        let again = post_json(&fake, "conversations.open", json!({"users": ["U0ALICE"]})).await;
        assert_eq!(again.body["channel"]["id"], dm.as_str());
        assert_eq!(again.body["already_open"], true);

        let posted = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": dm, "text": "Approval needed", "blocks": blocks("Revoke key_1?")}),
        )
        .await;
        assert_eq!(posted.body["ok"], true, "{}", posted.body);
        assert_eq!(posted.body["channel"], dm.as_str());
        let ts = posted.body["ts"].as_str().expect("ts").to_owned();
        assert_eq!(posted.body["message"]["ts"], ts.as_str());
        assert_eq!(posted.body["message"]["blocks"], blocks("Revoke key_1?"));

        let second = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": dm, "text": "again"}),
        )
        .await;
        let second_ts = second.body["ts"].as_str().expect("ts").to_owned();
        let as_number = |ts: &str| ts.parse::<f64>().expect("numeric ts");
        assert!(
            as_number(&second_ts) > as_number(&ts),
            "{second_ts} after {ts}"
        );

        let updated = post_json(
            &fake,
            "chat.update",
            json!({"channel": dm, "ts": ts, "text": "Approved by <@U0ALICE>", "blocks": []}),
        )
        .await;
        assert_eq!(updated.body["ok"], true, "{}", updated.body);
        assert_eq!(updated.body["ts"], ts.as_str());
        assert!(updated.body["message"].is_object());

        let messages = fake.messages_in(&dm);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].text.as_deref(), Some("Approved by <@U0ALICE>"));
        assert_eq!(
            messages[0].blocks, None,
            "an empty blocks array removes the blocks"
        );
        assert_eq!(messages[0].updates, 1);
        assert_eq!(messages[1].text.as_deref(), Some("again"));

        let posts = fake.calls_to("chat.postMessage");
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].http_method, "POST");
        assert_eq!(
            posts[0].authorization.as_deref(),
            Some("Bearer xoxb-fake-bot-token")
        );
        assert_eq!(posts[0].param("text"), Some(json!("Approval needed")));
        let lookups = fake.calls_to("users.lookupByEmail");
        assert_eq!(lookups[0].http_method, "GET");
        assert_eq!(lookups[0].param("email"), Some(json!("alice@example.com")));
        assert_eq!(fake.calls().len(), 6);
    }

    #[tokio::test]
    async fn slack_errors_come_back_as_slack_does() {
        let fake = SlackFake::start().await;
        fake.add_user("alice@example.com", "U0ALICE");

        let missing = answer(reqwest::Client::new().get(format!(
            "{}/users.lookupByEmail?email=alice@example.com",
            fake.api_url()
        )))
        .await;
        assert_eq!(missing.status, 200);
        assert_eq!(missing.body, json!({"ok": false, "error": "not_authed"}));
        let wrong = answer(
            reqwest::Client::new()
                .get(format!(
                    "{}/users.lookupByEmail?email=alice@example.com",
                    fake.api_url()
                ))
                .bearer_auth("xoxb-wrong"),
        )
        .await;
        assert_eq!(wrong.body, json!({"ok": false, "error": "invalid_auth"}));

        assert_eq!(
            lookup(&fake, "bob@example.com").await.body["error"],
            "users_not_found"
        );
        let nobody = post_json(&fake, "conversations.open", json!({"users": ["U0NOBODY"]})).await;
        assert_eq!(nobody.body["error"], "user_not_found");
        let nowhere = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": "D0NOWHERE", "text": "x"}),
        )
        .await;
        assert_eq!(nowhere.body["error"], "channel_not_found");
        let dm = post_json(&fake, "conversations.open", json!({"users": ["U0ALICE"]}))
            .await
            .body["channel"]["id"]
            .clone();
        let empty = post_json(&fake, "chat.postMessage", json!({"channel": dm})).await;
        assert_eq!(empty.body["error"], "no_text");
        let bad = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": dm, "blocks": [{"text": "no type"}]}),
        )
        .await;
        assert_eq!(bad.body["error"], "invalid_blocks");
        let stale = post_json(
            &fake,
            "chat.update",
            json!({"channel": dm, "ts": "1.000001", "text": "x"}),
        )
        .await;
        assert_eq!(stale.body["error"], "message_not_found");
        // chat.update needs the D… channel, not the user id.
        let by_user = post_json(
            &fake,
            "chat.update",
            json!({"channel": "U0ALICE", "ts": "1.000001", "text": "x"}),
        )
        .await;
        assert_eq!(by_user.body["error"], "channel_not_found");
        let unknown = post_json(&fake, "chat.delete", json!({})).await;
        assert_eq!(unknown.body["error"], "unknown_method");
    }

    #[tokio::test]
    async fn faults_are_served_per_method_in_order() {
        let fake = SlackFake::start().await;
        fake.add_user("alice@example.com", "U0ALICE");
        fake.fail_next(
            "users.lookupByEmail",
            SlackFault::RateLimited {
                retry_after_secs: 7,
            },
        );
        fake.fail_next(
            "users.lookupByEmail",
            SlackFault::Error("users_not_found".to_owned()),
        );
        fake.fail_next("chat.postMessage", SlackFault::Status(503));

        let limited = lookup(&fake, "alice@example.com").await;
        assert_eq!(limited.status, 429);
        assert_eq!(limited.retry_after.as_deref(), Some("7"));
        let not_found = lookup(&fake, "alice@example.com").await;
        assert_eq!(not_found.status, 200);
        assert_eq!(
            not_found.body,
            json!({"ok": false, "error": "users_not_found"})
        );
        assert_eq!(lookup(&fake, "alice@example.com").await.body["ok"], true);

        let opened = post_json(&fake, "conversations.open", json!({"users": ["U0ALICE"]})).await;
        assert_eq!(opened.body["ok"], true, "other methods are untouched");
        let dm = opened.body["channel"]["id"].clone();
        let down = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": dm, "text": "x"}),
        )
        .await;
        assert_eq!(down.status, 503);
        assert!(fake.messages_in(dm.as_str().expect("id")).is_empty());
        assert_eq!(fake.calls_to("users.lookupByEmail").len(), 3);
    }

    #[tokio::test]
    async fn form_bodies_and_user_ids_work_too() {
        let fake = SlackFake::start().await;
        fake.add_user("alice@example.com", "U0ALICE");
        fake.add_user("bob@example.com", "U0BOB");
        fake.add_channel("C0SECOPS");
        let form = |method: &str, body: String| {
            reqwest::Client::new()
                .post(format!("{}/{method}", fake.api_url()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        };
        let encoded_blocks: String =
            form_urlencoded::byte_serialize(blocks("hi").to_string().as_bytes()).collect();
        let posted = answer(form(
            "chat.postMessage",
            format!(
                "token={}&channel=C0SECOPS&text=hello+there&blocks={encoded_blocks}",
                fake.bot_token()
            ),
        ))
        .await;
        assert_eq!(posted.body["ok"], true, "{}", posted.body);
        let messages = fake.messages_in("C0SECOPS");
        assert_eq!(messages[0].text.as_deref(), Some("hello there"));
        assert_eq!(messages[0].blocks, Some(blocks("hi")));

        let group = answer(form(
            "conversations.open",
            format!("token={}&users=U0ALICE,U0BOB", fake.bot_token()),
        ))
        .await;
        assert!(
            group.body["channel"]["id"]
                .as_str()
                .expect("id")
                .starts_with('G')
        );

        // Posting to a user id lands in the DM with them.
        let to_user = post_json(
            &fake,
            "chat.postMessage",
            json!({"channel": "U0BOB", "text": "psst"}),
        )
        .await;
        let dm = fake.dm_channel("U0BOB").expect("opened by the post");
        assert_eq!(to_user.body["channel"], dm.as_str());
        assert_eq!(fake.messages_in(&dm)[0].text.as_deref(), Some("psst"));
    }

    #[tokio::test]
    async fn socket_mode_open_needs_the_app_token() {
        let fake = SlackFake::start().await;
        let open = |token: String| {
            answer(
                reqwest::Client::new()
                    .post(format!("{}/apps.connections.open", fake.api_url()))
                    .bearer_auth(token),
            )
        };
        assert!(
            open(fake.app_token()).await.body["url"]
                .as_str()
                .expect("url")
                .starts_with("ws://")
        );
        fake.set_socket_mode_url("ws://127.0.0.1:1/socket");
        assert_eq!(
            open(fake.app_token()).await.body,
            json!({"ok": true, "url": "ws://127.0.0.1:1/socket"})
        );
        assert_eq!(
            open(fake.bot_token()).await.body["error"],
            "not_allowed_token_type"
        );
        let with_app_token = answer(
            reqwest::Client::new()
                .post(format!("{}/chat.postMessage", fake.api_url()))
                .bearer_auth(fake.app_token())
                .json(&json!({"channel": "C1", "text": "x"})),
        )
        .await;
        assert_eq!(with_app_token.body["error"], "not_allowed_token_type");
    }

    #[tokio::test]
    async fn views_open_exchanges_a_trigger_once_for_a_valid_modal() {
        let fake = SlackFake::start().await;
        let modal = json!({
            "type": "modal", "title": {"type": "plain_text", "text": "Answer keep"},
            "submit": {"type": "plain_text", "text": "Send"},
            "callback_id": "quench:comment", "private_metadata": "{}",
            "blocks": [{"type": "input", "block_id": "b", "label": {"type": "plain_text", "text": "Why?"},
                        "element": {"type": "plain_text_input", "action_id": "a"}}]
        });
        let trigger = fake.trigger_id();
        let opened = post_json(
            &fake,
            "views.open",
            json!({"trigger_id": trigger, "view": modal}),
        )
        .await;
        assert_eq!(opened.body["ok"], true, "{}", opened.body);
        assert_eq!(opened.body["view"]["id"], "V0FAKE0001");
        assert_eq!(opened.body["view"]["callback_id"], "quench:comment");
        assert!(opened.body["view"]["hash"].is_string());
        let again = post_json(
            &fake,
            "views.open",
            json!({"trigger_id": trigger, "view": modal}),
        )
        .await;
        assert_eq!(again.body["error"], "exchanged_trigger_id");
        let unknown = post_json(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.abc", "view": modal}),
        )
        .await;
        assert_eq!(unknown.body["error"], "invalid_trigger_id");
        let mut untitled = modal.clone();
        untitled["title"]["text"] = json!("a title longer than twenty-four");
        let refused = post_json(
            &fake,
            "views.open",
            json!({"trigger_id": fake.trigger_id(), "view": untitled}),
        )
        .await;
        assert_eq!(refused.body["error"], "invalid_arguments");
        let views = fake.views();
        assert_eq!(views.len(), 1);
        let submitted = fake.view_submission(&views[0], "U0BOB", "for billing");
        assert_eq!(submitted["type"], "view_submission");
        assert_eq!(submitted["user"]["id"], "U0BOB");
        assert_eq!(submitted["view"]["id"], "V0FAKE0001");
        assert_eq!(
            submitted["view"]["state"]["values"]["b"]["a"]["value"],
            "for billing"
        );
    }

    #[tokio::test]
    async fn response_urls_record_what_is_posted() {
        let fake = SlackFake::start().await;
        let first = fake.response_url();
        let second = fake.response_url();
        assert_ne!(first, second);
        assert!(first.starts_with("http://127.0.0.1:") && first.contains("/response/"));
        let client = reqwest::Client::new();
        let body = json!({"replace_original": true, "text": "Approved"});
        let posted = answer(client.post(&second).json(&body)).await;
        assert_eq!(posted.status, 200);
        assert_eq!(
            fake.responses(),
            [ResponsePost {
                url: second.clone(),
                body
            }]
        );
        let unissued = second.replace("/response/2", "/response/3");
        let status = client
            .post(unissued)
            .json(&json!({}))
            .send()
            .await
            .expect("answers")
            .status();
        assert_eq!(status, 404);
        assert_eq!(fake.responses().len(), 1);
    }
}
