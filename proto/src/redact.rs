//! Redaction of secret-shaped strings. Scanners report leaks, and a report about a leaked key
//! often quotes the key; quench must never store, log or forward it. The shapes are the OpenAI
//! key formats public scanners recognise (gitleaks, TruffleHog, detect-secrets; see
//! `reference/openai-admin-api.md` §12): `sk-proj-`, `sk-svcacct-`, `sk-admin-`, `sk-service-`
//! followed by at least 16 key characters, and the legacy `sk-…T3BlbkFJ…` layout.
//!
//! A key is found wherever it sits: right after a letter, a digit, `_` or a non-ASCII letter
//! (`OPENAI_KEY_sk-proj-…`), and with any of its characters written as a JSON escape
//! (`sk\u002dproj…`, also escaped more than once: `\\u002d`), a percent-escape (`%2D`, `%252D`),
//! a backslash before `-` or `_`, or with a NUL byte beside it (UTF-16 text read as bytes). The
//! same pattern serves parsed strings ([`redact_str`], [`redact_value`]) and raw bodies that may
//! be neither UTF-8 nor JSON ([`redact_bytes`]).
//!
//! A replacement is never longer than what it replaces, so a string within a length limit stays
//! within it: the long form keeps the key's kind and last four characters, like the provider's
//! own `redacted_value`; a match too short for it becomes `sk-proj-[REDACTED]` or `[REDACTED]`.

use std::borrow::Cow;
use std::sync::LazyLock;

/// What replaces the secret part of a key. The kind prefix and the last four characters stay,
/// like the provider's own `redacted_value`, so an owner can still tell which key it was.
pub const REDACTED_MARKER: &str = "[REDACTED]";

/// The kinds of the current key layout: `sk-<kind>-` and at least [`MODERN_BODY_MIN`] key
/// characters.
const MODERN_KINDS: [&str; 4] = ["proj", "svcacct", "admin", "service"];
const MODERN_BODY_MIN: usize = 16;
/// Base64 of "OpenAI": every legacy key carries it.
const LEGACY_MARKER: &str = "T3BlbkFJ";
/// The characters a key is made of, as a regex class body.
const KEY_CLASS: &str = "A-Za-z0-9_-";

/// The key shapes as plain text, without escapes: for JSON Schema `pattern`s of fields whose
/// alphabet has no escape characters (kinds, providers, label names), so a schema validator in
/// any language refuses exactly what [`contains_secret`] finds there.
pub(crate) static PLAIN_SECRET_PATTERN: LazyLock<String> = LazyLock::new(|| pattern(false));

static SECRET: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(&pattern(true)).expect("secret pattern compiles"));
static SECRET_BYTES: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(&pattern(true)).expect("secret pattern compiles for bytes")
});
/// One character of a match as written: a JSON escape, a percent-escape, a backslash escape, a
/// NUL beside it, or the character itself.
static UNIT: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(
        r"\\+u00(?P<json>[0-9A-Fa-f]{2})|%(?:25)*(?P<percent>[0-9A-Fa-f]{2})|\\+(?P<escaped>[-_])|\x00|(?P<plain>[^\x00])",
    )
    .expect("unit pattern compiles")
});

/// Replaces every secret-shaped substring of `text`; borrows when there is nothing to replace.
/// The result is never longer than `text`.
pub fn redact_str(text: &str) -> Cow<'_, str> {
    // `find_iter`, not `replace_all`: only the whole match is needed, and asking for captures
    // would run a slower engine over every string.
    let mut matches = SECRET.find_iter(text).peekable();
    if matches.peek().is_none() {
        return Cow::Borrowed(text);
    }
    let mut redacted = String::with_capacity(text.len());
    let mut last = 0;
    for found in matches {
        redacted.push_str(&text[last..found.start()]);
        redacted.push_str(&replacement(found.as_str().as_bytes()));
        last = found.end();
    }
    redacted.push_str(&text[last..]);
    Cow::Owned(redacted)
}

/// Redacts every secret-shaped run of bytes in a raw body that may not be UTF-8 or even JSON
/// (a dead letter keeps the body as it came, as bytes). Never longer than `body`.
pub fn redact_bytes(body: &[u8]) -> Vec<u8> {
    let mut redacted = Vec::with_capacity(body.len());
    let mut last = 0;
    for found in SECRET_BYTES.find_iter(body) {
        redacted.extend_from_slice(&body[last..found.start()]);
        redacted.extend_from_slice(replacement(found.as_bytes()).as_bytes());
        last = found.end();
    }
    redacted.extend_from_slice(&body[last..]);
    redacted
}

