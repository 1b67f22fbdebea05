//! The broken-playbook corpus (`tests/playbooks/invalid/`): one small playbook per validation
//! rule. Each file lists the diagnostics it must produce in `# expect:` lines (severity, code,
//! line and column); the full rendering is kept as a snapshot next to this file.

use std::collections::BTreeSet;

use quench_runner::playbook::{Code, Report, Severity, compile};

fn expectations(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(|line| line.trim().to_owned())
        .collect()
}

fn describe(report: &Report<'_>) -> Vec<String> {
    report
        .located()
        .iter()
        .map(|d| {
            let severity = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            format!("{severity}[{}] {}:{}", d.code, d.line, d.column)
        })
        .collect()
}

#[test]
fn each_broken_playbook_is_refused_at_the_right_place() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks"),
        "invalid/*.yaml",
        |path| {
            let source = std::fs::read_to_string(path).expect("corpus files are readable");
            let compiled = compile(&source);
            let file = format!(
                "invalid/{}",
                path.file_name()
                    .and_then(|name| name.to_str())
                    .expect("UTF-8 name")
            );
            let report = Report {
                file: &file,
                source: &source,
                diagnostics: &compiled.diagnostics,
            };
            let expected = expectations(&source);
            assert!(!expected.is_empty(), "{file} has no `# expect:` line");
            assert_eq!(
                describe(&report),
                expected,
                "{file}: diagnostics differ from its `# expect:` lines"
            );
            if expected.iter().any(|line| line.starts_with("error")) {
                assert!(
                    compiled.playbook.is_none(),
                    "{file}: a playbook with errors must not compile"
                );
            }
            insta::assert_snapshot!(report.render(false));
        }
    );
}

#[test]
fn every_rule_has_a_broken_example() {
    let directory = crate::support::root().join("tests/playbooks/invalid");
    let mut covered = BTreeSet::new();
    for entry in std::fs::read_dir(&directory).expect("corpus directory exists") {
        let source = std::fs::read_to_string(entry.expect("entry").path()).expect("readable");
        for line in expectations(&source) {
            let code = line.split(['[', ']']).nth(1).unwrap_or_default().to_owned();
            covered.insert(code);
        }
    }
    // Duplicate playbook names and overlapping triggers need two files, undefined groups a
    // config; `validate_cli` covers those rules.
    let needs_more = [
        Code::DuplicatePlaybook.as_str(),
        Code::UndefinedGroup.as_str(),
        Code::OverlappingTrigger.as_str(),
    ];
    let missing: Vec<&str> = Code::ALL
        .iter()
        .map(|code| code.as_str())
        .filter(|code| !needs_more.contains(code) && !covered.contains(*code))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a broken example in tests/playbooks/invalid: {missing:?}"
    );
}
