//! `[cluster] partitions` above 1 (ARCHITECTURE.md, "Several runners on a NATS cluster"):
//! every runner serves a share of the partitions, and the shares move as runners join and
//! leave, without a restart.
//!
//! - **Balancing.** Every fifth of a lease the runner says it is alive, reads the live members,
//!   and computes the same map every runner computes ([`crate::cluster::partition::owner`]):
//!   it claims each free partition the map gives it and hands back each one it holds that the
//!   map now gives another runner (after that partition's last commit, so the next owner takes
//!   it over at once).
//! - **Holding a partition** is what a runner on its own does with its store, once per
//!   partition: its lease kept, its journal taken over and replayed into the partition's cache
//!   (`<store.path>/partition-<n>`), its engine serving it ([`super::partition::Serving`]) with
//!   the findings and decisions routed to it. A partition lost (its lease, or an append fenced)
//!   or whose store failed stops on its own; the others go on.
//! - **Routing.** Every runner routes findings and decisions to their partitions
//!   ([`super::route`]).
//! - **The admin API** answers on every runner: a request for a run goes to the runner serving
//!   the run's partition (its id names it), everything else to partition 0's (the estate, the
//!   playbooks, the dead letters). A request for a partition this runner serves is answered
//!   here; any other is forwarded over HTTP to the serving runner's advertised address with
//!   its credentials, which that runner checks as it checks every request.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::cluster::{self, Joined};
use super::intake::{Feed, Limits};
use super::partition::{Serving, Shared};
use super::{Error, api, route};
use crate::cluster::partition::{self, Slot};
use crate::engine::Engine;
use crate::store::StoreConfig;

/// How long a partition's in-flight steps may take to finish when it is handed back.
const GRACE: Duration = Duration::from_secs(20);
/// A partition whose take-over failed is not claimed again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Set on a request one runner forwards to another: the other answers it or says the
/// partition is moving, never forwards it again.
const FORWARDED: HeaderName = HeaderName::from_static("quench-forwarded-by");
/// Most bytes of a request body forwarded.
const MAX_FORWARDED_BODY: usize = 16 * 1024 * 1024;
/// Names the partition a request is for, when one runner asks every partition (a list): the
/// runner serving it answers for that partition alone.
const PARTITION: HeaderName = HeaderName::from_static("quench-partition");
/// Most bytes of one partition's answer read to merge a list.
const MAX_PART_ANSWER: usize = 64 * 1024 * 1024;
/// Most gates an inbox lists (as a runner on its own does).
const MAX_INBOX: usize = 500;

/// What the front of the API reads of a partition this runner serves.
#[derive(Clone)]
struct Local {
    app: axum::Router,
    engine: Engine,
    library: super::playbooks::Library,
}

/// The partitions this runner serves, by number.
type Held = Arc<RwLock<BTreeMap<u32, Local>>>;

