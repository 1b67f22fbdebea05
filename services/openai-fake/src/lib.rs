//! A fake of the OpenAI Admin API, served over real HTTP on 127.0.0.1.
//!
//! It follows `/work/shared/reference/openai-admin-api.md` and the OpenAPI spec next to it
//! (paths, query parameters, object shapes and `ErrorResponse` bodies), never client code, so
//! the connector tests that use it check the connectors against the references. Tests seed and
//! inspect its state through [`OpenAiFake`], and inject faults and broken pagination the same way.
//!
//! Behaviour that the references leave open, and the choice made here:
//! - 401 (no or wrong `Authorization: Bearer`) and 404 (unknown project, key, …) use the
//!   `ErrorResponse` shape; the spec declares neither status for the admin paths.
//! - Deleting a project API key owned by a service account is refused with 400 (`ErrorResponse`,
//!   `type: invalid_request_error`, `param: api_key_id`), as the spec's delete summary says;
//!   deleting the service account removes it and its keys.
//! - Without `owner_project_access`, key lists show only keys whose owner still has access to
//!   the project (the spec warns that the default "may exclude some enabled keys").
//! - Audit logs are listed newest first (as in the spec's example); `after` pages to older ones.
//! - Usage buckets start at `start_time` and are `bucket_width` wide; `page` tokens are opaque.
//!   Every usage endpoint that groups by `api_key_id` is served (completions, embeddings,
//!   moderations, images, audio speeches and transcriptions, file search and web search calls),
//!   each with its own result object, counters and `group_by` fields as the spec gives them, and
//!   the two the spec reports per project only (`code_interpreter_sessions`, `vector_stores`).
//! - Every cursor list is kept in order in a `table::Table`: a request costs the page it
//!   returns (plus the objects a filter skips), never the whole list, so a walk over 100,000
//!   keys stays linear. A cursor may name an object deleted since.
//! - `GET /organization/users` lists members of the organization with their org role (`owner`
//!   or `reader`, the `User` schema); `emails` filters (sent as `emails=` or `emails[]=`).
//!   `DELETE /organization/users/{id}` removes the user from the organization and every project;
//!   their project keys stay, `owner_project_access: inactive`, still showing the owner.
//! - `GET /organization/data_retention` answers the spec's example (`modified_abuse_monitoring`)
//!   unless seeded otherwise: its enum has no value for an organization without special
//!   retention. A project starts at `organization_default`.
//! - Certificates are seeded only (no upload); lists are newest first unless `order=asc`, and
//!   never show the PEM `content`.
//! - Changes to a project's model permissions, hosted tools, spend limit or data retention are
//!   logged as `project.updated` with only the project's `id`: the spec has no event type for
//!   them, and `project.updated.changes_requested` documents `title` alone.
//! - [`OpenAiFake::set_rate_limit`] answers every Nth request 429 with `Retry-After`, for walks
//!   long enough to meet OpenAI's rate limits; [`OpenAiFake::fail_next`] queues single faults.
//! - Changes made through the API append audit events (actor: the admin key; `project`: the
//!   default project if one is set, as the spec says for Admin API key actions). Tests can turn
//!   this off with [`OpenAiFake::set_audit_mutations`].
//! - Project API keys carry `expires_at` (`null` when seeded without one), and a service-account
//!   key created with `expires_in_seconds` expires that long after its creation, as
//!   `openai-admin-api-updates.md` describes. Each key keeps its scopes (empty: all
//!   permissions); the API never returns them, tests read them with [`OpenAiFake::key_scopes`].
//! - `POST …/api_keys/{id}` (the update of `openai-admin-api-updates.md` §1) takes `scopes` and
//!   `expires_in_seconds`, at least one, neither `null`, nothing else, and saves both together;
//!   `scopes: []` removes every restriction, as the API does. An expired key is refused with 400
//!   `invalid_request_error`, `param: api_key_id`, `code: null` and a message saying it expired:
//!   the reference says only that an expired key "cannot be updated", the spec's `ErrorResponse`
//!   is the error shape, and 400 is the status the spec gives for refusals on this path (the key
//!   delete's "various conditions").
//! - A project starts with a deny list of no models (every model allowed; `GET …/model_permissions`
//!   shows it, and `DELETE` goes back to it), every hosted tool enabled (the spec's example), and
//!   no hard spend limit (`GET …/spend_limit` is then 404; `DELETE` answers 404 too).
//!
//! Two users: quench's integration tests, and `quench up --demo`, which serves [`demo::seed`]'s
//! simulated organization from inside the quench process. The estate inventory's tests and
//! benchmark seed a larger, realistic organization with [`OpenAiFake::seed_org`] (see `org`).

