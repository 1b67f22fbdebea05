//! `quench up`: the quickstart. Unless NATS is configured, a `nats-server` child is started on
//! loopback with JetStream under `./data/nats`; then the service runs as `quench serve` would
//! (store `./data/state`, playbooks `./workflows`, dry-run unless an OpenAI admin key is set) and
//! what to do next is printed. Stopping quench stops the child too.

pub mod install;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long the child may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A `nats-server` child process, stopped (SIGTERM, then SIGKILL) when dropped or stopped.
#[derive(Debug)]
pub struct NatsChild {
    child: Option<Child>,
    url: String,
    flush: Flush,
    moved: Option<u16>,
    origin: install::Origin,
}

/// How the child's JetStream reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// `sync_interval: always`: what JetStream acknowledged is on disk (fsync per write).
    EveryWrite,
    /// The installed nats-server predates `sync_interval` (2.9 and older): it flushes every two
    /// minutes, so a power loss can take findings it already acknowledged.
    Periodic,
}

/// The child's JetStream settings. An acknowledged finding is one quench promises not to lose,
/// so every write is synced (NATS's default, a flush every two minutes, lost acknowledged writes
/// in Jepsen's analysis of NATS 2.12.1).
fn child_config(store_dir: &Path, flush: Flush) -> String {
    let store_dir = serde_json::Value::from(store_dir.display().to_string());
    match flush {
        Flush::EveryWrite => {
            format!("jetstream {{\n  store_dir: {store_dir}\n  sync_interval: always\n}}\n")
        }
        Flush::Periodic => format!("jetstream {{\n  store_dir: {store_dir}\n}}\n"),
    }
}

/// The child's config file, as an absolute path (it names the child in `ps`).
fn config_path(dir: &Path) -> PathBuf {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .join("nats-server.conf")
}

/// Writes the child's config, syncing every write when this nats-server knows the setting
/// (`nats-server -t` checks the file without starting).
async fn write_child_config(program: &Path, dir: &Path) -> Result<(PathBuf, Flush), StartError> {
    let path = config_path(dir);
    let store_dir = dir.join("jetstream");
    for flush in [Flush::EveryWrite, Flush::Periodic] {
        std::fs::write(&path, child_config(&store_dir, flush)).map_err(StartError::Spawn)?;
        let checked = Command::new(program)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    StartError::NotInstalled(program.display().to_string())
                }
                _ => StartError::Spawn(error),
            })?;
        let said = String::from_utf8_lossy(&checked.stderr).into_owned()
            + &String::from_utf8_lossy(&checked.stdout);
        if checked.status.success() {
            return Ok((path, flush));
        }
        if flush == Flush::Periodic || !said.contains("sync_interval") {
            return Err(StartError::Config(said.trim().to_owned()));
        }
    }
    Err(StartError::Config(
        "no configuration was accepted".to_owned(),
    ))
}

/// Why the child could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Missing(#[from] install::Missing),
    #[error("nats-server disappeared: {0} cannot be run")]
    NotInstalled(String),
    #[error("cannot start nats-server: {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not start within {seconds} s (its data is in {dir})")]
    Timeout { seconds: u64, dir: String },
    #[error("nats-server exited at start ({status}); is {dir} writable?")]
    Exited { status: String, dir: String },
    #[error("nats-server refused the configuration quench wrote for it: {0}")]
    Config(String),
}