/// A partition being held: cancel `leave` to hand it back.
struct Holding {
    leave: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Serves this runner's share of the cluster's partitions until `shutdown`.
pub(super) async fn serve(
    shared: Shared,
    store_config: StoreConfig,
    signer: Option<Arc<crate::evidence::Signer>>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let shared = Arc::new(shared);
    let config = &shared.config;
    let partitions = config.cluster.partitions;
    let Some(joined) = cluster::join(config, &shared.client, &shared.jetstream, &shutdown).await?
    else {
        return Ok(());
    };
    route::ensure(&shared.jetstream, &config.nats.url, config.nats.replicas).await?;
    let stop = shutdown.child_token();
    let handovers = route::Handovers::default();
    let router = route::Router {
        jetstream: shared.jetstream.clone(),
        partitions,
        max_payload: shared.client.server_info().max_payload,
        handovers: handovers.clone(),
    }
    .run(Limits::new(&config.nats), stop.clone())
    .await?;
    // The estate is partition 0's: every runner follows it for its other partitions' reads.
    let estate = crate::store::Borrowed::default();
    let mut estate_config = store_config.clone();
    estate_config.path = store_config.path.join("estate");
    let stop_following = CancellationToken::new();
    let following = tokio::spawn(cluster::follow(
        crate::cluster::store::Follower::new(0, &estate_config).lending(estate.clone()),
        joined.journal.clone(),
        joined.snapshots.clone(),
        Arc::default(),
        stop_following.clone(),
    ));
    let held = Held::default();
    let listener = super::listen(config).await?;
    let front = Arc::new(Front {
        held: held.clone(),
        joined: joined.clone(),
        partitions,
        http: quench_common::http::http_client(),
        client: shared.client.clone(),
        balanced: std::sync::atomic::AtomicBool::new(false),
        peers: cluster::peers(config),
    });
    let api = tokio::spawn(front.clone().serve(listener, stop.clone()));
    let watched = held.clone();
    let watching = tokio::spawn({
        let (dir, stop) = (config.playbooks.dir.clone(), stop.clone());
        async move {
            super::playbooks::watch_and_reload(&dir, stop, move || {
                read(&watched)
                    .values()
                    .map(|local| local.library.clone())
                    .collect()
            })
            .await;
        }
    });
    let parts = Arc::new(ApiParts {
        tokens: api::Tokens::new(&config.api.tokens),
        signer,
        console: Arc::new(super::console(config, &shared.jetstream).await?),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    });
    let holder = Arc::new(Holder {
        shared: shared.clone(),
        joined: joined.clone(),
        store_config: store_config.clone(),
        held: held.clone(),
        parts,
        estate,
        handovers,
    });
    tracing::info!(runner = %joined.runner, partitions, listen = %config.api.listen, "quench is serving its share of the cluster's partitions");

    let mut holding: BTreeMap<u32, Holding> = BTreeMap::new();
    let mut failed: BTreeMap<u32, Instant> = BTreeMap::new();
    loop {
        // A partition whose holding ended on its own (lost, or its store failed).
        let ended: Vec<u32> = holding
            .iter()
            .filter(|(_, holding)| holding.task.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in ended {
            holding.remove(&partition);
            failed.insert(partition, Instant::now());
        }
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        match tokio::time::timeout(joined.lease_for / 2, joined.owners.mine(partitions)).await {
            Ok(Ok(share)) => {
                for number in 0..partitions {
                    let mine = share.contains(&number);
                    match holding.get(&number) {
                        Some(held) if !mine => held.leave.cancel(),
                        None if mine && !failed.contains_key(&number) => {
                            match joined.owners.claim(number).await {
                                Ok(Some(lease)) => {
                                    let leave = stop.child_token();
                                    let task =
                                        tokio::spawn(hold(holder.clone(), lease, leave.clone()));
                                    holding.insert(number, Holding { leave, task });
                                }
                                // Its former owner still holds it (handing it back, or dead
                                // and its lease not yet expired).
                                Ok(None) => {}
                                Err(error) => {
                                    tracing::warn!(partition = number, %error, "cannot claim the partition; trying again")
                                }
                            }
                        }
                        _ => {}
                    }
                }
                front
                    .balanced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the cluster's members; trying again")
            }
            Err(_) => tracing::warn!("the cluster's members did not answer; trying again"),
        }
        crate::metrics::get()
            .cluster_partitions_held
            .set(i64::try_from(holding.len()).unwrap_or(i64::MAX));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(joined.lease_for / 5) => {}
        }
    }
    tracing::info!("shutting down: handing every partition back after its last commit");
    for holding in holding.values() {
        holding.leave.cancel();
    }
    for (_, holding) in holding {
        let _ = holding.task.await;
    }
    stop.cancel();
    stop_following.cancel();
    if let Ok(mut follower) = following.await {
        follower.close().await;
    }
    let _ = router.await;
    let _ = api.await;
    let _ = watching.await;
    let _ = joined.owners.leave().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), shared.client.flush()).await;
    crate::metrics::get().cluster_partitions_held.set(0);
    Ok(())
}

