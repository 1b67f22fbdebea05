//! OCSF in and out, through the real `quench serve` on a real nats-server with the OpenAI fake
//! and the shipped playbooks: a Security Hub-shaped Detection Finding about an exposed key starts
//! `revoke-leaked-openai-key`, an IAM Analysis Finding about an unused key starts
//! `review-unused-openai-key`, an event quench cannot map is dead-lettered naming the OCSF
//! attribute, and every OCSF record quench publishes validates against the checked-in OCSF
//! 1.6.0 JSON Schema of its class.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quench_proto::RunEvent;
use serde_json::{Value, json};

use crate::support::openai_fake::{KeySeed, OpenAiFake, Role};
use crate::support::slack_fake::SlackFake;
use crate::support::{self, NatsServer, Service, eventually};

const WAIT: Duration = Duration::from_secs(20);
const SECOPS: &str = "secops@example.com";
const TOKEN: &str = "token-ocsf-secops";

fn fixture(name: &str) -> Value {
    let path = support::root().join("tests/fixtures/ocsf").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists")).expect("JSON")
}

/// The checked-in OCSF 1.6.0 schema `proto/schema/ocsf/<name>`, compiled.
fn schema(name: &str) -> jsonschema::Validator {
    let path = support::root().join("proto/schema/ocsf").join(name);
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema exists")).expect("JSON");
    jsonschema::validator_for(&schema).expect("the OCSF schema compiles")
}

/// Panics with every violation when `record` does not validate against `validator`.
fn assert_valid(validator: &jsonschema::Validator, record: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{record:#}");
}

#[test]
fn the_fixtures_are_valid_ocsf_1_6() {
    assert_valid(
        &schema("detection_finding.cloud.json"),
        &fixture("securityhub-detection-finding.json"),
    );
    assert_valid(
        &schema("iam_analysis_finding.cloud.json"),
        &fixture("iam-analysis-unused-key.json"),
    );
    // And the schemas are not vacuous: a record of the wrong class or missing what the class
    // requires is refused.
    let mut wrong = fixture("securityhub-detection-finding.json");
    wrong["class_uid"] = json!(2008);
    assert!(!schema("detection_finding.cloud.json").is_valid(&wrong));
    let mut bare = fixture("iam-analysis-unused-key.json");
    bare.as_object_mut()
        .expect("object")
        .remove("identity_activity_metrics");
    assert!(!schema("iam_analysis_finding.cloud.json").is_valid(&bare));
    assert!(!schema("remediation_activity.json").is_valid(&json!({"class_uid": 7001})));
}

/// `quench serve` with the two shipped playbooks, a live OpenAI fake holding both keys, the
/// Slack fake (a live run's messages must reach Slack), and an API token for secops (who answers the leaked key's gate).
struct World {
    _nats: NatsServer,
    service: Service,
    client: async_nats::Client,
    openai: OpenAiFake,
    _slack: SlackFake,
    events: Arc<Mutex<Vec<RunEvent>>>,
    records: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let openai = OpenAiFake::start().await;
        openai.seed_project("proj_payments", "payments");
        openai.seed_user("proj_payments", "user_pay", "pay@example.com", Role::Owner);
        openai.seed_key(
            "proj_payments",
            "user_pay",
            KeySeed::new("key_leaked0001").name("payments-prod"),
        );
        openai.seed_project("proj_reporting", "Reporting");
        openai.seed_user(
            "proj_reporting",
            "user_dana",
            "dana@example.com",
            Role::Owner,
        );
        openai.seed_key(
            "proj_reporting",
            "user_dana",
            KeySeed::new("key_unused0001").name("reporting-batch"),
        );
        let slack = SlackFake::start().await;
        slack.add_user(SECOPS, "U0SECOPS");
        // The keys' owners, as the inventory knows them.
        slack.add_user("pay@example.com", "U0PAY");
        slack.add_user("dana@example.com", "U0DANA");
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.expect("connects");
        let dir = tempfile::tempdir().expect("temp dir");
        let playbooks = dir.path().join("playbooks");
        std::fs::create_dir(&playbooks).expect("playbooks dir");
        for name in [
            "revoke-leaked-openai-key.yaml",
            "review-unused-openai-key.yaml",
        ] {
            std::fs::copy(
                support::root().join("workflows").join(name),
                playbooks.join(name),
            )
            .expect("copy the shipped playbook");
        }
        let sha = support::hex(&<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
        let config = format!(
            r#"
[openai]
base_url = "{base}"
admin_key = "{admin_key}"

[slack]
api_url = "{slack_url}"
bot_token = "{bot_token}"

[inventory]
publish = []

[groups]
secops = ["{SECOPS}"]

[[api.tokens]]
name = "{SECOPS}"
role = "approver"
sha256 = "{sha}"
"#,
            base = openai.base_url(),
            admin_key = openai.admin_key(),
            slack_url = slack.api_url(),
            bot_token = slack.bot_token(),
        );
        let service = Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[]);
        let events = support::record::<RunEvent>(&client, "quench.events.>").await;
        let records = support::record::<Value>(&client, "quench.ocsf.>").await;
        World {
            _nats: nats,
            service,
            client,
            openai,
            _slack: slack,
            events,
            records,
            _dir: dir,
        }
    }

    async fn publish(&self, subject: &str, event: &Value) {
        let jetstream = async_nats::jetstream::new(self.client.clone());
        jetstream
            .publish(subject.to_owned(), event.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("the stream acknowledges");
    }

    /// The id of the run `playbook` started, once it has.
    async fn run_of(&self, playbook: &str) -> String {
        let mut run = None;
        eventually(WAIT, &format!("a run of {playbook} starts"), || {
            run = self
                .events
                .lock()
                .expect("lock")
                .iter()
                .find(|event| event.playbook == playbook)
                .map(|event| event.run_id.clone());
            run.is_some()
        })
        .await;
        run.expect("a run")
    }

    fn event(&self, run: &str, kind: &str, step: Option<&str>) -> Option<RunEvent> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .find(|event| {
                event.run_id == run && event.kind.as_str() == kind && event.step.as_deref() == step
            })
            .cloned()
    }

    /// The OCSF record of class `class_uid` about `run` for which `matches` holds, once there.
    async fn record(&self, class_uid: u64, run: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        eventually(
            WAIT,
            &format!("an OCSF {class_uid} record of run {run}"),
            || {
                found = self
                    .records
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|record| {
                        record["class_uid"] == class_uid
                            && record["unmapped"]["quench"]["run_id"] == run
                            && matches(record)
                    })
                    .cloned();
                found.is_some()
            },
        )
        .await;
        found.expect("a record")
    }

    async fn decide(&self, run: &str, gate: &str, choice: &str) {
        let response = quench_common::http::http_client()
            .post(format!(
                "http://{}/api/v1/runs/{run}/gates/{gate}/decision",
                self.service.listen
            ))
            .bearer_auth(TOKEN)
            .json(&json!({"choice": choice}))
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{body}\n{}", self.service.log_text());
    }
}