impl NatsChild {
    /// Starts `server` on loopback with JetStream in `dir/jetstream`, synced to disk on every
    /// write when it supports that (see [`Flush`]). The port is the one the last start used
    /// (kept in `dir/port`), so URLs stay the same across restarts; a fresh directory, or a
    /// remembered port now taken by something else, gets a free one (see [`NatsChild::moved`]).
    pub async fn start(server: &install::NatsServer, dir: &Path) -> Result<NatsChild, StartError> {
        std::fs::create_dir_all(dir).map_err(StartError::Spawn)?;
        let (config, flush) = write_child_config(&server.program, dir).await?;
        if flush == Flush::Periodic {
            tracing::warn!(
                "this nats-server does not know `sync_interval` (it is older than 2.10): JetStream \
                 flushes to disk every two minutes, and a power loss can lose findings it already \
                 acknowledged; install nats-server 2.10 or newer"
            );
        }
        stop_orphan(dir).await;
        let port_file = dir.join("port");
        let remembered = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|text| text.trim().parse::<u16>().ok())
            .filter(|port| *port != 0);
        let free =
            remembered.filter(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok());
        let started = match free {
            Some(port) => match spawn(server, &config, dir, Some(port)).await {
                // Taken between the check and the start: any free port will do.
                Err(StartError::Exited { .. }) => spawn(server, &config, dir, None).await,
                other => other,
            },
            None => spawn(server, &config, dir, None).await,
        };
        let (child, url) = started?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join("nats.pid"), format!("{pid}\n")).map_err(StartError::Spawn)?;
        }
        let port = url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok());
        if let Some(port) = port {
            std::fs::write(&port_file, format!("{port}\n")).map_err(StartError::Spawn)?;
        }
        Ok(NatsChild {
            child: Some(child),
            url,
            flush,
            moved: remembered.filter(|old| Some(*old) != port),
            origin: server.origin.clone(),
        })
    }

    /// The remembered port this start could not use (it was taken), if so.
    pub fn moved(&self) -> Option<u16> {
        self.moved
    }

    /// Where the nats-server program came from.
    pub fn origin(&self) -> &install::Origin {
        &self.origin
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn flush(&self) -> Flush {
        self.flush
    }

    /// Stops the child: SIGTERM (it flushes JetStream), then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Stops a nats-server child left running by a `quench up` that was killed (SIGKILL gives it
/// no chance to stop its child): it holds the remembered port and the JetStream directory, and
/// the caller holds the data directory's lock, so no live `quench up` owns it.
async fn stop_orphan(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join("nats.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return;
    };
    let pid = pid.to_string();
    // Only our child: a nats-server started with this directory's config (a pid can be reused).
    let args = Command::new("ps")
        .args(["-o", "args=", "-p", &pid])
        .output()
        .await
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    let config = config_path(dir);
    if !args.contains("nats-server") || !args.contains(&config.display().to_string()) {
        return;
    }
    tracing::warn!(pid = %pid, "stopping the nats-server child of a quench up that did not stop it");
    let alive = || async {
        Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success())
    };
    for signal in ["-TERM", "-KILL"] {
        let _ = Command::new("kill").args([signal, &pid]).status().await;
        for _ in 0..100 {
            if !alive().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `server` on `port` (any free one when `None`) and waits until it listens.
async fn spawn(
    server: &install::NatsServer,
    config: &Path,
    dir: &Path,
    port: Option<u16>,
) -> Result<(Child, String), StartError> {
    let ports = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports);
    std::fs::create_dir_all(&ports).map_err(StartError::Spawn)?;
    let port = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let mut child = Command::new(&server.program)
        .arg("-c")
        .arg(config)
        .args(["-a", "127.0.0.1", "-p", &port])
        .arg("--ports_file_dir")
        .arg(&ports)
        .arg("-l")
        .arg(dir.join("nats-server.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => {
                StartError::NotInstalled(server.program.display().to_string())
            }
            _ => StartError::Spawn(error),
        })?;
    let shown = dir.display().to_string();
    let started = std::time::Instant::now();
    loop {
        if let Some(url) = read_ports(&ports) {
            return Ok((child, url));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited {
                status: status.to_string(),
                dir: shown,
            });
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(StartError::Timeout {
                seconds: START_TIMEOUT.as_secs(),
                dir: shown,
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The client URL from the ports file nats-server writes once it listens.
fn read_ports(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir).ok()?.next()?.ok()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(value["nats"][0].as_str()?.to_owned())
}

/// Where `quench up` keeps its data.
pub fn data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// Where `quench up` keeps NATS data.
pub fn nats_dir() -> PathBuf {
    data_dir().join("nats")
}

/// The config `quench up` reads when none is named.
pub fn local_config() -> PathBuf {
    PathBuf::from("quench.toml")
}

/// `quench up`'s claim on its data directory: an exclusive lock on `<dir>/quench.lock`, held
/// for the life of the process (the OS releases it however the process ends), with the pid in
/// the file for the next one to name.
#[derive(Debug)]
pub struct Instance {
    _lock: std::fs::File,
}

/// Why `quench up` cannot use the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another quench (pid {pid}) is using {dir}; stop it first (Ctrl-C in its terminal, or `kill {pid}`), or run this one in another directory"
    )]
    Busy { pid: String, dir: String },
    #[error("cannot use {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

impl Instance {
    pub fn claim(dir: &Path) -> Result<Instance, ClaimError> {
        use std::io::{Read, Seek, Write};
        let shown = dir.display().to_string();
        let io = |source| ClaimError::Io {
            dir: shown.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("quench.lock"))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(ClaimError::Busy {
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
                    dir: shown,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Instance { _lock: file })
    }
}

/// Where a running `quench up` serves, written to `<data>/up.json` once it is ready, so CLI
/// commands run in the same directory find it without `--api` or `--nats`. It holds addresses
/// only (never the token). Read only while the instance holds its lock: a file left by a
/// process that died is ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    pub pid: u32,
    /// The admin API's base URL, e.g. `http://127.0.0.1:8080`.
    pub api: String,
    /// The NATS URL.
    pub nats: String,
}

impl Endpoints {
    fn path(dir: &Path) -> PathBuf {
        dir.join("up.json")
    }

    /// Writes the file (beside it, then renamed).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let partial = dir.join("up.json.partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&partial, Self::path(dir))
    }

    /// Removes the file (when `quench up` stops).
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(Self::path(dir));
    }

    /// The endpoints of the `quench up` running on `dir`, if one is.
    pub fn of_running(dir: &Path) -> Option<Endpoints> {
        let text = std::fs::read(Self::path(dir)).ok()?;
        let endpoints: Endpoints = serde_json::from_slice(&text).ok()?;
        // A shared lock is refused while `quench up` holds its exclusive one.
        let lock = std::fs::File::open(dir.join("quench.lock")).ok()?;
        match lock.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(endpoints),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }
}