/// What every partition's API shares.
struct ApiParts {
    tokens: api::Tokens,
    signer: Option<Arc<crate::evidence::Signer>>,
    console: Arc<super::console::Console>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

/// What holding any partition needs.
struct Holder {
    shared: Arc<Shared>,
    joined: Joined,
    store_config: StoreConfig,
    /// The partitions served, for the API's front.
    held: Held,
    parts: Arc<ApiParts>,
    /// Partition 0's estate, followed, for the other partitions' engines.
    estate: crate::store::Borrowed,
    /// Where the router hands over the findings of the partitions served here.
    handovers: route::Handovers,
}

/// Holds one partition until `leave` (handed back after its last commit), until it is lost,
/// or until its store fails.
async fn hold(holder: Arc<Holder>, lease: crate::cluster::owners::Lease, leave: CancellationToken) {
    let Holder {
        shared,
        joined,
        held,
        parts,
        ..
    } = &*holder;
    let number = lease.partition;
    let config = &shared.config;
    let estate = (number != 0).then(|| holder.estate.clone());
    let mut store_config = holder.store_config.clone();
    store_config.path = store_config.path.join(format!("partition-{number}"));
    let active = match cluster::hold(config, &shared.client, joined, lease, &store_config, &leave)
        .await
    {
        Ok(active) => active,
        Err(error) => {
            tracing::error!(partition = number, %error, "cannot take the partition over; it is claimed again later");
            return;
        }
    };
    let stop = CancellationToken::new();
    let slot = Slot {
        index: number,
        count: config.cluster.partitions,
    };
    let serving = match Serving::start(
        shared,
        active.store.clone(),
        slot,
        Feed::Partition(number),
        estate,
        stop.clone(),
    )
    .await
    {
        Ok(serving) => serving,
        Err(error) => {
            tracing::error!(partition = number, %error, "cannot serve the partition; handing it back");
            stop.cancel();
            active.release().await;
            return;
        }
    };
    let app = api::app(api::Api::new(api::Parts {
        engine: serving.engine.clone(),
        library: serving.library.clone(),
        client: shared.client.clone(),
        tokens: parts.tokens.clone(),
        ready: parts.ready.clone(),
        intake: serving.health.clone(),
        inventory: serving.inventory.clone(),
        inventory_status: serving.inventory_status.clone(),
        signer: parts.signer.clone(),
        sources: Arc::new(crate::evidence::Estate {
            inventory: serving.inventory.clone(),
            owners: shared.owners(),
        }),
        console: parts.console.clone(),
    }));
    write(held).insert(
        number,
        Local {
            app,
            engine: serving.engine.clone(),
            library: serving.library.clone(),
        },
    );
    if let Some(handover) = serving.handover.clone() {
        handovers(&holder.handovers).insert(number, handover);
    }
    tracing::info!(partition = number, "serving the partition");
    let failed = serving.failed.clone();
    tokio::select! {
        () = leave.cancelled() => {}
        () = active.lost.cancelled() => {}
        () = failed.cancelled() => {}
    }
    write(held).remove(&number);
    handovers(&holder.handovers).remove(&number);
    let lost = active.lost.is_cancelled();
    if lost {
        tracing::warn!(
            partition = number,
            "another runner holds the partition now: it stops here"
        );
    } else if failed.is_cancelled() {
        tracing::error!(
            partition = number,
            "a commit of the partition failed: it stops here, and is taken over again from its journal"
        );
    } else {
        tracing::info!(
            partition = number,
            "handing the partition back after its last commit"
        );
    }
    serving.stop(GRACE, lost).await;
    active.release().await;
}

fn write(held: &Held) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u32, Local>> {
    held.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn handovers(
    handovers: &route::Handovers,
) -> std::sync::RwLockWriteGuard<
    '_,
    BTreeMap<u32, tokio::sync::mpsc::Sender<async_nats::jetstream::Message>>,
> {
    handovers
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read(held: &Held) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Local>> {
    held.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The admin API of a runner serving a share of the partitions.
struct Front {
    held: Held,
    joined: Joined,
    partitions: u32,
    http: reqwest::Client,
    client: async_nats::Client,
    /// The first balancing round is done (`/readyz`).
    balanced: std::sync::atomic::AtomicBool,
    /// `[cluster] peers`: the only addresses a request is forwarded to.
    peers: Vec<quench_common::http::AllowHost>,
}

impl Front {
    async fn serve(self: Arc<Front>, listener: tokio::net::TcpListener, stop: CancellationToken) {
        let app = axum::Router::new().fallback(answer).with_state(self);
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the HTTP server stopped");
        }
    }

    /// The partition a request is for: the one it names ([`named_partition`]); a run's,
    /// named by its id; else partition 0, which holds the estate and answers for the playbooks
    /// and the dead letters.
    fn partition_of(&self, request: &Request) -> u32 {
        if let Some(Ok(number)) = named_partition(request, self.partitions) {
            return number;
        }
        request
            .uri()
            .path()
            .strip_prefix("/api/v1/runs/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|id| partition::of_run_id(id, self.partitions))
            .unwrap_or(0)
    }

    /// The answer of the partition a request is for, here or where it is served.
    async fn ask(&self, number: u32, request: Request) -> Response {
        let local = read(&self.held).get(&number).cloned();
        match local {
            Some(local) => match local.app.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            None => self.forward(number, request).await,
        }
    }

    /// The same request asked of every partition (each told which it is asked for). Their
    /// answers when every one is a success; else the first that is not (a partition moving
    /// between runners: 503, ask again).
    async fn ask_all(&self, request: Request) -> Result<Vec<Response>, Response> {
        let (parts, body) = request.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
            let body = api::types::ErrorBody::new(
                "too_large",
                format!("a request body is at most {MAX_FORWARDED_BODY} bytes"),
            );
            return Err((StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response());
        };
        let asked = (0..self.partitions).map(|number| {
            let mut request = Request::new(Body::from(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            request
                .headers_mut()
                .insert(&PARTITION, axum::http::HeaderValue::from(number));
            async move { self.ask(number, request).await }
        });
        let answers = futures::future::join_all(asked).await;
        if let Some(failed) = answers
            .iter()
            .position(|answer| !answer.status().is_success())
        {
            return Err(answers
                .into_iter()
                .nth(failed)
                .unwrap_or_else(|| StatusCode::BAD_GATEWAY.into_response()));
        }
        Ok(answers)
    }

    /// A list read from every partition, the answers merged by `merge`.
    async fn fan_out(
        &self,
        request: Request,
        merge: fn(Vec<serde_json::Value>, &str) -> serde_json::Value,
    ) -> Response {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let answers = match self.ask_all(request).await {
            Ok(answers) => answers,
            Err(failed) => return failed,
        };
        let mut bodies = Vec::with_capacity(answers.len());
        for answer in answers {
            let Ok(bytes) = axum::body::to_bytes(answer.into_body(), MAX_PART_ANSWER).await else {
                return StatusCode::BAD_GATEWAY.into_response();
            };
            match serde_json::from_slice(&bytes) {
                Ok(body) => bodies.push(body),
                Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        axum::Json(merge(bodies, &query)).into_response()
    }

    /// A change every partition makes (each keeps its own copy of the playbook library): made
    /// in all of them, answered with partition 0's answer; the first failure otherwise (the
    /// change is idempotent: made again, it completes).
    async fn everywhere(&self, request: Request) -> Response {
        match self.ask_all(request).await {
            Ok(answers) => answers
                .into_iter()
                .next()
                .unwrap_or_else(|| StatusCode::BAD_GATEWAY.into_response()),
            Err(failed) => failed,
        }
    }

    /// `/healthz`, `/readyz` and `/metrics`, answered by this runner for itself.
    fn probe(&self, path: &str) -> Option<Response> {
        let held: Vec<u32> = read(&self.held).keys().copied().collect();
        match path {
            "/healthz" => Some(
                axum::Json(serde_json::json!({"status": "ok", "partitions": held})).into_response(),
            ),
            "/readyz" => {
                let connected =
                    self.client.connection_state() == async_nats::connection::State::Connected;
                let ready = connected && self.balanced.load(std::sync::atomic::Ordering::Relaxed);
                let status = match ready {
                    true => StatusCode::OK,
                    false => StatusCode::SERVICE_UNAVAILABLE,
                };
                let nats = if connected {
                    "connected"
                } else {
                    "disconnected"
                };
                let body = serde_json::json!({"ready": ready, "nats": nats, "partitions": held});
                Some((status, axum::Json(body)).into_response())
            }
            "/metrics" => {
                let metrics = crate::metrics::get();
                let (mut open, mut awaiting) = (0, 0);
                for local in read(&self.held).values() {
                    if let Ok(counts) = local.engine.run_counts() {
                        open += counts.open;
                        awaiting += counts.awaiting_approval;
                    }
                }
                metrics.runs_open.set(open);
                metrics.runs_awaiting_approval.set(awaiting);
                let connected =
                    self.client.connection_state() == async_nats::connection::State::Connected;
                metrics.nats_connected.set(i64::from(connected));
                Some(
                    (
                        [(header::CONTENT_TYPE, quench_common::metrics::CONTENT_TYPE)],
                        metrics.render(),
                    )
                        .into_response(),
                )
            }
            _ => None,
        }
    }

    /// Forwards `request` to the runner serving `number`.
    async fn forward(&self, number: u32, request: Request) -> Response {
        let moving = |why: String| {
            let body = api::types::ErrorBody::new("partition_moving", why);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "2")],
                axum::Json(body),
            )
                .into_response()
        };
        if request.headers().contains_key(&FORWARDED) {
            return moving(format!(
                "partition {number} is moving between runners; ask again in a moment"
            ));
        }
        let owner = match self.joined.owners.owner_of(number).await {
            Ok(Some((runner, _))) => runner,
            Ok(None) => {
                return moving(format!(
                    "no runner serves partition {number} at the moment; ask again in a moment"
                ));
            }
            Err(error) => {
                return moving(format!(
                    "cannot tell who serves partition {number}: {error}"
                ));
            }
        };
        let address = match self.joined.owners.address_of(&owner).await {
            Ok(Some(address)) => address,
            _ => {
                return moving(format!(
                    "runner {owner} serves partition {number} but advertises no address"
                ));
            }
        };
        if !cluster::admitted(&self.peers, &address) {
            // Runner credentials could have written any address; the caller's credentials go
            // only where `peers` allows.
            tracing::error!(runner = %owner, %address, partition = number, "a runner advertises an address `[cluster] peers` does not allow: not forwarding to it");
            let body = api::types::ErrorBody::new(
                "peer_not_allowed",
                format!(
                    "runner {owner}, which serves partition {number}, advertises {address}, \
                     which `[cluster] peers` does not allow; the request was not forwarded"
                ),
            );
            return (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
        }
        let (parts, body) = request.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
            let body = api::types::ErrorBody::new(
                "too_large",
                format!("a request body is at most {MAX_FORWARDED_BODY} bytes"),
            );
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
        };
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let mut forwarded = self
            .http
            .request(parts.method.clone(), format!("{address}{path}"))
            .body(body);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                forwarded = forwarded.header(name, value);
            }
        }
        forwarded = forwarded.header(&FORWARDED, self.joined.runner.as_str());
        match forwarded.send().await {
            Ok(answer) => {
                let mut response = Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if !hop_by_hop(name) {
                        response = response.header(name, value);
                    }
                }
                response
                    .body(Body::from_stream(answer.bytes_stream()))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
            }
            Err(error) => moving(format!(
                "runner {owner}, which serves partition {number}, did not answer: {error}"
            )),
        }
    }
}

/// The pages whose query may name the partition (`?partition=<n>`), as the header does: the
/// audit chain a browser lists or downloads, where a link cannot send a header.
const PARTITION_IN_QUERY: [&str; 2] = ["/api/v1/audit", "/api/v1/audit/export"];

/// The partition a request names: the header `Quench-Partition`, or on the audit pages the
/// query's `partition`. Refused: a value that is not a number, or header and query naming two
/// (400 `bad_partition`); a number that names no partition (404 `no_such_partition`).
fn named_partition(request: &Request, count: u32) -> Option<Result<u32, Refused>> {
    let check = |what: &str, value: Option<&str>| match value.and_then(|v| v.parse::<u32>().ok()) {
        Some(number) if number < count => Ok(number),
        Some(number) => Err(Refused {
            status: StatusCode::NOT_FOUND,
            code: "no_such_partition",
            message: format!(
                "{what} {number}: there is no such partition; it must be a partition number from 0 to {}",
                count - 1
            ),
        }),
        None => Err(Refused {
            status: StatusCode::BAD_REQUEST,
            code: "bad_partition",
            message: format!("{what} must be a partition number from 0 to {}", count - 1),
        }),
    };
    let header = request
        .headers()
        .get(&PARTITION)
        .map(|value| check("`Quench-Partition`", value.to_str().ok()));
    let query = PARTITION_IN_QUERY
        .contains(&request.uri().path())
        .then(|| request.uri().query())
        .flatten()
        .and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "partition")
                .map(|(_, value)| check("`partition`", Some(&value)))
        });
    match (header, query) {
        (Some(Ok(header)), Some(Ok(query))) if header != query => Some(Err(Refused {
            status: StatusCode::BAD_REQUEST,
            code: "bad_partition",
            message: format!(
                "`Quench-Partition` says {header} and `partition` {query}: name one partition"
            ),
        })),
        (Some(Err(why)), _) | (_, Some(Err(why))) => Some(Err(why)),
        (Some(Ok(number)), _) | (None, Some(Ok(number))) => Some(Ok(number)),
        (None, None) => None,
    }
}

