//! Wire contracts: findings, decisions and run events round-trip, bad input is refused with the
//! failing field named, secrets are redacted on entry, and the checked-in schemas are current.

use quench_proto::{
    DEFAULT_MAX_FINDING_BYTES, Decision, Finding, ParseError, RunEvent, redact_str,
};
use serde_json::json;

use crate::support;

const PROJECT_KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStUvT3BlbkFJAbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStUvWxyz";
const ADMIN_KEY: &str = "sk-admin-0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHT3BlbkFJ0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCD9f3e";
const LEGACY_KEY: &str = "sk-abcdefghij0123456789T3BlbkFJabcdefghij0123456789";

fn finding() -> serde_json::Value {
    json!({
        "schema": "quench.finding/v1",
        "id": "ghsa-delivery-42",
        "kind": "openai.api_key.leaked",
        "severity": "high",
        "title": "OpenAI key in acme/web",
        "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "github", "rule": "openai_api_key", "url": "https://github.com/acme/web/blob/main/.env#L3"},
        "resource": {"provider": "openai", "type": "api_key", "id": "key_abc", "name": "web prod", "project_id": "proj_1", "redacted_value": "sk-proj-...wxyz"},
        "owner": {"email": "alice@example.com", "slack_user_id": "U0123ABCD"},
        "evidence": {"commit": "4f2a9c1", "line": 3},
        "labels": {"team": "web"}
    })
}

fn parse(value: &serde_json::Value) -> Result<Finding, ParseError> {
    Finding::parse(
        &serde_json::to_vec(value).expect("serializes"),
        DEFAULT_MAX_FINDING_BYTES,
    )
}

#[test]
fn finding_round_trips_and_gets_a_default_key() {
    let parsed = parse(&finding()).expect("a valid finding parses");
    assert_eq!(parsed.key, "openai.api_key.leaked:key_abc");
    let again = Finding::parse(
        &serde_json::to_vec(&parsed).expect("serializes"),
        DEFAULT_MAX_FINDING_BYTES,
    )
    .expect("what quench writes, quench reads");
    assert_eq!(parsed, again);
}

/// Sets (or, with `None`, removes) the value at a JSON pointer; `""` replaces the whole value.
fn change(value: &mut serde_json::Value, pointer: &str, to: Option<serde_json::Value>) {
    let (parent, field) = pointer.rsplit_once('/').unwrap_or(("", ""));
    match (to, pointer) {
        (Some(to), "") => *value = to,
        (Some(to), _) => {
            let parent = value.pointer_mut(parent).expect("parent exists");
            parent[field] = to;
        }
        (None, _) => {
            let parent = value
                .pointer_mut(parent)
                .and_then(|p| p.as_object_mut())
                .expect("parent is an object");
            parent.remove(field);
        }
    }
}

