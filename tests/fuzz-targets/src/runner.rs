//! Targets for the runner: playbook YAML → compile, a playbook's test file (what
//! `POST /api/v1/test` takes from an editor), template rendering with hostile finding values,
//! and config loading.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding};
use quench_runner::config::{Config, Overrides};
use quench_runner::engine::{is_slack_text, preview};
use quench_runner::playbook::{Playbook, Report, compile, version_of};
use serde_json::Value;

/// A playbook file. Compiling never panics; it yields a playbook exactly when it reports no
/// error; every diagnostic points inside the source (on character boundaries) and renders; and
/// compiling is deterministic.
pub fn playbook(data: &[u8]) {
    // The loader refuses files that are not UTF-8 before compiling.
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let compiled = compile(source);
    assert_eq!(
        compiled.playbook.is_some(),
        !compiled.has_errors(),
        "a playbook comes with no errors, and errors with no playbook: {:?}",
        compiled.diagnostics
    );
    for diagnostic in &compiled.diagnostics {
        let span = &diagnostic.span;
        assert!(
            span.start <= span.end
                && span.end <= source.len()
                && source.is_char_boundary(span.start)
                && source.is_char_boundary(span.end),
            "diagnostic {:?} points outside the source ({} bytes)",
            diagnostic,
            source.len()
        );
        assert!(
            !diagnostic.message.is_empty(),
            "a diagnostic says something"
        );
    }
    let report = Report {
        file: "fuzz.yaml",
        source,
        diagnostics: &compiled.diagnostics,
    };
    let rendered = report.render(false);
    assert_eq!(
        compiled.diagnostics.is_empty(),
        rendered.is_empty(),
        "every diagnostic renders"
    );
    assert_eq!(report.located().len(), compiled.diagnostics.len());
    let again = compile(source);
    assert_eq!(
        again.diagnostics, compiled.diagnostics,
        "compiling is deterministic"
    );
    if let Some(playbook) = &compiled.playbook {
        assert_eq!(playbook.version, version_of(source));
    }
}

/// A playbook's test file, as `quench test` reads it and `POST /api/v1/test` takes it from a
/// request: parsing never panics, says why when it refuses (with a line and column), and is
/// deterministic.
pub fn playbook_test(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = quench_runner::testing::TestFile::parse("fuzz.yaml", text);
    if let Err(report) = &first {
        assert!(
            report.contains("fuzz.yaml"),
            "a refusal names the file: {report}"
        );
    }
    let again = quench_runner::testing::TestFile::parse("fuzz.yaml", text);
    assert_eq!(
        first
            .as_ref()
            .map(|file| file.cases.len())
            .map_err(Clone::clone),
        again
            .as_ref()
            .map(|file| file.cases.len())
            .map_err(Clone::clone),
        "parsing is deterministic"
    );
}

/// The shipped playbooks (`workflows/`), compiled once.
static SHIPPED: LazyLock<Vec<Playbook>> = LazyLock::new(|| {
    let dir = repository().join("workflows");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| quench_runner::playbook::is_playbook_file(path))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let source = std::fs::read_to_string(path).expect("a shipped playbook reads");
            compile(&source)
                .playbook
                .unwrap_or_else(|| panic!("{} compiles", path.display()))
        })
        .collect()
});

/// The finding the template target puts hostile text into (a shipped example).
static EXAMPLE: LazyLock<Value> = LazyLock::new(|| {
    let path = repository().join("workflows/examples/leaked-openai-key.json");
    let text = std::fs::read(&path).expect("the example finding reads");
    serde_json::from_slice(&text).expect("the example finding is JSON")
});

const NOW: &str = "2026-11-26T12:00:00Z";