/// What `quench up` prints once it is serving.
#[derive(Debug)]
pub struct Banner<'a> {
    pub nats: &'a str,
    pub listen: &'a str,
    pub dry_run: bool,
    /// The nats-server child, when quench started one.
    pub nats_child: Option<&'a NatsChild>,
    /// `group:secops` is a stand-in (the config defines no such group).
    pub stand_in_group: bool,
    /// The admin API token made for this run when none is configured (printed here, on the
    /// terminal, and never logged).
    pub token: Option<&'a str>,
    /// Scheduled playbooks paused here, with why.
    pub paused: &'a [(String, String)],
    /// The config file read, if any.
    pub config_file: Option<&'a str>,
    /// `quench up --demo`'s organization, which changes the mode, adds lines and replaces the
    /// next steps.
    pub demo: Option<&'a super::demo::Demo>,
}

/// The banner's text.
pub fn next_steps(banner: &Banner<'_>) -> String {
    let Banner {
        nats,
        listen,
        dry_run,
        nats_child,
        stand_in_group,
        token,
        paused,
        config_file,
        demo,
    } = *banner;
    let mode = if let Some(demo) = demo {
        demo.mode()
    } else if dry_run {
        "dry-run: no OpenAI admin key is configured, so nothing is changed at OpenAI; \
         mutating steps record the request they would send"
    } else {
        "live: OpenAI and Slack calls are real"
    };
    let jetstream = match demo {
        Some(_) => super::demo::nats_dir(),
        None => nats_dir(),
    };
    let jetstream = jetstream.display();
    let nats_line = match nats_child {
        Some(child) => {
            let flush = match child.flush() {
                Flush::EveryWrite => {
                    format!("JetStream in {jetstream}, synced to disk on every write")
                }
                Flush::Periodic => format!(
                    "JetStream in {jetstream}; this nats-server is older than 2.10 and flushes \
                     every two minutes: a power loss can lose acknowledged findings"
                ),
            };
            let program = match child.origin() {
                install::Origin::Path(version) => format!("nats-server {version} from the PATH"),
                install::Origin::Installed => {
                    format!("nats-server {} in ./data/tools", install::VERSION)
                }
                install::Origin::Downloaded { .. } => format!(
                    "nats-server {}, installed now into ./data/tools",
                    install::VERSION
                ),
                install::Origin::Old { version, .. } => {
                    format!("nats-server {version} from the PATH")
                }
            };
            let moved = match child.moved() {
                Some(old) => format!(
                    "\n             (port {old}, used last time, is taken by another program: \
                     this run's NATS URL is new)"
                ),
                None => String::new(),
            };
            format!("{nats} ({program}; {flush}){moved}")
        }
        None => nats.to_owned(),
    };
    let group_line = if stand_in_group {
        "\n  approvers  group:secops = secops@example.com (a stand-in: set [groups] in quench.toml)"
    } else {
        ""
    };
    let config_line = match config_file {
        Some(file) => format!("\n  config     {file}"),
        None => "\n  config     none (defaults; put settings in ./quench.toml)".to_owned(),
    };
    let paused_line: String = paused
        .iter()
        .map(|(playbook, why)| format!("\n  paused     {playbook}: {why}"))
        .collect();
    let (token_line, token_step) = match token {
        Some(token) => (
            format!(
                "\n  console    http://{listen}/#token={token}\n             (a login link for this run only; the token stays in the browser)\n  API token  an admin token for this run only (set [[api.tokens]] to keep one)"
            ),
            format!("  0. use this run's API token:\n       export QUENCH_TOKEN={token}\n"),
        ),
        None => (
            format!("\n  console    http://{listen}/ (sign in with a token of [[api.tokens]])"),
            String::new(),
        ),
    };
    let (demo_lines, steps) = match demo {
        Some(demo) => (demo.summary(), demo.next_steps(listen, &token_step)),
        None => (
            String::new(),
            format!(
                "
Next, in another terminal:
{token_step}  1. publish the sample leaked-key finding:
       quench publish workflows/examples/leaked-openai-key.json
  2. watch its run wait for approval:
       quench runs list
  3. approve it (RUN from the list; a unique prefix of it is enough):
       quench approve RUN --gate decide --choice revoke
  4. see what happened, and verify the audit chain:
       quench runs show RUN
       quench audit verify
  (run these in this directory: they find this quench through ./data/up.json;
   elsewhere, add --nats {nats} or --api http://{listen})
"
            ),
        ),
    };
    format!(
        "quench is up ({mode}).
  NATS       {nats_line}
  admin API  http://{listen}{config_line}{group_line}{token_line}{paused_line}{demo_lines}
{steps}
Ctrl-C stops quench{}.
",
        if nats_child.is_some() {
            " and its nats-server"
        } else {
            ""
        }
    )
}
