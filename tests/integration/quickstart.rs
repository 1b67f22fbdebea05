//! `quench up`, as the README's first command: in a fresh directory holding the shipped
//! `workflows/`, it starts its own nats-server, serves, says what to do next; the sample finding
//! starts a run that waits for approval (dry-run: no credentials); the banner's commands list,
//! approve and verify through the admin API with the token it printed; Ctrl-C stops it and its
//! child.

use std::io::Read;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::{free_port, quench_bin, root};

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
    // The child syncs every write to disk where nats-server knows how (2.10+), and says so;
    // an older one is named in the banner as flushing every two minutes.
    let child_config =
        std::fs::read_to_string(dir.path().join("data/nats/nats-server.conf")).expect("config");
    if crate::support::nats_server_syncs() {
        assert!(
            banner.contains("JetStream in ./data/nats, synced to disk on every write)"),
            "{banner}"
        );
        assert!(
            child_config.contains("sync_interval: always"),
            "{child_config}"
        );
    } else {
        assert!(banner.contains("flushes every two minutes"), "{banner}");
        assert!(!child_config.contains("sync_interval"), "{child_config}");
    }
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
    // Step 1 of the banner, as printed.
    let publish = std::process::Command::new(quench_bin())
        .args([
            "publish",
            "--nats",
            &nats,
            "workflows/examples/leaked-openai-key.json",
        ])
        .current_dir(dir.path())
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
    let api = format!("http://{listen}");
    let quench = |args: &[&str]| {
        let output = std::process::Command::new(quench_bin())
            .args(args)
            .args(["--api", &api])
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
    let (code, out, err) = quench(&["approve", &run, "--gate", "decide", "--choice", "revoke"]);
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
