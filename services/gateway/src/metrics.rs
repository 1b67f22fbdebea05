//! The gateway's Prometheus metrics (`prometheus-client`), served at `GET /metrics` on the
//! gateway's listener. Refusals are counted where they are answered (`server::answer`); the
//! replay cache's gauges are set just before rendering, after expiring what left the window.
//!
//! Names are constants; the exposition appends `_total` to counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::endpoint::Endpoint;
use crate::refusal::Refusal;
use crate::replay::ReplayCache;

/// Requests refused (`endpoint`: slack, github or findings; `reason`: the refusal's word).
pub(crate) const REFUSED: &str = "quench_gateway_refused";
/// Signatures the replay cache holds now (`endpoint`).
pub(crate) const REPLAY_ENTRIES: &str = "quench_gateway_replay_entries";
/// Signatures the replay cache may hold (`endpoint`): `gateway.replay.<endpoint>.entries`.
pub(crate) const REPLAY_CAPACITY: &str = "quench_gateway_replay_capacity";
/// Signatures one client may hold (`endpoint`): `gateway.replay.<endpoint>.per_client`.
pub(crate) const REPLAY_CLIENT_CAPACITY: &str = "quench_gateway_replay_client_capacity";

/// Labels of the per-endpoint gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// Labels of the refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    endpoint: &'static str,
    reason: &'static str,
}

/// One gateway's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    refused: Family<RefusalLabels, Counter>,
    replay_entries: Family<EndpointLabel, Gauge>,
    replay_capacity: Family<EndpointLabel, Gauge>,
    replay_client_capacity: Family<EndpointLabel, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            refused: Family::default(),
            replay_entries: Family::default(),
            replay_capacity: Family::default(),
            replay_client_capacity: Family::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            REFUSED,
            "Requests refused, by endpoint and reason",
            metrics.refused.clone(),
        );
        registry.register(
            REPLAY_ENTRIES,
            "Accepted signatures the replay cache holds until their timestamp leaves the window",
            metrics.replay_entries.clone(),
        );
        registry.register(
            REPLAY_CAPACITY,
            "Signatures the replay cache may hold per endpoint (more: 503)",
            metrics.replay_capacity.clone(),
        );
        registry.register(
            REPLAY_CLIENT_CAPACITY,
            "Signatures one client may hold in an endpoint's replay cache (more: 503 for it)",
            metrics.replay_client_capacity.clone(),
        );
        metrics
    }

    /// Counts a refusal.
    pub(crate) fn refused(&self, endpoint: Endpoint, refusal: &Refusal) {
        self.refused
            .get_or_create(&RefusalLabels {
                endpoint: endpoint.name(),
                reason: refusal.reason(),
            })
            .inc();
    }

    /// The exposition, with the replay caches' gauges read now (entries expired first).
    pub(crate) fn render(&self, replays: &[(Endpoint, &ReplayCache)], now: i64) -> String {
        for (endpoint, cache) in replays {
            let label = EndpointLabel {
                endpoint: endpoint.name(),
            };
            let budget = cache.budget();
            let gauge = |family: &Family<EndpointLabel, Gauge>, value: usize| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            gauge(&self.replay_entries, cache.expire(now));
            gauge(&self.replay_capacity, budget.entries);
            gauge(&self.replay_client_capacity, budget.per_client);
        }
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        out
    }
}