#![warn(missing_docs)]

mod api;
pub mod demo;
mod org;
mod state;
mod table;

pub use org::{KeyOwner, KeyRef, OrgSpec, OrgSummary, Setting};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use state::{AuditEntry, Membership, OrgUser, Owner, Project, RateLimit, State};

/// A failure the fake returns instead of (or, for `Slow`, before) the normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: <secs>` and an OpenAI error body.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// 500 with an OpenAI `server_error` body.
    ServerError,
    /// Waits this long, then answers normally.
    Slow(Duration),
    /// Does what the request asks at once, then waits this long before answering: the change
    /// is made at OpenAI while the caller still waits for the answer (or dies waiting).
    SlowAnswer(Duration),
    /// This status with this message in an OpenAI error body.
    Status(u16, String),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path including `/v1`.
    pub path: String,
    /// Decoded query pairs in the order sent (`event_types[]` appears once per value).
    pub query: Vec<(String, String)>,
    /// The JSON body, if any (a body that is not JSON is kept as a string).
    pub body: Option<Value>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The `OpenAI-Organization` header as sent.
    pub organization: Option<String>,
    /// When the fake began handling it (its head had arrived; before the body is read), to
    /// measure how long a caller took to send it (see [`OpenAiFake::received`]).
    pub received_at: Instant,
}

impl Call {
    /// The first value of query parameter `name`.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of query parameter `name` (give the exact name, e.g. `event_types[]`).
    pub fn query_values(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// A user's role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `owner`
    Owner,
    /// `member`
    Member,
}

impl Role {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A project API key to seed. The secret is made up from the id unless given.
#[derive(Debug, Clone)]
pub struct KeySeed {
    id: String,
    name: String,
    value: Option<String>,
    redacted_value: Option<String>,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    scopes: Vec<String>,
}

impl KeySeed {
    /// A key with this id, named "Secret key", created at 2026-01-01, never used.
    pub fn new(id: &str) -> KeySeed {
        KeySeed {
            id: id.to_owned(),
            name: "Secret key".to_owned(),
            value: None,
            redacted_value: None,
            created_at: DEFAULT_CREATED_AT,
            last_used_at: None,
            expires_at: None,
            scopes: Vec::new(),
        }
    }

    /// Sets the key's name.
    pub fn name(mut self, name: &str) -> KeySeed {
        self.name = name.to_owned();
        self
    }

    /// Sets the full secret; `redacted_value` is derived from it unless set too.
    pub fn value(mut self, value: &str) -> KeySeed {
        self.value = Some(value.to_owned());
        self
    }

    /// Sets `redacted_value` as the API shows it.
    pub fn redacted_value(mut self, redacted: &str) -> KeySeed {
        self.redacted_value = Some(redacted.to_owned());
        self
    }

    /// Sets `created_at` (Unix seconds).
    pub fn created_at(mut self, at: i64) -> KeySeed {
        self.created_at = at;
        self
    }

    /// Sets `last_used_at` (Unix seconds).
    pub fn last_used_at(mut self, at: i64) -> KeySeed {
        self.last_used_at = Some(at);
        self
    }