/// A Security Hub-shaped Detection Finding about an exposed OpenAI key starts the shipped
/// leaked-key playbook; secops answers revoke; the key is deleted at OpenAI once, and quench
/// tells the SIEM in OCSF: a Remediation Activity (Evict, Success) for the revoke and a
/// Detection Finding Close (Resolved) of the original Security Hub finding, each naming the
/// run, the playbook version, the approval and the audit hash of its run event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_hub_detection_finding_revokes_the_key_and_is_closed_in_ocsf() {
    let world = World::start().await;
    let sample = fixture("securityhub-detection-finding.json");
    world.publish("quench.findings.ocsf", &sample).await;
    let run = world.run_of("revoke-leaked-openai-key").await;
    eventually(WAIT, "the run waits on its gate", || {
        world.event(&run, "waiting", Some("decide")).is_some()
    })
    .await;
    world.decide(&run, "decide", "revoke").await;

    let remediation = world
        .record(7001, &run, |record| {
            record["unmapped"]["quench"]["step"] == "revoke"
        })
        .await;
    let closed = world.record(2004, &run, |_| true).await;
    assert_valid(&schema("remediation_activity.json"), &remediation);
    assert_valid(&schema("detection_finding.json"), &closed);

    let deletes = world.openai.calls_to(
        "DELETE",
        "/v1/organization/projects/proj_payments/api_keys/key_leaked0001",
    );
    assert_eq!(deletes.len(), 1, "revoked once");
    assert_eq!(remediation["activity_name"], "Evict");
    assert_eq!(remediation["status_id"], 1, "{remediation:#}");
    assert_eq!(remediation["command_uid"], format!("{run}/revoke/0"));
    assert_eq!(remediation["metadata"]["version"], "1.6.0");
    assert_eq!(remediation["metadata"]["correlation_uid"], run.as_str());
    let quench = &remediation["unmapped"]["quench"];
    assert_eq!(quench["playbook"], "revoke-leaked-openai-key");
    assert_eq!(quench["action"], "openai.revoke_key");
    assert_eq!(
        quench["approvals"],
        json!([{"step": "decide", "choice": "revoke", "decided_by": [SECOPS], "via": "api"}])
    );
    let revoked = world
        .event(&run, "step_succeeded", Some("revoke"))
        .expect("the revoke's run event");
    assert_eq!(quench["audit_hash"], revoked.audit_hash.as_str());
    assert_eq!(
        quench["playbook_version"],
        revoked.playbook_version.as_str()
    );
    assert_eq!(revoked.audit_hash.len(), 64);

    assert_eq!(
        closed["finding_info"]["uid"], sample["finding_info"]["uid"],
        "the update names the Security Hub finding"
    );
    assert_eq!(closed["activity_name"], "Close");
    assert_eq!(closed["status"], "Resolved");
    assert_eq!(closed["severity_id"], 4);
    let completed = world
        .event(&run, "run_completed", None)
        .expect("the run's outcome event");
    assert_eq!(
        closed["unmapped"]["quench"]["audit_hash"],
        completed.audit_hash.as_str()
    );
    // Nothing but mutating steps becomes a Remediation Activity (not `notify` or `decide`).
    let steps: Vec<Value> = world
        .records
        .lock()
        .expect("lock")
        .iter()
        .filter(|record| {
            record["class_uid"] == 7001 && record["unmapped"]["quench"]["run_id"] == run
        })
        .map(|record| record["unmapped"]["quench"]["step"].clone())
        .collect();
    assert_eq!(steps, vec![json!("revoke")]);
}