/// Each case: a change to the valid finding, and the reason and message it must be refused with.
#[test]
fn bad_findings_name_the_failing_field() {
    let cases = [
        (
            "/kind",
            None,
            "invalid_field",
            "field `kind`: missing field `kind`",
        ),
        (
            "/resource/id",
            None,
            "invalid_field",
            "field `resource.id`: missing field `id`",
        ),
        (
            "/severity",
            Some(json!("urgent")),
            "invalid_field",
            "field `severity`: unknown variant `urgent`, expected one of `info`, `low`, `medium`, `high`, `critical`",
        ),
        (
            "/resource/type",
            Some(json!("token")),
            "invalid_field",
            "field `resource.type`: unknown variant `token`, expected one of `api_key`, `admin_key`, `service_account`, `project`, `user`, `integration`, `secret`",
        ),
        (
            "/severty",
            Some(json!("high")),
            "invalid_field",
            "field `severty`: unknown field `severty`, expected one of `schema`, `id`, `key`, `kind`, `status`, `severity`, `title`, `detected_at`, `source`, `resource`, `owner`, `evidence`, `labels`",
        ),
        (
            "/detected_at",
            Some(json!("yesterday")),
            "invalid_field",
            "field `detected_at`: expected an RFC 3339 time such as `2026-11-20T10:00:00Z`",
        ),
        (
            "/id",
            Some(json!("")),
            "invalid_field",
            "field `id`: must not be empty",
        ),
        (
            "/id",
            Some(json!("a b")),
            "invalid_field",
            "field `id`: must not contain whitespace, `*` or `>`",
        ),
        (
            "/kind",
            Some(json!("OpenAI Leak")),
            "invalid_field",
            "field `kind`: must be 2 to 8 dot-separated lowercase words, e.g. `openai.api_key.leaked`",
        ),
        (
            "/title",
            Some(json!("x".repeat(301))),
            "invalid_field",
            "field `title`: is 301 characters, longer than the limit of 300",
        ),
        (
            "/source/url",
            Some(json!("javascript:alert(1)")),
            "invalid_field",
            "field `source.url`: must be an http(s) URL",
        ),
        (
            "/owner/slack_user_id",
            Some(json!("alice")),
            "invalid_field",
            "field `owner.slack_user_id`: must be a Slack user id such as `U0123ABCD`",
        ),
        (
            "/labels/bad key",
            Some(json!("x")),
            "invalid_field",
            "field `labels.bad key`: label names are 1 to 64 of `A-Z a-z 0-9 _ . / -`",
        ),
        (
            "/evidence/deep",
            Some(json!([[[[[[[[[1]]]]]]]]])),
            "invalid_field",
            "field `evidence`: nests 10 levels deep, more than the limit of 8",
        ),
        (
            "/evidence/blob",
            Some(json!("y".repeat(17_000))),
            "invalid_field",
            "field `evidence`: is 17039 bytes, larger than the limit of 16384",
        ),
        (
            "/schema",
            Some(json!("quench.finding/v2")),
            "unknown_schema",
            "unknown schema `quench.finding/v2`, expected `quench.finding/v1`",
        ),
        (
            "/schema",
            None,
            "invalid_field",
            "field `schema`: missing field",
        ),
        (
            "",
            Some(json!([1, 2])),
            "invalid_field",
            "field ``: expected a JSON object",
        ),
    ];
    for (pointer, to, reason, message) in cases {
        let mut value = finding();
        change(&mut value, pointer, to);
        let error = parse(&value).expect_err(message);
        assert_eq!(
            (error.reason(), error.to_string().as_str()),
            (reason, message),
            "change at `{pointer}`"
        );
    }
}

#[test]
fn oversized_and_malformed_bytes_are_refused() {
    let big = vec![b' '; DEFAULT_MAX_FINDING_BYTES + 1];
    let error = Finding::parse(&big, DEFAULT_MAX_FINDING_BYTES).expect_err("too large");
    assert_eq!(error.reason(), "too_large");
    assert_eq!(
        error.to_string(),
        "message is 65537 bytes, larger than the limit of 65536 bytes"
    );
    let error = Finding::parse(b"{\"schema\": ", DEFAULT_MAX_FINDING_BYTES).expect_err("not JSON");
    assert_eq!(error.reason(), "invalid_json");
    assert_eq!(
        error.to_string(),
        "message is not valid JSON: EOF while parsing a value at line 1 column 11"
    );
}

#[test]
fn redaction_cases() {
    for (input, expected) in [
        (
            format!("key={PROJECT_KEY}"),
            "key=sk-proj-[REDACTED]...Wxyz".to_owned(),
        ),
        (
            format!("\"{ADMIN_KEY}\","),
            "\"sk-admin-[REDACTED]...9f3e\",".to_owned(),
        ),
        (
            format!("OPENAI_API_KEY={LEGACY_KEY}\n"),
            "OPENAI_API_KEY=sk-[REDACTED]...6789\n".to_owned(),
        ),
        (
            format!("{LEGACY_KEY} and {PROJECT_KEY}"),
            "sk-[REDACTED]...6789 and sk-proj-[REDACTED]...Wxyz".to_owned(),
        ),
        // A key glued to a word character: an escaped newline in quoted JSON, a URL-encoded `=`
        // (found by the `redact` fuzz target).
        (
            format!("line1\\n{PROJECT_KEY}"),
            "line1\\nsk-proj-[REDACTED]...Wxyz".to_owned(),
        ),
        (
            format!("?api_key%3D{PROJECT_KEY}"),
            "?api_key%3Dsk-proj-[REDACTED]...Wxyz".to_owned(),
        ),
        // Provider-redacted forms, ids and ordinary words stay as they are.
        ("sk-proj-...wxyz".to_owned(), "sk-proj-...wxyz".to_owned()),
        (
            "key_abc in proj_1".to_owned(),
            "key_abc in proj_1".to_owned(),
        ),
        (
            "ask-proj-team about it".to_owned(),
            "ask-proj-team about it".to_owned(),
        ),
        ("sk-svcacct-short".to_owned(), "sk-svcacct-short".to_owned()),
    ] {
        assert_eq!(redact_str(&input), expected, "input {input}");
    }
}

