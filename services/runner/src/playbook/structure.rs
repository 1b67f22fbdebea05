//! Structural checks against a generated JSON Schema, reported as diagnostics at the right place.
//! `jsonschema` finds every violation at once; this module turns each into a sentence a security
//! admin can act on (unknown field with a suggestion, missing field, wrong type, value not among
//! the allowed ones) and points it at the key or value in the YAML source.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use quench_common::schema::allowed_properties;
use quench_common::suggest::did_you_mean;
use serde_json::Value;

use super::diagnostic::{Code, Diagnostic};
use super::template::is_template;
use super::yaml::{Document, escape};

/// What is being checked, for messages: the playbook itself, or one action's inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    Playbook,
    Input { action: &'a str },
}

impl Subject<'_> {
    /// The code of a problem: every problem with an action's inputs is an `input` problem.
    fn code(self, otherwise: Code) -> Code {
        match self {
            Subject::Input { .. } => Code::Input,
            Subject::Playbook => otherwise,
        }
    }
}

/// Validates `instance` (found at `base` in the document) and returns one diagnostic per problem.
/// For action inputs a template string is accepted in place of any value: its type is known only
/// once it is rendered.
pub(crate) fn check(
    document: &Document,
    base: &str,
    instance: &Value,
    schema: &Value,
    validator: &Validator,
    subject: Subject<'_>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for error in validator.iter_errors(instance) {
        explain(document, base, schema, &error, subject, &mut out);
    }
    out.sort_by_key(|diagnostic| diagnostic.span.start);
    out.dedup_by(|a, b| a.span == b.span && a.message == b.message);
    out
}

fn explain(
    document: &Document,
    base: &str,
    schema: &Value,
    error: &ValidationError<'_>,
    subject: Subject<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let instance = error.instance().as_ref();
    if matches!(subject, Subject::Input { .. }) && instance.as_str().is_some_and(is_template) {
        return;
    }
    let pointer = format!("{base}{}", error.instance_path().as_str());
    let at = document.value_span(&pointer);
    let field = field_name(&pointer);
    let whose = match subject {
        Subject::Playbook => String::new(),
        Subject::Input { action } => format!(" for `{action}`"),
    };
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_properties(schema, error.schema_path().as_str());
            for name in unexpected {
                let key_pointer = format!("{pointer}/{}", escape(name));
                let help = did_you_mean(name, allowed.iter().map(String::as_str)).or_else(|| {
                    (!allowed.is_empty()).then(|| format!("expected one of {}", quoted(&allowed)))
                });
                let (code, message) = match subject {
                    Subject::Playbook => (Code::UnknownField, format!("unknown field `{name}`")),
                    Subject::Input { action } => {
                        (Code::Input, format!("`{action}` has no input `{name}`"))
                    }
                };
                out.push(
                    Diagnostic::error(code, document.key_span(&key_pointer), message)
                        .with_help_opt(help),
                );
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let (code, message) = match subject {
                Subject::Playbook => (Code::MissingField, format!("missing field `{name}`")),
                Subject::Input { action } => {
                    (Code::Input, format!("`{action}` needs input `{name}`"))
                }
            };
            let span = if document.contains(&pointer) && !pointer.is_empty() {
                document.key_span(&pointer)
            } else {
                at
            };
            let help = match (subject, name) {
                (
                    Subject::Input {
                        action: crate::actions::APPROVAL,
                    },
                    "timeout",
                ) => Some(
                    "a gate must not wait forever: add e.g. `timeout: 4h` and say with `on_timeout` what silence means",
                ),
                (
                    Subject::Input {
                        action: crate::actions::APPROVAL,
                    },
                    "on_timeout",
                ) => Some("say which of the `choices` is taken when nobody answers in time"),
                _ => None,
            };
            out.push(Diagnostic::error(code, span, message).with_help_opt(help.map(str::to_owned)));
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(single) => article(&single.to_string()),
                // `Option<T>` admits null; saying "empty or an integer" helps nobody.
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|kind| kind.to_string())
                    .filter(|kind| kind != "null")
                    .map(|kind| article(&kind))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            let code = subject.code(Code::WrongType);
            out.push(
                Diagnostic::error(
                    code,
                    at,
                    format!(
                        "`{field}`{whose} must be {expected}, found {}",
                        describe(instance)
                    ),
                )
                .with_label(format!("expected {expected}")),
            );
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .map(|option| {
                    option
                        .as_str()
                        .map_or_else(|| option.to_string(), str::to_owned)
                })
                .collect();
            out.push(not_one_of(subject, at, instance, &field, &whose, &options));
        }
        ValidationErrorKind::Constant { expected_value } => {
            let expected = expected_value
                .as_str()
                .map_or_else(|| expected_value.to_string(), str::to_owned);
            out.push(Diagnostic::error(
                Code::InvalidValue,
                at,
                format!("`{field}` must be `{expected}`"),
            ));
        }
        ValidationErrorKind::Pattern { pattern } => {
            let value = instance.as_str().unwrap_or_default();
            let help = match field.as_str() {
                "name" => "use lowercase letters and digits in words joined by `-`, e.g. `revoke-leaked-key`".to_owned(),
                "id" => "use a lowercase identifier, e.g. `notify_owner` (it is read as `steps.<id>`)".to_owned(),
                _ => format!("it must match `{pattern}`"),
            };
            out.push(
                Diagnostic::error(
                    Code::InvalidValue,
                    at,
                    format!("`{value}` is not a valid `{field}`"),
                )
                .with_help(help),
            );
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context }
            if one_const_per_branch(context).is_some() =>
        {
            // A documented enum is `oneOf` of one `const` per variant: report it as an enum.
            let options = one_const_per_branch(context).unwrap_or_default();
            out.push(not_one_of(subject, at, instance, &field, &whose, &options));
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // `Option<T>` is `anyOf: [T, null]`: explain the errors of the branch that fits the
            // value's shape rather than "matches no alternative".
            let here = error.instance_path().as_str();
            let branch = context
                .iter()
                .filter(|errors| !errors.iter().all(|error| is_type_error_at(error, here)))
                .max_by_key(|errors| {
                    errors
                        .iter()
                        .map(|error| error.instance_path().as_str().len())
                        .max()
                });
            match branch {
                Some(errors) => {
                    for inner in errors {
                        explain(document, base, schema, inner, subject, out);
                    }
                }
                None => out.push(Diagnostic::error(
                    subject.code(Code::WrongType),
                    at,
                    format!(
                        "`{field}`{whose} has the wrong shape: found {}",
                        describe(instance)
                    ),
                )),
            }
        }
        other => {
            let code = subject.code(Code::InvalidValue);
            let detail = match other {
                ValidationErrorKind::MinItems { limit } => {
                    format!("needs at least {limit} item(s)")
                }
                ValidationErrorKind::MaxItems { limit } => format!("takes at most {limit} item(s)"),
                ValidationErrorKind::MinLength { limit } => {
                    format!("must be at least {limit} character(s)")
                }
                ValidationErrorKind::MaxLength { limit } => {
                    format!("must be at most {limit} character(s)")
                }
                ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
                ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
                _ => error.masked().to_string(),
            };
            out.push(Diagnostic::error(
                code,
                at,
                format!("`{field}`{whose} {detail}"),
            ));
        }
    }
}