    /// Sets `expires_at` (Unix seconds); without it the key never expires.
    pub fn expires_at(mut self, at: i64) -> KeySeed {
        self.expires_at = Some(at);
        self
    }

    /// Restricts the key to these scopes (e.g. `api.model.request`); without them it has all
    /// permissions.
    pub fn scopes(mut self, scopes: &[&str]) -> KeySeed {
        self.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
        self
    }
}

/// A project rate limit to seed: one per model, id `rl-<model>`.
#[derive(Debug, Clone)]
pub struct RateLimitSeed {
    model: String,
    limits: Vec<(&'static str, i64)>,
}

impl RateLimitSeed {
    /// The two limits every model has.
    pub fn new(
        model: &str,
        max_requests_per_1_minute: i64,
        max_tokens_per_1_minute: i64,
    ) -> RateLimitSeed {
        RateLimitSeed {
            model: model.to_owned(),
            limits: vec![
                ("max_requests_per_1_minute", max_requests_per_1_minute),
                ("max_tokens_per_1_minute", max_tokens_per_1_minute),
            ],
        }
    }

    /// Adds one of the optional limits (`max_images_per_1_minute`, `max_requests_per_1_day`, …).
    pub fn with(mut self, field: &'static str, value: i64) -> RateLimitSeed {
        assert!(
            state::RATE_LIMIT_FIELDS.contains(&field),
            "{field} is not a rate limit field in the spec"
        );
        self.limits.retain(|(name, _)| *name != field);
        self.limits.push((field, value));
        self
    }
}

/// An audit log event to seed (an `AuditLog` object of the spec).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    event_type: String,
    effective_at: i64,
    project_id: Option<String>,
    actor: Value,
    details: Value,
}

impl AuditEvent {
    /// An event of `event_type` at `effective_at` whose type-keyed object is `details`
    /// (e.g. `{"id": "key_1", "changes_requested": {"scopes": [...]}}`). The actor is a
    /// dashboard session of `user-fake` unless set.
    pub fn new(event_type: &str, effective_at: i64, details: Value) -> AuditEvent {
        AuditEvent {
            event_type: event_type.to_owned(),
            effective_at,
            project_id: None,
            actor: json!({
                "type": "session",
                "session": {
                    "user": {"id": "user-fake", "email": "owner@example.com"},
                    "ip_address": "127.0.0.1"
                }
            }),
            details,
        }
    }

    /// Scopes the event to a seeded project (`project: {id, name}`).
    pub fn project(mut self, project_id: &str) -> AuditEvent {
        self.project_id = Some(project_id.to_owned());
        self
    }

