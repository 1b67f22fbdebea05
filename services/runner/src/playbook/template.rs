//! Templates and expressions: Jinja as `minijinja` implements it, with undefined values an error.
//! The environment here is the only one quench renders playbooks with, so what `quench validate`
//! accepts is what the engine runs. It has no loader, no access to the process environment or to
//! files, and a fuel limit, so a template can read only the context it is given and cannot spin.
//!
//! At load time every template is compiled and every name it reads is checked against the
//! context available at that place in the playbook ([`Scope`]): `finding.…` against the Finding
//! schema, `steps.<id>` against the steps before it, `vars.<name>` against `vars`, and so on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use quench_common::suggest::did_you_mean;
use serde_json::Value;

use super::diagnostic::Code;

/// Upper bound on the work one render may do (instructions plus string lengths).
const FUEL: u64 = 200_000;

/// The environment every playbook template is compiled and rendered with.
pub fn environment() -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment.set_fuel(Some(FUEL));
    environment.set_recursion_limit(32);
    // Templates named `*.slack` are Slack mrkdwn: what they interpolate is escaped (`&`, `<`,
    // `>`), so a value from a finding cannot mention `@channel` or forge a link; the
    // playbook's own text is kept as written.
    environment.set_auto_escape_callback(|name| {
        if name.ends_with(".slack") {
            AutoEscape::Custom("slack".into())
        } else {
            AutoEscape::None
        }
    });
    environment.set_formatter(|out, state, value| {
        if matches!(state.auto_escape(), AutoEscape::Custom(name) if name == "slack")
            && !value.is_safe()
        {
            out.write_str(&quench_proto::slack::escape(&value.to_string()))
                .map_err(|error| minijinja::Error::new(ErrorKind::WriteFailure, error.to_string()))
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    environment.add_function("ago", ago);
    // `{{ steps.decide.decided_by | map('mention') | join(', ') }}`: Slack users as mentions in
    // Slack text (kept as markup, not escaped), anyone else as escaped text.
    environment.add_filter("mention", |who: String| {
        minijinja::Value::from_safe_string(quench_proto::slack::mention(&who))
    });
    environment
}

/// `ago("90d")`: the time that long before `now`, as an RFC 3339 UTC string, so it compares
/// correctly with the RFC 3339 times actions return (`item.last_used_at < ago("90d")`). It reads
/// the run's `now`, which is virtual in playbook tests.
fn ago(state: &State<'_, '_>, duration: String) -> Result<String, minijinja::Error> {
    let invalid = |message: String| minijinja::Error::new(ErrorKind::InvalidOperation, message);
    let now = state
        .lookup("now")
        .ok_or_else(|| invalid("`ago` needs `now` in the context".to_owned()))?;
    let now = now
        .as_str()
        .and_then(|now| chrono::DateTime::parse_from_rfc3339(now).ok())
        .ok_or_else(|| invalid(format!("`now` is not an RFC 3339 time: {now}")))?;
    let duration = super::schedule::parse_duration(&duration).map_err(invalid)?;
    let duration =
        chrono::Duration::from_std(duration).map_err(|error| invalid(error.to_string()))?;
    let then = now.with_timezone(&chrono::Utc) - duration;
    Ok(then.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(environment);

/// Compiles a template (a string in `with`, `key` or `vars`) and returns the names it reads,
/// as dotted paths (`finding.resource.project_id`).
pub(crate) fn template_references(text: &str) -> Result<BTreeSet<String>, minijinja::Error> {
    let template = ENVIRONMENT.template_from_str(text)?;
    Ok(template.undeclared_variables(true).into_iter().collect())
}

/// Compiles an expression (`if`, `where`, `foreach`) and returns the names it reads.
pub(crate) fn expression_references(text: &str) -> Result<BTreeSet<String>, minijinja::Error> {
    let expression = ENVIRONMENT.compile_expression(text)?;
    Ok(expression.undeclared_variables(true).into_iter().collect())
}

/// True when a string is a template rather than a literal.
pub(crate) fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// A step that later steps may read, as `steps.<id>`.
#[derive(Debug, Clone)]
pub(crate) struct StepRef {
    pub(crate) id: String,
    pub(crate) approval: bool,
}

/// The names a template may read at one place in a playbook.
#[derive(Debug, Default)]
pub(crate) struct Scope<'a> {
    /// Why `finding` is not available here, or `None` when it is.
    pub(crate) no_finding: Option<&'static str>,
    /// Declared `vars`; `None` where vars are not available (inside `vars` itself).
    pub(crate) vars: Option<&'a BTreeSet<String>>,
    /// Steps that have run before this place; `None` where no step has run (triggers, `key`, `vars`).
    pub(crate) earlier: Option<&'a [StepRef]>,
    /// Steps that run after this place (for a precise message).
    pub(crate) later: &'a [String],
    /// The step being checked.
    pub(crate) current: Option<&'a str>,
    pub(crate) run: bool,
    pub(crate) item: bool,
    pub(crate) failure: bool,
}

/// A reference that the context cannot satisfy.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) code: Code,
    /// The text to point at in the source (the dotted path as written).
    pub(crate) path: String,
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

/// Step result fields every step has, and those only approvals add.
const STEP_FIELDS: &[&str] = &["status", "output", "error"];
const APPROVAL_FIELDS: &[&str] = &["choice", "decided_by", "decided_at", "via"];
const RUN_FIELDS: &[&str] = &["id", "started_at", "mode"];
const PLAYBOOK_FIELDS: &[&str] = &["name", "version"];
const FAILURE_FIELDS: &[&str] = &["step", "error"];
const OWNER_FIELDS: &[&str] = &[
    "link",
    "source",
    "team",
    "emails",
    "slack_user_ids",
    "channel",
    "recipient",
];

impl Scope<'_> {
    /// Checks each referenced path; returns what cannot be satisfied.
    pub(crate) fn check(&self, paths: &BTreeSet<String>) -> Vec<Problem> {
        paths
            .iter()
            .filter_map(|path| self.check_one(path))
            .collect()
    }

    fn roots(&self) -> Vec<&'static str> {
        let mut roots = vec!["playbook", "now", "owner"];
        if self.no_finding.is_none() {
            roots.push("finding");
        }
        if self.vars.is_some() {
            roots.push("vars");
        }
        if self.earlier.is_some() {
            roots.push("steps");
        }
        if self.run {
            roots.extend(["run", "state"]);
        }
        if self.item {
            roots.extend(["item", "index"]);
        }
        if self.failure {
            roots.push("failure");
        }
        roots
    }

    fn check_one(&self, path: &str) -> Option<Problem> {
        let segments: Vec<&str> = path.split('.').collect();
        let root = segments[0];
        let problem = |code: Code, message: String, help: Option<String>| {
            Some(Problem {
                code,
                path: path.to_owned(),
                message,
                help,
            })
        };
        let fixed = |fields: &[&str], what: &str| -> Option<Problem> {
            let field = segments.get(1)?;
            if fields.contains(field) {
                return None;
            }
            problem(
                Code::UnknownName,
                format!("`{what}` has no field `{field}`"),
                did_you_mean(field, fields.iter().copied())
                    .or_else(|| Some(format!("`{what}` has {}", list(fields)))),
            )
        };
        let unavailable = |why: String| problem(Code::UnknownName, why, None);
        match root {
            "finding" => match self.no_finding {
                Some(why) => unavailable(format!("`finding` is not available here: {why}")),
                None => check_finding_path(path, &segments[1..]),
            },
            "steps" => match self.earlier {
                None => {
                    unavailable("`steps` is not available here: no step has run yet".to_owned())
                }
                Some(earlier) => self.check_step_path(path, &segments[1..], earlier),
            },
            "vars" => match (self.vars, segments.get(1)) {
                (None, _) => unavailable("`vars` cannot refer to other vars".to_owned()),
                (Some(_), None) => None,
                (Some(vars), Some(name)) if vars.contains(*name) => None,
                (Some(vars), Some(name)) => problem(
                    Code::UnknownName,
                    format!("`vars.{name}` is not declared"),
                    did_you_mean(name, vars.iter().map(String::as_str)).or_else(|| {
                        Some("declare it under `vars:` at the top of the playbook".to_owned())
                    }),
                ),
            },
            "run" if self.run => fixed(RUN_FIELDS, "run"),
            "run" => unavailable("`run` is not available here: no run exists yet".to_owned()),
            // What `state.set` remembered: any name (test it with `is defined`).
            "state" if self.run => None,
            "state" => unavailable("`state` is not available here: no run exists yet".to_owned()),
            "playbook" => fixed(PLAYBOOK_FIELDS, "playbook"),
            "owner" => fixed(OWNER_FIELDS, "owner"),
            "now" if segments.len() == 1 => None,
            "now" => fixed(&[], "now"),
            "item" if self.item => None,
            "index" if self.item && segments.len() == 1 => None,
            "item" | "index" => {
                unavailable(format!("`{root}` exists only in a step with `foreach`"))
            }
            "failure" if self.failure => fixed(FAILURE_FIELDS, "failure"),
            "failure" => unavailable("`failure` exists only in `on_failure` steps".to_owned()),
            global if ENVIRONMENT.globals().any(|(name, _)| name == global) => None,
            unknown => {
                let roots = self.roots();
                problem(
                    Code::UnknownName,
                    format!("unknown name `{unknown}`"),
                    did_you_mean(unknown, roots.iter().copied())
                        .or_else(|| Some(format!("names available here: {}", list(&roots)))),
                )
            }
        }
    }

    fn check_step_path(&self, path: &str, rest: &[&str], earlier: &[StepRef]) -> Option<Problem> {
        let id = *rest.first()?;
        let problem = |code: Code, message: String, help: Option<String>| {
            Some(Problem {
                code,
                path: path.to_owned(),
                message,
                help,
            })
        };
        let Some(step) = earlier.iter().find(|step| step.id == id) else {
            if self.current == Some(id) {
                return problem(
                    Code::LaterStep,
                    format!("step `{id}` cannot read its own result"),
                    Some("a step sees only the steps before it".to_owned()),
                );
            }
            if self.later.iter().any(|later| later == id) {
                return problem(
                    Code::LaterStep,
                    format!("step `{id}` runs after this point"),
                    Some("`steps.<id>` must name an earlier step".to_owned()),
                );
            }
            return problem(
                Code::UnknownStep,
                format!("no step `{id}`"),
                did_you_mean(id, earlier.iter().map(|step| step.id.as_str())),
            );
        };
        let field = *rest.get(1)?;
        if STEP_FIELDS.contains(&field) {
            return None;
        }
        if APPROVAL_FIELDS.contains(&field) {
            return if step.approval {
                None
            } else {
                problem(
                    Code::UnknownName,
                    format!("`steps.{id}.{field}` exists only on approval steps"),
                    Some(format!("step `{id}` is not an `approval`")),
                )
            };
        }
        let fields: Vec<&str> = STEP_FIELDS
            .iter()
            .chain(if step.approval { APPROVAL_FIELDS } else { &[] })
            .copied()
            .collect();
        problem(
            Code::UnknownName,
            format!("step results have no field `{field}`"),
            did_you_mean(field, fields.iter().copied())
                .or_else(|| Some(format!("`steps.{id}` has {}", list(&fields)))),
        )
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields of a Finding, read from its generated JSON Schema so the check cannot drift from
/// the contract. `open` marks free-form objects (`evidence`, `labels`).
#[derive(Debug, Default)]
struct Fields {
    children: BTreeMap<String, Fields>,
    open: bool,
}

static FINDING_FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    let schema = Value::from(schemars::schema_for!(quench_proto::Finding));
    fields_of(&schema, &schema)
});

fn fields_of(schema: &Value, root: &Value) -> Fields {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        return root
            .pointer(pointer)
            .map_or_else(Fields::default, |target| fields_of(target, root));
    }
    let mut fields = Fields::default();
    for variants in ["anyOf", "oneOf", "allOf"] {
        for variant in schema
            .get(variants)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let variant = fields_of(variant, root);
            fields.open |= variant.open;
            fields.children.extend(variant.children);
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            fields
                .children
                .insert(name.clone(), fields_of(property, root));
        }
    }
    let is_object = schema.get("type").is_some_and(|kind| kind == "object");
    if is_object && fields.children.is_empty() {
        fields.open = true;
    }
    fields
}

