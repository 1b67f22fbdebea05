//! The OCSF → Finding mapping on the checked-in fixtures and on edits of them: one
//! `check(event, expected)` per row of the mapping table in `docs/ocsf.md`.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{MAX_OCSF_BYTES, parse};
use crate::{ParseError, ResourceType, Severity, Status};

const SECURITY_HUB: &str =
    include_str!("../../../../tests/fixtures/ocsf/securityhub-detection-finding.json");
const IAM_UNUSED: &str =
    include_str!("../../../../tests/fixtures/ocsf/iam-analysis-unused-key.json");
const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

fn map(event: &Value) -> Result<crate::Finding, ParseError> {
    parse(event.to_string().as_bytes(), MAX_OCSF_BYTES)
}

/// The OCSF attribute a refusal names.
fn refused(event: &Value) -> String {
    match map(event) {
        Err(ParseError::Invalid(invalid)) => invalid.field,
        other => panic!("expected a refusal naming a field, got {other:?}"),
    }
}

#[test]
fn a_security_hub_detection_finding_is_a_leaked_openai_key() {
    let finding = map(&fixture(SECURITY_HUB)).expect("maps");
    assert_eq!(finding.kind, "openai.api_key.leaked");
    assert_eq!(
        finding.id,
        "arn:aws:securityhub:us-east-1:123456789012:finding/7f1c2b4e-0d1a-4c55-9a3e-openai-key"
    );
    assert_eq!(finding.key, "openai.api_key.leaked:key_leaked0001");
    assert_eq!(finding.status, Status::Open);
    assert_eq!(finding.severity, Severity::High);
    assert_eq!(finding.title, "OpenAI API key exposed in acme/payments");
    assert_eq!(finding.source.scanner, "Security Hub");
    assert_eq!(
        finding.source.rule.as_deref(),
        Some("Sensitive Data Identifications/Security/OpenAIApiKey")
    );
    assert_eq!(finding.resource.provider, "openai");
    assert_eq!(finding.resource.kind, ResourceType::ApiKey);
    assert_eq!(finding.resource.id, "key_leaked0001");
    assert_eq!(finding.resource.name.as_deref(), Some("payments-prod"));
    assert_eq!(
        finding.resource.project_id.as_deref(),
        Some("proj_payments")
    );
    assert_eq!(finding.resource.org_id.as_deref(), Some("123456789012"));
    assert_eq!(
        finding.resource.redacted_value.as_deref(),
        Some("sk-proj-...Ab12")
    );
    assert_eq!(finding.detected_at.timestamp_millis(), 1_767_225_600_000);
    assert_eq!(finding.evidence["ocsf"]["class_uid"], 2004);
    assert_eq!(finding.labels["ocsf.class"], "detection_finding");
}

#[test]
fn an_iam_analysis_finding_is_an_unused_openai_key_with_its_owner() {
    let finding = map(&fixture(IAM_UNUSED)).expect("maps");
    assert_eq!(finding.kind, "openai.api_key.unused");
    assert_eq!(finding.id, "iam-analysis/org_acme/key_unused0001");
    assert_eq!(finding.severity, Severity::Low);
    assert_eq!(finding.resource.id, "key_unused0001");
    assert_eq!(
        finding.resource.project_id.as_deref(),
        Some("proj_reporting")
    );
    assert_eq!(finding.resource.org_id.as_deref(), Some("org_acme"));
    assert_eq!(
        finding.resource.last_used_at.map(|t| t.timestamp_millis()),
        Some(1_756_857_600_000)
    );
    let owner = finding.owner.expect("owner from user");
    assert_eq!(owner.email.as_deref(), Some("dana@example.com"));
    assert_eq!(finding.source.scanner, "Prowler");
    assert_eq!(
        finding.source.rule.as_deref(),
        Some("iam-unused-credential-90d")
    );
}

#[test]
fn a_close_or_a_resolved_status_resolves_and_is_a_new_event() {
    let create = map(&fixture(SECURITY_HUB)).expect("maps");
    let mut close = fixture(SECURITY_HUB);
    close["activity_id"] = json!(3);
    close["time"] = json!(1_767_229_200_000_i64);
    let closed = map(&close).expect("maps");
    assert_eq!(closed.status, Status::Resolved);
    assert_ne!(closed.id, create.id, "a close is not dropped as a repeat");
    assert_eq!(closed.key, create.key, "but it is about the same problem");
    for status in [3, 4, 5, 6] {
        let mut event = fixture(SECURITY_HUB);
        event["status_id"] = json!(status);
        assert_eq!(
            map(&event).expect("maps").status,
            Status::Resolved,
            "status_id {status}"
        );
    }
    for status in [0, 1, 2, 99] {
        let mut event = fixture(SECURITY_HUB);
        event["status_id"] = json!(status);
        assert_eq!(
            map(&event).expect("maps").status,
            Status::Open,
            "status_id {status}"
        );
    }
}

#[test]
fn severities_map_onto_the_five_levels() {
    for (id, severity) in [
        (0, Severity::Medium),
        (1, Severity::Info),
        (2, Severity::Low),
        (3, Severity::Medium),
        (4, Severity::High),
        (5, Severity::Critical),
        (6, Severity::Critical),
        (99, Severity::Medium),
    ] {
        let mut event = fixture(SECURITY_HUB);
        event["severity_id"] = json!(id);
        assert_eq!(
            map(&event).expect("maps").severity,
            severity,
            "severity_id {id}"
        );
    }
}

#[test]
fn unmapped_quench_kind_overrides_the_derived_kind() {
    let mut event = fixture(SECURITY_HUB);
    event["unmapped"] = json!({"quench_kind": "openai.admin_key.created", "other": [1, 2]});
    let finding = map(&event).expect("maps");
    assert_eq!(finding.kind, "openai.admin_key.created");
    assert_eq!(finding.resource.provider, "openai");
}

