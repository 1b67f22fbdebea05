//! The admin HTTP API on `api.listen` (axum), with `/healthz`, `/readyz` and `/metrics`.
//!
//! Every `/api/v1` route needs a bearer token from `[[api.tokens]]`: the presented token's
//! SHA-256 is compared in constant time with each configured `sha256`; a missing or unknown token
//! is 401, a role below the route's is 403 (`viewer` < `approver` < `editor` < `admin`). Every
//! write is audited with the token's name. Health, readiness, metrics and the OpenAPI document
//! are open, for probes and scrapers; `api.listen` defaults to loopback.
//!
//! Routes are registered through `utoipa-axum`, so the OpenAPI document (`/api/openapi.json`,
//! checked in as `services/runner/openapi.json`) is generated from the same handlers that serve.

mod attributes;
mod audit;
mod auth;
mod campaigns;
mod dlq;
mod error;
mod evidence;
mod health;
mod inbox;
mod inventory;
mod live;
mod offline;
mod playbooks;
mod query;
mod runs;
mod safety;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use auth::Tokens;

/// The API's request and response bodies (the CLI reads them too).
pub(crate) mod types {
    pub(crate) use super::attributes::{AttributesRequest, AttributesView};
    pub(crate) use super::audit::{AuditPage, AuditView, PruneRequest, PruneResult, Verified};
    pub(crate) use super::dlq::{DlqPage, Replayed};
    pub(crate) use super::error::ErrorBody;
    pub(crate) use super::evidence::{EvidenceRequest, PackView};
    pub(crate) use super::inventory::{IdentityDetail, InventoryPage};
    pub(crate) use super::playbooks::{
        AppliedView, ApplyRequest, EnabledView, History, PlaybookList, VersionSource,
    };
    pub(crate) use super::runs::{
        CancelRequest, Cancelled, DecisionRequest, DecisionResult, RestartRequest, Restarted,
        RunDetail, RunPage, StepView,
    };
}
use auth::BearerScheme;

use super::playbooks::Library;
use crate::engine::Engine;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    library: Library,
    jetstream: async_nats::jetstream::Context,
    client: async_nats::Client,
    tokens: Tokens,
    ready: Arc<AtomicBool>,
    intake: Arc<super::intake::Health>,
    /// One audit verification or evidence pack at a time: each reads the whole log.
    verifying: Semaphore,
    /// One run of a playbook's offline tests at a time: each is a whole engine (the permit goes
    /// with the run, so a run the answer gave up on still holds it until it ends).
    testing: Arc<Semaphore>,
    inventory: crate::inventory::Inventory,
    inventory_status: super::inventory::SharedStatus,
    /// Signs evidence packs (`[evidence] signing_key_file`); none are made without it.
    signer: Option<Arc<crate::evidence::Signer>>,
    /// The inventory and campaigns of evidence packs.
    sources: Arc<dyn crate::evidence::EvidenceSources>,
    /// The web console's settings and sessions.
    console: Arc<super::console::Console>,
    /// Run events fanned out to live streams.
    live: live::Live,
}

/// The parts of the service the API reads and steers.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) engine: Engine,
    pub(crate) library: Library,
    pub(crate) client: async_nats::Client,
    pub(crate) tokens: Tokens,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) intake: Arc<super::intake::Health>,
    pub(crate) inventory: crate::inventory::Inventory,
    pub(crate) inventory_status: super::inventory::SharedStatus,
    pub(crate) signer: Option<Arc<crate::evidence::Signer>>,
    pub(crate) sources: Arc<dyn crate::evidence::EvidenceSources>,
    pub(crate) console: Arc<super::console::Console>,
}

impl Api {
    pub(crate) fn new(parts: Parts) -> Api {
        let jetstream = async_nats::jetstream::new(parts.client.clone());
        Api {
            inner: Arc::new(Inner {
                engine: parts.engine,
                library: parts.library,
                jetstream,
                client: parts.client,
                tokens: parts.tokens,
                ready: parts.ready,
                intake: parts.intake,
                verifying: Semaphore::new(1),
                testing: Arc::new(Semaphore::new(1)),
                inventory: parts.inventory,
                inventory_status: parts.inventory_status,
                signer: parts.signer,
                sources: parts.sources,
                console: parts.console,
                live: live::Live::default(),
            }),
        }
    }

