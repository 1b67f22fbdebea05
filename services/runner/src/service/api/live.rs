//! Live updates: `GET /api/v1/events`, the run events as Server-Sent Events. The service reads
//! them from NATS (`quench.events.>`, what every runner publishes after its commits), so a page
//! sees the runs of every runner, and fans them out to the open streams in memory. A stream that
//! falls behind is told to reload (`event: resync`) instead of holding events back; each stream
//! opens with `event: ready` (after a reconnect the page reloads what it shows); one event
//! per message, an id to resume from, a comment every 15 s to keep proxies from closing it, and
//! at most `MAX_STREAMS` open at once. The pages work without it (they poll).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::{OnceCell, broadcast};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::config::Role;

/// Streams open at once, at most.
const MAX_STREAMS: usize = 1_000;
/// Events held for a slow stream before it is told to resync.
const BUFFER: usize = 1_024;

/// One run event as a page sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LiveEvent {
    /// `run_started`, `step_started`, `waiting`, `decided`, `run_completed`, … (as on NATS).
    pub(crate) kind: String,
    pub(crate) run_id: String,
    pub(crate) playbook: String,
    pub(crate) key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) step: Option<String>,
    pub(crate) at: chrono::DateTime<chrono::Utc>,
}

/// The fan-out: one NATS subscription, any number of streams.
#[derive(Debug)]
pub(crate) struct Live {
    sender: broadcast::Sender<Arc<(String, String)>>,
    started: OnceCell<()>,
    open: Arc<AtomicUsize>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            sender: broadcast::channel(BUFFER).0,
            started: OnceCell::new(),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Live {
    /// Subscribes to the run events once, on the first stream.
    async fn start(&self, client: &async_nats::Client) {
        self.started
            .get_or_init(|| async {
                let sender = self.sender.clone();
                let client = client.clone();
                tokio::spawn(forward(client, sender));
            })
            .await;
    }
}

/// NATS → the streams; resubscribes after a failure.
async fn forward(client: async_nats::Client, sender: broadcast::Sender<Arc<(String, String)>>) {
    loop {
        match client.subscribe(quench_proto::subject::EVENTS_ALL).await {
            Ok(mut subscription) => {
                while let Some(message) = subscription.next().await {
                    // What a runner published: parsed as the contract says, else skipped.
                    let Ok(event) =
                        serde_json::from_slice::<quench_proto::RunEvent>(&message.payload)
                    else {
                        continue;
                    };
                    let view = LiveEvent {
                        kind: event.kind.as_str().to_owned(),
                        run_id: event.run_id,
                        playbook: event.playbook,
                        key: event.finding_key,
                        step: event.step,
                        at: event.at,
                    };
                    if let Ok(data) = serde_json::to_string(&view) {
                        // The answer-wide redaction cannot read a stream that never ends, so
                        // each event is redacted here (keys were already, at intake).
                        let data = quench_proto::redact_str(&data).into_owned();
                        let id = quench_proto::redact_str(&event.id).into_owned();
                        // No stream open is not an error.
                        let _ = sender.send(Arc::new((id, data)));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "live updates cannot subscribe to the run events");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Counts an open stream until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Run events as they happen, as Server-Sent Events (`event: run`, data a JSON `LiveEvent`;
/// `event: resync` when this stream fell behind and the page should reload what it shows).
#[utoipa::path(get, path = "/api/v1/events", tag = "runs",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A stream of run events (role viewer)", content_type = "text/event-stream", body = LiveEvent),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 503, description = "Too many streams are open", body = ErrorBody)
    ))]
pub(super) async fn events(State(api): State<Api>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let live = &api.inner.live;
    if live.open.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        live.open.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::Unavailable(format!(
            "{MAX_STREAMS} live streams are open; the page polls instead"
        )));
    }
    let open = Open(live.open.clone());
    live.start(&api.inner.client).await;
    let receiver = live.sender.subscribe();
    let ready = futures::stream::once(async {
        Ok::<Event, Infallible>(Event::default().event("ready").data("{}"))
    });
    let stream = futures::stream::unfold((receiver, open), |(mut receiver, open)| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default()
                .event("run")
                .id(event.0.clone())
                .data(event.1.clone()),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("resync")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<Event, Infallible>(event), (receiver, open)))
    });
    Ok(Sse::new(ready.chain(stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