    /// Sets the `actor` object.
    pub fn actor(mut self, actor: Value) -> AuditEvent {
        self.actor = actor;
        self
    }
}

/// Usage to seed: what one key did at one moment on one of the spec's `/organization/usage/*`
/// endpoints (completions unless made with [`UsageSeed::of`]). The fake sums these into buckets.
#[derive(Debug, Clone)]
pub struct UsageSeed {
    at: i64,
    /// The endpoint under `/organization/usage/`, one of [`USAGE_ENDPOINTS`].
    endpoint: &'static str,
    project_id: String,
    api_key_id: String,
    user_id: Option<String>,
    model: String,
    batch: bool,
    service_tier: String,
    /// `size`, `source` (images), `vector_store_id` (file search), `context_level` (web search).
    dimensions: Vec<(&'static str, String)>,
    /// The result's counters (`num_model_requests`, `input_tokens`, `images`, …) by name.
    amounts: Vec<(&'static str, i64)>,
}

/// The usage endpoints the fake serves (`/organization/usage/<name>`), as the spec has them.
pub const USAGE_ENDPOINTS: [&str; 10] = [
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "file_search_calls",
    "web_search_calls",
    "code_interpreter_sessions",
    "vector_stores",
];

/// The usage endpoints the spec reports per project only: no key, user or model.
const PROJECT_USAGE_ENDPOINTS: [&str; 2] = ["code_interpreter_sessions", "vector_stores"];

impl UsageSeed {
    /// One completions request by `api_key_id` in `project_id` at `at` (Unix seconds), model
    /// `gpt-4o-mini`.
    pub fn new(at: i64, project_id: &str, api_key_id: &str) -> UsageSeed {
        UsageSeed::of("completions", at, project_id, api_key_id)
    }

    /// One request on usage endpoint `endpoint` (one of [`USAGE_ENDPOINTS`] that groups by key).
    ///
    /// # Panics
    ///
    /// When `endpoint` is not one of them.
    pub fn of(endpoint: &str, at: i64, project_id: &str, api_key_id: &str) -> UsageSeed {
        assert!(
            !PROJECT_USAGE_ENDPOINTS.contains(&endpoint),
            "{endpoint} usage is per project: seed it with UsageSeed::project"
        );
        UsageSeed::any(endpoint, at, project_id, api_key_id)
    }

    /// Project-level usage (`code_interpreter_sessions`: set `num_sessions`; `vector_stores`:
    /// set `usage_bytes`, with [`UsageSeed::amount`]).
    ///
    /// # Panics
    ///
    /// When `endpoint` is not one of those two.
    pub fn project(endpoint: &str, at: i64, project_id: &str) -> UsageSeed {
        assert!(
            PROJECT_USAGE_ENDPOINTS.contains(&endpoint),
            "{endpoint} usage is per key: seed it with UsageSeed::of"
        );
        UsageSeed::any(endpoint, at, project_id, "")
    }

    fn any(endpoint: &str, at: i64, project_id: &str, api_key_id: &str) -> UsageSeed {
        let endpoint = USAGE_ENDPOINTS
            .into_iter()
            .find(|known| *known == endpoint)
            .unwrap_or_else(|| panic!("{endpoint} is not a usage endpoint of the spec"));
        UsageSeed {
            at,
            endpoint,
            project_id: project_id.to_owned(),
            api_key_id: api_key_id.to_owned(),
            user_id: None,
            model: "gpt-4o-mini".to_owned(),
            batch: false,
            service_tier: "default".to_owned(),
            dimensions: Vec::new(),
            amounts: Vec::new(),
        }
        .requests(1)
    }

    /// Sets the request count: `num_model_requests`, and `num_requests` where the endpoint's
    /// result has it (file search and web search calls).
    pub fn requests(self, count: i64) -> UsageSeed {
        let family = state::usage_family(self.endpoint);
        let mut seed = self;
        for field in ["num_model_requests", "num_requests"] {
            if family.amounts.contains(&field) {
                seed = seed.amount(field, count);
            }
        }
        seed
    }

    /// Sets one of the result's counters (e.g. `characters` of audio speeches).
    ///
    /// # Panics
    ///
    /// When the endpoint's result has no such field in the spec.
    pub fn amount(mut self, field: &'static str, value: i64) -> UsageSeed {
        assert!(
            state::usage_family(self.endpoint).amounts.contains(&field),
            "{} usage has no {field} in the spec",
            self.endpoint
        );
        self.amounts.retain(|(name, _)| *name != field);
        self.amounts.push((field, value));
        self
    }

    /// Sets input and output tokens (completions).
    pub fn tokens(self, input: i64, output: i64) -> UsageSeed {
        self.amount("input_tokens", input)
            .amount("output_tokens", output)
    }

    /// Sets the model.
    pub fn model(mut self, model: &str) -> UsageSeed {
        self.model = model.to_owned();
        self
    }

    /// Sets the user whose key it was.
    pub fn user(mut self, user_id: &str) -> UsageSeed {
        self.user_id = Some(user_id.to_owned());
        self
    }

    /// Marks it as batch usage (completions).
    pub fn batch(mut self, batch: bool) -> UsageSeed {
        self.batch = batch;
        self
    }

    /// Sets an endpoint-specific grouping value: `size` or `source` (images),
    /// `vector_store_id` (file search calls), `context_level` (web search calls).
    ///
    /// # Panics
    ///
    /// When the endpoint cannot be grouped by `field` in the spec.
    pub fn dimension(mut self, field: &'static str, value: &str) -> UsageSeed {
        assert!(
            state::usage_family(self.endpoint).group_by.contains(&field),
            "{} usage cannot be grouped by {field} in the spec",
            self.endpoint
        );
        self.dimensions.retain(|(name, _)| *name != field);
        self.dimensions.push((field, value.to_owned()));
        self
    }
}

/// 2026-01-01T00:00:00Z, the default creation time of seeded objects.
const DEFAULT_CREATED_AT: i64 = 1_767_225_600;

struct Shared {
    state: Mutex<State>,
    /// Woken each time a request is recorded in `state.calls`.
    arrived: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running fake. Dropping it stops the server.
pub struct OpenAiFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OpenAiFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiFake")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for OpenAiFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OpenAiFake {
    /// Binds 127.0.0.1 on a free port and serves in a background task. The fake starts with
    /// one admin key (see [`OpenAiFake::admin_key`]) and nothing else.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound (tests want to stop there); [`OpenAiFake::serve`]
    /// returns the error instead.
    pub async fn start() -> OpenAiFake {
        OpenAiFake::serve(None)
            .await
            .expect("the OpenAI fake binds a loopback port")
    }

    /// Binds 127.0.0.1 on a free port and serves in a background task, with `admin_key` (when
    /// given) as the only secret it accepts instead of the made-up `sk-admin-fake…` one, so a
    /// fake that must not answer a key known in advance (`quench up --demo`) is never reachable
    /// with one. The key is set before the first request can arrive.
    pub async fn serve(admin_key: Option<&str>) -> std::io::Result<OpenAiFake> {
        let mut state = State::new();
        if let Some(secret) = admin_key {
            state.replace_admin_key(secret);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            arrived: tokio::sync::Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = api::router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("OpenAI fake stopped: {error}");
            }
        });
        Ok(OpenAiFake { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL a client is pointed at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The admin key (`sk-admin-fake…`, or the one given to [`OpenAiFake::serve`]) the fake
    /// accepts as `Authorization: Bearer`.
    pub fn admin_key(&self) -> String {
        self.shared.lock().admin_key_value.clone()
    }

    /// The id of that admin key in `GET /organization/admin_api_keys`.
    pub fn admin_key_id(&self) -> String {
        self.shared.lock().admin_key_id.clone()
    }

    // ---- configuration ----

    /// Fixes the fake's clock (Unix seconds): creation, archive and audit times, and the end of
    /// usage queries without `end_time`. By default it is the system clock.
    pub fn set_now(&self, unix_seconds: i64) {
        self.shared.lock().now = Some(unix_seconds);
    }

    /// Overrides the spec's default `limit` of every cursor list (projects, keys, audit logs, …)
    /// for requests that send no `limit`, so tests can force several pages.
    pub fn set_default_page_size(&self, size: usize) {
        self.shared.lock().page_size = Some(size);
    }

    /// Overrides the default number of usage buckets per page (spec: 7, 24 or 60).
    pub fn set_default_usage_buckets(&self, buckets: usize) {
        self.shared.lock().usage_page_size = Some(buckets);
    }

    /// Serves at most `size` objects per page of every list (usage: buckets), whatever `limit`
    /// a request sends. `limit` is only an upper bound in the spec, so clients must follow
    /// `has_more` rather than count items; this lets tests force several pages on a client
    /// that asks for the maximum.
    pub fn set_max_page_size(&self, size: usize) {
        self.shared.lock().max_page_size = Some(size.max(1));
    }

    /// Breaks pagination: every list answers its first page with `has_more: true` and the same
    /// `last_id` (usage: the same `next_page`), whatever cursor is sent.
    pub fn set_always_has_more_same_cursor(&self, on: bool) {
        self.shared.lock().broken_pagination = on;
    }

    /// Whether changes made through the API append audit events (default: yes).
    pub fn set_audit_mutations(&self, on: bool) {
        self.shared.lock().audit_mutations = on;
    }

    /// The next `count` requests fail with `fault` (queued after faults already waiting).
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.shared.lock().queue_fault(None, count, fault);
    }

    /// Like [`OpenAiFake::fail_next`], for requests whose path starts with `path_prefix`
    /// (with or without the leading `/v1`).
    pub fn fail_next_on(&self, path_prefix: &str, count: usize, fault: Fault) {
        self.shared
            .lock()
            .queue_fault(Some(path_prefix.to_owned()), count, fault);
    }

    /// From now on every `every_n_requests`th request (counting every request the fake
    /// receives, the 429s included) is answered 429 with `Retry-After: retry_after_secs`, so a
    /// long walk meets rate limits the way it would at OpenAI; queued faults come first.
    /// `None` switches it off.
    ///
    /// # Panics
    ///
    /// When `every_n_requests` is below 2 (every request refused: nothing could succeed).
    pub fn set_rate_limit(&self, every_n_requests: Option<u64>, retry_after_secs: u64) {
        self.shared.lock().throttle = every_n_requests.map(|every| {
            assert!(
                every >= 2,
                "a rate limit every {every} requests refuses them all"
            );
            state::Throttle {
                every,
                retry_after_secs,
                seen: 0,
            }
        });
    }

    // ---- seeding ----

    /// Adds an active project created at 2026-01-01.
    pub fn seed_project(&self, id: &str, name: &str) {
        self.shared
            .lock()
            .add_project(id, name, DEFAULT_CREATED_AT, None);
    }

    /// Adds a project that is already archived.
    pub fn seed_archived_project(&self, id: &str, name: &str) {
        self.shared
            .lock()
            .add_project(id, name, DEFAULT_CREATED_AT, Some(DEFAULT_CREATED_AT));
    }

    /// Marks a seeded project as the organization's default project: it cannot be modified,
    /// and audit events from Admin API key actions are attributed to it.
    pub fn set_default_project(&self, project_id: &str) {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        state.default_project = Some(project_id.to_owned());
    }

    /// Adds an organization user (org role `reader`, name from the e-mail's local part) as a
    /// member of a project.
    pub fn seed_user(&self, project_id: &str, user_id: &str, email: &str, role: Role) {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        let now = state.now();
        state.add_org_user(user_id, email, "reader", DEFAULT_CREATED_AT);
        state.add_membership(project_id, user_id, role, now);
    }

    /// Adds an organization user (org role `reader`) who is in no project (for `POST …/users`
    /// with `email`).
    pub fn seed_org_user(&self, user_id: &str, email: &str) {
        self.shared
            .lock()
            .add_org_user(user_id, email, "reader", DEFAULT_CREATED_AT);
    }

    /// Adds a user-owned project API key; the owner must have been seeded (`seed_user` or
    /// `seed_org_user`). An owner who is not a project member has `owner_project_access: inactive`.
    pub fn seed_key(&self, project_id: &str, owner_user_id: &str, key: KeySeed) {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        assert!(
            state.any_user(owner_user_id).is_some(),
            "seed user {owner_user_id} before their keys"
        );
        state.add_key(project_id, Owner::User(owner_user_id.to_owned()), key);
    }

    /// Adds a service account (role `member`) and, as creating one through the API does, its
    /// API key.
    pub fn seed_service_account(
        &self,
        project_id: &str,
        service_account_id: &str,
        name: &str,
        key: KeySeed,
    ) {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        let now = state.now();
        state.add_service_account(project_id, service_account_id, name, "member", now);
        state.add_key(
            project_id,
            Owner::ServiceAccount(service_account_id.to_owned()),
            key,
        );
    }

    /// Adds an organization admin API key owned by `user-fake`; returns its secret.
    pub fn seed_admin_key(&self, id: &str, name: &str) -> String {
        self.shared.lock().add_admin_key(id, name)
    }

    /// Adds a rate limit to a project; returns its id (`rl-<model>`).
    pub fn seed_rate_limit(&self, project_id: &str, seed: RateLimitSeed) -> String {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        state.add_rate_limit(project_id, seed)
    }

    /// Sets a project's model policy: `mode` is `allow_list` or `deny_list`. A project starts
    /// with a deny list of nothing (every model allowed).
    pub fn seed_model_permissions(&self, project_id: &str, mode: &str, model_ids: &[&str]) {
        let setting = Setting::models(mode, model_ids);
        setting.apply(&mut self.shared.lock().project_mut(project_id).controls);
    }

    /// Turns a hosted tool (`file_search`, `web_search`, `image_generation`, `mcp`,
    /// `code_interpreter`) on or off for a project; a project starts with every tool on.
    pub fn seed_hosted_tool(&self, project_id: &str, tool: &str, enabled: bool) {
        let setting = Setting::hosted_tool(tool, enabled);
        setting.apply(&mut self.shared.lock().project_mut(project_id).controls);
    }

    /// Sets a project's hard spend limit, in cents per month; a project starts with none.
    pub fn seed_spend_limit(&self, project_id: &str, cents: i64) {
        Setting::SpendLimit(Some(cents))
            .apply(&mut self.shared.lock().project_mut(project_id).controls);
    }

    /// Sets the organization's data retention (`GET /organization/data_retention`), one of the
    /// spec's `OrganizationDataRetention.type` values; by default the spec's example,
    /// `modified_abuse_monitoring`.
    ///
    /// # Panics
    ///
    /// When the spec has no such type.
    pub fn seed_org_data_retention(&self, retention: &str) {
        let retention = state::ORGANIZATION_RETENTION_TYPES
            .into_iter()
            .find(|known| *known == retention)
            .unwrap_or_else(|| panic!("{retention} is not an organization data retention type"));
        self.shared.lock().data_retention = retention;
    }

    /// Appends an audit log event; returns its id.
    pub fn push_audit_event(&self, event: AuditEvent) -> String {
        self.shared.lock().add_audit(event)
    }

    /// Records usage (any endpoint, see [`UsageSeed::of`] and [`UsageSeed::project`]).
    pub fn push_usage(&self, usage: UsageSeed) {
        self.shared.lock().add_usage(usage);
    }

    /// Sets a key's `last_used_at`.
    pub fn set_key_last_used(&self, key_id: &str, at: i64) {
        let mut state = self.shared.lock();
        let key = state
            .key_anywhere_mut(key_id)
            .unwrap_or_else(|| panic!("no key {key_id}"));
        key.last_used_at = Some(at);
    }

    // ---- inspection ----

    /// Every request received, in order (including rejected and faulted ones).
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// How many requests the fake has received (cheaper than `calls().len()` after a long walk).
    pub fn call_count(&self) -> usize {
        self.shared.lock().calls.len()
    }

    /// The requests with this method and exact path (e.g. `DELETE`,
    /// `/v1/organization/projects/proj_1/api_keys/key_1`).
    pub fn calls_to(&self, method: &str, path: &str) -> Vec<Call> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|call| call.method == method && call.path == path)
            .cloned()
            .collect()
    }

