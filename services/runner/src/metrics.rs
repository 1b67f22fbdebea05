//! Prometheus metrics: one process-wide registry (`prometheus-client`), written to by the
//! intake, the engine and the store's committer, and rendered by the admin API's `/metrics`.
//!
//! Counters and histograms are updated where the event happens. The gauges that describe state
//! (runs open, runs parked on approval, NATS connected, playbooks refused) are set just before
//! rendering from values that are cheap to read: the run gauges come from counters the store's
//! committer maintains in the same atomic commit as the runs themselves (`Batch::count`), so a
//! scrape reads one key instead of scanning a million parked runs.
//!
//! Names are constants; the exposition appends `_total` to counters and the unit to histograms.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Findings parsed from the bus, duplicates included (`kind`).
pub const FINDINGS_RECEIVED: &str = "quench_findings_received";
/// Findings dropped because their id was seen before (`kind`).
pub const FINDINGS_DEDUPLICATED: &str = "quench_findings_deduplicated";
/// Messages refused and republished to the dead-letter subject (`subject`: findings or
/// decisions; `reason`: the parse error's code).
pub const DEAD_LETTERED: &str = "quench_dead_lettered";
/// Messages acknowledged without being processed or dead-lettered, because even their dead
/// letter could not be published (`consumer`: findings or decisions; `reason`).
pub const INTAKE_DROPPED: &str = "quench_intake_dropped";
/// 1 while a consumer has messages waiting and has handled none for twice its ack wait.
pub const INTAKE_STUCK: &str = "quench_intake_stuck";
/// Messages of a consumer not yet acknowledged: waiting in the stream plus delivered.
pub const INTAKE_PENDING: &str = "quench_intake_pending";
/// Runs started (`playbook`).
pub const RUNS_STARTED: &str = "quench_runs_started";
/// Runs that ended `completed` (`playbook`).
pub const RUNS_COMPLETED: &str = "quench_runs_completed";
/// Runs that ended `failed` (`playbook`).
pub const RUNS_FAILED: &str = "quench_runs_failed";
/// Runs that ended `cancelled` (`playbook`).
pub const RUNS_CANCELLED: &str = "quench_runs_cancelled";
/// Counter: ended runs purged by `[store] retain_ended`.
pub const RUNS_PURGED: &str = "quench_runs_purged";
/// Runs not ended: running or parked.
pub const RUNS_OPEN: &str = "quench_runs_open";
/// Runs parked on an approval gate.
pub const RUNS_AWAITING_APPROVAL: &str = "quench_runs_awaiting_approval";
/// Duration of action calls (`action`).
pub const STEP_DURATION: &str = "quench_step_duration";
/// Action calls that failed (`action`, `class`: retryable or permanent).
pub const ACTION_ERRORS: &str = "quench_action_errors";
/// Batches grouped into one store commit.
pub const COMMIT_BATCHES: &str = "quench_store_commit_batches";
/// Time of one store commit (apply, flush, fdatasync).
pub const COMMIT_DURATION: &str = "quench_store_commit_duration";
/// Store compactions (the live data copied into a fresh file).
pub const STORE_COMPACTIONS: &str = "quench_store_compactions";
/// Cluster mode: journal appends refused because another runner took the partition over.
pub const JOURNAL_FENCED: &str = "quench_journal_fenced";
/// Cluster mode: snapshots of a partition saved (each lets the journal below it be purged).
pub const CLUSTER_SNAPSHOTS: &str = "quench_cluster_snapshots";
/// Cluster mode: partitions this runner holds (0 while it stands by).
pub const CLUSTER_PARTITIONS_HELD: &str = "quench_cluster_partitions_held";
/// Cluster mode, several partitions: findings and decisions this runner's router passed on,
/// by how (`republished` to the partition's subject, or `handed_over` to a partition served here).
pub const CLUSTER_ROUTED: &str = "quench_cluster_routed";
/// How long commits waited for one store compaction (its copy runs beside them).
pub const COMPACTION_DURATION: &str = "quench_store_compaction_duration";
/// 1 while the NATS connection is up.
pub const NATS_CONNECTED: &str = "quench_nats_connected";
/// Playbook (re)loads from the directory or the API (`result`: ok or refused).
pub const PLAYBOOK_LOADS: &str = "quench_playbook_loads";
/// Playbook files currently refused (the last good version of each keeps serving).
pub const PLAYBOOKS_REFUSED: &str = "quench_playbooks_refused";
/// Playbooks currently loaded.
pub const PLAYBOOKS_LOADED: &str = "quench_playbooks_loaded";
/// Mutating calls let through by the `[safety]` rails in the last hour, by action.
pub const SAFETY_CALLS: &str = "quench_safety_calls_last_hour";
/// Runs whose mutating step waits on a safety gate (budget or protect).
pub const SAFETY_WAITING: &str = "quench_safety_waiting_runs";
/// Audit entries (of this process's partitions) after the last one whose run event was
/// published: how far the run events lag behind.
pub const EVENTS_UNPUBLISHED: &str = "quench_run_events_unpublished_entries";

