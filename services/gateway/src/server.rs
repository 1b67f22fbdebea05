//! The gateway as a component: [`Gateway::build`] connects to NATS and binds the listener,
//! [`Gateway::run`] serves until shutdown. Shutdown stops taking requests, lets the ones in
//! flight finish, closes Socket Mode, waits briefly for replies to Slack still being sent, and
//! flushes NATS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use quench_common::config::{self, Config, Secret};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::limit::{FORGET_EVERY, Limits};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::refusal::Refusal;
use crate::replay::ReplayCache;
use crate::signature::now_unix;
use crate::slack::Interactions;
use crate::slack::form::Asker;
use crate::slack::socket::SocketMode;

/// How long replies to Slack still in flight may take at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// How long one request may take, from reading its body to the answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS is unreachable (exit 69).
    #[error("{0}")]
    Nats(String),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Slack(String),
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the request handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) nats: async_nats::Client,
    pub(crate) publisher: Publisher,
    pub(crate) limits: Limits,
    /// Accepted Slack signatures; a client is a Slack team.
    pub(crate) slack_replays: ReplayCache,
    /// Accepted findings signatures; a client is a client address.
    pub(crate) findings_replays: ReplayCache,
    pub(crate) metrics: Metrics,
    pub(crate) slack_signing_secret: Option<Secret>,
    pub(crate) github_secret: Option<Secret>,
    pub(crate) findings_secret: Option<Secret>,
    pub(crate) interactions: Arc<Interactions>,
}

/// A built gateway: connected to NATS and bound, not yet serving.
#[derive(Debug)]
pub struct Gateway {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    socket_mode: Option<(String, Secret)>,
}

impl Gateway {
    /// The gateway-specific check of a loaded config: it must have something to serve.
    pub fn check(config: &Config) -> Result<(), config::Error> {
        let any = config.slack.signing_secret.is_some()
            || config.slack.app_token.is_some()
            || config.gateway.github_secret.is_some()
            || config.gateway.findings_secret.is_some();
        if any {
            Ok(())
        } else {
            Err(config::Error::Invalid(
                "the gateway has nothing to serve: set at least one of `slack.signing_secret`, `slack.app_token`, `gateway.github_secret`, `gateway.findings_secret` (or their `_file` forms)".to_owned(),
            ))
        }
    }

