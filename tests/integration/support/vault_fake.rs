//! A HashiCorp Vault fake on loopback: the parts of Vault's HTTP API quench uses, as Vault
//! documents them (see `docs/secret-stores.md` for the sources) — `X-Vault-Token` on every
//! request (403 `{"errors":["permission denied"]}` without a valid one), AppRole login
//! (`POST /v1/auth/approle/login` → `auth.client_token`, `lease_duration`), and one KV version 2
//! mount: `GET`/`POST /v1/<mount>/data/<path>` (versions, `options.cas` refused with 400 "check-
//! and-set parameter did not match the current version"), `GET`/`PATCH
//! /v1/<mount>/metadata/<path>` (`custom_metadata`, merge patch with
//! `application/merge-patch+json` only). Errors are `{"errors": [...]}`.
//!
//! Faults: hold the next data write (answered 503 after a delay, not applied), and let another
//! writer win the next check-and-set race. Every request is recorded with its body.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

/// The KV v2 mount the fake serves.
pub(crate) const MOUNT: &str = "secret";

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub(crate) struct VaultCall {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) token: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

#[derive(Debug, Default)]
struct Secret {
    /// Version n is `versions[n - 1]`; `None`: deleted.
    versions: Vec<Option<Map<String, Value>>>,
    custom_metadata: Map<String, Value>,
}

#[derive(Debug, Default)]
struct VaultState {
    tokens: Vec<String>,
    approle: Option<(String, String)>,
    lease_seconds: u64,
    logins: usize,
    secrets: BTreeMap<String, Secret>,
    calls: Vec<VaultCall>,
    hold_next_write: Option<Duration>,
    race_next_write: bool,
}