/// An IAM Analysis Finding about an unused key starts the shipped unused-key review, whose first
/// rung (an expiry 14 days out) is a Remediation Activity (Harden) at once, before anyone is
/// asked; an OCSF event quench cannot map is dead-lettered naming the attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iam_analysis_finding_starts_the_unused_key_review_and_hardens_in_ocsf() {
    let world = World::start().await;
    let mut headers = Vec::new();
    let mut dlq = world
        .client
        .subscribe("quench.dlq.findings")
        .await
        .expect("subscribe");
    world.client.flush().await.expect("flush");

    world
        .publish(
            "quench.findings.ocsf",
            &fixture("iam-analysis-unused-key.json"),
        )
        .await;
    let run = world.run_of("review-unused-openai-key").await;
    let hardened = world
        .record(7001, &run, |record| {
            record["unmapped"]["quench"]["step"] == "expire"
        })
        .await;
    assert_valid(&schema("remediation_activity.json"), &hardened);
    assert_eq!(hardened["activity_name"], "Harden");
    assert_eq!(hardened["status_id"], 1, "{hardened:#}");
    assert_eq!(
        hardened["unmapped"]["quench"]["finding_kind"],
        "openai.api_key.unused"
    );
    assert_eq!(hardened["unmapped"]["quench"]["approvals"], json!([]));
    assert!(
        world
            .openai
            .key("proj_reporting", "key_unused0001")
            .is_some_and(|key| !key["expires_at"].is_null()),
        "the key got an expiry at OpenAI"
    );

    let mut unmappable = fixture("iam-analysis-unused-key.json");
    unmappable["severity_id"] = json!(9);
    world.publish("quench.findings.ocsf", &unmappable).await;
    let letter = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut dlq))
        .await
        .expect("a dead letter in time")
        .expect("a dead letter");
    if let Some(values) = letter.headers.as_ref() {
        headers.extend(
            values
                .get(quench_proto::subject::HEADER_DLQ_REASON)
                .map(|value| value.to_string()),
        );
    }
    assert_eq!(
        headers,
        vec![
            "invalid_field: field `severity_id`: is 9, not an OCSF severity (0-6 or 99)".to_owned()
        ]
    );
}
