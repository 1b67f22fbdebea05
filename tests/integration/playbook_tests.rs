//! `quench test` as a security admin runs it: the shipped playbooks' tests pass, and a wrong
//! expectation fails with a readable diff and exit code 1.

use crate::support;

fn quench_test(arguments: &[&str]) -> std::process::Output {
    std::process::Command::new(support::quench_bin())
        .arg("test")
        .args(arguments)
        .current_dir(support::root())
        .output()
        .expect("quench runs")
}

#[test]
fn shipped_playbook_tests_pass() {
    let output = quench_test(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("test ok: ") && summary.ends_with(" 0 failed"),
        "{summary}"
    );
    // Every shipped playbook has a test file.
    let tested: Vec<String> = std::fs::read_dir(support::root().join("workflows/tests"))
        .expect("tests dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for entry in std::fs::read_dir(support::root().join("workflows")).expect("workflows dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") {
            assert!(
                tested.contains(&name),
                "workflows/{name} has no tests in workflows/tests/{name}"
            );
        }
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let directory = tempfile::tempdir().expect("temp dir");
    let playbook = support::root().join("workflows/revoke-leaked-openai-key.yaml");
    let test = format!(
        r#"schema: quench.playbook-test/v1
playbook: {}
groups: {{ secops: [lead@example.com] }}
finding:
  kind: openai.api_key.leaked
  resource: {{ provider: openai, type: api_key, id: key_abc, project_id: proj_1 }}
  owner: {{ email: alice@example.com }}
cases:
  - name: expects the wrong key to be revoked
    approvals:
      decide: {{ choice: revoke, by: alice@example.com, after: 1m }}
    expect:
      status: completed
      steps: {{ revoke: skipped }}
      calls:
        - uses: slack.message
        - uses: openai.revoke_key
          with: {{ key_id: key_xyz }}
        - uses: slack.message
"#,
        playbook.display()
    );
    let path = directory.path().join("wrong.yaml");
    std::fs::write(&path, test).expect("write");
    let output = quench_test(&[path.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL revoke-leaked-openai-key › expects the wrong key to be revoked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step `revoke`: expected skipped, got succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"-openai.revoke_key {"key_id":"key_xyz"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"+openai.revoke_key {"key_id":"key_abc"}"#),
        "{stdout}"
    );

    let output = quench_test(&[directory
        .path()
        .join("missing.yaml")
        .to_str()
        .expect("utf-8")]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing file is an I/O error"
    );
}

/// A test file over the revoke playbook with `cases` as given.
fn revoke_test(cases: &str) -> String {
    test_file(
        "revoke-leaked-openai-key.yaml",
        "kind: openai.api_key.leaked\n  resource: { provider: openai, type: api_key, id: key_abc, name: web-prod, project_id: proj_1 }",
        cases,
    )
}

/// A test file over the shipped `playbook`, with its base `finding` (YAML lines under
/// `finding:`) and `cases`.
fn test_file(playbook: &str, finding: &str, cases: &str) -> String {
    format!(
        r#"schema: quench.playbook-test/v1
playbook: {}
groups: {{ secops: [lead@example.com] }}
finding:
  {finding}
  owner: {{ email: alice@example.com }}
cases:
{cases}"#,
        support::root().join("workflows").join(playbook).display()
    )
}

fn run_test_file(text: &str) -> (Option<i32>, String, String) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("case.yaml");
    std::fs::write(&path, text).expect("write");
    let output = quench_test(&[path.to_str().expect("utf-8 path")]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unknown_fields_are_refused_at_every_level_with_their_place() {
    let text = revoke_test(
        r#"  - name: typos everywhere
    bogus_field: 1
    approvals:
      decide: { choice: keep, by: alice@example.com, afterr: 5m }
    mocks:
      openai.revoke_key: [ { output: { deleted: true }, alredy_done: true } ]
    expect:
      status: completed
      stauts: completed
      steps:
        decide: { status: skipped, chioce: keep }
        tell: { status: succeeded, outptu: { text: x } }
        notify:
          status: succeeded
          notices: [ { notice: asked, to: [alice@example.com], after: 0s, when: now } ]
      calls:
        - { uses: slack.message, wiht: { to: alice@example.com } }
"#,
    );
    let (code, stdout, stderr) = run_test_file(&text);
    assert_eq!(
        code,
        Some(2),
        "a malformed test file is refused:\n{stdout}{stderr}"
    );
    assert!(stdout.is_empty(), "no case runs: {stdout}");
    let line_of = |needle: &str| {
        text.lines()
            .position(|line| line.contains(needle))
            .map(|index| index + 1)
            .unwrap_or_else(|| panic!("{needle} is in the file"))
    };
    for (field, help) in [
        ("bogus_field", "expected one of `name`"),
        ("afterr", "did you mean `after`?"),
        ("alredy_done", "did you mean `already_done`?"),
        ("stauts", "did you mean `status`?"),
        ("chioce", "did you mean `choice`?"),
        ("outptu", "did you mean `output`?"),
        ("when", "expected one of `notice`, `to`, `after`"),
        ("wiht", "did you mean `with`?"),
    ] {
        let line = line_of(&format!("{field}:"));
        assert!(
            stderr.contains(&format!("unknown field `{field}`")),
            "{field}:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("case.yaml:{line}:")),
            "{field} is placed at line {line}:\n{stderr}"
        );
        assert!(stderr.contains(help), "{field}: {help}:\n{stderr}");
    }
}

#[test]
fn outputs_inputs_and_notices_are_checked() {
    let text = revoke_test(
        r#"  - name: wrong output, input and notices
    approvals:
      decide: { choice: keep, by: alice@example.com, after: 5m }
    expect:
      status: completed
      steps:
        decide:
          status: succeeded
          notices:
            - { notice: asked, to: [alice@example.com], after: 0s }
            - { notice: closed, to: [alice@example.com], after: 10m }
        tell: { status: succeeded, with: { text: WRONG } }
        revoke: { status: skipped, with: { key_id: key_abc } }
  - name: the same, right
    approvals:
      decide: { choice: keep, by: alice@example.com, after: 5m }
    expect:
      status: completed
      steps:
        decide:
          status: succeeded
          notices:
            - { notice: asked, to: [alice@example.com, "group:secops"], after: 0s }
            - { notice: closed, to: [alice@example.com, "group:secops"], after: 5m }
        tell: { status: succeeded, with: { to: alice@example.com } }
"#,
    );
    let (code, stdout, stderr) = run_test_file(&text);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok   revoke-leaked-openai-key › the same, right"),
        "{stdout}"
    );
    for expected in [
        "FAIL revoke-leaked-openai-key › wrong output, input and notices",
        "step `decide`: notices differ:",
        "-asked to [\"alice@example.com\"] after 0s",
        "+asked to [\"alice@example.com\", \"group:secops\"] after 0s",
        "-closed to [\"alice@example.com\"] after 10m",
        "+closed to [\"alice@example.com\", \"group:secops\"] after 5m",
        "step `tell`: expected a call with {\"text\":\"WRONG\"}, got",
        "step `revoke`: expected a call with {\"key_id\":\"key_abc\"}, but the step made no call",
    ] {
        assert!(stdout.contains(expected), "{expected}:\n{stdout}");
    }

    // A note's text is its output.
    let text = test_file(
        "delete-stale-service-account.yaml",
        "kind: openai.service_account.stale\n  resource: { provider: openai, type: service_account, id: svc_1, project_id: proj_1 }",
        r#"  - name: wrong note
    approvals:
      decide: { choice: keep, by: alice@example.com, after: 5m }
    expect:
      steps:
        record: { status: succeeded, output: { message: WRONG } }
  - name: right note
    approvals:
      decide: { choice: keep, by: alice@example.com, after: 5m }
    expect:
      steps:
        record: { status: succeeded, output: { message: "svc_1: keep by alice@example.com" } }
"#,
    );
    let (code, stdout, stderr) = run_test_file(&text);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "step `record`: expected output with {\"message\":\"WRONG\"}, got {\"message\":\"svc_1: keep by alice@example.com\"}"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   delete-stale-service-account › right note"),
        "{stdout}"
    );
}
