//! `quench up --demo`, as a newcomer runs it: in a fresh directory with the shipped `workflows/`,
//! the simulated organization is served inside quench, the discovery playbooks run at start, and
//! within seconds there is one run per planted problem (unused, orphaned and idle keys, audit-log
//! drift, a usage spike, a key that may do more than it uses) and none for the healthy keys. Every run is dry-run even where the
//! environment asks for live mode against the real OpenAI and a remote NATS, or a playbook says
//! `mode: live`: an approved delete is recorded with its request, not sent.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::quickstart::{copy_dir, wait_for_banner};
use crate::support::{free_port, quench_bin, root};

/// The runs the planted problems start: `(playbook, key)`.
const EXPECTED: [(&str, &str); 10] = [
    (
        "delete-stale-service-account",
        "openai:service_account:svc_acct_nightly_export",
    ),
    (
        "limit-usage-spike",
        "openai:usage_spike:key_billing_batch:gpt-4o",
    ),
    (
        "narrow-overprivileged-openai-key",
        "openai:project_key:key_support_bot_prod:scopes",
    ),
    ("review-admin-key-or-scope", "openai:audit:audit_log-000035"),
    ("review-admin-key-or-scope", "openai:audit:audit_log-000037"),
    ("review-admin-key-or-scope", "openai:audit:audit_log-000038"),
    ("review-new-project-owner", "openai:audit:audit_log-000036"),
    (
        "review-unused-openai-key",
        "openai:project_key:key_bob_laptop",
    ),
    (
        "review-unused-openai-key",
        "openai:project_key:key_notebook_experiments",
    ),
    (
        "unowned-key-secops",
        "openai:project_key:key_erin_eval_harness:owner",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_finds_the_planted_keys_and_drift_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("workflows"), &dir.path().join("workflows"));
    // A playbook that asks for live mode is still dry-run in the demo.
    let review = dir.path().join("workflows/review-unused-openai-key.yaml");
    let source = std::fs::read_to_string(&review).expect("shipped playbook");
    assert!(source.contains("\ntimeout: 16d\n"));
    std::fs::write(
        &review,
        source.replace("\ntimeout: 16d\n", "\ntimeout: 16d\nmode: live\n"),
    )
    .expect("write playbook");
    let listen = format!("127.0.0.1:{}", free_port());
    let stdout_path = dir.path().join("demo.out");
    let stderr_path = dir.path().join("demo.err");
    let mut child = std::process::Command::new(quench_bin())
        .args(["up", "--demo", "--listen", &listen])
        .current_dir(dir.path())
        .env_remove("QUENCH_CONFIG")
        // What would reach beyond this machine, were the demo to take it.
        .env("QUENCH_NATS__URL", "nats://192.0.2.1:4222")
        .env("QUENCH_OPENAI__BASE_URL", "https://api.openai.invalid/v1")
        .env("QUENCH_ENGINE__MODE", "live")
        .env("QUENCH_SLACK__BOT_TOKEN", "xoxb-not-a-real-token")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("quench up --demo starts");

    let started = Instant::now();
    let banner = wait_for_banner(&mut child, &stdout_path, &stderr_path).await;
    assert!(banner.starts_with("quench is up (demo: "), "{banner}");
    assert!(
        banner.contains("every run is dry-run and nothing leaves this machine"),
        "{banner}"
    );
    assert!(
        banner.contains("\n  OpenAI     simulated at http://127.0.0.1:"),
        "the organization is served on loopback:\n{banner}"
    );
    assert!(
        banner.contains(
            "(4 projects, 6 people, 4 service accounts, 10 keys, 6 audit events today, 8 days of usage)"
        ),
        "{banner}"
    );
    assert!(
        banner.contains(
            "  - erin-eval-harness (research): its owner erin@demo.example left the project"
        ),
        "{banner}"
    );
    assert!(banner.contains("JetStream in ./data/demo/nats"), "{banner}");
    assert!(!banner.contains("paused"), "nothing is paused: {banner}");
    assert!(!banner.contains("sk-admin"), "{banner}");

    let token = banner
        .split_whitespace()
        .find_map(|word| word.strip_prefix("QUENCH_TOKEN="))
        .expect("the banner gives an API token")
        .to_owned();
    let api = format!("http://{listen}");
    let quench = |args: &[&str]| -> Value {
        let output = std::process::Command::new(quench_bin())
            .args(args)
            .args(["--api", &api, "--json"])
            .env("QUENCH_TOKEN", &token)
            .current_dir(dir.path())
            .output()
            .expect("quench runs");
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON")
    };

    // The discovery playbooks ran at start; each finding has started its run, and only those.
    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(playbook, key)| ((*playbook).to_owned(), (*key).to_owned()))
        .collect();
    let discovery = [
        "find-openai-usage-spikes",
        "find-overprivileged-openai-keys",
        "inventory-openai-keys",
        "watch-openai-audit-log",
    ];
    let runs = loop {
        let runs = quench(&["runs", "list"])["runs"]
            .as_array()
            .expect("runs")
            .clone();
        let found: BTreeSet<(String, String)> = runs
            .iter()
            .filter(|run| !discovery.contains(&run["playbook"].as_str().unwrap_or_default()))
            .map(|run| {
                (
                    run["playbook"].as_str().unwrap_or_default().to_owned(),
                    run["key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        // Each finding's run has parked at its first question (an unowned key's run reads the
        // project's owners first).
        let settled = runs.iter().all(|run| {
            let playbook = run["playbook"].as_str().unwrap_or_default();
            run["status"]
                == if discovery.contains(&playbook) {
                    "completed"
                } else {
                    "waiting"
                }
        });
        if found == expected && settled {
            break runs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not the runs the demo plants: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(runs.len(), EXPECTED.len() + discovery.len(), "{runs:#?}");
    for run in &runs {
        assert_eq!(run["mode"], "dry_run", "{run}");
        if discovery.contains(&run["playbook"].as_str().unwrap_or_default()) {
            assert_eq!(run["status"], "completed", "{run}");
        } else {
            assert_eq!(run["status"], "waiting", "waits for secops: {run}");
        }
    }
    // The inventory read every key of the organization.
    let inventory = runs
        .iter()
        .find(|run| run["playbook"] == "inventory-openai-keys")
        .and_then(|run| run["id"].as_str())
        .expect("the inventory run");
    let inventory = quench(&["runs", "show", inventory]);
    assert_eq!(inventory["steps"][0]["output"]["count"], 10, "{inventory}");
    // So did the estate inventory's sync, as the README's tour shows.
    let started = std::time::Instant::now();
    loop {
        if !quench(&["inventory", "status"])["last_pass"].is_null() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no inventory pass"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unused = quench(&["inventory", "list", "--risk", "unused"]);
    let ids: Vec<&str> = unused["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter_map(|identity| identity["id"].as_str())
        .collect();
    assert!(ids.contains(&"project_key:key_bob_laptop"), "{unused}");

    // Secops lets bob's unused key expire: its expiry and delete are recorded with their
    // requests, not sent (a dry run knows no expiry time, so it does not wait for it).
    let unused = runs
        .iter()
        .find(|run| run["key"] == "openai:project_key:key_bob_laptop")
        .and_then(|run| run["id"].as_str())
        .expect("the unused key's run")
        .to_owned();
    let shown = quench(&["runs", "show", &unused]);
    assert_eq!(
        shown["finding"]["resource"]["project_id"], "proj_web_app",
        "{shown}"
    );
    assert_eq!(
        shown["finding"]["owner"]["email"], "bob@demo.example",
        "{shown}"
    );
    assert!(
        shown["finding"]["resource"]["last_used_at"].is_string(),
        "when the key was last used: {shown}"
    );
    let decided = quench(&[
        "approve",
        &unused,
        "--gate",
        "ask",
        "--choice",
        "let-expire",
    ]);
    assert_eq!(decided["outcome"], "decided", "{decided}");
    assert_eq!(decided["choice"], "let-expire", "{decided}");
    let shown = loop {
        let shown = quench(&["runs", "show", &unused]);
        if shown["run"]["status"] == "completed" {
            break shown;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the run does not complete: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["run"]["mode"], "dry_run", "despite `mode: live`");
    let delete = shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|step| step["id"] == "delete")
        .expect("the delete step");
    assert_eq!(delete["status"], "dry_run", "{delete}");
    assert_eq!(delete["output"]["dry_run"], true, "{delete}");
    assert_eq!(delete["output"]["request"]["method"], "DELETE", "{delete}");
    assert_eq!(
        delete["output"]["request"]["path"],
        "/v1/organization/projects/proj_web_app/api_keys/key_bob_laptop",
        "{delete}"
    );

    // State is the demo's own; the quickstart's store is untouched.
    assert!(dir.path().join("data/demo/state").is_dir());
    assert!(dir.path().join("data/demo/nats/jetstream").is_dir());
    assert!(!dir.path().join("data/state").exists());
    assert!(!dir.path().join("data/nats").exists());

    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().expect("exits").code(), Some(0));
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!log.contains(&token), "the API token is never logged");
    assert!(
        !log.contains("sk-admin"),
        "the demo's admin key is never logged:\n{log}"
    );
    assert!(
        !log.contains("192.0.2.1") && !log.contains("api.openai.invalid"),
        "nothing was sent where the environment pointed:\n{log}"
    );
}