#[test]
fn secrets_in_a_finding_never_reach_the_parsed_value_or_an_error() {
    let mut value = finding();
    value["title"] = json!(format!("leaked {PROJECT_KEY}"));
    value["evidence"] =
        json!({"snippet": format!("OPENAI_API_KEY={ADMIN_KEY}"), PROJECT_KEY: [LEGACY_KEY]});
    value["labels"] = json!({"raw": LEGACY_KEY});
    let parsed = parse(&value).expect("parses");
    let stored = serde_json::to_string(&parsed).expect("serializes");
    assert!(!stored.contains("T3BlbkFJ"), "a secret survived: {stored}");
    assert!(stored.contains("sk-proj-[REDACTED]...Wxyz"));

    // A secret in a field that fails validation must not come back in the error either.
    let mut value = finding();
    value["severity"] = json!(PROJECT_KEY);
    let error = parse(&value).expect_err("bad severity");
    assert!(!error.to_string().contains("T3BlbkFJ"), "{error}");
}

/// What a gateway builds from a scanner's own format gets what the bytes of that finding would
/// get from `Finding::parse`: the default key, redaction with identities, the same refusals.
#[test]
fn a_finding_built_in_code_is_checked_as_a_parsed_one() {
    let mut value = finding();
    value["id"] = json!(format!("delivery-{LEGACY_KEY}"));
    value["title"] = json!(format!("leaked {PROJECT_KEY}"));
    value["labels"] = json!({"raw": LEGACY_KEY});
    let built: Finding = serde_json::from_value(value.clone()).expect("a typed finding");
    let checked = built
        .clone()
        .checked(DEFAULT_MAX_FINDING_BYTES)
        .expect("a valid finding is accepted");
    assert_eq!(checked, parse(&value).expect("parses"));
    let stored = serde_json::to_string(&checked).expect("serializes");
    assert!(!stored.contains("T3BlbkFJ"), "a secret survived: {stored}");

    let mut untitled = built.clone();
    untitled.title = String::new();
    assert_eq!(
        untitled
            .checked(DEFAULT_MAX_FINDING_BYTES)
            .expect_err("no title")
            .to_string(),
        "field `title`: must not be empty"
    );
    let error = built.checked(256).expect_err("larger than the cap");
    assert_eq!(error.reason(), "too_large");
}

#[test]
fn decisions_and_run_events_round_trip() {
    let decision = json!({
        "schema": "quench.decision/v1", "id": "d-1", "run_id": "run-1", "gate": "decide",
        "token": "tok-9f8e", "choice": "revoke", "actor": {"via": "slack", "id": "T1/U111", "name": "alice"},
        "decided_at": "2026-11-20T10:05:00Z"
    });
    let parsed = Decision::parse(&serde_json::to_vec(&decision).expect("serializes"))
        .expect("valid decision");
    assert_eq!(serde_json::to_value(&parsed).expect("serializes"), decision);
    let mut bad = decision.clone();
    bad["actor"]["via"] = json!("email");
    let error =
        Decision::parse(&serde_json::to_vec(&bad).expect("serializes")).expect_err("bad via");
    assert_eq!(
        error.to_string(),
        "field `actor.via`: unknown variant `email`, expected one of `slack`, `api`, `cli`, `console`"
    );

    let event = json!({
        "schema": "quench.run_event/v1", "id": "e-1", "kind": "waiting", "run_id": "run-1",
        "playbook": "revoke-leaked-openai-key", "playbook_version": "sha256:00", "finding_key": "k",
        "step": "decide", "at": "2026-11-20T10:01:00Z", "audit_hash": "ab"
    });
    let parsed: RunEvent = serde_json::from_value(event.clone()).expect("valid event");
    assert_eq!(serde_json::to_value(&parsed).expect("serializes"), event);
    assert_eq!(
        quench_proto::subject::event(&parsed.playbook, parsed.kind),
        "quench.events.revoke-leaked-openai-key.waiting"
    );
}

#[test]
fn checked_in_schemas_are_current() {
    for (name, schema) in quench_proto::schemas() {
        support::check_generated(&format!("proto/schema/{name}"), &schema);
    }
}