/// Why a request's partition is refused.
#[derive(Debug, PartialEq)]
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// Headers that belong to one connection, not to the request or answer passed on. `Host` is
/// passed on: the serving runner checks a console sign-in's `Origin` against the host the
/// browser asked for.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
    ]
    .contains(name)
}

/// Every request: a probe; a list every partition contributes to; else the API of the
/// partition it is for, here or where it is served.
async fn answer(State(front): State<Arc<Front>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if let Some(response) = front.probe(&path) {
        return response;
    }
    let named = match named_partition(&request, front.partitions) {
        Some(Err(why)) => {
            let body = api::types::ErrorBody::new(why.code, why.message);
            return (why.status, axum::Json(body)).into_response();
        }
        named => named.is_some(),
    };
    let get = request.method() == axum::http::Method::GET;
    let post = request.method() == axum::http::Method::POST;
    let playbook_change = path == "/api/v1/playbooks"
        || (path.starts_with("/api/v1/playbooks/")
            && (path.ends_with("/enable") || path.ends_with("/disable")));
    match path.as_str() {
        _ if named => {
            let number = front.partition_of(&request);
            front.ask(number, request).await
        }
        "/api/v1/runs" if get => front.fan_out(request, merge_runs).await,
        "/api/v1/inbox" if get => front.fan_out(request, merge_inbox).await,
        "/api/v1/audit/verify" if get => front.fan_out(request, merge_verified).await,
        // Each partition has its own chain: an export or a prune of "the" chain would be
        // partition 0's alone, and taken for the whole.
        "/api/v1/audit/export" | "/api/v1/audit/prune" => {
            let body = api::types::ErrorBody::new(
                "partition_needed",
                format!(
                    "this cluster has {} partitions, each with its own audit chain: name the \
                     one to export or prune with the header `Quench-Partition: <n>` or, for an \
                     export, `?partition=<n>` (`quench audit export --partition <n>`), for each \
                     partition in turn",
                    front.partitions
                ),
            );
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        _ if post && playbook_change => front.everywhere(request).await,
        _ => {
            let number = front.partition_of(&request);
            front.ask(number, request).await
        }
    }
}

/// Pages of runs (newest first) from every partition, as one page. A partition that stopped
/// early (its `next`) has not read the runs below its cursor, so the page keeps only runs at
/// or above the highest such cursor: the next page goes on from there, and no run is skipped.
fn merge_runs(pages: Vec<serde_json::Value>, query: &str) -> serde_json::Value {
    let limit = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "limit")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 500);
    let mut floor: Option<String> = None;
    let mut runs = Vec::new();
    for mut page in pages {
        if let Some(next) = page["next"].as_str()
            && floor.as_deref().is_none_or(|floor| next > floor)
        {
            floor = Some(next.to_owned());
        }
        if let serde_json::Value::Array(items) = page["runs"].take() {
            runs.extend(items);
        }
    }
    let id = |run: &serde_json::Value| run["id"].as_str().unwrap_or_default().to_owned();
    if let Some(floor) = &floor {
        runs.retain(|run| id(run).as_str() >= floor.as_str());
    }
    runs.sort_by_key(|run| std::cmp::Reverse(id(run)));
    let next = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(id)
    } else {
        floor
    };
    serde_json::json!({"runs": runs, "next": next})
}

