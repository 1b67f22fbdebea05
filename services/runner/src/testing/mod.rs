//! Offline playbook tests (`quench test`): each case runs one playbook through the real engine,
//! with a temporary store, a manual clock that jumps from one due timer (or scripted answer) to
//! the next — a four-hour timeout passes instantly — scripted answers to gates, and scripted
//! results for every action that would leave the process, and a log of the notices approvals
//! send. Expectations cover the final status, each step's status, output, rendered input (and an
//! approval's choice, deciders and notices), and the calls made with their inputs.

mod file;
mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quench_proto::{Actor, Decision, DecisionSchema, Finding};
use serde_json::Value;

pub use file::{Case, Expect, ExpectedNotice, NoticeName, ScriptedAnswer, StepExpect, TestFile};
pub use script::{MockResult, NoticeLog, RecordedCall, Script, ScriptedAction, SentNotice};

use crate::engine::{
    Actions, Defer, Engine, EngineConfig, FindingOutcome, Gate, ManualClock, RunStatus,
};
use crate::playbook::{self, Mode, Playbook, Trigger};
use crate::store::Store;

/// Safety net: a case that keeps producing work (a retry loop with no end) stops here.
const MAX_ROUNDS: usize = 10_000;

/// Why a test file could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The file does not follow the format: the rendered diagnostics, with line and column.
    #[error("{report}")]
    Format { report: String },
    #[error("{path}: the playbook {playbook} does not validate:\n{diagnostics}")]
    Playbook {
        path: PathBuf,
        playbook: PathBuf,
        diagnostics: String,
    },
    #[error("{path}: case `{case}`: {message}")]
    Engine {
        path: PathBuf,
        case: String,
        message: String,
    },
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// The results of one test file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub playbook: String,
    pub cases: Vec<CaseReport>,
}

/// Expands files and directories (their `*.yaml`/`*.yml`, not recursively) into test files.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    playbook::expand(paths).map_err(|error| match error {
        playbook::Error::Read { path, source } => Error::Read { path, source },
        playbook::Error::NotText { path } => Error::Invalid {
            path,
            message: "not UTF-8 text".to_owned(),
        },
    })
}

/// Runs every case of one test file.
pub async fn run_file(path: &Path) -> Result<FileReport, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = TestFile::parse(&path.display().to_string(), &text)
        .map_err(|report| Error::Format { report })?;
    let playbook_path = playbook_of(path, &file);
    let source = std::fs::read_to_string(&playbook_path).map_err(|source| Error::Read {
        path: playbook_path.clone(),
        source,
    })?;
    run_with_source(path, &file, &playbook_path, &source).await
}

/// The playbook file a test file names (relative to the test file's directory).
pub fn playbook_of(path: &Path, file: &TestFile) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).join(&file.playbook)
}

/// Runs every case of a parsed test file (read from `path`) against a playbook's `source`
/// (read from `playbook_path`, or an editor's text not yet saved there): what the console runs
/// before a change is applied.
pub async fn run_with_source(
    path: &Path,
    file: &TestFile,
    playbook_path: &Path,
    source: &str,
) -> Result<FileReport, Error> {
    let compiled = playbook::compile(source);
    let Some(playbook) = compiled.playbook.clone() else {
        let shown = playbook_path.display().to_string();
        let report = playbook::Report {
            file: &shown,
            source,
            diagnostics: &compiled.diagnostics,
        };
        return Err(Error::Playbook {
            path: path.to_owned(),
            playbook: playbook_path.to_owned(),
            diagnostics: report.render(false),
        });
    };
    let mut cases = Vec::new();
    for case in &file.cases {
        let failures = run_case(file, case, &playbook)
            .await
            .map_err(|message| Error::Engine {
                path: path.to_owned(),
                case: case.name.clone(),
                message,
            })?;
        cases.push(CaseReport {
            name: case.name.clone(),
            failures,
        });
    }
    Ok(FileReport {
        path: path.to_owned(),
        playbook: playbook.name.clone(),
        cases,
    })
}

