//! Probes and scrapes: `/healthz` (the process answers), `/readyz` (started and connected to
//! NATS), `/metrics` (Prometheus), and the API's own OpenAPI document. No token needed.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Api;

/// The process is alive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    pub(crate) status: String,
}

/// Whether the service takes work.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    /// `connected` or `disconnected`.
    pub(crate) nats: String,
    /// Start-up finished (store open, streams ready, playbooks loaded, intake running).
    pub(crate) started: bool,
    /// Each consumer's state.
    pub(crate) intake: IntakeReadiness,
}

/// The intake's state per consumer: `ok`; `stuck` (messages are waiting and none was handled
/// for twice `nats.ack_wait`: not ready); `shedding` (in the last minute a message was
/// acknowledged unprocessed because not even its dead letter could be published; still ready,
/// see `quench_intake_dropped`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct IntakeReadiness {
    pub(crate) findings: String,
    pub(crate) decisions: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "The process answers", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: 200 once started, while connected to NATS and while no intake is stuck, else 503.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Starting, stopping, NATS is disconnected, or an intake is stuck", body = Readiness)
    ))]
pub(super) async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Readiness>) {
    use crate::service::intake::{Source, State as IntakeState};
    let nats = api.inner.client.connection_state() == async_nats::connection::State::Connected;
    let started = api.inner.ready.load(Ordering::SeqCst);
    let findings = api.inner.intake.state(Source::Findings);
    let decisions = api.inner.intake.state(Source::Decisions);
    let flowing = findings != IntakeState::Stuck && decisions != IntakeState::Stuck;
    let ready = nats && started && flowing;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            nats: if nats { "connected" } else { "disconnected" }.to_owned(),
            started,
            intake: IntakeReadiness {
                findings: findings.as_str().to_owned(),
                decisions: decisions.as_str().to_owned(),
            },
        }),
    )
}

/// Prometheus metrics (OpenMetrics text). The state gauges are read now: run counts from the
/// store's counters (one read), the NATS connection from the client.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let metrics = crate::metrics::get();
    match api.inner.engine.run_counts() {
        Ok(counts) => {
            metrics.runs_open.set(counts.open);
            metrics.runs_awaiting_approval.set(counts.awaiting_approval);
        }
        Err(error) => tracing::warn!(%error, "cannot read the run counters"),
    }
    match api.inner.engine.safety_status() {
        Ok(safety) => {
            for (action, budget) in &safety.actions {
                let label = crate::metrics::ActionLabel {
                    action: action.clone(),
                };
                metrics
                    .safety_calls
                    .get_or_create(&label)
                    .set(i64::from(budget.used));
            }
            metrics.safety_waiting.set(safety.waiting as i64);
        }
        Err(error) => tracing::warn!(%error, "cannot read the safety ledger"),
    }
    let connected = api.inner.client.connection_state() == async_nats::connection::State::Connected;
    metrics.nats_connected.set(i64::from(connected));
    (
        [(header::CONTENT_TYPE, quench_common::metrics::CONTENT_TYPE)],
        metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object)))]
pub(super) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&super::DOCUMENT)
}
