//! Rendering playbook templates against a run. Strings in `with` are templates; a string that is
//! exactly one `{{ expression }}` renders to the expression's own value (a list stays a list, a
//! number a number, an absent optional field `null`), any other template renders to a string.
//! Values that come from findings are data: they are inserted, never rendered again.

use minijinja::Environment;
use serde_json::Value;

use super::state::Run;
use crate::playbook::{Mode, Playbook, complete_finding, environment};

/// Inputs (action, field) sent to Slack as mrkdwn.
const SLACK_TEXT: &[(&str, &str)] = &[("slack.message", "text"), ("approval", "question")];

/// Most items a `foreach` may iterate over.
pub const MAX_FOREACH: usize = 1000;

/// Whether input `field` of `action` is Slack mrkdwn, rendered with what it interpolates escaped.
pub fn is_slack_text(action: &str, field: &str) -> bool {
    SLACK_TEXT.contains(&(action, field))
}

/// What the engine renders from `finding` at the start of a run of `playbook`, before any step
/// has run: `where`, `vars`, `key`, then each step's `with` (a step that reads an earlier
/// step's result is an error here). Each is `(place, result)`. It is the run's own code, so the
/// fuzz target that feeds it hostile finding values tests what a run does with them.
pub fn preview(
    playbook: &Playbook,
    finding: &quench_proto::Finding,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Result<Value, String>)> {
    let renderer = Renderer::new();
    let mut run = Run::new(
        playbook,
        Some(finding),
        now,
        playbook.mode.unwrap_or(Mode::DryRun),
    );
    if playbook.uses_owner {
        // Without a store or config: the finding's own owner is the only link.
        run.owner = Some(crate::owners::resolve(
            &crate::owners::Owners::default(),
            &crate::owners::Facts {
                finding_owner: finding.owner.as_ref(),
                ..Default::default()
            },
        ));
    }
    let mut rendered = Vec::new();
    let scope = context(&run, playbook, now, Scope::default());
    if let crate::playbook::Trigger::Finding(trigger) = &playbook.trigger
        && let Some(condition) = &trigger.condition
    {
        let result = renderer.condition(condition, &scope).map(Value::Bool);
        rendered.push(("where".to_owned(), result));
    }
    let vars = renderer.value(&Value::Object(playbook.vars.clone()), &scope);
    if let Ok(Value::Object(vars)) = &vars {
        run.vars = vars.clone();
    }
    rendered.push(("vars".to_owned(), vars));
    let scope = context(&run, playbook, now, Scope::default());
    rendered.push((
        "key".to_owned(),
        renderer.value(&Value::String(playbook.key.clone()), &scope),
    ));
    for step in playbook.steps.iter().chain(&playbook.on_failure) {
        let result = renderer
            .inputs(step.action.name, &step.with, &scope)
            .and_then(|mut input| {
                crate::owners::name_recipients(step.action.name, &mut input, run.owner.as_ref())?;
                Ok(input)
            });
        rendered.push((format!("steps.{}.with", step.id), result));
    }
    rendered
}

#[derive(Debug)]
pub(crate) struct Renderer {
    environment: Environment<'static>,
}

impl Renderer {
    pub(crate) fn new() -> Renderer {
        Renderer {
            environment: environment(),
        }
    }

    /// Renders a step's `with`. Inputs whose text goes to Slack as mrkdwn ([`SLACK_TEXT`]) are
    /// rendered with what they interpolate escaped.
    pub(crate) fn inputs(
        &self,
        action: &str,
        with: &serde_json::Map<String, Value>,
        context: &minijinja::Value,
    ) -> Result<Value, String> {
        let mut out = serde_json::Map::with_capacity(with.len());
        for (name, value) in with {
            let rendered = match value {
                Value::String(text) if SLACK_TEXT.contains(&(action, name.as_str())) => {
                    if text.contains("{{") || text.contains("{%") {
                        self.environment
                            .render_named_str("input.slack", text, context.clone())
                            .map(Value::String)
                            .map_err(describe)?
                    } else {
                        value.clone()
                    }
                }
                other => self.value(other, context)?,
            };
            out.insert(name.clone(), rendered);
        }
        Ok(Value::Object(out))
    }

