//! The playbook compiler: source text in, a checked [`Playbook`] (or every problem at once) out.
//!
//! Three passes, each reporting all it finds: YAML (syntax, duplicate keys — nothing after a
//! syntax error can be trusted, so this one stops), structure (the generated schema: unknown and
//! missing fields, types, enum values), and meaning (templates, references, actions and their
//! inputs, durations, cron lines, time zones, approvals, and the irreversible-action warning).
//! The meaning pass reads each piece on its own, so a structural error in one step does not hide
//! the problems of the others.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSetBuilder};
use quench_common::suggest::did_you_mean;
use quench_proto::slack::MAX_ASK;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::diagnostic::{Code, Diagnostic};
use super::model::{self, Conflict, OnResolved};
use super::schedule::{parse_cron, parse_duration, parse_key_expiry, parse_timezone};
use super::schema::{INPUTS, STRUCTURE};
use super::structure::{self, Subject};
use super::template::{Scope, StepRef, expression_references, is_template, template_references};
use super::yaml::Document;
use super::{FindingTrigger, Playbook, RetryPolicy, Schedule, Step, Trigger};
use crate::actions::{self, ActionSpec, LimitProjectRate, SetHostedTools, SetKeyScopes};

/// What compiling one playbook produced: the playbook when there is no error, and every
/// diagnostic (warnings included) in source order.
#[derive(Debug)]
pub struct Compiled {
    pub playbook: Option<Playbook>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
const DEFAULT_CHOICES: [&str; 2] = ["approve", "deny"];

/// Compiles one playbook source on its own: a literal `group:<name>` is checked only for its
/// form, since which groups exist is the service's configuration ([`compile_with`]).
pub fn compile(source: &str) -> Compiled {
    compile_with(source, None)
}

/// Compiles one playbook source for a service whose config defines `groups`: a literal
/// `group:<name>` (an approver, an escalation or message target, a var) naming a group not
/// defined there is an error, since every run would fail on it. Templated groups are known only
/// when rendered and fail their step then.
pub fn compile_with(source: &str, groups: Option<&BTreeSet<String>>) -> Compiled {
    let document = match Document::parse(source) {
        Ok(document) => document,
        Err(diagnostic) => {
            return Compiled {
                playbook: None,
                diagnostics: vec![diagnostic],
            };
        }
    };
    let (schema, validator) = &*STRUCTURE;
    let mut diagnostics = structure::check(
        &document,
        "",
        &document.value,
        schema,
        validator,
        Subject::Playbook,
    );
    let structural_errors = !diagnostics.is_empty();
    let mut compiler = Compiler {
        document: &document,
        diagnostics: Vec::new(),
        groups,
        uses_owner: false,
    };
    let playbook = compiler.playbook(source);
    diagnostics.append(&mut compiler.diagnostics);
    diagnostics.sort_by_key(|diagnostic| (diagnostic.span.start, diagnostic.severity));
    let playbook =
        playbook.filter(|_| !structural_errors && !diagnostics.iter().any(Diagnostic::is_error));
    Compiled {
        playbook,
        diagnostics,
    }
}

struct Compiler<'a> {
    document: &'a Document,
    diagnostics: Vec<Diagnostic>,
    /// The groups the service's config defines, when known.
    groups: Option<&'a BTreeSet<String>>,
    /// Whether anything reads the run's resolved owner (see [`Playbook::uses_owner`]).
    uses_owner: bool,
}

/// What the steps before a given step established.
struct StepContext<'a> {
    earlier: Vec<StepRef>,
    later: Vec<String>,
    approval_seen: bool,
    vars: &'a BTreeSet<String>,
    no_finding: Option<&'static str>,
}