    /// Waits until a request with this method and exact path has been received and returns
    /// the first one (at once when it came already); with its [`Call::received_at`] a caller
    /// measures when its request arrived rather than when it noticed. Put a timeout around it.
    pub async fn received(&self, method: &str, path: &str) -> Call {
        loop {
            // Registered before looking, so a request recorded in between still wakes us.
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let found = self
                .shared
                .lock()
                .calls
                .iter()
                .find(|call| call.method == method && call.path == path)
                .cloned();
            if let Some(call) = found {
                return call;
            }
            arrived.await;
        }
    }

    /// Whether a project API key still exists in a project.
    pub fn key_exists(&self, project_id: &str, key_id: &str) -> bool {
        self.shared
            .lock()
            .project(project_id)
            .is_some_and(|project| project.keys.contains(key_id))
    }

    /// The key as `GET …/api_keys/{id}` would return it.
    pub fn key(&self, project_id: &str, key_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        let project = state.project(project_id)?;
        project
            .keys
            .get(key_id)
            .map(|key| state.render_key(project, key))
    }

    /// The scope restrictions of a project API key (empty: all permissions), which the API
    /// itself never returns; `None` when there is no such key.
    pub fn key_scopes(&self, project_id: &str, key_id: &str) -> Option<Vec<String>> {
        self.shared
            .lock()
            .project(project_id)?
            .keys
            .get(key_id)
            .map(|key| key.scopes.clone())
    }

