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
            "field `detected_at`: input contains invalid characters",
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
            "field `evidence`: nests deeper than 8 levels",
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

/// Scanners in other languages validate against the checked-in schema: it must accept what
/// quench accepts and refuse what the typed parse refuses.
#[test]
fn checked_in_finding_schema_agrees_with_the_parser() {
    let path = support::root().join("proto/schema/finding.v1.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema exists"))
            .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    assert!(
        validator.is_valid(&finding()),
        "{:?}",
        validator
            .iter_errors(&finding())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    for (pointer, to) in [
        ("/kind", json!("OpenAI Leak")),
        ("/severity", json!("urgent")),
        ("/labels/bad key", json!("x")),
        ("/source/url", json!("javascript:alert(1)")),
        ("/owner/slack_user_id", json!("alice")),
    ] {
        let mut value = finding();
        change(&mut value, pointer, Some(to));
        assert!(
            !validator.is_valid(&value),
            "schema accepts a bad `{pointer}`"
        );
        assert!(parse(&value).is_err(), "parser accepts a bad `{pointer}`");
    }
}
