//! `quench validate` as a user runs it: the real binary, its output formats and its exit codes
//! (0 valid, 1 invalid, 2 usage or I/O error).

use std::path::Path;
use std::process::Output;

use crate::support;

fn validate(arguments: &[&str]) -> Output {
    std::process::Command::new(support::quench_bin())
        .arg("validate")
        .args(arguments)
        .env("NO_COLOR", "1")
        .output()
        .expect("quench runs")
}

fn write(directory: &Path, name: &str, text: &str) -> String {
    let path = directory.join(name);
    std::fs::write(&path, text).expect("temp file is writable");
    path.display().to_string()
}

const VALID: &str = r#"schema: quench.playbook/v1
name: note-leaks
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: record
    uses: note
    with:
      message: "seen {{ finding.key }}"
"#;

const WARNS: &str = r#"schema: quench.playbook/v1
name: archive-at-once
on:
  finding:
    kinds: [openai.integration.unapproved]
steps:
  - id: archive
    uses: openai.archive_project
    with:
      project_id: "{{ finding.resource.project_id }}"
"#;

#[test]
fn exit_codes_and_human_output() {
    let directory = tempfile::tempdir().expect("temp dir");
    let valid = write(directory.path(), "valid.yaml", VALID);
    let warns = write(directory.path(), "warns.yaml", WARNS);
    let broken = write(
        directory.path(),
        "broken.yaml",
        &VALID.replace("uses: note", "uses: notes"),
    );

    let output = validate(&[&valid]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "validate ok: 1 playbook(s), 0 error(s), 0 warning(s)\n"
    );

    let output = validate(&[&warns]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning alone passes: {output:?}"
    );
    let output = validate(&["--deny-warnings", &warns]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "--deny-warnings fails on a warning: {output:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("warning[irreversible-without-approval]"),
        "{stdout}"
    );
    assert!(stdout.contains("warns.yaml:8:11"), "{stdout}");
    assert!(stdout.contains("(warnings denied)"), "{stdout}");

    let output = validate(&[&broken]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("error[unknown-action]: unknown action `notes`"),
        "{stdout}"
    );
    assert!(stdout.contains("broken.yaml:8:11"), "{stdout}");
    assert!(stdout.contains("8 |     uses: notes"), "{stdout}");
    assert!(stdout.contains("help: did you mean `note`?"), "{stdout}");

    let missing = directory.path().join("nope.yaml").display().to_string();
    let output = validate(&[&missing]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing file is an I/O error: {output:?}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read"),
        "{output:?}"
    );

    let output = validate(&["--format", "yaml", &valid]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad flag is a usage error: {output:?}"
    );
    let empty = tempfile::tempdir().expect("temp dir");
    let output = validate(&[&empty.path().display().to_string()]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a directory without playbooks is a usage error: {output:?}"
    );
}

