//! The playbooks shipped in `workflows/` validate with warnings denied, point editors at the
//! checked-in playbook schema, and that schema is current.

use crate::support;

#[test]
fn shipped_playbooks_validate_with_warnings_denied() {
    let workflows = support::root().join("workflows");
    let output = std::process::Command::new(support::quench_bin())
        .args(["validate", "--deny-warnings"])
        .arg(&workflows)
        .env("NO_COLOR", "1")
        .output()
        .expect("quench runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let loaded = quench_runner::playbook::load_paths(&[workflows], None).expect("readable");
    assert!(
        loaded.len() >= 7,
        "expected the seven scenario playbooks, found {}",
        loaded.len()
    );
    for file in &loaded {
        assert!(
            file.source
                .starts_with("# yaml-language-server: $schema=playbook.schema.json\n"),
            "{} must start with the schema modeline so editors check it",
            file.path.display()
        );
    }
}

#[test]
fn checked_in_playbook_schema_is_current() {
    support::check_generated(
        quench_runner::playbook::PLAYBOOK_SCHEMA_PATH,
        &quench_runner::playbook::playbook_schema(),
    );
}