/// Hostile finding values through every shipped playbook's templates, as a run renders them
/// (`where`, `vars`, `key`, each step's inputs; see [`preview`]). The input is a whole finding
/// when it parses as one; otherwise its text becomes the title, names, a label and evidence of
/// the shipped example finding. Rendering never panics and ends (fuel), and Slack text escapes
/// what it interpolates: no `<` (a mention, a link) appears that the playbook did not write.
pub fn template(data: &[u8]) {
    let Some(finding) = hostile_finding(data) else {
        return;
    };
    let now: DateTime<Utc> = NOW.parse().expect("a time");
    for playbook in SHIPPED.iter() {
        let rendered = preview(playbook, &finding, now);
        for (place, result) in &rendered {
            let Ok(value) = result else { continue };
            let Some(step) = place
                .strip_prefix("steps.")
                .and_then(|rest| rest.strip_suffix(".with"))
                .and_then(|id| {
                    playbook
                        .steps
                        .iter()
                        .chain(&playbook.on_failure)
                        .find(|step| step.id == id)
                })
            else {
                continue;
            };
            for (field, template) in &step.with {
                let (Some(template), Some(text)) =
                    (template.as_str(), value.get(field).and_then(Value::as_str))
                else {
                    continue;
                };
                if is_slack_text(step.action.name, field) {
                    let written = template.matches('<').count();
                    assert!(
                        text.matches('<').count() <= written,
                        "{}: {place}.{field} let markup from the finding into Slack text: {text:?}",
                        playbook.name
                    );
                }
            }
        }
    }
}

fn hostile_finding(data: &[u8]) -> Option<Finding> {
    if let Ok(finding) = Finding::parse(data, DEFAULT_MAX_FINDING_BYTES) {
        return Some(finding);
    }
    let text: String = String::from_utf8_lossy(data).chars().take(200).collect();
    let mut value = EXAMPLE.clone();
    value["title"] = Value::from(text.clone());
    value["resource"]["name"] = Value::from(text.clone());
    value["owner"]["name"] = Value::from(text.clone());
    value["labels"] = serde_json::json!({ "fuzz": text });
    value["evidence"] = serde_json::json!({ "fuzz": text, "quoted": [text] });
    Finding::parse(value.to_string().as_bytes(), DEFAULT_MAX_FINDING_BYTES).ok()
}

/// The file the config target writes its input to (one per process).
static CONFIG_FILE: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("quench.toml");
    (dir, path)
});

/// A `quench.toml`. Loading never panics; an error names a place (the file, or a key in
/// backticks); a loaded config's `--dump-config` output loads again to the same config.
pub fn config(data: &[u8]) {
    let path = &CONFIG_FILE.1;
    std::fs::write(path, data).expect("the config file writes");
    let config = match Config::load(Some(path), &Overrides::default()) {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains(&path.display().to_string()) || message.contains('`'),
                "a config error names no place: {message}"
            );
            return;
        }
    };
    let dumped = config.dump();
    // A secret given as a file is shown resolved (and redacted) next to its `_file`: that dump
    // is for reading, not loading.
    if dumped.contains("_file = ") {
        return;
    }
    std::fs::write(path, &dumped).expect("the config file writes");
    match Config::load(Some(path), &Overrides::default()) {
        Ok(again) => assert_eq!(again.dump(), dumped, "a dumped config loads to itself"),
        Err(error) => panic!("a dumped config does not load ({error}):\n{dumped}"),
    }
}

/// The repository root (this crate is `tests/fuzz-targets`).
pub(crate) fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A journal message as a runner replays it in cluster mode (anyone who may publish to
/// `quench.journal.>` can write one): it decodes to a record or is refused, never panics; a
/// commit's bytes decode to writes or are refused; what decodes encodes back to itself; and
/// putting commits together from it never panics.
pub fn journal_record(data: &[u8]) {
    use quench_runner::cluster::journal::{Record, commits, decode_writes, encode_writes};
    if let Ok(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()), Ok(record.clone()));
        if let Record::Commit { bytes, .. } = &record
            && let Ok(writes) = decode_writes(bytes)
        {
            assert_eq!(decode_writes(&encode_writes(&writes)), Ok(writes));
        }
        let _ = commits(vec![(1, record.clone()), (2, record)]);
    }
    if let Ok(writes) = decode_writes(data) {
        assert_eq!(decode_writes(&encode_writes(&writes)), Ok(writes));
    }
}