/// Labels of per-kind finding counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Labels of dead-letter counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub subject: String,
    pub reason: String,
}

/// Labels of per-consumer intake gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub consumer: String,
}

/// Labels of dropped-message counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub consumer: String,
    pub reason: String,
}

/// Labels of per-playbook run counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaybookLabel {
    pub playbook: String,
}

/// Labels of per-action metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

/// Labels of action errors.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionErrorLabels {
    pub action: String,
    pub class: String,
}

/// Labels of routed messages.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutedLabels {
    pub source: String,
    pub how: String,
}

/// Labels of playbook loads.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub findings_received: Family<KindLabel, Counter>,
    pub findings_deduplicated: Family<KindLabel, Counter>,
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    pub intake_dropped: Family<DroppedLabels, Counter>,
    pub intake_stuck: Family<ConsumerLabel, Gauge>,
    pub intake_pending: Family<ConsumerLabel, Gauge>,
    /// Finding kinds given a label of their own so far (see [`MAX_KIND_LABELS`]).
    kinds: std::sync::Mutex<std::collections::HashSet<String>>,
    pub runs_started: Family<PlaybookLabel, Counter>,
    pub runs_completed: Family<PlaybookLabel, Counter>,
    pub runs_failed: Family<PlaybookLabel, Counter>,
    pub runs_cancelled: Family<PlaybookLabel, Counter>,
    pub runs_purged: Counter,
    pub runs_open: Gauge,
    pub runs_awaiting_approval: Gauge,
    pub step_duration: Family<ActionLabel, Histogram>,
    pub action_errors: Family<ActionErrorLabels, Counter>,
    pub commit_batches: Histogram,
    pub commit_seconds: Histogram,
    pub compactions: Counter,
    pub compaction_seconds: Histogram,
    pub journal_fenced: Counter,
    pub cluster_snapshots: Counter,
    pub cluster_partitions_held: Gauge,
    pub cluster_routed: Family<RoutedLabels, Counter>,
    pub nats_connected: Gauge,
    pub playbook_loads: Family<ResultLabel, Counter>,
    pub playbooks_refused: Gauge,
    pub playbooks_loaded: Gauge,
    pub safety_calls: Family<ActionLabel, Gauge>,
    pub safety_waiting: Gauge,
    pub events_unpublished: Gauge,
}