    /// Renders every string inside `value`.
    pub(crate) fn value(&self, value: &Value, context: &minijinja::Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(text) => self.string(text, context)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.value(item, context))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, item)| Ok((key.clone(), self.value(item, context)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    fn string(&self, text: &str, context: &minijinja::Value) -> Result<Value, String> {
        if !(text.contains("{{") || text.contains("{%")) {
            return Ok(Value::String(text.to_owned()));
        }
        if let Some(expression) = single_expression(text) {
            let value = self.expression(expression, context)?;
            return serde_json::to_value(&value)
                .map_err(|error| format!("cannot use the value of `{expression}`: {error}"));
        }
        self.environment
            .render_str(text, context.clone())
            .map(Value::String)
            .map_err(describe)
    }

    /// Evaluates an expression; an undefined result is an error.
    pub(crate) fn expression(
        &self,
        text: &str,
        context: &minijinja::Value,
    ) -> Result<minijinja::Value, String> {
        let expression = self
            .environment
            .compile_expression(text)
            .map_err(describe)?;
        let value = expression.eval(context.clone()).map_err(describe)?;
        if value.is_undefined() {
            return Err(format!("`{}` is undefined", text.trim()));
        }
        Ok(value)
    }

    pub(crate) fn condition(&self, text: &str, context: &minijinja::Value) -> Result<bool, String> {
        Ok(self.expression(text, context)?.is_true())
    }

    /// A `foreach` list: at most [`MAX_FOREACH`] items.
    pub(crate) fn list(
        &self,
        text: &str,
        context: &minijinja::Value,
    ) -> Result<Vec<Value>, String> {
        let value = self.expression(text, context)?;
        let json = serde_json::to_value(&value).map_err(|error| error.to_string())?;
        match json {
            Value::Array(items) if items.len() <= MAX_FOREACH => Ok(items),
            Value::Array(items) => Err(format!(
                "`foreach` gave {} items, more than the limit of {MAX_FOREACH}",
                items.len()
            )),
            Value::Null => Ok(Vec::new()),
            other => Err(format!(
                "`foreach` must give a list, not {}",
                kind_of(&other)
            )),
        }
    }
}

/// A template context from any serializable value.
pub(crate) fn to_context(value: impl serde::Serialize) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

/// The inner expression of a string that is exactly one `{{ … }}`.
fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    Some(inner)
}

