//! A Kubernetes API server fake on loopback, for Secrets only, as the Kubernetes API reference
//! describes them (see `docs/secret-stores.md`): `GET` and `PATCH
//! /api/v1/namespaces/{namespace}/secrets/{name}` with `Authorization: Bearer`, patches as
//! `application/merge-patch+json` or `application/strategic-merge-patch+json` (for a Secret's
//! `data` and annotations, maps, both merge the same way), `data` values base64, and every
//! refusal a `Status` object: 401 without the token, 403 outside the token's namespace, 404 for
//! a missing Secret, 409 (injected) for a conflict, 415 for another content type, 422 for data
//! that is not base64.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub(crate) struct KubernetesCall {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authorization: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

#[derive(Debug, Default)]
struct ApiState {
    token: String,
    namespace: String,
    /// name → the Secret object.
    secrets: BTreeMap<String, Value>,
    resource_version: u64,
    calls: Vec<KubernetesCall>,
    conflict_next: bool,
}

type Shared = Arc<Mutex<ApiState>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, ApiState> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct KubernetesFake {
    addr: std::net::SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubernetesFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubernetesFake {
    /// Serves on 127.0.0.1; `token` may read and patch Secrets in `namespace` only.
    pub(crate) async fn start(token: &str, namespace: &str) -> KubernetesFake {
        quench_common::http::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Kubernetes fake binds a loopback port");
        let addr = listener.local_addr().expect("an address");
        let shared: Shared = Arc::new(Mutex::new(ApiState {
            token: token.to_owned(),
            namespace: namespace.to_owned(),
            ..ApiState::default()
        }));
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/secrets/{name}",
                get(read).patch(patch),
            )
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("Kubernetes fake stopped: {error}");
            }
        });
        KubernetesFake { addr, shared, task }
    }

    pub(crate) fn api_server(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a Secret (as `kubectl create secret generic` would), `data` in plain text.
    pub(crate) fn seed(&self, name: &str, data: &[(&str, &str)]) {
        let mut state = lock(&self.shared);
        state.resource_version += 1;
        let encoded: Map<String, Value> = data
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    json!(base64::engine::general_purpose::STANDARD.encode(value)),
                )
            })
            .collect();
        let secret = json!({
            "kind": "Secret", "apiVersion": "v1", "type": "Opaque",
            "metadata": {"name": name, "namespace": state.namespace, "resourceVersion": state.resource_version.to_string()},
            "data": encoded,
        });
        state.secrets.insert(name.to_owned(), secret);
    }

    /// The next patch is refused with 409 Conflict.
    pub(crate) fn conflict_next(&self) {
        lock(&self.shared).conflict_next = true;
    }

    /// A key of a Secret's data, decoded.
    pub(crate) fn value(&self, name: &str, key: &str) -> Option<String> {
        let state = lock(&self.shared);
        let encoded = state.secrets.get(name)?["data"][key].as_str()?.to_owned();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    }

    pub(crate) fn annotations(&self, name: &str) -> Map<String, Value> {
        lock(&self.shared)
            .secrets
            .get(name)
            .and_then(|secret| secret["metadata"]["annotations"].as_object().cloned())
            .unwrap_or_default()
    }

    pub(crate) fn calls(&self) -> Vec<KubernetesCall> {
        lock(&self.shared).calls.clone()
    }
}

/// A `Status` object.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Records the request and checks the bearer token and namespace; `Some` is the answer to give
/// instead.
fn admit(
    shared: &Shared,
    method: &str,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let mut state = lock(shared);
    let authorization = header("authorization");
    state.calls.push(KubernetesCall {
        method: method.to_owned(),
        path: format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
        authorization: authorization.clone(),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(body).into_owned(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {}", state.token)) {
        return Some(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".to_owned(),
        ));
    }
    if namespace != state.namespace {
        return Some(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "secrets \"{name}\" is forbidden: User \"system:serviceaccount:{}:quench\" cannot {} resource \"secrets\" in API group \"\" in the namespace \"{namespace}\"",
                state.namespace,
                method.to_lowercase()
            ),
        ));
    }
    None
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("secrets \"{name}\" not found"),
    )
}

async fn read(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, "GET", &namespace, &name, &headers, &Bytes::new()) {
        return refused;
    }
    match lock(&shared).secrets.get(&name) {
        Some(secret) => axum::Json(secret.clone()).into_response(),
        None => not_found(&name),
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(object) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

async fn patch(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(&shared, "PATCH", &namespace, &name, &headers, &body) {
        return refused;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
            ),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "error decoding patch: invalid JSON".to_owned(),
        );
    };
    let mut state = lock(&shared);
    if std::mem::take(&mut state.conflict_next) {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    if let Some(data) = patch["data"].as_object() {
        for (key, value) in data {
            let valid = value.as_str().is_some_and(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .is_ok()
            });
            if !valid && !value.is_null() {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "Secret \"{name}\" is invalid: data[{key}]: Invalid value: illegal base64 data"
                    ),
                );
            }
        }
    }
    state.resource_version += 1;
    let version = state.resource_version.to_string();
    let Some(secret) = state.secrets.get_mut(&name) else {
        return not_found(&name);
    };
    merge(secret, &patch);
    secret["metadata"]["resourceVersion"] = json!(version);
    axum::Json(secret.clone()).into_response()
}