    /// Connects to NATS and binds `gateway.listen`.
    pub async fn build(config: &Config) -> Result<Gateway, Error> {
        let client = quench_common::nats::connect_as(&config.nats, "quench-gateway")
            .await
            .map_err(|error| Error::Nats(error.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
            .await
            .map_err(|source| Error::Listen {
                listen: config.gateway.listen.clone(),
                source,
            })?;
        let gateway = &config.gateway;
        if gateway.test_response_url_prefix.is_some() {
            tracing::warn!(
                "gateway.test_response_url_prefix is set: replies to Slack may go to a URL that is not Slack's. This setting is for tests only"
            );
        }
        let publisher = Publisher::new(client.clone());
        // With the bot token, a choice that needs a comment opens a form; without it, such a
        // click is refused (and the user told how else to answer).
        let asker = config
            .slack
            .bot_token
            .as_ref()
            .map(|token| Asker::new(&config.slack.api_url, token))
            .transpose()
            .map_err(Error::Slack)?;
        let interactions = Arc::new(Interactions::new(
            publisher.clone(),
            gateway.test_response_url_prefix.clone(),
            asker,
        ));
        let state = AppState {
            nats: client,
            publisher,
            limits: Limits::new(
                gateway.rate_limit_per_second,
                gateway.rate_limit_burst,
                gateway.max_body_bytes,
                gateway.trusted_proxies.clone(),
            ),
            slack_replays: ReplayCache::new(gateway.replay.slack),
            findings_replays: ReplayCache::new(gateway.replay.findings),
            metrics: Metrics::new(),
            slack_signing_secret: config.slack.signing_secret.clone(),
            github_secret: gateway.github_secret.clone(),
            findings_secret: gateway.findings_secret.clone(),
            interactions,
        };
        Ok(Gateway {
            state: Arc::new(state),
            listener,
            socket_mode: config
                .slack
                .app_token
                .clone()
                .map(|token| (config.slack.api_url.clone(), token)),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Gateway {
            state,
            listener,
            socket_mode,
        } = self;
        let socket = match &socket_mode {
            Some((api_url, token)) => Some(
                SocketMode::start(api_url, token, state.interactions.clone())
                    .await
                    .map_err(Error::Slack)?,
            ),
            None => None,
        };
        let forget = tokio::spawn({
            let state = state.clone();
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(FORGET_EVERY) => {
                            state.limits.forget_idle();
                            state.slack_replays.expire(now_unix());
                            state.findings_replays.expire(now_unix());
                        }
                    }
                }
            }
        });
        let endpoints = [
            ("slack.signing_secret", state.slack_signing_secret.is_some()),
            ("slack.app_token", socket.is_some()),
            ("gateway.github_secret", state.github_secret.is_some()),
            ("gateway.findings_secret", state.findings_secret.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(key, _)| key)
        .collect::<Vec<_>>()
        .join(", ");
        let listen = listener
            .local_addr()
            .map_or_else(|_| "(unknown)".to_owned(), |address| address.to_string());
        tracing::info!(%listen, configured = %endpoints, "quench-gateway is serving");

        let app = router(state.clone());
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;

        tracing::info!("shutting down");
        if let Some(socket) = socket {
            socket.shutdown().await;
        }
        forget.abort();
        state.interactions.tasks.close();
        if tokio::time::timeout(GRACE, state.interactions.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some replies to Slack were not sent before shutdown");
        }
        let _ = state.nats.flush().await;
        served.map_err(Error::Serve)
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            Endpoint::Slack.path(),
            post(webhook).layer(Extension(Endpoint::Slack)),
        )
        .route(
            Endpoint::GitHub.path(),
            post(webhook).layer(Extension(Endpoint::GitHub)),
        )
        .route(
            Endpoint::Findings.path(),
            post(webhook).layer(Extension(Endpoint::Findings)),
        )
        .route(
            Endpoint::Ocsf.path(),
            post(webhook).layer(Extension(Endpoint::Ocsf)),
        )
        .with_state(state)
}

/// Every webhook: admitted (see [`AppState::admit`]), then handled by its endpoint's module,
/// under the request timeout; refusals answered and logged in one place.
async fn webhook(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(endpoint): Extension<Endpoint>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client = state.limits.client(peer, &headers);
    let handled = async {
        let (secret, body) = state.admit(endpoint, client, &headers, body).await?;
        // Each handler is given only what it uses.
        match endpoint {
            Endpoint::Slack => {
                let (replays, interactions) = (&state.slack_replays, &state.interactions);
                crate::slack::http::receive(replays, interactions, secret, &headers, body).await
            }
            Endpoint::GitHub => {
                crate::github::receive(&state.publisher, secret, &headers, body).await
            }
            Endpoint::Findings | Endpoint::Ocsf => {
                let format = if endpoint == Endpoint::Ocsf {
                    crate::findings::Format::Ocsf
                } else {
                    crate::findings::Format::Finding
                };
                let (publisher, replays) = (&state.publisher, &state.findings_replays);
                crate::findings::receive(publisher, replays, secret, client, &headers, body, format)
                    .await
            }
        }
    };
    answer(endpoint, &state.metrics, client, handled).await
}

/// Runs a handler under the request timeout and turns its result into the answer, logging and
/// counting a refusal (endpoint, client, reason; never a body or a header value). Refusals are
/// the callers' mistakes, so not errors.
async fn answer(
    endpoint: Endpoint,
    metrics: &Metrics,
    client: IpAddr,
    handler: impl Future<Output = Result<Response, Refusal>>,
) -> Response {
    let result = tokio::time::timeout(REQUEST_TIMEOUT, handler)
        .await
        .unwrap_or(Err(Refusal::Timeout));
    match result {
        Ok(response) => response,
        Err(refusal) => {
            metrics.refused(endpoint, &refusal);
            let status = refusal.status().as_u16();
            let path = endpoint.path();
            match refusal {
                Refusal::RateLimited { .. } => {
                    tracing::debug!(endpoint = path, %client, status, reason = refusal.reason(), "request refused")
                }
                Refusal::Unavailable | Refusal::ReplayFull { .. } => {
                    tracing::warn!(endpoint = path, %client, status, reason = refusal.reason(), "request refused")
                }
                _ => {
                    tracing::info!(endpoint = path, %client, status, reason = refusal.reason(), "request refused")
                }
            }
            refusal.into_response()
        }
    }
}

impl AppState {
    /// What every webhook request passes before its signature is checked: its endpoint is
    /// configured, the client is within its rate, the body within the cap. Returns the
    /// endpoint's secret and the body.
    pub(crate) async fn admit(
        &self,
        endpoint: Endpoint,
        client: IpAddr,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(&str, Bytes), Refusal> {
        let (secret, key) = match endpoint {
            Endpoint::Slack => (&self.slack_signing_secret, "slack.signing_secret"),
            Endpoint::GitHub => (&self.github_secret, "gateway.github_secret"),
            Endpoint::Findings | Endpoint::Ocsf => {
                (&self.findings_secret, "gateway.findings_secret")
            }
        };
        let secret = secret.as_ref().ok_or(Refusal::NotConfigured(key))?;
        self.limits.check(endpoint, client)?;
        let body = self.limits.read_body(headers, body).await?;
        Ok((secret.expose(), body))
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let status = if nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": nats, "nats": if nats { "connected" } else { "disconnected" }})),
    )
}

/// Prometheus metrics (OpenMetrics text): refusals, and the replay caches' entries and budgets.
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let replays = [
        (Endpoint::Slack, &state.slack_replays),
        (Endpoint::Findings, &state.findings_replays),
    ];
    (
        [(header::CONTENT_TYPE, quench_common::metrics::CONTENT_TYPE)],
        state.metrics.render(&replays, now_unix()),
    )
}