fn step_histogram() -> Histogram {
    // 5 ms to about 80 s: API calls, with their retries' timeouts.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            findings_received: Family::default(),
            findings_deduplicated: Family::default(),
            dead_lettered: Family::default(),
            intake_dropped: Family::default(),
            intake_stuck: Family::default(),
            intake_pending: Family::default(),
            kinds: std::sync::Mutex::default(),
            runs_started: Family::default(),
            runs_completed: Family::default(),
            runs_failed: Family::default(),
            runs_cancelled: Family::default(),
            runs_purged: Counter::default(),
            runs_open: Gauge::default(),
            runs_awaiting_approval: Gauge::default(),
            step_duration: Family::new_with_constructor(step_histogram),
            action_errors: Family::default(),
            // 1 to 4096 batches (the committer's group limit).
            commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 0.25 ms to about 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.00025, 2.0, 15)),
            compactions: Counter::default(),
            // 10 ms to about 160 s.
            compaction_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            journal_fenced: Counter::default(),
            cluster_snapshots: Counter::default(),
            cluster_partitions_held: Gauge::default(),
            cluster_routed: Family::default(),
            nats_connected: Gauge::default(),
            playbook_loads: Family::default(),
            playbooks_refused: Gauge::default(),
            playbooks_loaded: Gauge::default(),
            safety_calls: Family::default(),
            safety_waiting: Gauge::default(),
            events_unpublished: Gauge::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            FINDINGS_RECEIVED,
            "Findings parsed and taken in, by kind",
            metrics.findings_received.clone(),
        );
        registry.register(
            FINDINGS_DEDUPLICATED,
            "Findings dropped as already seen (same id), by kind",
            metrics.findings_deduplicated.clone(),
        );
        registry.register(
            DEAD_LETTERED,
            "Messages refused and dead-lettered, by DLQ subject and reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            INTAKE_DROPPED,
            "Messages acknowledged unprocessed because not even their dead letter could be published, by consumer and reason",
            metrics.intake_dropped.clone(),
        );
        registry.register(
            INTAKE_STUCK,
            "1 while a consumer has messages waiting and handled none for twice its ack wait",
            metrics.intake_stuck.clone(),
        );
        registry.register(
            INTAKE_PENDING,
            "Messages of a consumer not yet acknowledged (waiting in the stream or delivered)",
            metrics.intake_pending.clone(),
        );
        registry.register(
            RUNS_STARTED,
            "Runs started, by playbook",
            metrics.runs_started.clone(),
        );
        registry.register(
            RUNS_COMPLETED,
            "Runs completed, by playbook",
            metrics.runs_completed.clone(),
        );
        registry.register(
            RUNS_FAILED,
            "Runs failed, by playbook",
            metrics.runs_failed.clone(),
        );
        registry.register(
            RUNS_CANCELLED,
            "Runs cancelled, by playbook",
            metrics.runs_cancelled.clone(),
        );
        registry.register(
            RUNS_PURGED,
            "Ended runs purged after `[store] retain_ended` (their audit entries stay)",
            metrics.runs_purged.clone(),
        );
        registry.register(
            ACTION_ERRORS,
            "Action calls that failed, by action and class (retryable, permanent)",
            metrics.action_errors.clone(),
        );
        registry.register(
            PLAYBOOK_LOADS,
            "Playbook loads (directory, reload, API), by result (ok, refused)",
            metrics.playbook_loads.clone(),
        );
        registry.register(
            NATS_CONNECTED,
            "1 while the NATS connection is up",
            metrics.nats_connected.clone(),
        );
        registry.register(
            RUNS_OPEN,
            "Runs not ended (running or parked)",
            metrics.runs_open.clone(),
        );
        registry.register(
            RUNS_AWAITING_APPROVAL,
            "Runs parked on an approval gate",
            metrics.runs_awaiting_approval.clone(),
        );
        registry.register(
            PLAYBOOKS_REFUSED,
            "Playbook files refused at the last load (their last good version keeps serving)",
            metrics.playbooks_refused.clone(),
        );
        registry.register(
            PLAYBOOKS_LOADED,
            "Playbooks loaded",
            metrics.playbooks_loaded.clone(),
        );
        registry.register(
            SAFETY_CALLS,
            "Mutating calls the [safety] rails let through in the last hour, by action",
            metrics.safety_calls.clone(),
        );
        registry.register(
            SAFETY_WAITING,
            "Runs whose mutating step waits on a safety gate (over budget, or a protected resource)",
            metrics.safety_waiting.clone(),
        );
        registry.register(
            EVENTS_UNPUBLISHED,
            "Audit entries after the last one whose run event the events stream took (the run events' lag; grows while NATS cannot take them)",
            metrics.events_unpublished.clone(),
        );
        registry.register_with_unit(
            STEP_DURATION,
            "Duration of action calls, by action",
            Unit::Seconds,
            metrics.step_duration.clone(),
        );
        registry.register(
            COMMIT_BATCHES,
            "Batches grouped into one store commit",
            metrics.commit_batches.clone(),
        );
        registry.register_with_unit(
            COMMIT_DURATION,
            "Duration of one store commit (apply, flush, fdatasync)",
            Unit::Seconds,
            metrics.commit_seconds.clone(),
        );
        registry.register(
            STORE_COMPACTIONS,
            "Store compactions: the live data copied into a fresh file that replaced the old one",
            metrics.compactions.clone(),
        );
        registry.register(
            JOURNAL_FENCED,
            "Journal appends refused because another runner owns the partition (cluster mode's fencing)",
            metrics.journal_fenced.clone(),
        );
        registry.register(
            CLUSTER_SNAPSHOTS,
            "Cluster mode: snapshots of a partition saved (the journal below each is purged)",
            metrics.cluster_snapshots.clone(),
        );
        registry.register(
            CLUSTER_PARTITIONS_HELD,
            "Cluster mode: partitions this runner holds and serves (0 while it stands by)",
            metrics.cluster_partitions_held.clone(),
        );
        registry.register(
            CLUSTER_ROUTED,
            "Cluster mode, several partitions: findings and decisions routed, by source and how (republished, or handed_over to a partition served by this runner)",
            metrics.cluster_routed.clone(),
        );
        registry.register_with_unit(
            COMPACTION_DURATION,
            "How long commits waited for one store compaction (bringing the copy up to date and swapping it in)",
            Unit::Seconds,
            metrics.compaction_seconds.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a finding taken in (every parsed one), and whether it was dropped as a duplicate.
    /// Kinds come from publishers: past [`MAX_KIND_LABELS`] distinct ones, new kinds are counted
    /// as `other`, so a publisher cannot grow the registry without bound.
    pub fn finding(&self, kind: &str, duplicate: bool) {
        let label = KindLabel {
            kind: self.kind_label(kind),
        };
        self.findings_received.get_or_create(&label).inc();
        if duplicate {
            self.findings_deduplicated.get_or_create(&label).inc();
        }
    }

    /// Counts a run event that starts or ends a run.
    pub fn run_event(&self, playbook: &str, kind: quench_proto::RunEventKind) {
        use quench_proto::RunEventKind;
        let family = match kind {
            RunEventKind::RunStarted => &self.runs_started,
            RunEventKind::RunCompleted => &self.runs_completed,
            RunEventKind::RunFailed => &self.runs_failed,
            RunEventKind::RunCancelled => &self.runs_cancelled,
            _ => return,
        };
        family
            .get_or_create(&PlaybookLabel {
                playbook: playbook.to_owned(),
            })
            .inc();
    }

    fn kind_label(&self, kind: &str) -> String {
        let Ok(mut kinds) = self.kinds.lock() else {
            return OTHER_KIND.to_owned();
        };
        if kinds.contains(kind) {
            return kind.to_owned();
        }
        if kinds.len() < MAX_KIND_LABELS {
            kinds.insert(kind.to_owned());
            return kind.to_owned();
        }
        OTHER_KIND.to_owned()
    }

    /// Counts a message acknowledged without being processed or dead-lettered.
    pub fn intake_dropped(&self, consumer: &str, reason: &str) {
        self.intake_dropped
            .get_or_create(&DroppedLabels {
                consumer: consumer.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets a consumer's state gauges.
    pub fn intake_state(&self, consumer: &str, pending: u64, stuck: bool) {
        let label = ConsumerLabel {
            consumer: consumer.to_owned(),
        };
        self.intake_pending
            .get_or_create(&label)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.intake_stuck
            .get_or_create(&label)
            .set(i64::from(stuck));
    }

    /// Counts a dead-lettered message.
    /// A message routed from `source` (`findings`, `decisions`), `how`.
    pub fn routed(&self, source: &str, how: &str) {
        self.cluster_routed
            .get_or_create(&RoutedLabels {
                source: source.to_owned(),
                how: how.to_owned(),
            })
            .inc();
    }

    pub fn dead_letter(&self, subject: &str, reason: &str) {
        self.dead_lettered
            .get_or_create(&DeadLetterLabels {
                subject: subject.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records one action call and, when it failed, its class.
    pub fn action_call(&self, action: &str, seconds: f64, error: Option<&'static str>) {
        self.step_duration
            .get_or_create(&ActionLabel {
                action: action.to_owned(),
            })
            .observe(seconds);
        if let Some(class) = error {
            self.action_errors
                .get_or_create(&ActionErrorLabels {
                    action: action.to_owned(),
                    class: class.to_owned(),
                })
                .inc();
        }
    }

    /// The Prometheus text exposition (OpenMetrics format).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        out
    }
}

/// Distinct finding kinds counted under their own label; later ones are counted as `other`.
pub const MAX_KIND_LABELS: usize = 256;
const OTHER_KIND: &str = "other";