/// Runs one case; returns what did not meet the expectations.
async fn run_case(
    file: &TestFile,
    case: &Case,
    playbook: &Playbook,
) -> Result<Vec<String>, String> {
    let start: DateTime<Utc> = case.now.or(file.now).unwrap_or_else(default_start);
    let clock = Arc::new(ManualClock::new(start));
    let store = Store::temporary().map_err(text)?;
    let script = Arc::new(Script::new(case.mocks.clone()));
    let mut actions = Actions::new();
    for spec in crate::actions::REGISTRY {
        if !spec.is_engine_handled() {
            actions.insert(
                spec.name,
                Arc::new(ScriptedAction::new(spec, script.clone())),
            );
        }
    }
    let mut groups = file.groups.clone();
    groups.extend(case.groups.clone());
    let owners = {
        let config = crate::config::Config {
            groups: groups.clone(),
            teams: file.teams.clone(),
            owners: file.owners.clone(),
            ..crate::config::Config::default()
        };
        config.check_owners().map_err(text)?;
        crate::owners::Owners::from_config(&config)?
    };
    let config = EngineConfig {
        mode: case.mode.unwrap_or(Mode::Live),
        owners: Arc::new(owners),
        groups,
        ..EngineConfig::default()
    };
    let notices = Arc::new(NoticeLog::new(clock.clone()));
    let engine = Engine::new(store, clock.clone(), actions, config).with_notifier(notices.clone());
    engine
        .load_playbooks(vec![playbook.clone()], "quench test")
        .await
        .map_err(text)?;

    let run_id = match &playbook.trigger {
        Trigger::Finding(_) => {
            let finding = case_finding(file, case, start)?;
            let outcomes = engine.ingest(&[finding]).await.map_err(text)?;
            engine.idle().await.map_err(text)?;
            match outcomes.first() {
                Some(FindingOutcome::Matched(handled)) => {
                    handled.iter().find_map(|(_, handling)| match handling {
                        crate::engine::Handling::Started { run } => Some(run.clone()),
                        _ => None,
                    })
                }
                _ => None,
            }
        }
        Trigger::Schedule(_) => {
            let run = engine.trigger(&playbook.name).await.map_err(text)?;
            engine.idle().await.map_err(text)?;
            run
        }
    };
    let Some(run_id) = run_id else {
        return Ok(check_no_run(case));
    };

    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        let run = engine
            .run(&run_id)
            .map_err(text)?
            .ok_or("the run disappeared")?;
        if run.status.is_terminal() {
            break;
        }
        // The next thing that happens: a scripted answer or a timer, whichever comes first.
        let gates: Vec<Gate> = engine.store().gates(&run_id).map_err(text)?;
        let mut next_answer: Option<(DateTime<Utc>, Gate, ScriptedAnswer)> = None;
        for gate in gates
            .into_iter()
            .filter(|gate| gate.decision.is_none() && !gate.closed)
        {
            let sent = delivered.get(&gate.step).copied().unwrap_or(0);
            if let Some(answer) = case
                .approvals
                .get(&gate.step)
                .and_then(|answers| answers.get(sent))
            {
                let at =
                    gate.opened_at + chrono::Duration::from_std(answer.after).unwrap_or_default();
                if next_answer.as_ref().is_none_or(|(due, _, _)| at < *due) {
                    next_answer = Some((at, gate, answer.clone()));
                }
            }
        }
        let next_timer = engine.next_due().map_err(text)?;
        match (next_answer, next_timer) {
            (Some((at, gate, answer)), timer) if timer.is_none_or(|timer| at <= timer) => {
                clock.advance_to(at);
                *delivered.entry(gate.step.clone()).or_default() += 1;
                let decision = Decision {
                    schema: DecisionSchema::V1,
                    id: format!("test-{}-{}", gate.step, delivered[&gate.step]),
                    run_id: run_id.clone(),
                    gate: gate.step.clone(),
                    token: gate.token.clone(),
                    choice: answer.choice.clone(),
                    item: answer.item.clone(),
                    comment: answer.comment.clone(),
                    actor: Actor {
                        via: answer.via,
                        id: answer.by.clone(),
                        name: None,
                    },
                    decided_at: clock_now(&clock),
                };
                engine.decide(&decision, Defer::Never).await.map_err(text)?;
                engine.idle().await.map_err(text)?;
            }
            (_, Some(timer)) => {
                clock.advance_to(timer);
                engine.fire_due().await.map_err(text)?;
                engine.idle().await.map_err(text)?;
            }
            (_, None) => {
                // Nothing can happen any more: the run waits for something the case never sends.
                break;
            }
        }
    }
    // What is due now still happens (the notice that closes a gate's messages when the run
    // ended with it); later timers (reminders of a gate that closed) do not matter.
    for _ in 0..MAX_ROUNDS {
        match engine.next_due().map_err(text)? {
            Some(due) if due <= clock_now(&clock) => {
                engine.fire_due().await.map_err(text)?;
                engine.idle().await.map_err(text)?;
            }
            _ => break,
        }
    }
    let run = engine
        .run(&run_id)
        .map_err(text)?
        .ok_or("the run disappeared")?;
    let verification = engine.store().verify_audit().map_err(text)?;
    let gates = engine.store().gates(&run_id).map_err(text)?;
    let mut failures = check(case, &run, &script.calls(), &notices.sent(), &gates);
    if let Some((seq, why)) = verification.first_bad {
        failures.push(format!(
            "the audit chain does not verify at entry #{seq}: {why}"
        ));
    }
    Ok(failures)
}

