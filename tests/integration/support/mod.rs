//! Shared test support: paths into the repository, checked-in generated files, and the `quench`
//! binary. Later areas add a real `nats-server` and the Slack and OpenAI fakes here.

use std::path::{Path, PathBuf};

/// The repository root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Compares a generated file with its checked-in copy. With `QUENCH_BLESS=1` the copy is
/// rewritten instead, which is how a deliberate change to a contract is recorded.
pub(crate) fn check_generated(relative: &str, generated: &serde_json::Value) {
    let path = root().join(relative);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(generated).expect("schemas serialize")
    );
    if std::env::var_os("QUENCH_BLESS").is_some() {
        std::fs::write(&path, &text)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text,
        "{relative} is stale: the types it is generated from changed.\n\
         Review the change, then regenerate with `QUENCH_BLESS=1 cargo test -p quench-tests` and commit it."
    );
}

/// The `quench` binary built by this `cargo test` run (`target/<profile>/quench`). The README's
/// test command builds the binaries before the tests, so this is always the current code.
pub(crate) fn quench_bin() -> PathBuf {
    binary("quench")
}

/// Whether the `nats-server` on PATH knows JetStream's `sync_interval` (2.10 and newer; tests/run
/// puts the pinned release from tests/tools/nats-server.txt first on PATH, Debian ships 2.9).
pub(crate) fn nats_server_syncs() -> bool {
    let output = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .expect("nats-server runs (tests/run installs it)");
    let said = String::from_utf8_lossy(&output.stdout);
    let version: Vec<u32> = said
        .trim()
        .trim_start_matches("nats-server: v")
        .split(['.', '-'])
        .take(2)
        .map(|part| {
            part.parse()
                .expect("nats-server --version prints vMAJOR.MINOR")
        })
        .collect();
    version >= vec![2, 10]
}