#[test]
fn json_output_for_ci() {
    let directory = tempfile::tempdir().expect("temp dir");
    write(directory.path(), "a.yaml", VALID);
    write(
        directory.path(),
        "b.yaml",
        &VALID.replace("{{ finding.key }}", "{{ finding.kee }}"),
    );
    let output = validate(&["--format", "json", &directory.path().display().to_string()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 1);
    assert_eq!(report["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["files"][0]["playbook"], "note-leaks");
    assert!(
        report["files"][0]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:"))
    );
    let diagnostic = &report["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-finding-field");
    assert_eq!(diagnostic["severity"], "error");
    assert_eq!(
        (diagnostic["line"].as_u64(), diagnostic["column"].as_u64()),
        (Some(10), Some(25))
    );
    assert_eq!(diagnostic["help"], "did you mean `key`?");
    assert!(
        diagnostic["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("b.yaml"))
    );
}

#[test]
fn two_files_with_one_name_are_refused() {
    let directory = tempfile::tempdir().expect("temp dir");
    write(directory.path(), "a.yaml", VALID);
    write(directory.path(), "b.yaml", VALID);
    let output = validate(&[&directory.path().display().to_string()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("error[duplicate-playbook]: playbook name `note-leaks` is already used"),
        "{stdout}"
    );
    assert!(stdout.contains("b.yaml:2:7"), "{stdout}");
}

/// With `--config`, a literal `group:<name>` must be a group the config defines; without it,
/// groups are not known and only their form is checked.
#[test]
fn undefined_groups_are_reported_against_the_config() {
    let directory = tempfile::tempdir().expect("temp dir");
    let asks = |group: &str| {
        VALID.replace(
            "  - id: record\n    uses: note\n    with:\n      message: \"seen {{ finding.key }}\"\n",
            &format!(
                "  - id: decide\n    uses: approval\n    with:\n      approvers: [\"group:{group}\"]\n      question: Revoke?\n      choices: [revoke, keep]\n      timeout: 1h\n      on_timeout: keep\n"
            ),
        )
    };
    let typo = write(directory.path(), "typo.yaml", &asks("secop"));
    let good = write(
        directory.path(),
        "good.yaml",
        &asks("secops").replace("note-leaks", "good"),
    );
    let config = write(
        directory.path(),
        "quench.toml",
        "[groups]\nsecops = [\"lead@example.com\"]\n",
    );

    let output = validate(&["--config", &config, &typo, &good]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error[undefined-group]: group `secop` is not defined"),
        "{stdout}"
    );
    assert!(stdout.contains("typo.yaml:"), "{stdout}");
    assert!(stdout.contains("did you mean `secops`?"), "{stdout}");
    assert!(!stdout.contains("good.yaml:"), "{stdout}");

    let output = validate(&[&typo]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "without a config groups are not known: {output:?}"
    );

    let output = validate(&[
        "--config",
        &directory.path().join("missing.toml").display().to_string(),
        &typo,
    ]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// Two playbooks that run for the same finding kind are a warning naming both and the kind
/// (they still validate); `where` conditions that differ are taken to divide the findings.
#[test]
fn playbooks_that_share_a_finding_kind_are_a_warning() {
    let directory = tempfile::tempdir().expect("temp dir");
    let glob = VALID
        .replace("note-leaks", "all-key-findings")
        .replace("[openai.api_key.leaked]", "[openai.api_key.*]");
    let first = write(directory.path(), "a.yaml", VALID);
    let second = write(directory.path(), "b.yaml", &glob);

    let output = validate(&[&first, &second]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning alone passes: {stdout}"
    );
    assert!(
        stdout.contains(
            "warning[overlapping-trigger]: playbooks `all-key-findings` and `note-leaks` both run \
             for finding kind `openai.api_key.leaked`; each such finding starts a run of both"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("b.yaml:5:13"), "{stdout}");
    assert!(
        stdout.contains(&format!("`note-leaks` is in {first}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 warning(s)"),
        "reported once per pair: {stdout}"
    );
    let output = validate(&["--deny-warnings", &first, &second]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let output = validate(&[&first]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 warning(s)"),
        "{output:?}"
    );

    // Different `where` conditions divide the findings: no warning.
    let with_where = |name: &str, condition: &str| {
        glob.replace("all-key-findings", name).replace(
            "    kinds: [openai.api_key.*]\n",
            &format!("    kinds: [openai.api_key.*]\n    where: {condition}\n"),
        )
    };
    let high = write(
        directory.path(),
        "high.yaml",
        &with_where("high", "finding.severity == \"high\""),
    );
    let low = write(
        directory.path(),
        "low.yaml",
        &with_where("low", "finding.severity == \"low\""),
    );
    let output = validate(&["--deny-warnings", &high, &low]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    // The same `where`, or a `where` on one side only, still lets both run.
    let also_high = write(
        directory.path(),
        "also-high.yaml",
        &with_where("also-high", "finding.severity  ==  \"high\""),
    );
    let output = validate(&["--format", "json", &high, &also_high, &first]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let overlaps: Vec<&str> = report["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .filter(|diagnostic| diagnostic["code"] == "overlapping-trigger")
        .map(|diagnostic| diagnostic["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(overlaps.len(), 3, "{overlaps:?}");
    assert!(
        overlaps[0].starts_with(
            "playbooks `also-high` and `high` both run for finding kinds `openai.api_key.*`;"
        ),
        "{overlaps:?}"
    );
}