impl Compiler<'_> {
    /// The meaning pass. Returns a playbook only when every piece it needs could be read.
    fn playbook(&mut self, source: &str) -> Option<Playbook> {
        let name: Option<String> = self.get("/name");
        let trigger = self.trigger();
        let no_finding = match &trigger {
            Some(Trigger::Schedule(_)) => Some("a scheduled playbook runs without a finding"),
            _ => None,
        };
        let vars_map: model::Map = self.get("/vars").unwrap_or_default();
        let vars: BTreeSet<String> = vars_map.keys().cloned().collect();

        let key = match self.get::<String>("/key") {
            Some(key) => {
                self.template(
                    "/key",
                    &key,
                    &Scope {
                        no_finding,
                        vars: Some(&vars),
                        ..Scope::default()
                    },
                );
                key
            }
            None if no_finding.is_some() => name.clone().unwrap_or_default(),
            None => super::FINDING_KEY.to_owned(),
        };
        let timeout = self.duration("/timeout");
        for (var, value) in &vars_map {
            let pointer = format!("/vars/{}", super::yaml::escape(var));
            if let Some(name) = value.as_str().and_then(|text| text.strip_prefix("group:")) {
                self.group_defined(&pointer, name);
            }
            if value.as_str().is_some_and(crate::owners::names_owner) {
                self.uses_owner = true;
            }
            self.templates_in(
                &pointer,
                value,
                &Scope {
                    no_finding,
                    run: true,
                    ..Scope::default()
                },
            );
        }

        let mut context = StepContext {
            earlier: Vec::new(),
            later: Vec::new(),
            approval_seen: false,
            vars: &vars,
            no_finding,
        };
        let step_count = self.count("/steps");
        let ids: Vec<Option<String>> = (0..step_count)
            .map(|index| self.get(&format!("/steps/{index}/id")))
            .collect();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut steps = Vec::with_capacity(step_count);
        for (index, id) in ids.iter().enumerate() {
            let pointer = format!("/steps/{index}");
            match id {
                None => {
                    if self.document.contains(&pointer)
                        && !self.document.contains(&format!("{pointer}/id"))
                    {
                        self.push(Diagnostic::error(Code::MissingField, self.document.key_span(&pointer), "missing field `id`")
                            .with_help("every step needs an `id`, e.g. `id: notify_owner`; later steps read it as `steps.<id>`"));
                    }
                }
                Some(id) => {
                    if let Some(first) = first_seen.get(id) {
                        let first_span = self.document.value_span(&format!("/steps/{first}/id"));
                        self.push(
                            Diagnostic::error(
                                Code::DuplicateStep,
                                self.document.value_span(&format!("{pointer}/id")),
                                format!("duplicate step id `{id}`"),
                            )
                            .with_label("used again here")
                            .with_note(first_span, "first used here"),
                        );
                    } else {
                        first_seen.insert(id.clone(), index);
                    }
                }
            }
            context.later = ids[index + 1..].iter().flatten().cloned().collect();
            steps.push(self.step(&pointer, id.clone(), &mut context, false));
        }

        let mut on_failure = Vec::new();
        let failure_count = self.count("/on_failure");
        context.later.clear();
        for index in 0..failure_count {
            let pointer = format!("/on_failure/{index}");
            let id = self
                .get(&format!("{pointer}/id"))
                .unwrap_or_else(|| format!("on_failure_{index}"));
            on_failure.push(self.step(&pointer, Some(id), &mut context, true));
        }

        Some(Playbook {
            name: name?,
            version: version_of(source),
            source: Arc::from(source),
            description: self.get("/description"),
            owner: self.get("/owner"),
            mode: self.get("/mode"),
            trigger: trigger?,
            key,
            on_conflict: self.get("/on_conflict").unwrap_or(Conflict::Attach),
            on_resolved: self.get("/on_resolved").unwrap_or(OnResolved::Ignore),
            timeout,
            vars: vars_map,
            steps: steps.into_iter().collect::<Option<Vec<_>>>()?,
            on_failure: on_failure.into_iter().collect::<Option<Vec<_>>>()?,
            uses_owner: self.uses_owner,
        })
    }

    fn trigger(&mut self) -> Option<Trigger> {
        let trigger: model::Trigger = self.get("/on")?;
        match (trigger.finding, trigger.schedule) {
            (Some(finding), None) => self.finding_trigger(finding).map(Trigger::Finding),
            (None, Some(schedule)) => self.schedule(schedule).map(Trigger::Schedule),
            (finding, _) => {
                let message = if finding.is_some() {
                    "`on` has both `finding` and `schedule`; a playbook has one trigger"
                } else {
                    "`on` needs `finding` (kinds to react to) or `schedule` (a cron line)"
                };
                self.push(Diagnostic::error(
                    Code::Trigger,
                    self.document.key_span("/on"),
                    message,
                ));
                None
            }
        }
    }

    fn finding_trigger(&mut self, trigger: model::FindingTrigger) -> Option<FindingTrigger> {
        let mut builder = GlobSetBuilder::new();
        let mut ok = true;
        for (index, kind) in trigger.kinds.iter().enumerate() {
            let pointer = format!("/on/finding/kinds/{index}");
            let valid_shape = !kind.is_empty()
                && kind.split('.').all(|part| {
                    !part.is_empty()
                        && part.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*".contains(c)
                        })
                });
            match Glob::new(kind) {
                Ok(glob) if valid_shape => {
                    builder.add(glob);
                }
                _ => {
                    ok = false;
                    self.push(
                        Diagnostic::error(Code::InvalidValue, self.document.value_span(&pointer), format!("`{kind}` is not a finding kind or glob"))
                            .with_help("kinds are dotted lowercase words such as `openai.api_key.leaked`; `*` matches any part (`openai.api_key.*`)"),
                    );
                }
            }
        }
        if let Some(condition) = &trigger.condition {
            self.expression("/on/finding/where", condition, &Scope::default());
        }
        let matcher = builder.build().ok()?;
        ok.then_some(FindingTrigger {
            kinds: trigger.kinds,
            matcher,
            condition: trigger.condition,
        })
    }

    fn schedule(&mut self, trigger: model::ScheduleTrigger) -> Option<Schedule> {
        let cron = match parse_cron(&trigger.cron) {
            Ok(cron) => Some(cron),
            Err(message) => {
                self.push(
                    Diagnostic::error(
                        Code::Cron,
                        self.document.value_span("/on/schedule/cron"),
                        message,
                    )
                    .with_help(
                        "e.g. `0 9 * * MON-FRI` (5 fields) or `0 0 9 * * MON-FRI` (seconds first)",
                    ),
                );
                None
            }
        };
        let timezone = match trigger.timezone.as_deref() {
            None => Some(chrono_tz::UTC),
            Some(name) => match parse_timezone(name) {
                Ok(timezone) => Some(timezone),
                Err((message, help)) => {
                    self.push(
                        Diagnostic::error(
                            Code::Timezone,
                            self.document.value_span("/on/schedule/timezone"),
                            message,
                        )
                        .with_help_opt(help.or_else(|| {
                            Some("use an IANA name such as `Europe/Berlin` or `UTC`".to_owned())
                        })),
                    );
                    None
                }
            },
        };
        Some(Schedule {
            line: trigger.cron,
            cron: cron?,
            timezone: timezone?,
            overlap: trigger.overlap.unwrap_or(model::Overlap::Skip),
            catch_up: trigger.catch_up.unwrap_or(model::CatchUp::Last),
        })
    }

    fn step(
        &mut self,
        pointer: &str,
        id: Option<String>,
        context: &mut StepContext<'_>,
        in_failure: bool,
    ) -> Option<Step> {
        let raw: Option<model::Step> = self.get(pointer);
        let uses: Option<String> = self.get(&format!("{pointer}/uses"));
        let action = uses.as_deref().and_then(|uses| self.action(pointer, uses));
        let foreach: Option<String> = self.get(&format!("{pointer}/foreach"));

        if let (Some(_), Some(action)) = (&foreach, action)
            && matches!(action.name, "wait" | crate::actions::APPROVAL)
        {
            self.push(
                Diagnostic::error(
                    Code::Input,
                    self.document.key_span(&format!("{pointer}/foreach")),
                    format!("`{}` cannot run per item: a run parks on one gate or timer at a time", action.name),
                )
                .with_help("ask once about the whole list, or start one run per item with `finding.publish`"),
            );
        }
        let current = id.as_deref().filter(|_| !in_failure);
        let scope = |item: bool| Scope {
            no_finding: context.no_finding,
            vars: Some(context.vars),
            earlier: Some(&context.earlier),
            later: &context.later,
            current,
            run: true,
            item,
            failure: in_failure,
        };
        if let Some(foreach) = &foreach {
            self.expression(&format!("{pointer}/foreach"), foreach, &scope(false));
        }
        if let Some(condition) = self.get::<String>(&format!("{pointer}/if")) {
            self.expression(
                &format!("{pointer}/if"),
                &condition,
                &scope(foreach.is_some()),
            );
        }
        let with_pointer = format!("{pointer}/with");
        let with: model::Map = self.get(&with_pointer).unwrap_or_default();
        self.templates_in(
            &with_pointer,
            &Value::Object(with.clone()),
            &scope(foreach.is_some()),
        );
        if let Some(action) = action {
            self.inputs(&with_pointer, action, &with);
            if action.irreversible.is_some() && !context.approval_seen && !in_failure {
                self.irreversible(pointer, action);
            }
        }
        let timeout = self.duration(&format!("{pointer}/timeout"));
        let retry = self.retry(&format!("{pointer}/retry"));

        if let (Some(id), false) = (&id, in_failure) {
            context.earlier.push(StepRef {
                id: id.clone(),
                approval: action.is_some_and(ActionSpec::is_approval),
            });
        }
        context.approval_seen |= action.is_some_and(ActionSpec::is_approval);

        let raw = raw?;
        Some(Step {
            id: id?,
            action: action?,
            with,
            condition: raw.condition,
            foreach: raw.foreach,
            retry,
            timeout,
            continue_on_error: raw.continue_on_error,
            urgent: raw.urgent,
        })
    }

    fn action(&mut self, pointer: &str, uses: &str) -> Option<&'static ActionSpec> {
        let action = actions::lookup(uses);
        if action.is_none() {
            self.push(
                Diagnostic::error(
                    Code::UnknownAction,
                    self.document.value_span(&format!("{pointer}/uses")),
                    format!("unknown action `{uses}`"),
                )
                .with_help_opt(did_you_mean(uses, actions::names()).or_else(
                    || {
                        Some(format!(
                            "built-in actions: {}",
                            actions::names().collect::<Vec<_>>().join(", ")
                        ))
                    },
                )),
            );
        }
        action
    }

    /// Checks `with` against the action's input schema, then the rules a schema cannot say.
    fn inputs(&mut self, pointer: &str, action: &ActionSpec, with: &model::Map) {
        let (schema, validator) = &INPUTS[action.name];
        let instance = Value::Object(with.clone());
        let mut found = structure::check(
            self.document,
            pointer,
            &instance,
            schema,
            validator,
            Subject::Input {
                action: action.name,
            },
        );
        self.diagnostics.append(&mut found);
        let literal = |name: &str| {
            with.get(name)
                .and_then(Value::as_str)
                .filter(|text| !is_template(text))
        };
        match action.name {
            actions::APPROVAL => self.approval(pointer, with),
            "wait" => {
                let given = with.contains_key("for") as u8 + with.contains_key("until") as u8;
                if given != 1 {
                    self.push(Diagnostic::error(
                        Code::Input,
                        self.document.key_span(pointer),
                        "`wait` needs exactly one of `for` (a duration) and `until` (a time)",
                    ));
                }
                self.duration(&format!("{pointer}/for"));
                if let Some(until) = literal("until")
                    && chrono::DateTime::parse_from_rfc3339(until).is_err()
                {
                    self.push(Diagnostic::error(
                        Code::Input,
                        self.document.value_span(&format!("{pointer}/until")),
                        format!("`{until}` is not an RFC 3339 time"),
                    ));
                }
            }
            "openai.limit_project_rate"
                if !LimitProjectRate::LIMITS
                    .iter()
                    .any(|limit| with.contains_key(*limit)) =>
            {
                self.push(
                    Diagnostic::error(
                        Code::Input,
                        self.document.key_span(pointer),
                        "`openai.limit_project_rate` needs at least one limit",
                    )
                    .with_help(format!(
                        "give one of {}",
                        LimitProjectRate::LIMITS
                            .iter()
                            .map(|l| format!("`{l}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
            "slack.message" => {
                if let Some(to) = literal("to") {
                    self.recipient(&format!("{pointer}/to"), to, true);
                }
            }
            "openai.set_key_scopes" => self.scopes(pointer, with),
            "openai.set_key_expiry" => {
                if let Some(expires_in) = literal("expires_in") {
                    self.key_expiry(&format!("{pointer}/expires_in"), expires_in);
                }
            }
            "openai.rotate_service_account_key" => {
                self.scopes(pointer, with);
                for field in ["expires_in", "grace"] {
                    if let Some(text) = literal(field) {
                        self.key_expiry(&format!("{pointer}/{field}"), text);
                    }
                }
            }
            "openai.set_hosted_tools"
                if !SetHostedTools::TOOLS
                    .iter()
                    .any(|tool| with.contains_key(*tool)) =>
            {
                self.push(
                    Diagnostic::error(
                        Code::Input,
                        self.document.key_span(pointer),
                        "`openai.set_hosted_tools` needs at least one tool",
                    )
                    .with_help(format!(
                        "give one of {}",
                        SetHostedTools::TOOLS
                            .iter()
                            .map(|tool| format!("`{tool}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
            _ => {}
        }
        self.allow_widen(pointer, action, with);
    }

    /// A key's expiry: whole seconds up to 365 days.
    fn key_expiry(&mut self, pointer: &str, text: &str) {
        if let Err(message) = parse_key_expiry(text) {
            self.push(
                Diagnostic::error(Code::Duration, self.document.value_span(pointer), message)
                    .with_help("write a duration of whole seconds up to `365d`, e.g. `14d`"),
            );
        }
    }

    /// `openai.set_key_scopes`, `openai.rotate_service_account_key`: each literal scope has the documented shape, none twice, and a
    /// literal `scopes: []` (every permission) only with `allow_widen: true`.
    fn scopes(&mut self, pointer: &str, with: &model::Map) {
        let Some(Value::Array(scopes)) = with.get("scopes") else {
            return;
        };
        let mut seen = BTreeSet::new();
        for (index, scope) in scopes.iter().enumerate() {
            let Some(scope) = scope.as_str().filter(|text| !is_template(text)) else {
                continue;
            };
            let span = self
                .document
                .value_span(&format!("{pointer}/scopes/{index}"));
            if let Err(message) = SetKeyScopes::check_scope(scope) {
                self.push(Diagnostic::error(Code::Input, span, message));
            } else if !seen.insert(scope) {
                self.push(Diagnostic::error(
                    Code::Input,
                    span,
                    format!("scope `{scope}` is listed twice"),
                ));
            }
        }
        if scopes.is_empty() && with.get("allow_widen") != Some(&Value::Bool(true)) {
            self.push(
                Diagnostic::error(
                    Code::Input,
                    self.document.value_span(&format!("{pointer}/scopes")),
                    "`scopes: []` removes every restriction from the key (all permissions), so \
                     every run would refuse it",
                )
                .with_help(
                    "list the scopes the key keeps, e.g. `[api.model.request]`, or set \
                     `allow_widen: true` if widening is intended",
                ),
            );
        }
    }

    /// A step that may widen (`allow_widen: true`, or a template that may render to it).
    fn allow_widen(&mut self, pointer: &str, action: &ActionSpec, with: &model::Map) {
        let may_widen = match with.get("allow_widen") {
            Some(Value::Bool(allow)) => *allow,
            Some(Value::String(text)) => is_template(text),
            _ => false,
        };
        if !may_widen {
            return;
        }
        self.push(
            Diagnostic::warning(
                Code::AllowWiden,
                self.document.value_span(&format!("{pointer}/allow_widen")),
                format!(
                    "`{}` may widen access here: `allow_widen` lets it grant more than the key or \
                     project has now",
                    action.name
                ),
            )
            .with_help(
                "narrowing needs no `allow_widen`; keep it only where granting more is the \
                 point, behind an approval",
            ),
        );
    }

    /// `comment_for`: every key one of the choices (unless the choices are templates, known
    /// only when the step runs), every question short enough for a Slack form.
    fn comment_for(&mut self, pointer: &str, with: &model::Map, choices: &[String]) {
        let Some(Value::Object(questions)) = with.get("comment_for") else {
            return;
        };
        let templated = choices.iter().any(|choice| is_template(choice));
        for (choice, question) in questions {
            let entry = format!("{pointer}/comment_for/{}", super::yaml::escape(choice));
            if !templated && !is_template(choice) && !choices.contains(choice) {
                self.push(
                    Diagnostic::error(
                        Code::Approval,
                        self.document.key_span(&entry),
                        format!("`comment_for` names `{choice}`, which is not one of the choices"),
                    )
                    .with_help_opt(choices_help(choice, choices)),
                );
            }
            let Some(question) = question.as_str() else {
                continue;
            };
            if question.trim().is_empty() {
                self.push(Diagnostic::error(
                    Code::Approval,
                    self.document.value_span(&entry),
                    format!("the question for `{choice}` is empty"),
                ));
            } else if !is_template(question) && question.chars().count() > MAX_ASK {
                self.push(
                    Diagnostic::error(
                        Code::Approval,
                        self.document.value_span(&entry),
                        format!(
                            "the question for `{choice}` has {} characters; a Slack form shows at most {MAX_ASK}",
                            question.chars().count()
                        ),
                    )
                    .with_help("ask briefly; the message itself can say more"),
                );
            }
        }
    }

    fn approval(&mut self, pointer: &str, with: &model::Map) {
        let timeout = self.duration(&format!("{pointer}/timeout"));
        let choices: Vec<String> = match with.get("choices") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return,
            None => DEFAULT_CHOICES
                .iter()
                .map(|choice| (*choice).to_owned())
                .collect(),
        };
        let mut seen = BTreeSet::new();
        for (index, choice) in choices.iter().enumerate() {
            if !seen.insert(choice) {
                self.push(Diagnostic::error(
                    Code::Approval,
                    self.document
                        .value_span(&format!("{pointer}/choices/{index}")),
                    format!("choice `{choice}` is listed twice"),
                ));
            }
        }
        if let Some(on_timeout) = with
            .get("on_timeout")
            .and_then(Value::as_str)
            .filter(|text| !is_template(text))
            && !choices.iter().any(|choice| choice == on_timeout)
        {
            let default = if with.contains_key("choices") {
                ""
            } else {
                " (the default choices)"
            };
            self.push(
                Diagnostic::error(
                    Code::Approval,
                    self.document.value_span(&format!("{pointer}/on_timeout")),
                    format!("`on_timeout: {on_timeout}` is not one of the choices{default}"),
                )
                .with_help_opt(choices_help(on_timeout, &choices)),
            );
        }
        self.comment_for(pointer, with, &choices);
        let approvers: Vec<&str> = with
            .get("approvers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (index, approver) in approvers.iter().enumerate() {
            if !is_template(approver) {
                self.recipient(&format!("{pointer}/approvers/{index}"), approver, false);
            }
        }
        if let Some(quorum) = with.get("quorum").and_then(Value::as_u64) {
            // Groups and templates may stand for many people; only plain people can be counted.
            let countable = approvers.iter().all(|approver| {
                !is_template(approver)
                    && !approver.starts_with("group:")
                    && !approver.starts_with("team:")
                    && !crate::owners::names_owner(approver)
            });
            let escalations = with
                .get("escalate")
                .and_then(Value::as_array)
                .is_some_and(|list| !list.is_empty());
            if countable && !escalations && quorum as usize > approvers.len() {
                self.push(Diagnostic::error(
                    Code::Approval,
                    self.document.value_span(&format!("{pointer}/quorum")),
                    format!(
                        "`quorum: {quorum}` can never be reached by {} approver(s)",
                        approvers.len()
                    ),
                ));
            }
        }
        if let Some(remind) = self.duration(&format!("{pointer}/remind_every"))
            && timeout.is_some_and(|timeout| remind >= timeout)
        {
            self.push(Diagnostic::warning(
                Code::Approval,
                self.document.value_span(&format!("{pointer}/remind_every")),
                "`remind_every` is not shorter than `timeout`, so no reminder is ever sent",
            ));
        }
        let escalations = with
            .get("escalate")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for index in 0..escalations {
            let escalation = format!("{pointer}/escalate/{index}");
            if let Some(after) = self.duration(&format!("{escalation}/after"))
                && timeout.is_some_and(|timeout| after >= timeout)
            {
                self.push(Diagnostic::warning(
                    Code::Approval,
                    self.document.value_span(&format!("{escalation}/after")),
                    "this escalation comes after the gate has timed out, so it never happens",
                ));
            }
            let targets = with
                .get("escalate")
                .and_then(|list| list.pointer(&format!("/{index}/to")))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (target_index, target) in targets.iter().enumerate() {
                if let Some(target) = target.as_str().filter(|text| !is_template(text)) {
                    self.recipient(&format!("{escalation}/to/{target_index}"), target, false);
                }
            }
        }
    }

    /// An approver or message target: an email, a Slack user id, `group:<name>`,
    /// `team:<name>`, the run's `owner` or `owner.team`, or (for messages) a `#channel`.
    fn recipient(&mut self, pointer: &str, text: &str, channel_allowed: bool) {
        if crate::owners::names_owner(text) {
            self.uses_owner = true;
            return;
        }
        if text
            .strip_prefix("team:")
            .is_some_and(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        {
            return;
        }
        let slack_id = text.len() > 2
            && (text.starts_with('U') || text.starts_with('W'))
            && text
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        let group = text
            .strip_prefix("group:")
            .is_some_and(|name| !name.is_empty() && !name.contains(char::is_whitespace));
        let email = text.contains('@') && !text.contains(char::is_whitespace);
        let channel = channel_allowed && text.starts_with('#') && text.len() > 1;
        if group && let Some(name) = text.strip_prefix("group:") {
            self.group_defined(pointer, name);
        }
        if !(slack_id || group || email || channel) {
            let kinds = if channel_allowed {
                "an email, a Slack user id (`U…`), a `#channel`, `group:<name>`, `team:<name>`, `owner` or `owner.team`"
            } else {
                "an email, a Slack user id (`U…`), `group:<name>`, `team:<name>`, `owner` or `owner.team`"
            };
            self.push(Diagnostic::error(
                Code::Input,
                self.document.value_span(pointer),
                format!("`{text}` is not {kinds}"),
            ));
        }
    }

    /// A literal `group:<name>` must name a group the config defines (when it is known).
    fn group_defined(&mut self, pointer: &str, name: &str) {
        let Some(groups) = self.groups else {
            return;
        };
        if groups.contains(name) {
            return;
        }
        let help = did_you_mean(name, groups.iter().map(String::as_str)).unwrap_or_else(|| {
            if groups.is_empty() {
                format!("the config defines no groups: add `[groups]` with `{name} = [\"lead@example.com\"]`")
            } else {
                format!(
                    "the config defines {}; add `{name} = [...]` under `[groups]`",
                    groups
                        .iter()
                        .map(|group| format!("`{group}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        });
        self.push(
            Diagnostic::error(
                Code::UndefinedGroup,
                self.document.value_span(pointer),
                format!(
                    "group `{name}` is not defined in the config, so every run would fail here"
                ),
            )
            .with_help(help),
        );
    }

    fn irreversible(&mut self, pointer: &str, action: &ActionSpec) {
        let why = action.irreversible.unwrap_or("it cannot be undone");
        self.push(
            Diagnostic::warning(
                Code::IrreversibleWithoutApproval,
                self.document.value_span(&format!("{pointer}/uses")),
                format!("`{}` is irreversible and no approval comes before it", action.name),
            )
            .with_label(why)
            .with_help("add an `approval` step before it, or accept the risk and run validate without `--deny-warnings`"),
        );
    }

    fn retry(&mut self, pointer: &str) -> Option<RetryPolicy> {
        let retry: model::Retry = self.get(pointer)?;
        let backoff = self
            .duration(&format!("{pointer}/backoff"))
            .unwrap_or(DEFAULT_BACKOFF);
        let max_backoff = self
            .duration(&format!("{pointer}/max_backoff"))
            .unwrap_or(DEFAULT_MAX_BACKOFF.max(backoff));
        if backoff > max_backoff {
            self.push(Diagnostic::error(
                Code::Duration,
                self.document.value_span(&format!("{pointer}/backoff")),
                "`backoff` is longer than `max_backoff`",
            ));
        }
        Some(RetryPolicy {
            max_attempts: retry.max_attempts,
            backoff,
            max_backoff,
        })
    }

    /// Reads a literal duration at `pointer`; reports it when it does not parse.
    fn duration(&mut self, pointer: &str) -> Option<Duration> {
        let text: String = self.get(pointer)?;
        if is_template(&text) {
            return None;
        }
        match parse_duration(&text) {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.push(
                    Diagnostic::error(Code::Duration, self.document.value_span(pointer), message)
                        .with_help(
                            "write a number and a unit: `30s`, `15m`, `4h`, `7d`, or `1h 30m`",
                        ),
                );
                None
            }
        }
    }

    /// Checks every string inside `value` (found at `pointer`) as a template.
    fn templates_in(&mut self, pointer: &str, value: &Value, scope: &Scope<'_>) {
        match value {
            Value::String(text) => self.template(pointer, text, scope),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.templates_in(&format!("{pointer}/{index}"), item, scope);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.templates_in(
                        &format!("{pointer}/{}", super::yaml::escape(key)),
                        item,
                        scope,
                    );
                }
            }
            _ => {}
        }
    }

    fn template(&mut self, pointer: &str, text: &str, scope: &Scope<'_>) {
        if !is_template(text) {
            return;
        }
        // A template may give `owner` as a recipient from a string of its own.
        if ["'owner'", "\"owner\"", "'owner.team'", "\"owner.team\""]
            .iter()
            .any(|quoted| text.contains(quoted))
        {
            self.uses_owner = true;
        }
        let references = template_references(text);
        self.references(pointer, text, references, scope);
    }

    fn expression(&mut self, pointer: &str, text: &str, scope: &Scope<'_>) {
        let references = expression_references(text);
        self.references(pointer, text, references, scope);
    }

    fn references(
        &mut self,
        pointer: &str,
        text: &str,
        references: Result<BTreeSet<String>, minijinja::Error>,
        scope: &Scope<'_>,
    ) {
        match references {
            Err(error) => {
                let needle = error
                    .range()
                    .and_then(|range| text.get(range.start..))
                    .map(|rest| {
                        rest.lines()
                            .next()
                            .unwrap_or_default()
                            .chars()
                            .take(16)
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                let span = self.document.locate(pointer, &needle);
                let detail = error
                    .detail()
                    .map_or_else(String::new, |detail| format!(": {detail}"));
                self.push(
                    Diagnostic::error(Code::Template, span, format!("{}{detail}", error.kind()))
                        .with_help("templates use Jinja syntax: `{{ finding.key }}`, `{% if … %}…{% endif %}`"),
                );
            }
            Ok(paths) => {
                if paths
                    .iter()
                    .any(|path| path == "owner" || path.starts_with("owner."))
                {
                    self.uses_owner = true;
                }
                for problem in scope.check(&paths) {
                    let span = self.document.locate(pointer, &problem.path);
                    self.push(
                        Diagnostic::error(problem.code, span, problem.message)
                            .with_help_opt(problem.help),
                    );
                }
            }
        }
    }

    /// Deserializes the value at `pointer`, or `None` when it is absent or malformed (the
    /// structural pass has reported that already).
    fn get<T: DeserializeOwned>(&self, pointer: &str) -> Option<T> {
        let value = self.document.value.pointer(pointer)?;
        serde_json::from_value(value.clone()).ok()
    }

    fn count(&self, pointer: &str) -> usize {
        self.document
            .value
            .pointer(pointer)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }
}

/// A playbook version is the SHA-256 of its source: runs pin to it, and the store keeps every
/// version it has run under this name.
pub fn version_of(source: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(source.as_bytes())))
}

/// The help for a value that should be one of an approval's choices: the nearest choice, else
/// the list of them.
fn choices_help(given: &str, choices: &[String]) -> Option<String> {
    did_you_mean(given, choices.iter().map(String::as_str)).or_else(|| {
        Some(format!(
            "choices are {}",
            choices
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}