/// The `quench-gateway` binary built by this `cargo test` run, as [`quench_bin`].
pub(crate) fn gateway_bin() -> PathBuf {
    binary("quench-gateway")
}

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    // A benchmark runs from target/release and uses the release binaries.
    let release = if profile_dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build{release} --workspace --bins` (tests/run does this)",
        bin.display()
    );
    bin
}

/// Every value stored under `path`, read as an attacker with the files would: sled opened on the
/// directory itself (the store must have been dropped; it lets go of its files before the drop
/// returns).
pub(crate) fn stored_values(path: &Path) -> Vec<String> {
    let db = sled::open(path).expect("the store's files open with sled");
    db.iter()
        .map(|item| {
            let (_, value) = item.expect("readable");
            String::from_utf8_lossy(&value).into_owned()
        })
        .collect()
}

/// An engine on a store, with a manual clock and scripted actions, for driving runs from tests.
pub(crate) struct Harness {
    pub(crate) engine: quench_runner::engine::Engine,
    pub(crate) clock: std::sync::Arc<quench_runner::engine::ManualClock>,
    pub(crate) script: std::sync::Arc<quench_runner::testing::Script>,
}

/// Monday 2026-01-05 09:00 UTC: where test time starts.
pub(crate) fn start_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
        .expect("valid time")
        .with_timezone(&chrono::Utc)
}

impl Harness {
    /// A harness on a temporary store with the given playbooks (YAML sources).
    pub(crate) async fn new(playbooks: &[&str]) -> Harness {
        let store = quench_runner::store::Store::temporary().expect("temporary store");
        Harness::on(store, playbooks, start_time(), Default::default()).await
    }

    /// A harness on a given store, at a given time, with scripted action results.
    pub(crate) async fn on(
        store: quench_runner::store::Store,
        playbooks: &[&str],
        now: chrono::DateTime<chrono::Utc>,
        mocks: std::collections::BTreeMap<String, Vec<quench_runner::testing::MockResult>>,
    ) -> Harness {
        Harness::with_slack(store, playbooks, now, mocks, None).await
    }

    /// As [`Harness::on`], with a real Slack connector for `slack.message` and gate notices.
    pub(crate) async fn with_slack(
        store: quench_runner::store::Store,
        playbooks: &[&str],
        now: chrono::DateTime<chrono::Utc>,
        mocks: std::collections::BTreeMap<String, Vec<quench_runner::testing::MockResult>>,
        slack: Option<std::sync::Arc<quench_runner::connectors::slack::Slack>>,
    ) -> Harness {
        let register = slack.clone();
        Harness::build(
            store,
            playbooks,
            now,
            mocks,
            move |actions| {
                if let Some(slack) = &register {
                    slack.register(actions);
                }
            },
            slack.map(|slack| slack as std::sync::Arc<dyn quench_runner::engine::Notifier>),
            |_| {},
        )
        .await
    }

    /// A harness whose actions are scripted except those `register` puts in their place, with
    /// the engine's config changed by `configure` first.
    pub(crate) async fn build(
        store: quench_runner::store::Store,
        playbooks: &[&str],
        now: chrono::DateTime<chrono::Utc>,
        mocks: std::collections::BTreeMap<String, Vec<quench_runner::testing::MockResult>>,
        register: impl FnOnce(&mut quench_runner::engine::Actions),
        notifier: Option<std::sync::Arc<dyn quench_runner::engine::Notifier>>,
        configure: impl FnOnce(&mut quench_runner::engine::EngineConfig),
    ) -> Harness {
        use std::sync::Arc;
        let clock = Arc::new(quench_runner::engine::ManualClock::new(now));
        let script = Arc::new(quench_runner::testing::Script::new(mocks));
        let mut actions = quench_runner::engine::Actions::new();
        for spec in quench_runner::actions::REGISTRY {
            actions.insert(
                spec.name,
                Arc::new(quench_runner::testing::ScriptedAction::new(
                    spec,
                    script.clone(),
                )),
            );
        }
        let mut config = quench_runner::engine::EngineConfig::default();
        config.groups.insert(
            "secops".to_owned(),
            vec!["lead@example.com".to_owned(), "U0SECOPS1".to_owned()],
        );
        register(&mut actions);
        configure(&mut config);
        let mut engine = quench_runner::engine::Engine::new(store, clock.clone(), actions, config);
        if let Some(notifier) = notifier {
            engine = engine.with_notifier(notifier);
        }
        let compiled = playbooks
            .iter()
            .map(|source| {
                let compiled = quench_runner::playbook::compile(source);
                compiled.playbook.unwrap_or_else(|| {
                    panic!("test playbook does not compile: {:?}", compiled.diagnostics)
                })
            })
            .collect();
        engine
            .load_playbooks(compiled, "test")
            .await
            .expect("playbooks load");
        Harness {
            engine,
            clock,
            script,
        }
    }

    /// Ingests findings and drives every run they start; returns the outcomes.
    pub(crate) async fn ingest(
        &self,
        findings: &[quench_proto::Finding],
    ) -> Vec<quench_runner::engine::FindingOutcome> {
        let outcomes = self.engine.ingest(findings).await.expect("ingest");
        self.engine.idle().await.expect("drive");
        outcomes
    }

    /// Moves time forward and fires what fell due.
    pub(crate) async fn advance(&self, by: std::time::Duration) {
        use quench_runner::engine::Clock;
        self.clock
            .advance_to(self.clock.now() + chrono::Duration::from_std(by).expect("duration"));
        self.engine.fire_due().await.expect("fire");
        self.engine.idle().await.expect("drive");
        self.engine.fire_schedules().await.expect("schedules");
        self.engine.idle().await.expect("drive");
    }

    pub(crate) fn run(&self, id: &str) -> quench_runner::engine::Run {
        self.engine.run(id).expect("readable").expect("run exists")
    }

    pub(crate) fn gate(&self, run: &str, step: &str) -> quench_runner::engine::Gate {
        self.engine
            .store()
            .get(quench_runner::store::Key::Gate(run, step))
            .expect("readable")
            .expect("gate exists")
    }

    /// Answers a gate as `by` (via the API) with the gate's own token; drives the run.
    pub(crate) async fn answer(
        &self,
        run: &str,
        step: &str,
        choice: &str,
        by: &str,
    ) -> quench_runner::engine::DecisionOutcome {
        let token = self.gate(run, step).token;
        self.answer_with_token(run, step, choice, by, &token).await
    }

    pub(crate) async fn answer_with_token(
        &self,
        run: &str,
        step: &str,
        choice: &str,
        by: &str,
        token: &str,
    ) -> quench_runner::engine::DecisionOutcome {
        use quench_runner::engine::Clock;
        let decision = quench_proto::Decision {
            schema: quench_proto::DecisionSchema::V1,
            id: format!("d-{by}-{choice}"),
            run_id: run.to_owned(),
            gate: step.to_owned(),
            token: token.to_owned(),
            choice: choice.to_owned(),
            item: None,
            comment: None,
            actor: quench_proto::Actor {
                via: quench_proto::Via::Api,
                id: by.to_owned(),
                name: None,
            },
            decided_at: self.clock.now(),
        };
        let outcome = self
            .engine
            .decide(&decision, quench_runner::engine::Defer::Never)
            .await
            .expect("decide");
        self.engine.idle().await.expect("drive");
        outcome
    }

    /// Audit entries of one kind, in order.
    pub(crate) fn audit(&self, kind: &str) -> Vec<quench_runner::store::AuditEntry> {
        self.engine
            .store()
            .audit_entries()
            .map(|entry| {
                quench_runner::store::parse_stored(&entry.expect("entry").1)
                    .expect("parses")
                    .2
            })
            .filter(|entry| entry.kind == kind)
            .collect()
    }
}

/// A low-severity Finding v1 of `kind` numbered `n`, as JSON: id `<kind>-<n>`, key
/// `<kind>:<n>`, about the OpenAI key `key_<n>`.
pub(crate) fn numbered_finding(kind: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "schema": "quench.finding/v1", "id": format!("{kind}-{n}"), "kind": kind,
        "key": format!("{kind}:{n}"), "severity": "low", "title": "a finding",
        "detected_at": "2026-12-01T00:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n}")},
    })
}

/// `GET path` of the admin API at `listen` with `token`: the JSON of a successful answer,
/// `None` for any other (or none).
pub(crate) async fn api_get(listen: &str, path: &str, token: &str) -> Option<serde_json::Value> {
    let response = quench_common::http::http_client()
        .get(format!("http://{listen}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// A valid finding of `kind` about key `key_id`, with id `id`.
pub(crate) fn finding(id: &str, kind: &str, key_id: &str) -> quench_proto::Finding {
    let value = serde_json::json!({
        "schema": "quench.finding/v1", "id": id, "kind": kind, "severity": "high", "title": "test finding",
        "detected_at": "2026-01-05T08:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"},
        "owner": {"email": "alice@example.com"}
    });
    quench_proto::Finding::parse(
        value.to_string().as_bytes(),
        quench_proto::DEFAULT_MAX_FINDING_BYTES,
    )
    .expect("valid finding")
}

/// The run a finding started, from its ingest outcome.
pub(crate) fn started(outcome: &quench_runner::engine::FindingOutcome) -> String {
    match outcome {
        quench_runner::engine::FindingOutcome::Matched(handled) => handled
            .iter()
            .find_map(|(_, handling)| match handling {
                quench_runner::engine::Handling::Started { run } => Some(run.clone()),
                quench_runner::engine::Handling::Replaced { run, .. } => Some(run.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no run started: {outcome:?}")),
        other => panic!("no run started: {other:?}"),
    }
}

/// A real `nats-server` with JetStream on an ephemeral port and a temporary store, per test.
pub(crate) struct NatsServer {
    child: Option<std::process::Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    /// A config file (`-c`) and the environment it reads, instead of the command-line setup.
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

impl NatsServer {
    pub(crate) fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            config: None,
        };
        server.spawn(None);
        server
    }

    /// Starts `nats-server -c` with a copy of `config` whose `listen:` and `store_dir:` lines
    /// are rewritten to loopback on an ephemeral port and a temporary directory; `env` is the
    /// server's environment (passwords the file refers to as `$NAME`).
    pub(crate) fn with_config(config: &str, env: &[(&str, &str)]) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("jetstream");
        let mut rewritten = 0;
        let text: Vec<String> = config
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                if trimmed.starts_with("listen:") {
                    rewritten += 1;
                    "listen: 127.0.0.1:-1".to_owned()
                } else if trimmed.starts_with("store_dir:") {
                    rewritten += 1;
                    format!("  store_dir: \"{}\"", store.display())
                } else {
                    line.to_owned()
                }
            })
            .collect();
        assert_eq!(
            rewritten, 2,
            "the config has one listen: and one store_dir: line"
        );
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, text.join("\n")).expect("write the NATS config");
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            config: Some((path, env)),
        };
        server.spawn(None);
        server
    }

    fn spawn(&mut self, port: Option<u16>) {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let mut command = std::process::Command::new("nats-server");
        match &self.config {
            Some((path, env)) => {
                command.arg("-c").arg(path).envs(env.iter().cloned());
                if port.is_some() {
                    command.args(["-p", &port_arg]);
                }
            }
            None => {
                command
                    .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
                    .arg(self.dir.path().join("jetstream"));
            }
        }
        let child = command
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start nats-server ({error}); install it (Debian: `apt-get install -y nats-server`; tests/run does this)")
            });
        let started = std::time::Instant::now();
        self.port = loop {
            let ports = std::fs::read_dir(&ports_dir)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(Result::ok);
            if let Some(entry) = ports
                && let Ok(text) = std::fs::read_to_string(entry.path())
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = value["nats"][0].as_str()
            {
                break url
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse().ok())
                    .expect("port in the ports file");
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "nats-server did not start"
            );
            #[expect(
                clippy::disallowed_methods,
                reason = "a plain thread polls a child process"
            )]
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        self.child = Some(child);
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `size` servers forming one JetStream cluster on loopback, each with its own client and
    /// route port and its own store directory.
    pub(crate) fn cluster(size: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(size, false, size, true)
    }

    /// As deployed (`deploy/nats-cluster.conf`): [`NatsServer::cluster`] with every JetStream
    /// write fsynced before it is acknowledged (`sync_interval: always`); one server alone
    /// when `size` is 1. For benchmarks: the integration tests kill processes, not machines.
    pub(crate) fn synced_cluster(size: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(size, true, size, true)
    }

    /// [`NatsServer::cluster`] whose servers do not tell clients about each other
    /// (`no_advertise`): a client reaches only the servers it is given (through proxies, say).
    pub(crate) fn unadvertised_cluster(size: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(size, false, size, false)
    }

    /// [`NatsServer::cluster`] with only the first `started` servers running: a cluster without
    /// a quorum until the others are [`NatsServer::start_configured`]. Their URLs are known.
    pub(crate) fn partly_started_cluster(size: usize, started: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(size, false, started, true)
    }

    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts a server made by [`NatsServer::partly_started_cluster`] and not started yet, on
    /// the port its config names.
    pub(crate) fn start_configured(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.spawn(None);
    }

    fn cluster_of(size: usize, synced: bool, started: usize, advertise: bool) -> Vec<NatsServer> {
        let advertise = if advertise {
            ""
        } else {
            ", no_advertise: true"
        };
        let sync = if synced {
            ", sync_interval: always"
        } else {
            ""
        };
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let dir = tempfile::tempdir().expect("temp dir");
                let config = dir.path().join("nats-server.conf");
                let client = free_port();
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{index}\nlisten: 127.0.0.1:{port}\n\
                         jetstream {{ store_dir: \"{store}\"{sync} }}\n{cluster}",
                        port = client,
                        store = dir.path().join("jetstream").display(),
                        cluster = if size == 1 {
                            String::new()
                        } else {
                            format!(
                                "cluster {{ name: quench-test, listen: 127.0.0.1:{route}, \
                                 routes: [{route_list}]{advertise} }}\n"
                            )
                        },
                    ),
                )
                .expect("write the server config");
                let mut server = NatsServer {
                    child: None,
                    port: client,
                    dir,
                    config: Some((config, Vec::new())),
                };
                if index < started {
                    server.spawn(None);
                }
                server
            })
            .collect()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same JetStream directory.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(Some(port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `quench serve` as a child process.
pub(crate) struct Service {
    child: Option<std::process::Child>,
    pub(crate) listen: String,
    pub(crate) store: std::path::PathBuf,
    playbooks: std::path::PathBuf,
    nats: String,
    log: std::path::PathBuf,
    /// Extra environment (`QUENCH_<SECTION>__<KEY>` settings).
    env: Vec<(String, String)>,
    config: Option<std::path::PathBuf>,
    /// Extra arguments of `quench serve` (e.g. `--log-format json`).
    args: Vec<String>,
    /// What a start waits for: `/readyz` (serving), or `/healthz` (a cluster runner that
    /// stands by).
    until: &'static str,
}

impl Service {
    /// The service on `nats` with the playbooks in `playbooks`, a store under `dir`, environment,
    /// a config file (written to `dir/quench.toml`; the flags still win) and extra arguments of
    /// `quench serve` (e.g. `--log-format json`).
    pub(crate) fn launch(
        nats: &str,
        playbooks: &std::path::Path,
        dir: &std::path::Path,
        env: &[(&str, &str)],
        config: Option<&str>,
        args: &[&str],
    ) -> Service {
        let listen = format!("127.0.0.1:{}", free_port());
        Service::launch_at(listen, nats, playbooks, dir, env, config, args)
    }

    /// [`Service::launch`] on a given API listener (for a config that names it, such as an
    /// OpenID redirect URL registered before the service starts).
    pub(crate) fn launch_at(
        listen: String,
        nats: &str,
        playbooks: &std::path::Path,
        dir: &std::path::Path,
        env: &[(&str, &str)],
        config: Option<&str>,
        args: &[&str],
    ) -> Service {
        let mut service = Service::unstarted(listen, nats, playbooks, dir, env, config, args);
        service.spawn();
        service
    }

    /// [`Service::launch`] with a config, waiting only until it answers `/healthz` (a
    /// `[cluster]` runner that may stand by).
    pub(crate) fn launch_alive(
        nats: &str,
        playbooks: &std::path::Path,
        dir: &std::path::Path,
        config: &str,
    ) -> Service {
        let listen = format!("127.0.0.1:{}", free_port());
        Service::launch_alive_at(listen, nats, playbooks, dir, config)
    }

    /// [`Service::launch_alive`] on a given API listener (one the runners' `[cluster] peers`
    /// name).
    pub(crate) fn launch_alive_at(
        listen: String,
        nats: &str,
        playbooks: &std::path::Path,
        dir: &std::path::Path,
        config: &str,
    ) -> Service {
        let mut service = Service::unstarted(listen, nats, playbooks, dir, &[], Some(config), &[]);
        service.until = "/healthz";
        service.spawn();
        service
    }

    fn unstarted(
        listen: String,
        nats: &str,
        playbooks: &std::path::Path,
        dir: &std::path::Path,
        env: &[(&str, &str)],
        config: Option<&str>,
        args: &[&str],
    ) -> Service {
        let config = config.map(|text| {
            let path = dir.join("quench.toml");
            std::fs::write(&path, text).expect("write the service config");
            path
        });
        Service {
            child: None,
            listen,
            store: dir.join("state"),
            playbooks: playbooks.to_owned(),
            nats: nats.to_owned(),
            log: dir.join("serve.log"),
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            config,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            until: "/readyz",
        }
    }

    /// Starts the process again, waiting only until it answers `/healthz`.
    pub(crate) fn respawn_alive(&mut self) {
        self.until = "/healthz";
        self.spawn();
    }

    /// The process's exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub(crate) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = std::process::Command::new(quench_bin());
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args(["--nats", &self.nats, "--listen", &self.listen, "--store"])
            .arg(&self.store)
            .arg("--playbooks")
            .arg(&self.playbooks)
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("RUST_LOG", "info")
            // No NO_COLOR: a log written to a file is plain text by itself.
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("quench serve starts");
        self.child = Some(child);
        if let Some(child) = self.child.as_mut() {
            wait_for(child, &self.listen, self.until, "quench serve", &self.log);
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits; returns the exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        terminate(&mut self.child)
    }

    /// Sends a signal (`HUP`, `TERM`, …) without waiting.
    pub(crate) fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the service is running");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    pub(crate) fn kill(&mut self) {
        kill(&mut self.child);
    }
}

/// Sends a child SIGTERM and waits for it; returns its exit code.
fn terminate(child: &mut Option<std::process::Child>) -> Option<i32> {
    let mut child = child.take()?;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().ok().and_then(|status| status.code())
}

/// Kills a child and reaps it.
fn kill(child: &mut Option<std::process::Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a child process serving on `listen` answers `/readyz` with 200; panics with its
/// log when it exits first or takes longer than 20 s.
fn wait_ready(child: &mut std::process::Child, listen: &str, what: &str, log: &std::path::Path) {
    wait_for(child, listen, "/readyz", what, log);
}

/// Waits until a child process serving on `listen` answers `path` with 200; panics with its
/// log when it exits first or takes longer than 20 s.
fn wait_for(
    child: &mut std::process::Child,
    listen: &str,
    path: &str,
    what: &str,
    log: &std::path::Path,
) {
    let started = std::time::Instant::now();
    while http_status(listen, path) != Some(200) {
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} during start:\n{}", log());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{what} did not become ready:\n{}",
            log()
        );
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain thread polls a child process"
        )]
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// `quench-gateway` as a child process, with a config file written for it.
pub(crate) struct GatewayProcess {
    child: Option<std::process::Child>,
    /// `127.0.0.1:PORT` it serves on.
    pub(crate) listen: String,
    log: std::path::PathBuf,
}

impl GatewayProcess {
    /// Starts `quench-gateway --config <dir>/gateway.toml --listen 127.0.0.1:<free port>` and
    /// waits until `/readyz` answers 200.
    pub(crate) fn start(config: &str, dir: &std::path::Path) -> GatewayProcess {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).expect("write the gateway config");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = dir.join("gateway.log");
        let child = std::process::Command::new(gateway_bin())
            .arg("--config")
            .arg(&path)
            .args(["--listen", &listen])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("quench-gateway starts");
        let mut gateway = GatewayProcess {
            child: Some(child),
            listen,
            log,
        };
        if let Some(child) = gateway.child.as_mut() {
            wait_ready(child, &gateway.listen, "quench-gateway", &gateway.log);
        }
        gateway
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits; returns the exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        terminate(&mut self.child)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The status code of a plain HTTP GET, or `None` when nothing answers.
pub(crate) fn http_status(address: &str, path: &str) -> Option<u16> {
    http_get(address, path).map(|(status, _)| status)
}

/// The status code and body of a plain HTTP GET, or `None` when nothing answers.
pub(crate) fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Lower-case hex of `bytes` (token digests in `[[api.tokens]]`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The value of one series (`name{labels}`) in a Prometheus exposition, 0 when absent.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls `check` until it is true or `within` passes.
pub(crate) async fn eventually(
    within: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Every message on `subject` from now on that parses as a `T`, as it arrives (a background
/// task of `client`'s subscription).
pub(crate) async fn record<T: serde::de::DeserializeOwned + Send + 'static>(
    client: &async_nats::Client,
    subject: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<T>>> {
    use futures::StreamExt;
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut subscription = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    let sink = records.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if let Ok(record) = serde_json::from_slice::<T>(&message.payload) {
                sink.lock().expect("lock").push(record);
            }
        }
    });
    client.flush().await.expect("flush");
    records
}

/// [`eventually`] for a check that must await (e.g. reads NATS).
pub(crate) async fn eventually_async<F, Fut>(within: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The `p`-th percentile (0 < p ≤ 1) of `values` by the nearest-rank method; NaN when empty.
#[allow(
    dead_code,
    reason = "the benchmarks use it, the integration tests do not"
)]
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A `[cluster]` runner's config on the servers at `urls` (comma-separated): runner name
/// `runner`, an admin API token `token`, `cluster` added to its `[cluster]` table (`lease =
/// "3s"`, say), `extra` appended. Findings a runner took and did not commit before it stopped
/// come back after 5 s (`ack_wait`), and streams have 3 replicas.
pub(crate) fn cluster_config(
    urls: &str,
    runner: &str,
    token: &str,
    cluster: &str,
    extra: &str,
) -> String {
    let sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    format!(
        r#"
[nats]
url = "{urls}"
replicas = 3
ack_wait = "5s"

[cluster]
enabled = true
runner = "{runner}"
{cluster}

[[api.tokens]]
name = "admin"
role = "admin"
sha256 = "{sha}"
{extra}
"#
    )
}

