//! The playbook language: YAML files that say what to do about a finding (or on a timetable),
//! compiled into checked [`Playbook`]s. `quench validate` and the service's loader both go
//! through [`compile`], so what validates is what runs.
//!
//! Flow: `yaml` (parse, keep positions) → `structure` (generated schema from `model`) →
//! `compile` (templates, references, actions, time) → [`Playbook`], or [`Diagnostic`]s rendered
//! by `diagnostic`.

mod compile;
mod diagnostic;
mod lines;
pub mod model;
mod overlap;
mod schedule;
mod schema;
mod structure;
mod template;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::GlobSet;

pub use compile::{Compiled, compile, compile_with, version_of};
pub use diagnostic::{Code, Diagnostic, Located, Report, Severity};
pub use model::{CatchUp, Conflict, Mode, OnResolved, Overlap};
pub use overlap::{overlapping, warn_overlaps};
pub use schedule::{MAX_KEY_EXPIRY, parse_cron, parse_duration, parse_key_expiry, parse_timezone};
pub use schema::{PLAYBOOK_SCHEMA_PATH, playbook_schema};
pub use template::{complete_finding, environment};

use crate::actions::ActionSpec;

/// A checked playbook, pinned to the exact source it was compiled from.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    /// `sha256:<hex>` of the source; runs keep the version they started with.
    pub version: String,
    pub source: Arc<str>,
    pub description: Option<String>,
    pub owner: Option<String>,
    /// `None` when the service's default mode applies.
    pub mode: Option<Mode>,
    pub trigger: Trigger,
    /// Template for the run key (one open run per key).
    pub key: String,
    pub on_conflict: Conflict,
    pub on_resolved: OnResolved,
    pub timeout: Option<Duration>,
    pub vars: model::Map,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
    /// Whether the playbook reads the resolved owner (`owner` in a template, `owner` or
    /// `owner.team` as a recipient): a run of it resolves its owner when it starts.
    pub uses_owner: bool,
}

/// Actions that cannot work in this service (a connector without credentials), by name prefix,
/// with why: `("openai.", "openai.admin_key is not configured")`.
pub type Unavailable = [(String, String)];

impl Playbook {
    /// Why a run of this playbook cannot work here, if one of its steps needs an unavailable
    /// action: a reading step always does (there is nothing to read without credentials), a
    /// changing step only in live mode (dry-run describes it instead).
    pub fn blocked_by(&self, unavailable: &Unavailable, default_mode: Mode) -> Option<String> {
        let live = self.mode.unwrap_or(default_mode) == Mode::Live;
        self.steps
            .iter()
            .chain(&self.on_failure)
            .filter(|step| live || !step.action.mutates)
            .find_map(|step| {
                unavailable
                    .iter()
                    .find(|(prefix, _)| step.action.name.starts_with(prefix.as_str()))
                    .map(|(_, why)| {
                        format!("step `{}` uses `{}`, and {why}", step.id, step.action.name)
                    })
            })
    }
}

/// The run key of a finding playbook that does not set `key`: one open run per finding key.
pub const FINDING_KEY: &str = "{{ finding.key }}";

/// Whether a `key` template is [`FINDING_KEY`], however it is spaced.
pub fn is_finding_key(template: &str) -> bool {
    let spaced: String = template.split_whitespace().collect();
    spaced == FINDING_KEY.split_whitespace().collect::<String>()
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Finding(FindingTrigger),
    Schedule(Schedule),
}

#[derive(Debug, Clone)]
pub struct FindingTrigger {
    pub kinds: Vec<String>,
    matcher: GlobSet,
    /// Expression over `finding`.
    pub condition: Option<String>,
}

impl FindingTrigger {
    /// True when a finding of this kind is for this playbook (before `where`).
    pub fn matches_kind(&self, kind: &str) -> bool {
        self.matcher.is_match(kind)
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// The line as written.
    pub line: String,
    pub cron: cron::Schedule,
    pub timezone: chrono_tz::Tz,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub action: &'static ActionSpec,
    /// Inputs; strings are templates, rendered when the step runs.
    pub with: model::Map,
    pub condition: Option<String>,
    pub foreach: Option<String>,
    pub retry: Option<RetryPolicy>,
    /// Per attempt.
    pub timeout: Option<Duration>,
    pub continue_on_error: bool,
    /// Runs during a change freeze (`[safety] freeze`).
    pub urgent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// One playbook file and what compiling it said.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub source: String,
    pub compiled: Compiled,
}

impl Loaded {
    pub fn report(&self) -> Report<'_> {
        Report {
            file: self.path.to_str().unwrap_or("<non-UTF-8 path>"),
            source: &self.source,
            diagnostics: &self.compiled.diagnostics,
        }
    }
}