/// Gives every field of the Finding schema a value, `null` for the absent ones (and `{}` for the
/// free-form objects), so a template can test `finding.owner` without tripping over "undefined".
pub fn complete_finding(value: &mut Value) {
    fill(value, &FINDING_FIELDS);
}

fn fill(value: &mut Value, fields: &Fields) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    for (name, child) in &fields.children {
        match object.get_mut(name) {
            Some(present) => fill(present, child),
            None if child.open => {
                object.insert(name.clone(), Value::Object(serde_json::Map::new()));
            }
            None => {
                object.insert(name.clone(), Value::Null);
            }
        }
    }
}

fn check_finding_path(path: &str, rest: &[&str]) -> Option<Problem> {
    let mut fields = &*FINDING_FIELDS;
    let mut walked = String::from("finding");
    for segment in rest {
        if fields.open {
            return None;
        }
        match fields.children.get(*segment) {
            Some(child) => fields = child,
            None => {
                let names: Vec<&str> = fields.children.keys().map(String::as_str).collect();
                let help = if names.is_empty() {
                    format!("`{walked}` is a value, not an object")
                } else {
                    did_you_mean(segment, names.iter().copied())
                        .unwrap_or_else(|| format!("`{walked}` has {}", list(&names)))
                };
                return Some(Problem {
                    code: Code::UnknownFindingField,
                    path: path.to_owned(),
                    message: format!("`{walked}` has no field `{segment}` in the Finding schema"),
                    help: Some(help),
                });
            }
        }
        walked.push('.');
        walked.push_str(segment);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_fields_come_from_the_schema() {
        assert!(
            check_finding_path("finding.resource.project_id", &["resource", "project_id"])
                .is_none()
        );
        assert!(
            check_finding_path(
                "finding.evidence.anything.deep",
                &["evidence", "anything", "deep"]
            )
            .is_none()
        );
        let problem = check_finding_path("finding.resource.projectid", &["resource", "projectid"])
            .expect("a typo is a problem");
        assert_eq!(problem.help.as_deref(), Some("did you mean `project_id`?"));
    }

    #[test]
    fn ago_counts_back_from_now() {
        let environment = environment();
        let rendered = environment
            .render_str(
                "{{ ago('90d') }}",
                minijinja::context! { now => "2026-11-26T12:00:00Z" },
            )
            .expect("renders");
        assert_eq!(rendered, "2026-08-28T12:00:00Z");
        let undefined = environment.render_str("{{ missing }}", minijinja::context! {});
        assert!(undefined.is_err(), "undefined values are errors");
    }

    #[test]
    fn references_are_dotted_paths() {
        let paths = template_references(
            "{{ finding.owner.email }} {% for k in steps.list.output %}{{ k.id }}{% endfor %}",
        )
        .expect("compiles");
        assert_eq!(
            paths.into_iter().collect::<Vec<_>>(),
            ["finding.owner.email", "steps.list.output"]
        );
    }
}