    /// The web console's settings and sessions.
    pub(crate) fn console(&self) -> &super::console::Console {
        &self.inner.console
    }

    /// The configured API tokens.
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "quench admin API",
        description = "Runs, approvals, playbooks, dead letters and the audit log of a quench service. \
                       Authenticate with `Authorization: Bearer <token>`; roles are viewer < approver < editor < admin."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "runs", description = "Runs of playbooks, their timelines and approval gates"),
        (name = "playbooks", description = "Playbooks: versions, history, apply, enable and disable"),
        (name = "dlq", description = "Dead-lettered messages: list and replay"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "inventory", description = "The estate inventory: OpenAI projects, keys, service accounts, admin keys and users, with risks and history"),
        (name = "campaigns", description = "Attestation campaigns (access reviews): every key in a scope put to its owner"),
        (name = "evidence", description = "Signed evidence packs for auditors"),
        (name = "safety", description = "The blast-radius rails: budgets, protected resources, change freezes"),
        (name = "inventory", description = "Identities of the estate: the owner and purpose people recorded"),
        (name = "service", description = "Health, readiness, metrics")
    )
)]
struct ApiDoc;

/// The router and the OpenAPI document it is described by.
fn router() -> (Router<Api>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_json))
        .routes(routes!(runs::list))
        .routes(routes!(runs::show))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::restart))
        .routes(routes!(runs::decide))
        .routes(routes!(inbox::inbox))
        .routes(routes!(live::events))
        .routes(routes!(playbooks::list, playbooks::apply))
        .routes(routes!(playbooks::validate))
        .routes(routes!(offline::test))
        .routes(routes!(playbooks::show))
        .routes(routes!(playbooks::history))
        .routes(routes!(playbooks::version))
        .routes(routes!(playbooks::enable))
        .routes(routes!(playbooks::disable))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::export))
        .routes(routes!(audit::prune))
        .routes(routes!(evidence::make))
        .routes(routes!(safety::status))
        .routes(routes!(attributes::show, attributes::set))
        .routes(routes!(inventory::list))
        .routes(routes!(inventory::status))
        .routes(routes!(inventory::show))
        .routes(routes!(campaigns::list, campaigns::start))
        .routes(routes!(campaigns::show))
        .split_for_parts()
}

/// The OpenAPI document of the admin API (what `/api/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    DOCUMENT.clone()
}

static DOCUMENT: std::sync::LazyLock<utoipa::openapi::OpenApi> =
    std::sync::LazyLock::new(|| router().1);

/// The API and the console as one service: what [`serve`] serves, and what a runner of a
/// cluster hands the requests for a partition it serves.
pub(crate) fn app(api: Api) -> Router {
    let console = super::console::routes(api.console().enabled());
    router()
        .0
        .merge(console)
        .layer(axum::middleware::from_fn(redact_answer))
        // A handler that panics answers 500 (and is logged) instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(api)
}

/// Serves the API until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: CancellationToken,
) {
    let app = app(api);
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(error) = serving.await {
        tracing::error!(%error, "the HTTP server stopped");
    }
}

/// The answer to a request whose handler panicked: the error body every failure has; the
/// panic's message is logged, not returned (it may quote the request).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = %quench_proto::redact_str(message), "an API handler panicked");
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(error::ErrorBody::new(
            "internal",
            "the request failed inside quench; the service log says why".to_owned(),
        )),
    )
        .into_response()
}

/// Most bytes of an answer read to redact it; API answers are pages of bounded size.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Defence in depth: every answer's body passes `redact_bytes` (escapes included, never
/// longer), so a key that is in the store although intake redacts (written by an older version,
/// or quoted in a playbook's own text) is never served.
async fn redact_answer(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    // A live stream never ends, so it cannot be read whole: `live` redacts each event itself.
    if response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(bytes) if quench_proto::contains_secret(&bytes) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            let redacted = quench_proto::redact_bytes(&bytes);
            axum::response::Response::from_parts(parts, axum::body::Body::from(redacted))
        }
        Ok(bytes) => axum::response::Response::from_parts(parts, axum::body::Body::from(bytes)),
        Err(error) => {
            tracing::warn!(%error, "an answer could not be read to redact it");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