/// An engine or store error as the case's failure text.
fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use crate::engine::Clock;
    clock.now()
}

fn default_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The case's finding: the file's base finding with the case's changes merged over it, and
/// the fields a test need not spell out filled in.
fn case_finding(file: &TestFile, case: &Case, start: DateTime<Utc>) -> Result<Finding, String> {
    let mut value = file
        .finding
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    if let Some(changes) = &case.finding {
        merge(&mut value, changes);
    }
    let object = value.as_object_mut().ok_or("`finding` must be a mapping")?;
    let defaults = [
        ("schema", Value::from("quench.finding/v1")),
        ("id", Value::from(format!("test-{}", slug(&case.name)))),
        ("detected_at", Value::from(start.to_rfc3339())),
        ("severity", Value::from("high")),
        ("title", Value::from(case.name.clone())),
        ("source", serde_json::json!({"scanner": "quench-test"})),
    ];
    for (name, default) in defaults {
        object.entry(name).or_insert(default);
    }
    let bytes = serde_json::to_vec(&value).map_err(text)?;
    Finding::parse(&bytes, quench_proto::DEFAULT_MAX_FINDING_BYTES)
        .map_err(|error| format!("the finding is not valid: {error}"))
}

/// JSON merge patch (RFC 7386): mappings merge, `null` removes, anything else replaces.
fn merge(base: &mut Value, changes: &Value) {
    match (base, changes) {
        (Value::Object(base), Value::Object(changes)) => {
            for (key, change) in changes {
                if change.is_null() {
                    base.remove(key);
                } else {
                    merge(base.entry(key.clone()).or_insert(Value::Null), change);
                }
            }
        }
        (base, change) => *base = change.clone(),
    }
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn check_no_run(case: &Case) -> Vec<String> {
    match case.expect.status.as_deref() {
        Some("none") => Vec::new(),
        Some(expected) => vec![format!("status: expected {expected}, but no run started (the playbook did not match)")],
        None => vec!["no run started (the playbook did not match); expect `status: none` if that is intended".to_owned()],
    }
}

/// Compares a finished case with its expectations.
fn check(
    case: &Case,
    run: &crate::engine::Run,
    calls: &[RecordedCall],
    notices: &[SentNotice],
    gates: &[Gate],
) -> Vec<String> {
    let mut failures = Vec::new();
    let expect = &case.expect;
    if let Some(status) = &expect.status
        && status != run.status.as_str()
    {
        let why = match (&run.failure, &run.cancelled) {
            (Some(failure), _) => format!(" (failed at `{}`: {})", failure.step, failure.error),
            (_, Some(reason)) => format!(" (cancelled: {reason})"),
            _ if run.status == RunStatus::Waiting => {
                " (still waiting: nothing more was scripted)".to_owned()
            }
            _ => String::new(),
        };
        failures.push(format!(
            "status: expected {status}, got {}{why}",
            run.status.as_str()
        ));
    }
    for (step, expected) in &expect.steps {
        let state = run.steps.get(step);
        let status = state.map_or("not reached", |state| state.status.as_str());
        if status != expected.status {
            let error = state
                .and_then(|state| state.error.clone())
                .map(|error| format!(" ({error})"))
                .unwrap_or_default();
            failures.push(format!(
                "step `{step}`: expected {}, got {status}{error}",
                expected.status
            ));
        }
        if let Some(choice) = &expected.choice {
            let got = state
                .and_then(|state| state.choice.clone())
                .unwrap_or_else(|| "no choice".to_owned());
            if &got != choice {
                failures.push(format!(
                    "step `{step}`: expected choice {choice}, got {got}"
                ));
            }
        }
        if let Some(by) = &expected.decided_by {
            let got = state
                .map(|state| state.decided_by.clone())
                .unwrap_or_default();
            if &got != by {
                failures.push(format!(
                    "step `{step}`: expected decided_by {by:?}, got {got:?}"
                ));
            }
        }
        if let Some(want) = &expected.output {
            let got = state.map_or(Value::Null, |state| state.output.clone());
            if !contains(&got, want) {
                failures.push(format!(
                    "step `{step}`: expected output with {want}, got {got}"
                ));
            }
        }
        if let Some(want) = &expected.with {
            match calls.iter().rev().find(|call| call.step == *step) {
                Some(call) if contains(&call.input, want) => {}
                Some(call) => failures.push(format!(
                    "step `{step}`: expected a call with {want}, got {}",
                    call.input
                )),
                None => failures.push(format!(
                    "step `{step}`: expected a call with {want}, but the step made no call \
                     (only scripted actions are calls: not note, fail, wait, state.set or approval)"
                )),
            }
        }
        if let Some(want) = &expected.notices {
            let opened = gates
                .iter()
                .find(|gate| gate.step == *step)
                .map(|gate| gate.opened_at);
            let got: Vec<ExpectedNotice> = notices
                .iter()
                .filter(|notice| notice.step == *step)
                .map(|notice| ExpectedNotice {
                    notice: notice.notice,
                    to: notice.to.clone(),
                    after: opened
                        .and_then(|opened| (notice.at - opened).to_std().ok())
                        .unwrap_or_default(),
                })
                .collect();
            if &got != want {
                let render = |notices: &[ExpectedNotice]| {
                    notices
                        .iter()
                        .map(|notice| {
                            format!(
                                "{} to {:?} after {}\n",
                                notice.notice.as_str(),
                                notice.to,
                                humantime::format_duration(notice.after)
                            )
                        })
                        .collect::<String>()
                };
                let diff = similar::TextDiff::from_lines(&render(want), &render(&got))
                    .unified_diff()
                    .header("expected notices", "actual notices")
                    .to_string();
                failures.push(format!("step `{step}`: notices differ:\n{diff}"));
            }
        }
    }
    if let Some(expected) = &expect.calls {
        let matches = expected.len() == calls.len()
            && expected
                .iter()
                .zip(calls)
                .all(|(want, call)| want.uses == call.action && contains(&call.input, &want.with));
        if !matches {
            let render = |lines: Vec<String>| lines.join("\n") + "\n";
            let want = render(
                expected
                    .iter()
                    .map(|call| format!("{} {}", call.uses, call.with))
                    .collect(),
            );
            let got = render(
                calls
                    .iter()
                    .map(|call| {
                        format!(
                            "{} {}",
                            call.action,
                            subset(&call.input, expected, &call.action)
                        )
                    })
                    .collect(),
            );
            let diff = similar::TextDiff::from_lines(&want, &got)
                .unified_diff()
                .header("expected calls", "actual calls")
                .to_string();
            failures.push(format!("calls differ:\n{diff}"));
        }
    }
    failures
}

/// True when every field of `want` is in `got` with the same value (recursively for mappings).
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(got), Value::Object(want)) => want
            .iter()
            .all(|(key, want)| got.get(key).is_some_and(|got| contains(got, want))),
        (got, want) => got == want,
    }
}

/// For the diff: an actual call's input reduced to the fields the expectation for that action
/// names, so the diff shows only what was checked.
fn subset(input: &Value, expected: &[file::ExpectedCall], action: &str) -> Value {
    let Some(want) = expected
        .iter()
        .find(|call| call.uses == action)
        .map(|call| &call.with)
    else {
        return input.clone();
    };
    match (input, want) {
        (Value::Object(input), Value::Object(want)) => Value::Object(
            input
                .iter()
                .filter(|(key, _)| want.contains_key(*key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        _ => input.clone(),
    }
}
