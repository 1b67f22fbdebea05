//! Property tests of redaction: keys of every documented shape, written with every escape the
//! pattern knows, between arbitrary text (word characters, non-ASCII letters, punctuation), never
//! survive `redact_str`, `redact_value` or `redact_bytes`, and redaction never lengthens its input.

use proptest::prelude::*;

use super::*;

#[test]
fn the_plain_pattern_is_the_documented_one() {
    assert_eq!(
        *PLAIN_SECRET_PATTERN,
        r"sk-(?:proj|svcacct|admin|service)-[A-Za-z0-9_-]{16,}|sk-[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]+"
    );
}

#[test]
fn keys_after_word_characters_and_escaped_keys_are_redacted() {
    let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123";
    for (input, expected) in [
        (
            format!("OPENAI_KEY_{key}"),
            "OPENAI_KEY_sk-proj-[REDACTED]...0123",
        ),
        (format!("x{key}"), "xsk-proj-[REDACTED]...0123"),
        (format!("0{key}"), "0sk-proj-[REDACTED]...0123"),
        (format!("é{key}é"), "ésk-proj-[REDACTED]...0123é"),
        (format!("Ж{key}"), "Жsk-proj-[REDACTED]...0123"),
        (key.replace('-', r"\u002d"), "sk-proj-[REDACTED]...0123"),
        (key.replace('-', r"\\u002D"), "sk-proj-[REDACTED]...0123"),
        (key.replace('-', "%2D"), "sk-proj-[REDACTED]...0123"),
        (key.replace('-', "%252d"), "sk-proj-[REDACTED]...0123"),
        (key.replace('-', r"\-"), "sk-proj-[REDACTED]...0123"),
        // Too short for the long form: the replacement is never longer than the key.
        ("sk-proj-abcdefghijklmnop".to_owned(), "sk-proj-[REDACTED]"),
        ("sk-T3BlbkFJx".to_owned(), "[REDACTED]"),
        // Not keys: too short, or the provider's own redacted form.
        (
            "sk-proj-abcdefghijklmno".to_owned(),
            "sk-proj-abcdefghijklmno",
        ),
        ("sk-proj-...wxyz".to_owned(), "sk-proj-...wxyz"),
    ] {
        assert_eq!(redact_str(&input), expected, "input {input}");
        assert_eq!(
            String::from_utf8(redact_bytes(input.as_bytes())).expect("ASCII replacement"),
            expected,
            "bytes {input}"
        );
    }
}

const KEY_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn key_chars(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(KEY_CHARS.as_bytes()), len)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

/// A key of one of the documented shapes.
fn key() -> impl Strategy<Value = String> {
    let modern = proptest::sample::select(&["proj", "svcacct", "admin", "service"][..]);
    let realistic_len = proptest::sample::select(&[58_usize, 74][..]);
    prop_oneof![
        // Current layout, any length the pattern accepts.
        (modern.clone(), key_chars(16..=120)).prop_map(|(kind, body)| format!("sk-{kind}-{body}")),
        // Current layout as issued: 58 or 74 characters, the marker, 58 or 74 characters.
        (
            modern,
            realistic_len.clone(),
            realistic_len,
            key_chars(74..=74),
            key_chars(74..=74)
        )
            .prop_map(|(kind, first_len, second_len, first, second)| format!(
                "sk-{kind}-{}T3BlbkFJ{}",
                &first[..first_len],
                &second[..second_len]
            )),
        // Legacy and older named layouts: anything around the marker.
        (key_chars(0..=40), key_chars(1..=40))
            .prop_map(|(before, after)| format!("sk-{before}T3BlbkFJ{after}")),
        // Legacy as issued: 20 alphanumerics, the marker, 20 alphanumerics.
        (key_chars(20..=20), key_chars(20..=20))
            .prop_map(|(before, after)| format!("sk-{before}T3BlbkFJ{after}")),
    ]
}

/// How a character of the key is written.
#[derive(Debug, Clone, Copy)]
enum Escape {
    Plain,
    JsonLower,
    JsonUpper,
    JsonTwice,
    Percent,
    PercentTwice,
    Backslash,
}