#[test]
fn another_providers_credential_never_takes_an_openai_kind() {
    let mut event = fixture(SECURITY_HUB);
    event["resources"][0]["type"] = json!("AwsIamAccessKey");
    let finding = map(&event).expect("maps");
    assert_eq!(finding.kind, "aws.api_key.leaked");
    assert_eq!(finding.resource.provider, "aws");
}

#[test]
fn what_cannot_be_mapped_is_refused_naming_the_ocsf_attribute() {
    let edit = |change: &dyn Fn(&mut Value)| {
        let mut event = fixture(SECURITY_HUB);
        change(&mut event);
        refused(&event)
    };
    assert_eq!(edit(&|e| e["class_uid"] = json!(4001)), "class_uid");
    assert_eq!(edit(&|e| e["severity_id"] = json!(7)), "severity_id");
    assert_eq!(edit(&|e| e["severity_id"] = json!("high")), "severity_id");
    assert_eq!(edit(&|e| e["status_id"] = json!(8)), "status_id");
    assert_eq!(edit(&|e| e["time"] = json!(i64::MAX)), "time");
    assert_eq!(
        edit(&|e| e["finding_info"]["uid"] = json!("")),
        "finding_info.uid"
    );
    assert_eq!(
        edit(&|e| e["finding_info"]["uid"] = json!(5)),
        "finding_info.uid"
    );
    assert_eq!(
        edit(&|e| {
            e.as_object_mut().expect("object").remove("finding_info");
        }),
        "finding_info"
    );
    assert_eq!(edit(&|e| e["resources"] = json!([])), "resources");
    assert_eq!(
        edit(&|e| e["resources"][0]["uid"] = json!("x".repeat(300))),
        "resources[0].uid"
    );
    assert_eq!(
        edit(&|e| {
            e["finding_info"]["types"] = json!(["Software and Configuration Checks"]);
            e["finding_info"]["title"] = json!("Something");
        }),
        "finding_info.types"
    );
    assert_eq!(
        edit(&|e| e["unmapped"] = json!({"quench_kind": "Not A Kind"})),
        "unmapped.quench_kind"
    );
    assert_eq!(
        edit(&|e| e["unmapped"] = json!({"quench_kind": 7})),
        "unmapped.quench_kind"
    );
    assert!(matches!(map(&json!([1])), Err(ParseError::Invalid(_))));
    assert!(matches!(
        parse(
            b"{\"class_uid\": 2004, \"class_uid\": 2003}",
            MAX_OCSF_BYTES
        ),
        Err(ParseError::Json(_))
    ));
    assert!(matches!(
        parse(&vec![b' '; MAX_OCSF_BYTES + 1], MAX_OCSF_BYTES),
        Err(ParseError::TooLarge { .. })
    ));
}

#[test]
fn a_key_anywhere_in_the_event_is_redacted_and_ids_stay_distinct() {
    let mut event = fixture(SECURITY_HUB);
    event["finding_info"]["title"] = json!(format!("leaked {KEY} in repo"));
    event["message"] = json!(format!("{KEY} {}", "x".repeat(2000)));
    event["finding_info"]["uid"] = json!(format!("uid-{KEY}"));
    event["resources"][0]["name"] = json!(KEY);
    let finding = map(&event).expect("maps");
    let text = serde_json::to_string(&finding).expect("serializes");
    assert!(!text.contains("QrStUvWxYz0123"), "{text}");
    let mut other = event.clone();
    other["finding_info"]["uid"] = json!(format!("uid-{}", KEY.replace('A', "B")));
    assert_ne!(map(&other).expect("maps").id, finding.id);
    // A title cut at its limit is redacted before it is cut.
    event["finding_info"]["title"] = json!(format!("{}{KEY}", "t".repeat(290)));
    let cut = map(&event).expect("maps");
    assert!(!cut.title.contains("sk-proj-AbCd"), "{}", cut.title);
}

#[test]
fn a_uid_that_is_no_token_becomes_a_digest() {
    let mut event = fixture(SECURITY_HUB);
    event["finding_info"]["uid"] = json!(format!("a b {}", "u".repeat(300)));
    let id = map(&event).expect("maps").id;
    assert!(id.starts_with("ocsf~") && id.len() == 37, "{id}");
}

proptest! {
    /// Any string in any attribute quench reads: the mapping never panics, what it accepts is
    /// a valid finding, and neither it nor an error holds a key.
    #[test]
    fn hostile_values_in_read_attributes(
        pointer in prop::sample::select(vec![
            "/finding_info/uid", "/finding_info/title", "/finding_info/types/0",
            "/resources/0/uid", "/resources/0/type", "/resources/0/name",
            "/resources/0/data/project_id", "/metadata/product/name", "/cloud/provider",
            "/message", "/finding_info/src_url",
        ]),
        value in prop_oneof![
            ".{0,400}".prop_map(Value::from),
            Just(Value::from(KEY)),
            any::<i64>().prop_map(Value::from),
            Just(Value::Null),
            Just(json!({"a": [1, {"b": null}]})),
        ],
    ) {
        let mut event = fixture(SECURITY_HUB);
        if let Some(slot) = event.pointer_mut(pointer) {
            *slot = value;
        }
        match map(&event) {
            Ok(finding) => {
                prop_assert!(finding.validate().is_ok());
                let text = serde_json::to_string(&finding).expect("serializes");
                prop_assert!(!crate::contains_secret(text.as_bytes()), "{}", text);
            }
            Err(error) => prop_assert!(!crate::contains_secret(error.to_string().as_bytes())),
        }
    }
}