/// Every partition's audit chain verified: ok when each is, `entries` all of them, `head`
/// partition 0's, the first bad entry of the first partition with one; `partitions` has each.
fn merge_verified(verified: Vec<serde_json::Value>, _query: &str) -> serde_json::Value {
    let ok = verified.iter().all(|one| one["ok"] == true);
    let entries: u64 = verified
        .iter()
        .filter_map(|one| one["entries"].as_u64())
        .sum();
    let head = verified
        .first()
        .map_or(serde_json::Value::Null, |one| one["head"].clone());
    let bad = verified
        .iter()
        .enumerate()
        .find(|(_, one)| one["ok"] != true);
    let (first_bad, reason) = match bad {
        Some((number, one)) => (
            one["first_bad"].clone(),
            serde_json::Value::String(format!(
                "partition {number}: {}",
                one["reason"].as_str().unwrap_or("does not verify")
            )),
        ),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    serde_json::json!({
        "ok": ok, "entries": entries, "head": head, "first_bad": first_bad, "reason": reason,
        "partitions": verified,
    })
}

/// Every partition's inbox, as one: earliest deadline first, at most [`MAX_INBOX`] listed,
/// `count` all of them.
fn merge_inbox(inboxes: Vec<serde_json::Value>, _query: &str) -> serde_json::Value {
    let person = inboxes
        .first()
        .and_then(|inbox| inbox["person"].as_str())
        .unwrap_or_default()
        .to_owned();
    let count: u64 = inboxes
        .iter()
        .filter_map(|inbox| inbox["count"].as_u64())
        .sum();
    let mut gates: Vec<serde_json::Value> = inboxes
        .into_iter()
        .flat_map(|mut inbox| match inbox["gates"].take() {
            serde_json::Value::Array(gates) => gates,
            _ => Vec::new(),
        })
        .collect();
    let order = |gate: &serde_json::Value| {
        (
            gate["deadline"]
                .as_str()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok()),
            gate["run_id"].as_str().unwrap_or_default().to_owned(),
        )
    };
    gates.sort_by_key(order);
    gates.truncate(MAX_INBOX);
    serde_json::json!({"person": person, "count": count, "gates": gates})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> serde_json::Value {
        serde_json::json!({"id": id})
    }

    fn ids(page: &serde_json::Value) -> Vec<&str> {
        page["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|run| run["id"].as_str())
            .collect()
    }

    #[test]
    fn a_request_names_its_partition_by_header_or_on_the_audit_pages_by_query() {
        let named = |uri: &str, header: Option<&str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(header) = header {
                request = request.header(&PARTITION, header);
            }
            named_partition(&request.body(Body::empty()).expect("request"), 8)
        };
        assert_eq!(named("/api/v1/audit", None), None);
        assert_eq!(named("/api/v1/audit?partition=3", None), Some(Ok(3)));
        assert_eq!(
            named("/api/v1/audit/export?before=9&partition=7", None),
            Some(Ok(7))
        );
        assert_eq!(named("/api/v1/audit", Some("5")), Some(Ok(5)));
        assert_eq!(named("/api/v1/audit?partition=5", Some("5")), Some(Ok(5)));
        // Elsewhere the query is the page's own: only the header names a partition.
        assert_eq!(named("/api/v1/runs?partition=3", None), None);
        assert_eq!(named("/api/v1/audit/prune?partition=3", None), None);
        for (uri, header, status) in [
            ("/api/v1/audit?partition=8", None, StatusCode::NOT_FOUND),
            ("/api/v1/audit", Some("8"), StatusCode::NOT_FOUND),
            ("/api/v1/audit?partition=-1", None, StatusCode::BAD_REQUEST),
            ("/api/v1/audit?partition=", None, StatusCode::BAD_REQUEST),
            (
                "/api/v1/audit?partition=%33%00",
                None,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/v1/audit?partition=99999999999999999999",
                None,
                StatusCode::BAD_REQUEST,
            ),
            ("/api/v1/audit", Some(" 1"), StatusCode::BAD_REQUEST),
            (
                "/api/v1/audit?partition=3",
                Some("4"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/v1/audit?partition=x",
                Some("4"),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            assert!(
                matches!(named(uri, header), Some(Err(refused)) if refused.status == status),
                "{uri} {header:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a caller puts in `?partition=` (or the header), the front names the
        /// partition only when it is a number below the count, and never panics.
        #[test]
        fn any_named_partition_is_a_partition_or_refused(value in ".{0,24}") {
            let encoded: String =
                url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let request = Request::builder()
                .uri(format!("/api/v1/audit/export?before=1&partition={encoded}"))
                .body(Body::empty())
                .expect("request");
            let want = value.parse::<u32>().ok().filter(|number| *number < 8);
            match named_partition(&request, 8) {
                Some(Ok(number)) => proptest::prop_assert_eq!(Some(number), want),
                Some(Err(_)) => proptest::prop_assert_eq!(None, want),
                None => proptest::prop_assert!(false, "a `partition` was given"),
            }
            if let Ok(header) = axum::http::HeaderValue::from_str(&value) {
                let request = Request::builder()
                    .uri("/api/v1/runs")
                    .header(&PARTITION, header)
                    .body(Body::empty())
                    .expect("request");
                let named = named_partition(&request, 8).and_then(Result::ok);
                proptest::prop_assert_eq!(named, want);
            }
        }
    }

    #[test]
    fn pages_of_runs_merge_newest_first_and_skip_nothing() {
        // Partition 0 stopped at "c" (more below it); partition 1 read to its end.
        let pages = vec![
            serde_json::json!({"runs": [run("e"), run("c")], "next": "c"}),
            serde_json::json!({"runs": [run("f"), run("d"), run("a")], "next": null}),
        ];
        let merged = merge_runs(pages, "limit=10");
        // "a" waits for the next page: partition 0 may have runs between "c" and "a".
        assert_eq!(ids(&merged), ["f", "e", "d", "c"]);
        assert_eq!(merged["next"], "c");

        let pages = vec![
            serde_json::json!({"runs": [run("e"), run("c")], "next": null}),
            serde_json::json!({"runs": [run("f"), run("d")], "next": null}),
        ];
        let merged = merge_runs(pages, "limit=3");
        assert_eq!(ids(&merged), ["f", "e", "d"]);
        assert_eq!(
            merged["next"], "d",
            "the next page goes on below the last listed"
        );

        let merged = merge_runs(vec![serde_json::json!({"runs": [], "next": null})], "");
        assert_eq!(merged["next"], serde_json::Value::Null);
    }

    #[test]
    fn inboxes_merge_earliest_deadline_first() {
        let inboxes = vec![
            serde_json::json!({"person": "admin", "count": 1, "gates": [
                {"run_id": "r2", "deadline": "2026-12-07T12:00:00Z"}]}),
            serde_json::json!({"person": "admin", "count": 2, "gates": [
                {"run_id": "r1", "deadline": "2026-12-07T11:00:00Z"},
                {"run_id": "r3", "deadline": "2026-12-07T13:00:00Z"}]}),
        ];
        let merged = merge_inbox(inboxes, "");
        assert_eq!(merged["count"], 3);
        let runs: Vec<&str> = merged["gates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|gate| gate["run_id"].as_str())
            .collect();
        assert_eq!(runs, ["r1", "r2", "r3"]);
    }

    #[test]
    fn connection_headers_are_not_passed_on() {
        assert!(!hop_by_hop(&header::HOST));
        assert!(hop_by_hop(&header::CONNECTION));
        assert!(hop_by_hop(&HeaderName::from_static("keep-alive")));
        assert!(!hop_by_hop(&header::AUTHORIZATION));
        assert!(!hop_by_hop(&header::CONTENT_TYPE));
    }
}