/// Why playbook files could not be read at all (as opposed to read and found wanting).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 text")]
    NotText { path: PathBuf },
}

/// Reads YAML the way playbooks are read (YAML 1.2 core types, duplicate keys, anchors and tags
/// refused) into a JSON value; an error comes with its line and column.
pub fn yaml_value(text: &str) -> Result<serde_json::Value, (usize, usize, String)> {
    match yaml::Document::parse(text) {
        Ok(document) => Ok(document.value),
        Err(diagnostic) => {
            let (line, column) = lines::LineIndex::new(text).line_column(diagnostic.span.start);
            Err((line, column, diagnostic.message))
        }
    }
}

/// Reads a YAML document of another quench format (playbook test files) the way playbooks are
/// read: parsed with positions (duplicate keys, anchors and tags refused), checked against the
/// schema generated from `T` — every problem at once, at its line and column, unknown fields
/// with a did-you-mean — and only then read into `T`. The error is the rendered report, naming
/// `file`.
pub fn read_checked<T: schemars::JsonSchema + serde::de::DeserializeOwned>(
    file: &str,
    source: &str,
) -> Result<T, String> {
    let report = |diagnostics: &[Diagnostic]| {
        Report {
            file,
            source,
            diagnostics,
        }
        .render(false)
    };
    let document = yaml::Document::parse(source).map_err(|diagnostic| report(&[diagnostic]))?;
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| format!("{file}: the format's schema does not compile: {error}"))?;
    let diagnostics = structure::check(
        &document,
        "",
        &document.value,
        &schema,
        &validator,
        structure::Subject::Playbook,
    );
    if !diagnostics.is_empty() {
        return Err(report(&diagnostics));
    }
    serde_path_to_error::deserialize(document.value.clone()).map_err(|error| {
        let pointer: String = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                serde_path_to_error::Segment::Map { key } => {
                    Some(format!("/{}", yaml::escape(key)))
                }
                _ => None,
            })
            .collect();
        let span = document.value_span(&pointer);
        let field = error.path().to_string();
        report(&[Diagnostic::error(
            Code::InvalidValue,
            span,
            format!("`{field}`: {}", error.inner()),
        )])
    })
}

/// Whether a path names a playbook file.
pub fn is_playbook_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|extension| extension.to_str()),
        Some("yaml" | "yml")
    )
}

/// Files as given, and directories as their `*.yaml`/`*.yml` files (not recursively, in name
/// order): how `validate`, `test` and the service read their paths.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file() && is_playbook_file(path))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Expands files and directories (see [`expand`]) and compiles each (against the config's
/// `groups` when known, see [`compile_with`]). Names used by two files are reported on the
/// second.
pub fn load_paths(
    paths: &[PathBuf],
    groups: Option<&std::collections::BTreeSet<String>>,
) -> Result<Vec<Loaded>, Error> {
    let files = expand(paths)?;
    let mut loaded: Vec<Loaded> = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let source = String::from_utf8(bytes).map_err(|_| Error::NotText { path: path.clone() })?;
        let mut compiled = compile_with(&source, groups);
        if let Some(playbook) = &compiled.playbook
            && let Some(first) = loaded.iter().find(|other| {
                other
                    .compiled
                    .playbook
                    .as_ref()
                    .is_some_and(|other| other.name == playbook.name)
            })
        {
            let span = name_span(&source);
            compiled.diagnostics.push(
                Diagnostic::error(
                    Code::DuplicatePlaybook,
                    span,
                    format!("playbook name `{}` is already used", playbook.name),
                )
                .with_help(format!(
                    "{} has the same name; names must be unique",
                    first.path.display()
                )),
            );
            compiled.playbook = None;
        }
        loaded.push(Loaded {
            path,
            source,
            compiled,
        });
    }
    Ok(loaded)
}

fn name_span(source: &str) -> std::ops::Range<usize> {
    let Ok(document) = yaml::Document::parse(source) else {
        return 0..0;
    };
    document.value_span("/name")
}