    /// The project's model policy as `GET …/model_permissions` returns it.
    pub fn model_permissions(&self, project_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        state
            .project(project_id)
            .map(|project| project.controls.render_models())
    }

    /// The project's hosted tools as `GET …/hosted_tool_permissions` returns them.
    pub fn hosted_tool_permissions(&self, project_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        state
            .project(project_id)
            .map(|project| project.controls.render_tools())
    }

    /// The project's hard spend limit as `GET …/spend_limit` returns it; `None` when none is set.
    pub fn spend_limit(&self, project_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        state
            .project(project_id)
            .and_then(|project| project.controls.render_spend_limit())
    }

    /// The project's data retention as `GET …/data_retention` returns it.
    pub fn data_retention(&self, project_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        state
            .project(project_id)
            .map(|project| project.controls.render_data_retention())
    }

    /// The full secret of a project API key (seeded or created), to play a leaked key.
    pub fn key_secret(&self, key_id: &str) -> Option<String> {
        self.shared
            .lock()
            .key_anywhere(key_id)
            .map(|(_, key)| key.value.clone())
    }

    /// Whether a service account still exists in a project.
    pub fn service_account_exists(&self, project_id: &str, service_account_id: &str) -> bool {
        self.shared
            .lock()
            .project(project_id)
            .is_some_and(|project| project.service_accounts.contains(service_account_id))
    }