fn escapes(len: usize) -> impl Strategy<Value = Vec<Escape>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(Escape::Plain),
            1 => Just(Escape::JsonLower),
            1 => Just(Escape::JsonUpper),
            1 => Just(Escape::JsonTwice),
            1 => Just(Escape::Percent),
            1 => Just(Escape::PercentTwice),
            1 => Just(Escape::Backslash),
        ],
        len,
    )
}

fn written(key: &str, escapes: &[Escape]) -> String {
    key.chars()
        .zip(escapes.iter().chain(std::iter::repeat(&Escape::Plain)))
        .map(|(c, escape)| {
            let code = u32::from(c);
            match escape {
                Escape::Plain => c.to_string(),
                Escape::JsonLower => format!(r"\u{code:04x}"),
                Escape::JsonUpper => format!(r"\u{code:04X}"),
                Escape::JsonTwice => format!(r"\\u{code:04x}"),
                Escape::Percent => format!("%{code:02X}"),
                Escape::PercentTwice => format!("%25{code:02x}"),
                Escape::Backslash if matches!(c, '-' | '_') => format!(r"\{c}"),
                Escape::Backslash => c.to_string(),
            }
        })
        .collect()
}

/// Text around a key: word characters, non-ASCII letters, punctuation, anything.
fn surrounding() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_]{0,8}",
        "[éЖ漢ßñ]{0,4}",
        r#"[ \t\n"'`;:,.=/\\()\[\]{}<>%@#-]{0,8}"#,
        any::<String>(),
    ]
}

/// The secret part of a key, as a needle: its characters minus the last four, which stay.
fn secret_part(key: &str) -> &str {
    &key[..key.len() - 4]
}

fn assert_clean(output: &[u8], key: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !contains_secret(output),
        "a key shape survived: {}",
        String::from_utf8_lossy(output)
    );
    let needle = secret_part(key).as_bytes();
    prop_assert!(
        !output.windows(needle.len()).any(|window| window == needle),
        "the key survived: {}",
        String::from_utf8_lossy(output)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_key_survives_redact_str(
        key in key(),
        before in surrounding(),
        after in surrounding(),
        escapes in escapes(200),
    ) {
        let text = format!("{before}{}{after}", written(&key, &escapes));
        let redacted = redact_str(&text);
        assert_clean(redacted.as_bytes(), &key)?;
        prop_assert!(redacted.chars().count() <= text.chars().count());
        prop_assert!(redacted.len() <= text.len());
    }

    #[test]
    fn no_key_survives_redact_bytes(
        key in key(),
        before in proptest::collection::vec(any::<u8>(), 0..16),
        after in proptest::collection::vec(any::<u8>(), 0..16),
        escapes in escapes(200),
        utf16 in any::<bool>(),
    ) {
        let written = written(&key, &escapes);
        let written: Vec<u8> = if utf16 {
            written.encode_utf16().flat_map(u16::to_le_bytes).collect()
        } else {
            written.into_bytes()
        };
        let body = [before.as_slice(), &written, &after].concat();
        let redacted = redact_bytes(&body);
        assert_clean(&redacted, &key)?;
        prop_assert!(redacted.len() <= body.len());
    }

    /// A JSON document with the key in a value and in an object name, every character of it
    /// possibly `\u`-escaped: neither its raw bytes nor its parsed, redacted value keep it.
    #[test]
    fn no_key_survives_redact_value_or_the_raw_json(
        key in key(),
        before in surrounding(),
        after in surrounding(),
        escaped in proptest::collection::vec(any::<bool>(), 200),
    ) {
        let escaped_key: String = key
            .chars()
            .zip(escaped.iter().chain(std::iter::repeat(&false)))
            .map(|(c, escape)| if *escape { format!(r"\u{:04x}", u32::from(c)) } else { c.to_string() })
            .collect();
        let text = serde_json::to_string(&format!("{before}{after}")).expect("serializes");
        let (open, close) = text.split_at(1 + serde_json::to_string(&before).expect("serializes").len() - 2);
        let raw = format!(r#"{{"title": {open}{escaped_key}{close}, "evidence": {{"{escaped_key}": [{open}{escaped_key}{close}]}}}}"#);
        let mut value: serde_json::Value = serde_json::from_str(&raw).expect("valid JSON");
        prop_assert!(redact_value(&mut value) >= 3);
        assert_clean(value.to_string().as_bytes(), &key)?;
        assert_clean(&redact_bytes(raw.as_bytes()), &key)?;
    }
}
