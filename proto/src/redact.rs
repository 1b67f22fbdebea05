//! Redaction of secret-shaped strings. Scanners report leaks, and a report about a leaked key
//! often quotes the key; quench must never store, log or forward it. The shapes are the OpenAI
//! key formats public scanners recognise (gitleaks, TruffleHog, detect-secrets; see
//! `reference/openai-admin-api.md` §12): `sk-proj-`, `sk-svcacct-`, `sk-admin-`, `sk-service-`
//! and the legacy `sk-…T3BlbkFJ…` layout.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What replaces the secret part of a key. The kind prefix and the last four characters stay,
/// like the provider's own `redacted_value`, so an owner can still tell which key it was.
pub const REDACTED_MARKER: &str = "[REDACTED]";

static SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // No `\b` before `sk-`: a key glued to a word character (`\nsk-…` in escaped JSON,
        // `%3Dsk-…` in a URL) is still a key. Redacting the odd `task-proj-…` word is the price.
        // Modern project, service-account and admin keys, with or without the T3BlbkFJ marker.
        r"(?P<modern>sk-(?:proj|svcacct|admin|service)-)[A-Za-z0-9_-]{16,}",
        // Legacy user keys and older named service-account keys: anything around the marker.
        r"|(?P<legacy>sk-)[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]+",
    ))
    .expect("secret pattern compiles")
});

/// Replaces every secret-shaped substring of `text`; borrows when there is nothing to replace.
pub fn redact_str(text: &str) -> Cow<'_, str> {
    SECRET.replace_all(text, |captures: &Captures<'_>| {
        let whole = &captures[0];
        let prefix = captures
            .name("modern")
            .or_else(|| captures.name("legacy"))
            .map_or("", |prefix| prefix.as_str());
        let tail: String = {
            let mut tail: Vec<char> = whole.chars().rev().take(4).collect();
            tail.reverse();
            tail.into_iter().collect()
        };
        format!("{prefix}{REDACTED_MARKER}...{tail}")
    })
}

/// Redacts every secret-shaped run of bytes in a raw body that may not be UTF-8 or even JSON
/// (a dead letter keeps the body as it came, as bytes). Never longer than `body` plus a few
/// bytes per secret.
pub fn redact_bytes(body: &[u8]) -> Vec<u8> {
    static SECRET_BYTES: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
        regex::bytes::Regex::new(SECRET.as_str()).expect("secret pattern compiles for bytes")
    });
    SECRET_BYTES
        .replace_all(body, |captures: &regex::bytes::Captures<'_>| {
            let whole = &captures[0];
            let prefix = captures
                .name("modern")
                .or_else(|| captures.name("legacy"))
                .map_or(&b""[..], |prefix| prefix.as_bytes());
            let tail = &whole[whole.len().saturating_sub(4)..];
            [prefix, REDACTED_MARKER.as_bytes(), b"...", tail].concat()
        })
        .into_owned()
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