    /// The project as `GET /organization/projects/{id}` would return it.
    pub fn project(&self, project_id: &str) -> Option<Value> {
        self.shared.lock().project(project_id).map(Project::render)
    }

    /// The project user as `GET …/users/{id}` would return it (`None` once removed).
    pub fn project_user(&self, project_id: &str, user_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        state
            .membership(project_id, user_id)
            .filter(|m: &&Membership| m.active)
            .map(|m| state.render_membership(m))
    }

    /// The organization user as `GET /organization/users/{id}` would return it (`None` once
    /// removed from the organization).
    pub fn org_user(&self, user_id: &str) -> Option<Value> {
        self.shared
            .lock()
            .org_users
            .get(user_id)
            .map(OrgUser::render)
    }

    /// The rate limit as the list returns it.
    pub fn rate_limit(&self, project_id: &str, rate_limit_id: &str) -> Option<Value> {
        self.shared
            .lock()
            .project(project_id)?
            .rate_limits
            .get(rate_limit_id)
            .map(RateLimit::render)
    }

    /// Whether an admin API key still exists.
    pub fn admin_key_exists(&self, key_id: &str) -> bool {
        self.shared.lock().admin_keys.contains(key_id)
    }

    /// Every audit event, seeded or appended by the fake, oldest first.
    pub fn audit_events(&self) -> Vec<Value> {
        self.shared
            .lock()
            .audit
            .iter()
            .map(AuditEntry::render)
            .collect()
    }

    /// How many audit events the fake holds.
    pub fn audit_event_count(&self) -> usize {
        self.shared.lock().audit.len()
    }
}

#[cfg(test)]
mod tests;