/// Whether a raw body holds anything [`redact_bytes`] would replace. A JSON document for which
/// this is false has no secret-shaped string once parsed either: every way JSON can write a
/// key character is one the pattern accepts.
pub fn contains_secret(body: &[u8]) -> bool {
    SECRET_BYTES.is_match(body)
}

/// Redacts every string in a JSON value, object keys included. Returns how many strings changed.
pub fn redact_value(value: &mut serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(text) => match redact_str(text) {
            Cow::Borrowed(_) => 0,
            Cow::Owned(redacted) => {
                *text = redacted;
                1
            }
        },
        serde_json::Value::Array(items) => items.iter_mut().map(redact_value).sum(),
        serde_json::Value::Object(map) => {
            let mut changed = 0;
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                changed += redact_value(&mut item);
                let key = match redact_str(&key) {
                    Cow::Borrowed(_) => key,
                    Cow::Owned(redacted) => {
                        changed += 1;
                        redacted
                    }
                };
                map.insert(key, item);
            }
            changed
        }
        _ => 0,
    }
}

/// What replaces one match (the key as written, escapes and all): the longest of
/// `<kind prefix>[REDACTED]...<last four>`, `<kind prefix>[REDACTED]` and `[REDACTED]` that is
/// not longer than the match. Always ASCII.
fn replacement(matched: &[u8]) -> String {
    let plain = matched
        .iter()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'));
    let key: String = if plain {
        // The usual case: the key as itself, nothing to decode.
        matched.iter().copied().map(char::from).collect()
    } else {
        decode(matched)
    };
    let prefix = MODERN_KINDS
        .iter()
        .map(|kind| format!("sk-{kind}-"))
        .find(|prefix| key.starts_with(prefix.as_str()))
        .unwrap_or_else(|| "sk-".to_owned());
    let tail: String = {
        let mut tail: Vec<char> = key.chars().rev().take(4).collect();
        tail.reverse();
        tail.into_iter().collect()
    };
    [
        format!("{prefix}{REDACTED_MARKER}...{tail}"),
        format!("{prefix}{REDACTED_MARKER}"),
    ]
    .into_iter()
    .find(|candidate| candidate.len() <= matched.len())
    .unwrap_or_else(|| REDACTED_MARKER.to_owned())
}

/// The key a match writes with escapes, one [`UNIT`] at a time.
fn decode(matched: &[u8]) -> String {
    UNIT.captures_iter(matched)
        .filter_map(|unit| {
            let hex = unit.name("json").or_else(|| unit.name("percent"));
            let byte = match hex {
                Some(hex) => std::str::from_utf8(hex.as_bytes())
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())?,
                None => *unit
                    .name("escaped")
                    .or_else(|| unit.name("plain"))?
                    .as_bytes()
                    .first()?,
            };
            Some(char::from(byte))
        })
        .collect()
}

/// The key shapes as a regex. With `escapes`, each character may also be written as the module
/// doc lists; without, the pattern is plain (and valid ECMA-262 for JSON Schema).
fn pattern(escapes: bool) -> String {
    // Every literal character is a letter, a digit or `-`: none needs escaping.
    let literal = |text: &str| -> String {
        text.chars()
            .map(|c| one_of(&c.to_string(), &[c], escapes))
            .collect()
    };
    let key_chars: Vec<char> = ('A'..='Z')
        .chain('a'..='z')
        .chain('0'..='9')
        .chain(['_', '-'])
        .collect();
    let body = one_of(&format!("[{KEY_CLASS}]"), &key_chars, escapes);
    let kinds: Vec<String> = MODERN_KINDS.iter().map(|kind| literal(kind)).collect();
    format!(
        "{sk}(?:{kinds}){dash}{body}{{{MODERN_BODY_MIN},}}|{sk}{body}*{marker}{body}+",
        sk = literal("sk-"),
        kinds = kinds.join("|"),
        dash = literal("-"),
        marker = literal(LEGACY_MARKER),
    )
}

/// A regex for one character of `chars` (`plain` is its regex for the character as itself).
fn one_of(plain: &str, chars: &[char], escapes: bool) -> String {
    if !escapes {
        return plain.to_owned();
    }
    let hex: Vec<String> = chars
        .iter()
        .map(|c| format!("{:02x}", u32::from(*c)))
        .collect();
    let hex = hex.join("|");
    let backslashed: String = chars
        .iter()
        .filter(|c| matches!(c, '-' | '_'))
        .map(|c| format!(r"|\\+{c}"))
        .collect();
    format!(r"(?:\x00?(?:{plain}|\\+u00(?i:{hex})|%(?:25)*(?i:{hex}){backslashed})\x00?)")
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