struct Shared {
    state: Mutex<VaultState>,
    arrived: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running fake; dropping it stops the server.
pub(crate) struct VaultFake {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VaultFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VaultFake {
    /// Serves on 127.0.0.1 with one accepted token, `token`.
    pub(crate) async fn start(token: &str) -> VaultFake {
        quench_common::http::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Vault fake binds a loopback port");
        let addr = listener.local_addr().expect("an address");
        let shared = Arc::new(Shared {
            state: Mutex::new(VaultState {
                tokens: vec![token.to_owned()],
                lease_seconds: 3600,
                ..VaultState::default()
            }),
            arrived: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .route("/v1/auth/approle/login", post(login))
            .route(
                &format!("/v1/{MOUNT}/data/{{*path}}"),
                get(read_data).post(write_data),
            )
            .route(
                &format!("/v1/{MOUNT}/metadata/{{*path}}"),
                get(read_metadata).patch(patch_metadata),
            )
            .fallback(|| async { errors(StatusCode::NOT_FOUND, &[]) })
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("Vault fake stopped: {error}");
            }
        });
        VaultFake { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, the `address` of the store.
    pub(crate) fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Enables AppRole with this role and secret id; its tokens live `lease_seconds`.
    pub(crate) fn enable_approle(&self, role_id: &str, secret_id: &str, lease_seconds: u64) {
        let mut state = self.shared.lock();
        state.approle = Some((role_id.to_owned(), secret_id.to_owned()));
        state.lease_seconds = lease_seconds;
    }

    /// Forgets every token issued by logins (as a token's TTL running out would).
    pub(crate) fn revoke_issued_tokens(&self) {
        let mut state = self.shared.lock();
        state
            .tokens
            .retain(|token| !token.starts_with("hvs.approle-"));
    }

    pub(crate) fn logins(&self) -> usize {
        self.shared.lock().logins
    }

    /// Writes a version as another client would.
    pub(crate) fn seed(&self, path: &str, data: Value) {
        let data = data.as_object().cloned().expect("an object");
        self.shared
            .lock()
            .secrets
            .entry(path.to_owned())
            .or_default()
            .versions
            .push(Some(data));
    }

    /// The next data write waits `delay`, then answers 503 without being applied.
    pub(crate) fn hold_next_write(&self, delay: Duration) {
        self.shared.lock().hold_next_write = Some(delay);
    }

    /// Just before the next data write is applied, another client writes a version.
    pub(crate) fn race_next_write(&self) {
        self.shared.lock().race_next_write = true;
    }

    /// The current version's data and number; `None` when absent or deleted.
    pub(crate) fn current(&self, path: &str) -> Option<(u64, Map<String, Value>)> {
        let state = self.shared.lock();
        let secret = state.secrets.get(path)?;
        let data = secret.versions.last()?.clone()?;
        Some((secret.versions.len() as u64, data))
    }

    pub(crate) fn custom_metadata(&self, path: &str) -> Map<String, Value> {
        self.shared
            .lock()
            .secrets
            .get(path)
            .map(|secret| secret.custom_metadata.clone())
            .unwrap_or_default()
    }

    pub(crate) fn calls(&self) -> Vec<VaultCall> {
        self.shared.lock().calls.clone()
    }

    /// Waits until a request `method path` has arrived.
    pub(crate) async fn received(&self, method: &str, path: &str) {
        let wait = async {
            loop {
                let notified = self.shared.arrived.notified();
                if self
                    .calls()
                    .iter()
                    .any(|call| call.method == method && call.path == path)
                {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} reached the Vault fake"));
    }
}

fn errors(status: StatusCode, messages: &[&str]) -> Response {
    (status, axum::Json(json!({"errors": messages}))).into_response()
}

/// Records the request and checks its token; `Some` is the answer to give instead.
fn admit(
    shared: &Shared,
    method: Method,
    path: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let token = headers
        .get("x-vault-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut state = shared.lock();
    state.calls.push(VaultCall {
        method: method.to_string(),
        path,
        token: token.clone(),
        content_type,
        body: String::from_utf8_lossy(body).into_owned(),
    });
    let known = token.is_some_and(|token| state.tokens.contains(&token));
    drop(state);
    shared.arrived.notify_waiters();
    (!known).then(|| errors(StatusCode::FORBIDDEN, &["permission denied"]))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn login(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/auth/approle/login".to_owned();
    {
        let mut state = shared.lock();
        state.calls.push(VaultCall {
            method: "POST".into(),
            path,
            token: None,
            content_type: headers
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    shared.arrived.notify_waiters();
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, &["failed to parse JSON input"]);
    };
    let mut state = shared.lock();
    let Some((role_id, secret_id)) = state.approle.clone() else {
        return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
    };
    if body["role_id"].as_str() != Some(&role_id) || body["secret_id"].as_str() != Some(&secret_id)
    {
        return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
    }
    state.logins += 1;
    let token = format!("hvs.approle-{}", state.logins);
    state.tokens.push(token.clone());
    let lease = state.lease_seconds;
    axum::Json(json!({
        "request_id": format!("req-{}", state.logins),
        "lease_id": "", "renewable": false, "lease_duration": 0, "data": null, "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": token, "accessor": "accessor", "policies": ["default", "rotate"],
            "token_policies": ["default", "rotate"], "metadata": {"role_name": "quench"},
            "lease_duration": lease, "renewable": true, "entity_id": "", "token_type": "service",
            "orphan": true,
        },
    }))
    .into_response()
}

fn version_metadata(version: usize, deleted: bool, custom: &Map<String, Value>) -> Value {
    json!({
        "created_time": now(), "custom_metadata": custom,
        "deletion_time": if deleted { now() } else { String::new() },
        "destroyed": false, "version": version,
    })
}

async fn read_data(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(
        &shared,
        Method::GET,
        format!("/v1/{MOUNT}/data/{path}"),
        &headers,
        &Bytes::new(),
    ) {
        return refused;
    }
    let state = shared.lock();
    let Some(secret) = state.secrets.get(&path) else {
        return errors(StatusCode::NOT_FOUND, &[]);
    };
    let version = secret.versions.len();
    match secret.versions.last() {
        Some(Some(data)) => axum::Json(json!({
            "request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {"data": data, "metadata": version_metadata(version, false, &secret.custom_metadata)},
            "wrap_info": null, "warnings": null, "auth": null,
        }))
        .into_response(),
        // A deleted current version: 404, and the body still names it.
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {"data": null, "metadata": version_metadata(version, true, &secret.custom_metadata)},
                "wrap_info": null, "warnings": null, "auth": null,
            })),
        )
            .into_response(),
    }
}

async fn write_data(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(
        &shared,
        Method::POST,
        format!("/v1/{MOUNT}/data/{path}"),
        &headers,
        &body,
    ) {
        return refused;
    }
    let hold = shared.lock().hold_next_write.take();
    if let Some(delay) = hold {
        tokio::time::sleep(delay).await;
        return errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, &["failed to parse JSON input"]);
    };
    let Some(data) = body["data"].as_object().cloned() else {
        return errors(StatusCode::BAD_REQUEST, &["no data provided"]);
    };
    let mut state = shared.lock();
    if std::mem::take(&mut state.race_next_write) {
        state
            .secrets
            .entry(path.clone())
            .or_default()
            .versions
            .push(Some(Map::from_iter([(
                "other".to_owned(),
                json!("writer"),
            )])));
    }
    let secret = state.secrets.entry(path).or_default();
    let current = secret.versions.len() as u64;
    if let Some(cas) = body["options"]["cas"].as_u64()
        && cas != current
    {
        return errors(
            StatusCode::BAD_REQUEST,
            &["check-and-set parameter did not match the current version"],
        );
    }
    secret.versions.push(Some(data));
    let version = secret.versions.len();
    axum::Json(json!({
        "request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": {"created_time": now(), "custom_metadata": secret.custom_metadata, "deletion_time": "", "destroyed": false, "version": version},
        "wrap_info": null, "warnings": null, "auth": null,
    }))
    .into_response()
}

async fn read_metadata(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(
        &shared,
        Method::GET,
        format!("/v1/{MOUNT}/metadata/{path}"),
        &headers,
        &Bytes::new(),
    ) {
        return refused;
    }
    let state = shared.lock();
    let Some(secret) = state.secrets.get(&path) else {
        return errors(StatusCode::NOT_FOUND, &[]);
    };
    let versions: Map<String, Value> = secret
        .versions
        .iter()
        .enumerate()
        .map(|(index, data)| {
            (
                (index + 1).to_string(),
                json!({"created_time": now(), "deletion_time": if data.is_none() { now() } else { String::new() }, "destroyed": false}),
            )
        })
        .collect();
    axum::Json(json!({
        "request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": {
            "cas_required": false, "created_time": now(), "current_version": secret.versions.len(),
            "custom_metadata": secret.custom_metadata, "delete_version_after": "0s",
            "max_versions": 0, "oldest_version": 0, "updated_time": now(), "versions": versions,
        },
        "wrap_info": null, "warnings": null, "auth": null,
    }))
    .into_response()
}

async fn patch_metadata(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(
        &shared,
        Method::PATCH,
        format!("/v1/{MOUNT}/metadata/{path}"),
        &headers,
        &body,
    ) {
        return refused;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/merge-patch+json" {
        return errors(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &["PATCH requires Content-Type of application/merge-patch+json"],
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, &["failed to parse JSON input"]);
    };
    let mut state = shared.lock();
    let Some(secret) = state.secrets.get_mut(&path) else {
        return errors(StatusCode::NOT_FOUND, &[]);
    };
    if let Some(patch) = body["custom_metadata"].as_object() {
        for (name, value) in patch {
            match value {
                Value::Null => {
                    secret.custom_metadata.remove(name);
                }
                Value::String(_) => {
                    secret.custom_metadata.insert(name.clone(), value.clone());
                }
                _ => {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        &["custom_metadata values must be strings"],
                    );
                }
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
