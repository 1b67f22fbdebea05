//! Crash safety, proven: the engine runs in a child process (`quench-crash-child`) that is
//! killed at every commit and effect boundary (failpoints that abort the process) and at random
//! moments (`kill -9` from here), then started again until it finishes. Afterwards every run has
//! completed, each key was revoked exactly once at the fake OpenAI (re-executions carry the same
//! idempotency key and find the key already deleted), no finding was lost or started twice, and
//! the audit chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use quench_runner::engine::{Run, RunStatus, StepStatus};
use quench_runner::store::{Key, Store, StoreConfig, parse_stored};
use serde_json::{Value, json};

const PLAYBOOK: &str = r##"
schema: quench.playbook/v1
name: crash-revoke
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: hello
    uses: note
    with: { message: "start {{ finding.key }}" }
  - id: decide
    uses: approval
    with:
      approvers: [nobody@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 1s
      on_timeout: revoke
  - id: revoke
    if: steps.decide.choice == "revoke"
    uses: openai.revoke_key
    with: { project_id: proj_1, key_id: "{{ finding.resource.id }}" }
    retry: { max_attempts: 3, backoff: 100ms }
  - id: pause
    uses: wait
    with: { for: 200ms }
  - id: tell
    uses: slack.message
    with: { to: "#secops", text: "revoked {{ finding.resource.id }}" }
"##;

const KEYS: usize = 12;

fn finding(id: &str, key_id: &str) -> String {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": "high",
        "title": "leaked", "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "crash-test"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"}
    })
    .to_string()
}

struct Scenario {
    dir: tempfile::TempDir,
}

