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