/// Scanners in other languages validate against the checked-in schema, so the schema is the
/// definition of a valid finding: a corpus of findings, each judged by a third-party validator
/// (`jsonschema`, formats asserted) and by `Finding::parse`, must get the same verdict from both.
/// Every check runs on the values as sent, before redaction.
#[test]
fn checked_in_finding_schema_and_the_parser_agree_on_a_corpus() {
    let path = support::root().join("proto/schema/finding.v1.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema exists"))
            .expect("schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let nested = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!([inner]));
    let long = |n: usize| json!("x".repeat(n));
    let key_in = |before: &str| json!(format!("{before}{PROJECT_KEY} leaked"));
    // (change, valid?)
    let cases: Vec<(&str, Option<serde_json::Value>, bool)> = vec![
        ("", None, true),
        ("/title", Some(json!("line one\nline\ttwo")), true),
        ("/title", Some(json!("Ж".repeat(300))), true),
        ("/title", Some(long(301)), false),
        ("/title", Some(json!("bell \u{7}")), false),
        ("/title", Some(json!("next line \u{85}")), false),
        ("/title", Some(json!("")), false),
        ("/title", Some(json!(null)), false),
        // Keys anywhere in free text are fine: they are redacted after the checks.
        ("/title", Some(key_in("OPENAI_KEY_")), true),
        ("/title", Some(key_in("Ж")), true),
        ("/key", Some(key_in("key:")), true),
        ("/id", Some(json!(format!("id-{LEGACY_KEY}"))), true),
        ("/id", Some(json!("é-42")), true),
        ("/id", Some(json!("a\u{a0}b")), false),
        ("/id", Some(json!("a\u{3000}b")), false),
        ("/id", Some(json!("a\tb")), false),
        ("/id", Some(json!("a*b")), false),
        ("/id", Some(long(129)), false),
        ("/key", Some(long(256)), true),
        ("/key", Some(long(257)), false),
        ("/key", Some(json!("k\u{1}")), false),
        // The default key of a long kind and resource id is shortened to fit.
        ("/resource/id", Some(long(256)), true),
        (
            "/kind",
            Some(json!("openai.sk-proj-abcdefghijklmnopqrst")),
            false,
        ),
        (
            "/resource/provider",
            Some(json!("sk-proj-abcdefghijklmnop")),
            false,
        ),
        ("/source/scanner", Some(long(64)), true),
        ("/source/scanner", Some(long(65)), false),
        // Over-long as sent, though its redacted form would fit.
        (
            "/source/scanner",
            Some(json!(format!("scanner {PROJECT_KEY}"))),
            false,
        ),
        ("/source/rule", Some(json!("")), false),
        ("/source/url", Some(json!("https://example.com/a b")), true),
        ("/source/url", Some(json!("https://example.com/\nx")), true),
        (
            "/source/url",
            Some(json!("https://example.com/\u{1b}x")),
            false,
        ),
        ("/source/url", Some(json!("ftp://example.com/")), false),
        ("/resource/name", Some(long(256)), true),
        ("/resource/name", Some(long(257)), false),
        ("/resource/name", Some(json!("")), false),
        ("/resource/org_id", Some(long(129)), false),
        ("/resource/project_id", Some(json!("p\u{0}")), false),
        ("/resource/service_account_id", Some(long(128)), true),
        ("/resource/redacted_value", Some(long(65)), false),
        ("/resource/redacted_value", Some(json!(null)), true),
        (
            "/resource/last_used_at",
            Some(json!("2026-11-20T10:00:00+02:00")),
            true,
        ),
        (
            "/detected_at",
            Some(json!("2026-11-20T10:00:00.123Z")),
            true,
        ),
        ("/detected_at", Some(json!("yesterday")), false),
        ("/detected_at", Some(json!("2026-11-20t10:00:00z")), true),
        ("/detected_at", Some(json!("2026-11-20 10:00:00Z")), false),
        ("/detected_at", Some(json!("2026-11-20T10:00:00")), false),
        ("/detected_at", Some(json!("2026-11-20T10:00Z")), false),
        ("/detected_at", Some(json!("2026-02-30T10:00:00Z")), false),
        ("/detected_at", Some(json!("2026-11-20T10:00:00,5Z")), false),
        (
            "/resource/last_used_at",
            Some(json!("2026-11-20 10:00:00Z")),
            false,
        ),
        ("/owner/email", Some(json!("a@b")), true),
        ("/owner/email", Some(json!("alice")), false),
        ("/owner/email", Some(json!("a@")), false),
        ("/owner/email", Some(json!("a\u{7}@example.com")), false),
        ("/owner/team", Some(long(129)), false),
        ("/owner/name", Some(json!("")), false),
        ("/owner/slack_user_id", Some(json!("alice")), false),
        ("/owner", Some(json!(null)), true),
        ("/labels/github.repository", Some(json!("acme/web")), true),
        ("/labels/bad key", Some(json!("x")), false),
        (
            "/labels/sk-proj-AbCdEfGhIjKlMnOpQrSt",
            Some(json!("x")),
            false,
        ),
        ("/labels/team", Some(long(256)), true),
        ("/labels/team", Some(long(257)), false),
        ("/labels/team", Some(json!("web\u{0}")), false),
        ("/labels/team", Some(json!(1)), false),
        ("/evidence/deep", Some(nested(7)), true),
        ("/evidence/deep", Some(nested(8)), false),
        (
            "/evidence/deep",
            Some(json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}})),
            true,
        ),
        (
            "/evidence/deep",
            Some(json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}})),
            false,
        ),
        ("/evidence/control", Some(json!("\u{0}")), true),
        ("/evidence", Some(json!(null)), false),
        ("/severity", Some(json!("urgent")), false),
        ("/status", Some(json!("resolved")), true),
        ("/extra", Some(json!(1)), false),
    ];
    let mut disagreements = Vec::new();
    for (pointer, to, valid) in &cases {
        let mut value = finding();
        if !pointer.is_empty() {
            change(&mut value, pointer, to.clone());
        }
        let schema_says = validator.is_valid(&value);
        let parser_says = parse(&value);
        if schema_says != *valid || parser_says.is_ok() != *valid {
            disagreements.push(format!(
                "`{pointer}` = {}: expected valid={valid}, schema says {schema_says} ({:?}), parser says {:?}",
                to.as_ref().map(|to| to.to_string().chars().take(60).collect::<String>()).unwrap_or_default(),
                validator.iter_errors(&value).map(|e| e.to_string().chars().take(120).collect::<String>()).collect::<Vec<_>>(),
                parser_says.map(|_| ()),
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));

    // Byte sizes are outside JSON Schema's vocabulary; both caps are in the schema's
    // descriptions, and they are the only findings the two judge differently.
    let mut value = finding();
    value["evidence"] = json!({"blob": "y".repeat(17_000)});
    assert!(validator.is_valid(&value));
    assert!(parse(&value).is_err());

    // A schema judges a parsed document, so a repeated name never reaches it: the parser
    // refuses one at any depth, as the schema's description says (I-JSON).
    let text = serde_json::to_string(&finding()).expect("serializes");
    for (from, to) in [
        (
            r#""severity":"high""#,
            r#""severity":"low","severity":"critical""#,
        ),
        (
            r#""commit":"4f2a9c1""#,
            r#""commit":"4f2a9c1","commit":"0000000""#,
        ),
        (r#""team":"web""#, r#""team":"web","team":"ops""#),
    ] {
        assert!(text.contains(from), "{from}");
        let repeated = text.replacen(from, to, 1);
        let error = Finding::parse(repeated.as_bytes(), DEFAULT_MAX_FINDING_BYTES)
            .expect_err("a repeated name is refused");
        assert_eq!(error.reason(), "invalid_json");
        assert!(error.to_string().contains("duplicate name"), "{error}");
    }
}

/// Identity is computed from the values as sent: ten findings whose ids and keys each hold a
/// different secret sharing the last four characters stay ten findings, and none of their
/// identities holds a secret.
#[test]
fn identities_of_findings_that_differ_inside_a_secret_stay_distinct() {
    let parsed: Vec<Finding> = (0..10)
        .map(|n| {
            let secret = format!("sk-proj-{n}{}Wxyz", "AbCdEfGhIjKlMnOpQrSt".repeat(3));
            let mut value = finding();
            value["id"] = json!(format!("leak-{secret}"));
            value["key"] = json!(format!("openai:leaked:{secret}"));
            value["title"] = json!(format!("leaked {secret}"));
            parse(&value).expect("parses")
        })
        .collect();
    let ids: std::collections::BTreeSet<&str> = parsed.iter().map(|f| f.id.as_str()).collect();
    let keys: std::collections::BTreeSet<&str> = parsed.iter().map(|f| f.key.as_str()).collect();
    assert_eq!((ids.len(), keys.len()), (10, 10), "{ids:?} {keys:?}");
    for finding in &parsed {
        let stored = serde_json::to_string(finding).expect("serializes");
        assert!(
            !quench_proto::contains_secret(stored.as_bytes()),
            "{stored}"
        );
        assert!(
            finding.id.starts_with("leak-sk-proj-[REDACTED]...Wxyz~"),
            "{}",
            finding.id
        );
        // What quench writes, quench reads, to the same identity.
        let again =
            Finding::parse(stored.as_bytes(), DEFAULT_MAX_FINDING_BYTES).expect("re-parses");
        assert_eq!(&again, finding);
    }
}