impl Scenario {
    fn new() -> Scenario {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("playbook.yaml"), PLAYBOOK).expect("write playbook");
        let mut lines: Vec<String> = (0..KEYS)
            .map(|n| finding(&format!("f{n}"), &format!("key_{n}")))
            .collect();
        // Redelivered ids are dropped; a new sighting of an open key joins its run.
        lines.push(finding("f3", "key_3"));
        lines.push(finding("f5-again", "key_5"));
        std::fs::write(dir.path().join("findings.jsonl"), lines.join("\n"))
            .expect("write findings");
        std::fs::create_dir(dir.path().join("state")).expect("state dir");
        Scenario { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn child(&self, failpoints: Option<&str>) -> Command {
        let mut command = child_command(env!("CARGO_BIN_EXE_quench-crash-child"), failpoints);
        command
            .arg("--store")
            .arg(self.path("store"))
            .arg("--playbook")
            .arg(self.path("playbook.yaml"))
            .arg("--findings")
            .arg(self.path("findings.jsonl"))
            .arg("--state")
            .arg(self.path("state"));
        command
    }

    /// Runs the child with a failpoint that must crash it; true when the work ran out before
    /// the failpoint was hit that often (nothing to crash).
    fn crash_at(&self, spec: &str) -> bool {
        let output = self.child(Some(spec)).output().expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && stdout.contains("DONE") {
            return true;
        }
        assert!(
            !output.status.success(),
            "FAILPOINTS={spec}: expected a crash, got {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        false
    }

    /// Runs the child to the end.
    fn finish(&self) {
        let output = self.child(None).output().expect("child runs");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("DONE"),
            "the child did not finish: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path("state").join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Everything that must hold after any sequence of crashes.
    fn check(&self, what: &str) {
        let store = Store::open(&StoreConfig::new(self.path("store")))
            .expect("store opens after the child exited");
        let verification = store.verify_audit().expect("audit readable");
        assert_eq!(
            verification.first_bad, None,
            "{what}: the audit chain must verify"
        );

        let mut started: BTreeMap<String, String> = BTreeMap::new();
        for entry in store.audit_entries() {
            let (_, stored) = entry.expect("entry");
            let (_, _, entry) = parse_stored(&stored).expect("entry parses");
            if entry.kind == "run_started" {
                let run = entry.run_id.expect("run id");
                let key = entry.detail["key"].as_str().expect("key").to_owned();
                assert!(
                    started.insert(key.clone(), run).is_none(),
                    "{what}: two runs started for {key}"
                );
            }
        }
        assert_eq!(started.len(), KEYS, "{what}: one run per key");
        for (key, run_id) in &started {
            let run: Run = store
                .get(Key::Run(run_id))
                .expect("readable")
                .expect("run exists");
            assert_eq!(
                run.status,
                RunStatus::Completed,
                "{what}: run for {key} ended {:?} ({:?})",
                run.status,
                run.failure
            );
            let revoke = run.steps["revoke"].status;
            assert!(
                matches!(revoke, StepStatus::Succeeded | StepStatus::AlreadyDone),
                "{what}: {key} revoke {revoke:?}"
            );
        }
        let joined: Run = store
            .get(Key::Run(&started["openai.api_key.leaked:key_5"]))
            .expect("read")
            .expect("run");
        assert_eq!(
            joined.attached,
            vec!["f5-again".to_owned()],
            "{what}: the second sighting joined the open run"
        );

        let deleted = self.lines("deleted.log");
        let distinct: BTreeSet<&String> = deleted.iter().collect();
        assert_eq!(
            deleted.len(),
            KEYS,
            "{what}: every key revoked exactly once, got {deleted:?}"
        );
        assert_eq!(distinct.len(), KEYS, "{what}: no key revoked twice");

        let mut keys_by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in self.lines("calls.log") {
            let call: Value = serde_json::from_str(&line).expect("call line");
            keys_by_key
                .entry(call["key"].as_str().expect("key").to_owned())
                .or_default()
                .insert(call["idempotency_key"].as_str().expect("idem").to_owned());
        }
        assert_eq!(keys_by_key.len(), KEYS, "{what}: every key was called");
        for (key, idempotency) in &keys_by_key {
            assert_eq!(
                idempotency.len(),
                1,
                "{what}: {key} was called with more than one idempotency key: {idempotency:?}"
            );
        }
        let acked: BTreeSet<String> = self.lines("acks.log").into_iter().collect();
        let expected: BTreeSet<String> = (0..KEYS)
            .map(|n| format!("f{n}"))
            .chain(["f5-again".to_owned()])
            .collect();
        assert_eq!(
            acked, expected,
            "{what}: every finding acknowledged, none lost"
        );
    }
}

/// A crash-test child, its output captured, with `FAILPOINTS` set to `failpoints` or cleared.
pub(crate) fn child_command(binary: &str, failpoints: Option<&str>) -> Command {
    let mut command = Command::new(binary);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    match failpoints {
        Some(spec) => command.env("FAILPOINTS", spec),
        None => command.env_remove("FAILPOINTS"),
    };
    command
}

/// `count` delays from `least` to `least + spread` milliseconds, the same for a seed every time
/// (xorshift).
pub(crate) fn random_moments(
    mut seed: u64,
    count: usize,
    least: u64,
    spread: u64,
) -> impl Iterator<Item = Duration> {
    (0..count).map(move |_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(least + seed % spread)
    })
}

/// Starts a child and kills it with SIGKILL after `after`.
pub(crate) fn kill_after(command: &mut Command, after: Duration) {
    let mut child = command.spawn().expect("child starts");
    #[expect(
        clippy::disallowed_methods,
        reason = "a plain thread waits for a child process"
    )]
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

fn crash_child_exists() -> bool {
    Path::new(env!("CARGO_BIN_EXE_quench-crash-child")).exists()
}

#[test]
fn killed_at_every_commit_and_effect_boundary() {
    assert!(crash_child_exists());
    let points = [
        "store::before_commit",
        "store::after_commit",
        "engine::after_intent",
        "engine::after_effect",
    ];
    std::thread::scope(|scope| {
        for point in points {
            scope.spawn(move || {
                let scenario = Scenario::new();
                for hits in [0, 2, 5, 9, 14] {
                    scenario.crash_at(&format!("{point}={hits}*off->panic"));
                }
                scenario.finish();
                scenario.check(point);
            });
        }
    });
}

/// Crashes right after every commit, one commit per process, until the first gates are decided
/// (their timeout here): the crash right after the decisions' commit must not leave a decided
/// gate without the intent of the call it leads to, as the decision and that intent are one
/// commit. (Crashing after every commit for longer would re-execute a call once per process
/// without ever committing its result, until it is given up after 20 executions.)
#[test]
fn a_decision_is_never_durable_without_the_intent_it_leads_to() {
    let scenario = Scenario::new();
    let mut crashes = 0;
    let mut decided = 0;
    while decided == 0 && !scenario.crash_at("store::after_commit=0*off->panic") {
        crashes += 1;
        assert!(crashes < 400, "not decided after {crashes} crashes");
        let store = Store::open(&StoreConfig::new(scenario.path("store")))
            .expect("store opens after the child exited");
        decided = 0;
        for item in store.runs_newest_first::<Run>("", None) {
            let (id, run) = item.expect("run readable");
            if !run
                .steps
                .get("decide")
                .is_some_and(|step| step.status == StepStatus::Succeeded)
            {
                continue;
            }
            decided += 1;
            let revoke = run.steps.get("revoke").map(|step| step.status);
            assert!(
                revoke.is_some_and(|status| status != StepStatus::Pending),
                "after crash {crashes}: run {id} is decided, its revoke has no intent ({revoke:?})"
            );
        }
    }
    scenario.finish();
    scenario.check("a crash after every commit until gates are decided");
}

#[test]
fn killed_at_random_moments() {
    let scenario = Scenario::new();
    for after in random_moments(0x9e37_79b9_7f4a_7c15, 8, 40, 400) {
        kill_after(&mut scenario.child(None), after);
    }
    scenario.finish();
    scenario.check("random kill -9");
}