/// Loopback listeners for `count` runners, and the `[cluster] peers` line that admits them.
pub(crate) fn peer_listens(count: usize) -> (Vec<String>, String) {
    let listens: Vec<String> = (0..count)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = format!(
        "peers = [{}]",
        listens
            .iter()
            .map(|listen| format!("{listen:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (listens, peers)
}

pub(crate) mod gateway_client;
pub(crate) mod split;
/// The OpenAI fake is a crate of its own (`services/openai-fake`): `quench up --demo` serves it too.
pub(crate) use quench_openai_fake as openai_fake;
// Not every helper of the Slack fake is used by a test yet.
#[allow(dead_code)]
pub(crate) mod slack_fake;

/// A HashiCorp Vault (KV v2, token and AppRole auth) on loopback.
pub(crate) mod vault_fake;

/// A Kubernetes API server (Secrets only) on loopback.
pub(crate) mod kubernetes_fake;

/// Prints a service's log when the test fails after this point (keep the guard alive).
pub(crate) fn print_log_on_failure(log: &std::path::Path) -> impl Drop + '_ {
    print_logs_on_failure(vec![log])
}

/// [`print_log_on_failure`] for several logs, printed in order.
pub(crate) fn print_logs_on_failure<P: AsRef<std::path::Path>>(logs: Vec<P>) -> impl Drop + use<P> {
    struct Guard<P: AsRef<std::path::Path>>(Vec<P>);
    impl<P: AsRef<std::path::Path>> Drop for Guard<P> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                for log in &self.0 {
                    eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
                }
            }
        }
    }
    Guard(logs)
}

/// Waits until the cluster's JetStream answers (a meta leader is elected).
pub(crate) async fn jetstream_ready(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    eventually_async(
        std::time::Duration::from_secs(30),
        "the cluster's JetStream",
        || {
            let jetstream = jetstream.clone();
            async move { jetstream.query_account().await.is_ok() }
        },
    )
    .await;
    jetstream
}

/// Held by each test that purges runs: `quench_runs_purged_total` is one counter for the whole
/// test binary, and the test that checks it counts what its own purge added.
pub(crate) static PURGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
