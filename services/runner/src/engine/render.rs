//! Rendering playbook templates against a run. Strings in `with` are templates; a string that is
//! exactly one `{{ expression }}` renders to the expression's own value (a list stays a list, a
//! number a number, an absent optional field `null`), any other template renders to a string.
//! Values that come from findings are data: they are inserted, never rendered again.

use minijinja::Environment;
use serde_json::Value;

use super::state::Run;
use crate::playbook::{Playbook, complete_finding, environment};

/// Inputs (action, field) sent to Slack as mrkdwn.
const SLACK_TEXT: &[(&str, &str)] = &[("slack.message", "text"), ("approval", "question")];

/// Most items a `foreach` may iterate over.
pub const MAX_FOREACH: usize = 1000;

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

/// The template context of a run: `finding`, `vars`, `steps`, `run`, `playbook`, `now`, and
/// `item`/`index`, `failure` where they apply.
pub(crate) fn context(
    run: &Run,
    playbook: &Playbook,
    now: chrono::DateTime<chrono::Utc>,
    scope: Scope<'_>,
) -> minijinja::Value {
    let mut finding = run.finding.as_ref().map_or(Value::Null, |finding| {
        serde_json::to_value(finding).unwrap_or(Value::Null)
    });
    complete_finding(&mut finding);
    let steps: serde_json::Map<String, Value> = run
        .steps
        .iter()
        .map(|(id, state)| {
            let mut step = serde_json::json!({
                "status": state.status.as_str(),
                "output": state.output,
                "error": state.error,
            });
            if state.choice.is_some() {
                step["choice"] = state.choice.clone().into();
                step["decided_by"] = state.decided_by.clone().into();
                step["decided_at"] = state.decided_at.map(|at| at.to_rfc3339()).into();
                step["via"] = state.via.clone().into();
            }
            (id.clone(), step)
        })
        .collect();
    let mut context = serde_json::json!({
        "finding": finding,
        "vars": run.vars,
        "state": run.state,
        "steps": steps,
        "run": {"id": run.id, "started_at": run.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "mode": run.mode},
        "playbook": {"name": playbook.name, "version": playbook.version},
        "now": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some((item, index)) = scope.item {
        context["item"] = item.clone();
        context["index"] = index.into();
    }
    if scope.failure
        && let Some(failure) = &run.failure
    {
        context["failure"] = serde_json::json!({"step": failure.step, "error": failure.error});
    }
    to_context(&context)
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