fn describe(error: minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// What a template sees at some point of a run.
#[derive(Debug, Default)]
pub(crate) struct Scope<'a> {
    pub(crate) item: Option<(&'a Value, usize)>,
    pub(crate) failure: bool,
}

/// The template context of a run: `finding`, `owner`, `vars`, `state`, `steps`, `run`, `playbook`, `now`,
/// and `item`/`index`, `failure` where they apply. Built straight into template values; the
/// finding is converted once per run ([`Run::finding_value`]).
pub(crate) fn context(
    run: &Run,
    playbook: &Playbook,
    now: chrono::DateTime<chrono::Utc>,
    scope: Scope<'_>,
) -> minijinja::Value {
    use minijinja::Value as V;
    let finding = run.finding_value.get_or_init(|| {
        let mut finding = run.finding.as_ref().map_or(Value::Null, |finding| {
            serde_json::to_value(finding).unwrap_or(Value::Null)
        });
        complete_finding(&mut finding);
        to_context(&finding)
    });
    let steps: std::collections::BTreeMap<String, V> = run
        .steps
        .iter()
        .map(|(id, state)| {
            let status = state.status.as_str();
            let output = to_context(&state.output);
            let error = state.error.clone();
            let step = match &state.choice {
                None => minijinja::context! { status, output, error },
                Some(choice) => minijinja::context! {
                    status, output, error,
                    choice => choice.clone(),
                    decided_by => state.decided_by.clone(),
                    decided_at => state.decided_at.map(|at| at.to_rfc3339()),
                    via => state.via.clone(),
                },
            };
            (id.clone(), step)
        })
        .collect();
    let stamp =
        |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let item = scope.item.map(|(item, _)| to_context(item));
    let index = scope.item.map(|(_, index)| index);
    let failure = scope
        .failure
        .then_some(run.failure.as_ref())
        .flatten()
        .map(|failure| minijinja::context! { step => failure.step.clone(), error => failure.error.clone() });
    let owner = match &run.owner {
        Some(owner) => to_context(owner),
        None => to_context(crate::owners::ResolvedOwner::default()),
    };
    let context = minijinja::context! {
        finding,
        owner,
        vars => to_context(&run.vars),
        state => to_context(&run.state),
        steps => V::from(steps),
        run => minijinja::context! {
            id => run.id.clone(),
            started_at => stamp(run.started_at),
            mode => to_context(run.mode),
        },
        playbook => minijinja::context! {
            name => playbook.name.clone(),
            version => playbook.version.clone(),
        },
        now => stamp(now),
    };
    // Absent rather than none, as before: `item is defined` and `failure is defined` tell.
    match (item, index, failure) {
        (None, None, None) => context,
        (item, index, failure) => {
            let mut extra = std::collections::BTreeMap::new();
            if let (Some(item), Some(index)) = (item, index) {
                extra.insert("item".to_owned(), item);
                extra.insert("index".to_owned(), V::from(index));
            }
            if let Some(failure) = failure {
                extra.insert("failure".to_owned(), failure);
            }
            minijinja::context! { ..V::from(extra), ..context }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_expressions_render_natively() {
        let renderer = Renderer::new();
        let context =
            to_context(serde_json::json!({"n": 3, "list": [1, 2], "none": null, "name": "x"}));
        let check = |input: Value, expected: Value| {
            assert_eq!(renderer.value(&input, &context), Ok(expected))
        };
        check(Value::from("{{ n }}"), Value::from(3));
        check(Value::from("{{ list }}"), serde_json::json!([1, 2]));
        check(Value::from("{{ none }}"), Value::Null);
        check(Value::from("n={{ n }}"), Value::from("n=3"));
        check(Value::from("{{ n }}{{ n }}"), Value::from("33"));
        check(
            serde_json::json!({"a": ["{{ name }}", 4]}),
            serde_json::json!({"a": ["x", 4]}),
        );
        assert!(
            renderer
                .value(&Value::from("{{ missing }}"), &context)
                .is_err()
        );
        assert!(
            renderer
                .value(&Value::from("x {{ missing }}"), &context)
                .is_err()
        );
    }

    #[test]
    fn finding_values_are_data_not_templates() {
        let renderer = Renderer::new();
        let context = to_context(serde_json::json!({"finding": {"title": "{{ 7 * 7 }}"}}));
        assert_eq!(
            renderer.value(&Value::from("t: {{ finding.title }}"), &context),
            Ok(Value::from("t: {{ 7 * 7 }}"))
        );
    }

    #[test]
    fn slack_text_escapes_what_it_interpolates_and_keeps_the_playbooks_own_markup() {
        let renderer = Renderer::new();
        let context = to_context(serde_json::json!({
            "finding": {"title": "<!channel> & <https://evil.example|login>"}
        }));
        let with = serde_json::json!({
            "to": "#security",
            "text": "<@U0SECOPS> *{{ finding.title }}*",
        });
        let with = with.as_object().expect("an object");
        assert_eq!(
            renderer.inputs("slack.message", with, &context),
            Ok(serde_json::json!({
                "to": "#security",
                "text": "<@U0SECOPS> *&lt;!channel&gt; &amp; &lt;https://evil.example|login&gt;*",
            }))
        );
        // Other actions' inputs are not Slack text.
        let note = serde_json::json!({"message": "{{ finding.title }}"});
        assert_eq!(
            renderer.inputs("note", note.as_object().expect("an object"), &context),
            Ok(serde_json::json!({"message": "<!channel> & <https://evil.example|login>"}))
        );
    }
}
