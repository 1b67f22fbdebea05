//! Why a message was refused on entry. The reason code travels as the `Quench-Dlq-Reason` header
//! and as a metric label, so it is a short fixed word; the display text names the field.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

use crate::redact::redact_str;

/// Free text: no control characters but newline and tab (Unicode `Cc`, as `char::is_control`).
/// The JSON Schema `pattern` of every length-checked text field and the check of
/// [`check_len`] in one.
pub(crate) const TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";
/// An identifier that appears in NATS subjects or as a store key: no control characters, no
/// whitespace (Unicode `White_Space`, as `char::is_whitespace`), no `*` or `>` (see
/// [`check_token`]).
pub(crate) const TOKEN_PATTERN: &str =
    r"^[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000*>]*$";

static TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(TEXT_PATTERN).expect("text pattern compiles"));
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(TOKEN_PATTERN).expect("token pattern compiles"));

/// A message that could not be accepted. Every variant is permanent: re-delivering the same bytes
/// fails the same way, so the caller dead-letters it instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not valid JSON: {0}")]
    Json(String),
    #[error("unknown schema `{found}`, expected `{expected}`")]
    UnknownSchema {
        found: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

impl ParseError {
    /// The same error with every secret-shaped string in its text redacted: messages quote
    /// field names and values as they came.
    pub(crate) fn redacted(self) -> Self {
        match self {
            ParseError::Json(message) => ParseError::Json(redact_str(&message).into_owned()),
            ParseError::Invalid(field) => ParseError::Invalid(field.redacted()),
            other => other,
        }
    }

    /// The short, stable reason code for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::TooLarge { .. } => "too_large",
            ParseError::Json(_) => "invalid_json",
            ParseError::UnknownSchema { .. } => "unknown_schema",
            ParseError::Invalid(_) => "invalid_field",
        }
    }
}

/// One field that failed validation, named by its dotted path (`resource.type`, `labels.team`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
}

impl InvalidField {
    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl InvalidField {
    /// The same error with every secret-shaped string in its field path and text redacted.
    pub(crate) fn redacted(self) -> Self {
        InvalidField {
            field: redact_str(&self.field).into_owned(),
            problem: redact_str(&self.problem).into_owned(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

/// Checks the `schema` tag before the typed parse, so a message of another version is reported as
/// `unknown_schema` rather than as a confusing field error.
pub(crate) fn check_schema_tag(
    value: &serde_json::Value,
    expected: &'static str,
) -> Result<(), ParseError> {
    match value.get("schema") {
        None if value.is_object() => Err(InvalidField::new("schema", "missing field").into()),
        None => Err(InvalidField::new("", "expected a JSON object").into()),
        Some(serde_json::Value::String(found)) if found == expected => Ok(()),
        Some(serde_json::Value::String(found)) => Err(ParseError::UnknownSchema {
            // Redacted before it is cut: a cut key may no longer look like one.
            found: redact_str(found).chars().take(64).collect(),
            expected,
        }),
        Some(_) => Err(InvalidField::new("schema", "expected a string").into()),
    }
}

/// Deserializes a typed message from a JSON value, naming the failing field by its path.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, InvalidField> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let field = quoted_field(&message)
            .filter(|_| message.starts_with("missing field"))
            .map(|name| {
                if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            })
            .unwrap_or(path);
        InvalidField::new(field, message)
    })
}

fn quoted_field(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(&message[start..end])
}

/// Length check shared by every message: `field` must hold between `min` and `max` characters.
pub(crate) fn check_len(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), InvalidField> {
    let len = value.chars().count();
    if len < min {
        return Err(InvalidField::new(
            field,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if len > max {
        return Err(InvalidField::new(
            field,
            format!("is {len} characters, longer than the limit of {max}"),
        ));
    }
    if !TEXT.is_match(value) {
        return Err(InvalidField::new(field, "contains control characters"));
    }
    Ok(())
}

/// An identifier that appears in NATS subjects or as a store key: no whitespace, no wildcards.
pub(crate) fn check_token(field: &str, value: &str, max: usize) -> Result<(), InvalidField> {
    check_len(field, value, 1, max)?;
    if !TOKEN.is_match(value) {
        return Err(InvalidField::new(
            field,
            "must not contain whitespace, `*` or `>`",
        ));
    }
    Ok(())
}