/// The allowed values when every branch of an `anyOf`/`oneOf` failed only on its `const`.
fn one_const_per_branch(context: &[Vec<ValidationError<'static>>]) -> Option<Vec<String>> {
    let mut options = Vec::new();
    for branch in context {
        match branch.as_slice() {
            [error] => match error.kind() {
                ValidationErrorKind::Constant { expected_value } => options.push(
                    expected_value
                        .as_str()
                        .map_or_else(|| expected_value.to_string(), str::to_owned),
                ),
                ValidationErrorKind::Enum { options: values } => options.extend(
                    values
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                ),
                _ => return None,
            },
            _ => return None,
        }
    }
    (!options.is_empty()).then_some(options)
}

/// "`x` is not a valid `field`", with the closest allowed value or the list of them.
fn not_one_of(
    subject: Subject<'_>,
    at: std::ops::Range<usize>,
    instance: &Value,
    field: &str,
    whose: &str,
    options: &[String],
) -> Diagnostic {
    let value = instance
        .as_str()
        .map_or_else(|| instance.to_string(), str::to_owned);
    Diagnostic::error(
        subject.code(Code::InvalidValue),
        at,
        format!("`{value}` is not a valid `{field}`{whose}"),
    )
    .with_help_opt(
        did_you_mean(&value, options.iter().map(String::as_str))
            .or_else(|| Some(format!("expected one of {}", quoted(options)))),
    )
}

fn is_type_error_at(error: &ValidationError<'_>, path: &str) -> bool {
    matches!(error.kind(), ValidationErrorKind::Type { .. })
        && error.instance_path().as_str() == path
}

/// The last meaningful segment of a pointer, for messages (`/steps/0/retry/max_attempts` →
/// `max_attempts`; an index names its list: `/steps/0` → `steps[0]`).
fn field_name(pointer: &str) -> String {
    let segments: Vec<&str> = pointer
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    match segments.as_slice() {
        [] => "playbook".to_owned(),
        [.., parent, index] if index.parse::<usize>().is_ok() => format!("{parent}[{index}]"),
        [.., last] => last.replace("~1", "/").replace("~0", "~"),
    }
}

fn article(kind: &str) -> String {
    match kind {
        "object" => "a mapping".to_owned(),
        "array" => "a list".to_owned(),
        "null" => "empty".to_owned(),
        "integer" => "an integer".to_owned(),
        other => format!("a {other}"),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(value) => format!("the boolean `{value}`"),
        Value::Number(number) => format!("the number `{number}`"),
        Value::String(text) => {
            format!("the string `{}`", text.chars().take(40).collect::<String>())
        }
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

pub(super) fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
