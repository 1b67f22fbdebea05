//! The service's HTTP surface for now: `/healthz` (the process is alive) and `/readyz` (set up
//! and connected to NATS). The admin API joins here with the operator-surface issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Health {
    client: async_nats::Client,
    ready: Arc<AtomicBool>,
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(Health { client, ready });
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(error) = serving.await {
        tracing::error!(%error, "the HTTP server stopped");
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let nats = health.client.connection_state() == async_nats::connection::State::Connected;
    let started = health.ready.load(Ordering::SeqCst);
    let status = if nats && started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"ready": nats && started, "nats": if nats { "connected" } else { "disconnected" }, "started": started}),
        ),
    )
}

/// Whether a quench service answers `/readyz` with 200 at `listen`.
pub(crate) async fn ready(listen: &str) -> bool {
    let url = format!("http://{listen}/readyz");
    match crate::connectors::http_client().get(url).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}
