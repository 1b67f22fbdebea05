//! `openai.rotate_service_account_key` and the secret stores: the action called through the
//! `Action` trait against the OpenAI fake and the Vault and Kubernetes fakes (token and AppRole
//! auth, check-and-set, a key minted but never delivered, refusals), and end to end in `quench
//! serve`: killed with SIGKILL between minting and delivering, it leaves exactly one new key on
//! the service account, held by the store — and the minted secrets appear nowhere else: not in
//! the store's files, the audit export, run events, the API's answers, Slack or the logs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quench_runner::config::{KubernetesStore, Secret, SecretStoreConfig, VaultAuth, VaultStore};
use quench_runner::connectors::openai::{self, OpenAi};
use quench_runner::connectors::secret_store::SecretStores;
use quench_runner::engine::{ActionError, Actions, Call, Success};
use serde_json::{Value, json};
use sha2::Digest;

use crate::support::kubernetes_fake::KubernetesFake;
use crate::support::openai_fake::{KeySeed, OpenAiFake};
use crate::support::slack_fake::SlackFake;
use crate::support::vault_fake::VaultFake;
use crate::support::{NatsServer, eventually, hex, record};

const ROTATE: &str = "openai.rotate_service_account_key";
const VAULT_TOKEN: &str = "hvs.test-root-token";
const K8S_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.k8s-test-token";
const PATH: &str = "apps/ci/openai";
const FIELD: &str = "OPENAI_API_KEY";
/// 2026-01-05T00:00:00Z.
const NOW: i64 = 1_767_571_200;

/// The OpenAI fake with project `proj_1`, service account `svc_acct_ci` and its key `key_ci`.
async fn openai_fake() -> OpenAiFake {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "Project 1");
    fake.seed_org_user("user_alice", "alice@example.com");
    fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_alice").name("alice"),
    );
    fake.seed_service_account(
        "proj_1",
        "svc_acct_ci",
        "CI",
        KeySeed::new("key_ci").name("ci"),
    );
    fake
}

fn vault_store(vault: &VaultFake, token_file: &Path) -> SecretStoreConfig {
    SecretStoreConfig::Vault(VaultStore {
        address: vault.address(),
        mount: "secret".into(),
        auth: VaultAuth::Token,
        token: None,
        token_file: Some(token_file.to_owned()),
        role_id: None,
        secret_id: None,
        secret_id_file: None,
        approle_mount: "approle".into(),
    })
}

/// The rotation action over a fake OpenAI and the given stores.
struct Rig {
    openai: OpenAiFake,
    actions: Actions,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new(
        openai: OpenAiFake,
        stores: BTreeMap<String, SecretStoreConfig>,
        dir: tempfile::TempDir,
    ) -> Rig {
        let client = OpenAi::new(&openai.base_url(), Secret::new(openai.admin_key()), None)
            .expect("the fake's URL is valid")
            .with_request_timeout(Duration::from_secs(5));
        let stores = SecretStores::from_config(&stores).expect("the stores build");
        let mut actions = Actions::new();
        openai::register_rotation(&mut actions, Arc::new(client), stores);
        Rig {
            openai,
            actions,
            dir,
        }
    }

    async fn call(&self, run: &str, input: Value) -> Result<Success, ActionError> {
        let call = Call {
            action: ROTATE.to_owned(),
            input,
            idempotency_key: format!("{run}/rotate/0"),
            run_id: run.to_owned(),
            step: "rotate".to_owned(),
            iteration: 0,
            attempt: 1,
        };
        self.actions
            .get(ROTATE)
            .expect("registered")
            .call(&call)
            .await
    }
}

fn input(store: &str) -> Value {
    json!({
        "project_id": "proj_1", "service_account_id": "svc_acct_ci", "key_id": "key_ci",
        "scopes": ["api.model.request"], "expires_in": "90d",
        "secret": {"store": store, "path": PATH, "field": FIELD},
    })
}

/// Keys of service account `svc_acct_ci`, as `GET …/api_keys` lists them, through the fake's API.
async fn account_keys(openai: &OpenAiFake) -> Vec<Value> {
    let answer: Value = reqwest::Client::new()
        .get(format!(
            "{}/organization/projects/proj_1/api_keys?limit=100",
            openai.base_url()
        ))
        .bearer_auth(openai.admin_key())
        .send()
        .await
        .expect("the fake answers")
        .json()
        .await
        .expect("JSON");
    answer["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|key| key["owner"]["service_account"]["id"] == "svc_acct_ci")
        .cloned()
        .collect()
}

async fn vault_rig() -> (Rig, VaultFake) {
    let openai = openai_fake().await;
    openai.set_now(NOW);
    let vault = VaultFake::start(VAULT_TOKEN).await;
    vault.seed(PATH, json!({FIELD: "sk-old-value", "OTHER": "kept"}));
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).expect("write the token");
    let stores = BTreeMap::from([("vault".to_owned(), vault_store(&vault, &token_file))]);
    (Rig::new(openai, stores, dir), vault)
}

#[tokio::test]
async fn rotates_into_vault_then_gives_the_old_key_a_grace_expiry() {
    let (rig, vault) = vault_rig().await;
    let done = rig.call("run_1", input("vault")).await.expect("rotated");
    assert!(!done.already_done);
    let new_id = done.output["id"].as_str().expect("id").to_owned();
    let secret = rig
        .openai
        .key_secret(&new_id)
        .expect("the new key's secret");

    let keys = account_keys(&rig.openai).await;
    assert_eq!(keys.len(), 2, "the old key and one new: {keys:?}");
    let new_key = keys
        .iter()
        .find(|key| key["id"] == new_id.as_str())
        .expect("listed");
    assert_eq!(new_key["name"], "quench rotation [run_1/rotate/0]");
    assert_eq!(new_key["expires_at"], NOW + 90 * 86_400);
    assert_eq!(
        rig.openai.key_scopes("proj_1", &new_id),
        Some(vec!["api.model.request".to_owned()])
    );
    assert_eq!(
        rig.openai.key("proj_1", "key_ci").expect("old key")["expires_at"],
        NOW + 86_400,
        "the old key works for 24 more hours"
    );

    let (version, data) = vault.current(PATH).expect("a current version");
    assert_eq!(version, 2);
    assert_eq!(data[FIELD], secret.as_str());
    assert_eq!(data["OTHER"], "kept", "the other fields are written back");
    let metadata = vault.custom_metadata(PATH);
    assert_eq!(metadata["quench_openai_key_id"], new_id.as_str());
    assert_eq!(metadata["quench_run_id"], "run_1");
    assert_eq!(metadata["quench_version"], "2");
    let calls = vault.calls();
    let write = calls
        .iter()
        .find(|call| call.method == "POST")
        .expect("a write");
    let body: Value = serde_json::from_str(&write.body).expect("JSON");
    assert_eq!(
        body["options"]["cas"], 1,
        "check-and-set on the version read"
    );
    assert!(
        calls
            .iter()
            .all(|call| call.token.as_deref() == Some(VAULT_TOKEN))
    );
    let patch = calls
        .iter()
        .find(|call| call.method == "PATCH")
        .expect("metadata");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );

    assert_eq!(done.output["secret"]["version"], 2);
    assert_eq!(done.output["old_key"]["expires_at"], "2026-01-06T00:00:00Z");
    assert_eq!(done.output["expires_at"], "2026-04-05T00:00:00Z");
    assert!(
        done.output["redacted_value"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(
        !done.output.to_string().contains(&secret),
        "no secret in the output"
    );

    // The same step again (a restart after the result was lost): nothing minted, nothing moved.
    let mints = |rig: &Rig| {
        rig.openai
            .calls_to(
                "POST",
                "/v1/organization/projects/proj_1/service_accounts/svc_acct_ci/api_keys",
            )
            .len()
    };
    assert_eq!(mints(&rig), 1);
    let again = rig.call("run_1", input("vault")).await.expect("again");
    assert!(again.already_done);
    assert_eq!(again.output["id"], new_id.as_str());
    assert_eq!(mints(&rig), 1, "found by its name, not minted twice");
    assert_eq!(
        vault.current(PATH).expect("current").0,
        2,
        "not written twice"
    );
}

#[tokio::test]
async fn a_key_minted_but_never_delivered_is_deleted_and_minted_again() {
    let (rig, vault) = vault_rig().await;
    // An earlier execution minted a key and crashed before it reached the store.
    let orphan: Value = reqwest::Client::new()
        .post(format!(
            "{}/organization/projects/proj_1/service_accounts/svc_acct_ci/api_keys",
            rig.openai.base_url()
        ))
        .bearer_auth(rig.openai.admin_key())
        .json(&json!({"name": "quench rotation [run_2/rotate/0]", "expires_in_seconds": 3600}))
        .send()
        .await
        .expect("minted")
        .json()
        .await
        .expect("JSON");
    let orphan_id = orphan["id"].as_str().expect("id").to_owned();

    let done = rig.call("run_2", input("vault")).await.expect("rotated");
    let new_id = done.output["id"].as_str().expect("id");
    assert_ne!(new_id, orphan_id);
    assert!(
        !rig.openai.key_exists("proj_1", &orphan_id),
        "the lost key is deleted"
    );
    let keys = account_keys(&rig.openai).await;
    assert_eq!(keys.len(), 2, "the old key and exactly one new: {keys:?}");
    assert_eq!(
        vault.current(PATH).expect("current").1[FIELD],
        rig.openai.key_secret(new_id).expect("secret").as_str()
    );

    // A delivery that fails deletes the key it just minted and says so; the retry mints anew.
    let (rig, vault) = vault_rig().await;
    vault.hold_next_write(Duration::from_millis(50));
    let error = rig
        .call("run_3", input("vault"))
        .await
        .expect_err("the store is sealed");
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("was deleted again"), "{error}");
    assert_eq!(
        account_keys(&rig.openai).await.len(),
        1,
        "nothing left behind"
    );
    let done = rig
        .call("run_3", input("vault"))
        .await
        .expect("the retry rotates");
    assert_eq!(account_keys(&rig.openai).await.len(), 2);
    assert_eq!(
        vault.current(PATH).expect("current").1[FIELD],
        rig.openai
            .key_secret(done.output["id"].as_str().expect("id"))
            .expect("secret")
            .as_str()
    );
}

#[tokio::test]
async fn a_lost_check_and_set_race_is_read_and_written_again() {
    let (rig, vault) = vault_rig().await;
    vault.race_next_write();
    let done = rig.call("run_1", input("vault")).await.expect("rotated");
    let (version, data) = vault.current(PATH).expect("current");
    assert_eq!(version, 3, "the other writer's version, then ours");
    assert_eq!(
        data["other"], "writer",
        "what the other writer wrote is kept"
    );
    assert_eq!(
        data[FIELD],
        rig.openai
            .key_secret(done.output["id"].as_str().expect("id"))
            .expect("secret")
            .as_str()
    );
    let writes: Vec<Value> = vault
        .calls()
        .iter()
        .filter(|call| call.method == "POST")
        .map(|call| serde_json::from_str(&call.body).expect("JSON"))
        .collect();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0]["options"]["cas"], 1);
    assert_eq!(writes[1]["options"]["cas"], 2);
}

#[tokio::test]
async fn approle_logs_in_and_again_when_its_token_is_refused() {
    let openai = openai_fake().await;
    let vault = VaultFake::start("hvs.unused").await;
    vault.enable_approle("role-quench", "secret-id-1", 3600);
    vault.seed(PATH, json!({FIELD: "old"}));
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_id_file = dir.path().join("secret-id");
    std::fs::write(&secret_id_file, "secret-id-1\n").expect("write");
    let store = SecretStoreConfig::Vault(VaultStore {
        address: vault.address(),
        mount: "secret".into(),
        auth: VaultAuth::Approle,
        token: None,
        token_file: None,
        role_id: Some("role-quench".into()),
        secret_id: None,
        secret_id_file: Some(secret_id_file),
        approle_mount: "approle".into(),
    });
    let rig = Rig::new(openai, BTreeMap::from([("vault".to_owned(), store)]), dir);
    rig.call("run_1", input("vault")).await.expect("rotated");
    assert_eq!(vault.logins(), 1, "one login for the whole rotation");
    let login = &vault.calls()[0];
    assert_eq!(login.path, "/v1/auth/approle/login");
    assert_eq!(
        serde_json::from_str::<Value>(&login.body).expect("JSON"),
        json!({"role_id": "role-quench", "secret_id": "secret-id-1"})
    );
    vault.revoke_issued_tokens();
    let mut second = input("vault");
    second["key_id"] = json!(rig.openai.key("proj_1", "key_ci").map(|_| "key_ci"));
    rig.call("run_2", second).await.expect("rotated again");
    assert_eq!(
        vault.logins(),
        2,
        "a refused token is renewed by logging in"
    );
    drop(rig.dir);
}

#[tokio::test]
async fn rotates_into_a_kubernetes_secret() {
    let openai = openai_fake().await;
    let api = KubernetesFake::start(K8S_TOKEN, "payments").await;
    api.seed("ci-openai", &[(FIELD, "sk-old"), ("OTHER", "kept")]);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, K8S_TOKEN).expect("write");
    let store = |namespace: &str| {
        SecretStoreConfig::Kubernetes(KubernetesStore {
            api_server: api.api_server(),
            namespace: namespace.to_owned(),
            token_file: token_file.clone(),
            ca_file: dir.path().join("no-ca.crt"),
        })
    };
    let stores = BTreeMap::from([
        ("k8s".to_owned(), store("payments")),
        ("elsewhere".to_owned(), store("billing")),
    ]);
    let rig = Rig::new(openai, stores, tempfile::tempdir().expect("dir"));
    let mut wanted = input("k8s");
    wanted["secret"]["path"] = json!("ci-openai");
    let done = rig.call("run_1", wanted.clone()).await.expect("rotated");
    let new_id = done.output["id"].as_str().expect("id");
    assert_eq!(
        api.value("ci-openai", FIELD),
        rig.openai.key_secret(new_id),
        "the Secret holds the new key"
    );
    assert_eq!(api.value("ci-openai", "OTHER").as_deref(), Some("kept"));
    let annotations = api.annotations("ci-openai");
    assert_eq!(annotations["quench.dev/openai-key-id"], new_id);
    assert_eq!(annotations["quench.dev/run-id"], "run_1");
    let patch = api
        .calls()
        .into_iter()
        .find(|call| call.method == "PATCH")
        .expect("a patch");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.authorization, Some(format!("Bearer {K8S_TOKEN}")));
    assert_eq!(patch.path, "/api/v1/namespaces/payments/secrets/ci-openai");
    let body: Value = serde_json::from_str(&patch.body).expect("JSON");
    assert_eq!(
        body["data"][FIELD].as_str().map(|encoded| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .expect("base64")
        }),
        rig.openai.key_secret(new_id).map(String::into_bytes),
        "`data` is base64"
    );
    assert!(
        done.output["secret"]["version"].is_string(),
        "the resourceVersion"
    );

    // A conflict is worth retrying; the key minted for it is deleted again.
    let before = account_keys(&rig.openai).await.len();
    api.conflict_next();
    let error = rig
        .call("run_conflict", wanted.clone())
        .await
        .expect_err("conflict");
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(account_keys(&rig.openai).await.len(), before);

    // Again: held, so nothing is minted.
    assert!(
        rig.call("run_1", wanted.clone())
            .await
            .expect("again")
            .already_done
    );

    // A Secret that does not exist, and a namespace the token may not touch: the minted key is
    // deleted again and the error says why.
    for (store, path, expected) in [
        (
            "k8s",
            "missing",
            "there is no Secret `missing` in namespace `payments`",
        ),
        ("elsewhere", "ci-openai", "(403)"),
    ] {
        let before = account_keys(&rig.openai).await.len();
        let mut refused = wanted.clone();
        refused["secret"] = json!({"store": store, "path": path, "field": FIELD});
        let error = rig
            .call(&format!("run_{store}"), refused)
            .await
            .expect_err("refused");
        assert!(!error.is_retryable(), "{error:?}");
        assert!(error.to_string().contains(expected), "{error}");
        assert!(error.to_string().contains("was deleted again"), "{error}");
        assert_eq!(account_keys(&rig.openai).await.len(), before);
    }
}

#[tokio::test]
async fn refusals_come_before_anything_is_minted() {
    let (rig, _vault) = vault_rig().await;
    let cases = [
        (json!({"scopes": []}), "widens instead of narrowing"),
        (json!({"key_id": "key_alice"}), "belongs to user user_alice"),
        (
            json!({"secret": {"store": "nope", "path": PATH, "field": FIELD}}),
            "no secret store `nope`",
        ),
        (
            json!({"secret": {"store": "vault", "path": "a/../b", "field": FIELD}}),
            "not a Vault secret path",
        ),
        (json!({"expires_in": "400d"}), "longer than 365 days"),
        (json!({"then": "keep", "grace": "1h"}), "`grace`"),
        (
            json!({"key_id": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"}),
            "looks like a secret key",
        ),
    ];
    for (change, expected) in cases {
        let mut wanted = input("vault");
        for (field, value) in change.as_object().expect("object") {
            wanted[field] = value.clone();
        }
        match rig.call("run_1", wanted).await {
            Err(ActionError::Permanent { message }) => {
                assert!(message.contains(expected), "{change}: {message}");
            }
            other => panic!("{change}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(account_keys(&rig.openai).await.len(), 1, "nothing minted");

    // `then: keep` leaves the old key alone; `grace` never lengthens a shorter life.
    let mut keep = input("vault");
    keep["then"] = json!("keep");
    let done = rig.call("run_keep", keep).await.expect("rotated");
    assert_eq!(done.output["old_key"]["then"], "keep");
    assert_eq!(
        rig.openai.key("proj_1", "key_ci").expect("old")["expires_at"],
        Value::Null
    );
    let describe = rig
        .actions
        .get(ROTATE)
        .expect("registered")
        .describe(&input("vault"))
        .expect("described");
    assert_eq!(
        describe["requests"][2]["path"],
        "/v1/organization/projects/proj_1/service_accounts/svc_acct_ci/api_keys"
    );
    assert_eq!(describe["secret_store"]["type"], "vault");
}

// ---- end to end: kill -9 between minting and delivering; the secret goes nowhere else ----

const PLAYBOOK: &str = r##"schema: quench.playbook/v1
name: rotate-ci
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: rotate
    uses: openai.rotate_service_account_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      service_account_id: svc_acct_ci
      key_id: "{{ finding.resource.id }}"
      scopes: [api.model.request]
      expires_in: 90d
      secret: { store: vault, path: apps/ci/openai, field: OPENAI_API_KEY }
    retry: { max_attempts: 3, backoff: 200ms }
  - id: tell
    uses: slack.message
    with:
      to: "#secops"
      text: "rotated {{ steps.rotate.output.id }} ({{ steps.rotate.output.redacted_value }}): {{ steps.rotate.output }}"
"##;

const API_TOKEN: &str = "rotation-viewer-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_mint_and_delivery_leaves_one_new_key_and_no_secret_anywhere() {
    let openai = openai_fake().await;
    let vault = VaultFake::start(VAULT_TOKEN).await;
    vault.seed(PATH, json!({FIELD: "sk-old-value"}));
    let slack = SlackFake::start().await;
    slack.add_channel("secops");
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, VAULT_TOKEN).expect("write");
    let digest = hex(&sha2::Sha256::digest(API_TOKEN.as_bytes()));
    let config = format!(
        r#"
[engine]
mode = "live"

[openai]
base_url = "{openai_url}"
admin_key = "{admin_key}"

[slack]
api_url = "{slack_url}"
bot_token = "{bot_token}"

[[api.tokens]]
name = "viewer"
role = "viewer"
sha256 = "{digest}"

[secret_stores.vault]
type = "vault"
address = "{vault_url}"
auth = "token"
token_file = "{token_file}"
"#,
        openai_url = openai.base_url(),
        admin_key = openai.admin_key(),
        slack_url = slack.api_url(),
        bot_token = slack.bot_token(),
        vault_url = vault.address(),
        token_file = token_file.display(),
    );
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connects");
    let raw_events = record::<Value>(&client, "quench.events.>").await;
    let mut world = crate::service::World::on(nats, client, &[PLAYBOOK], &[], Some(&config)).await;

    // The first delivery hangs (and would be refused): quench has minted and not delivered.
    vault.hold_next_write(Duration::from_secs(60));
    world
        .publish_finding(
            &crate::service::finding("f-rotate", "key_ci"),
            Some("f-rotate"),
        )
        .await;
    vault
        .received("POST", &format!("/v1/secret/data/{PATH}"))
        .await;
    let minted_first = account_keys(&openai).await;
    assert_eq!(
        minted_first.len(),
        2,
        "minted, not delivered: {minted_first:?}"
    );
    let lost_id = minted_first
        .iter()
        .find(|key| key["id"] != "key_ci")
        .and_then(|key| key["id"].as_str())
        .expect("the minted key")
        .to_owned();
    let lost_secret = openai.key_secret(&lost_id).expect("its secret");
    world.service.kill();
    world.service.spawn();

    eventually(
        Duration::from_secs(30),
        "the run completes after the restart",
        || world.count("run_completed") == 1,
    )
    .await;
    let keys = account_keys(&openai).await;
    assert_eq!(
        keys.len(),
        2,
        "the old key and exactly one new one: {keys:?}"
    );
    assert!(
        !openai.key_exists("proj_1", &lost_id),
        "the undelivered key is deleted"
    );
    let new_id = keys
        .iter()
        .find(|key| key["id"] != "key_ci")
        .and_then(|key| key["id"].as_str())
        .expect("the new key")
        .to_owned();
    let new_secret = openai.key_secret(&new_id).expect("its secret");
    let (_, data) = vault.current(PATH).expect("a current version");
    assert_eq!(
        data[FIELD],
        new_secret.as_str(),
        "the store holds the new key"
    );
    assert_eq!(
        vault.custom_metadata(PATH)["quench_openai_key_id"],
        new_id.as_str()
    );
    let run_id = world.run_ids("run_completed")[0].clone();

    // Everything quench shows or keeps, searched for both secrets.
    let mut places: Vec<(String, String)> = Vec::new();
    let api = |path: &str| {
        let path = path.to_owned();
        let listen = world.service.listen.clone();
        async move {
            reqwest::Client::new()
                .get(format!("http://{listen}{path}"))
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .expect("the API answers")
                .text()
                .await
                .expect("a body")
        }
    };
    let run_answer = api(&format!("/api/v1/runs/{run_id}")).await;
    assert!(
        run_answer.contains(&new_id),
        "the run names the new key: {run_answer}"
    );
    places.push(("GET /api/v1/runs/{id}".into(), run_answer));
    places.push((
        "GET /api/v1/audit".into(),
        api("/api/v1/audit?limit=1000").await,
    ));
    places.push((
        "GET /api/v1/audit/export".into(),
        api("/api/v1/audit/export").await,
    ));
    places.push((
        "run events".into(),
        raw_events
            .lock()
            .expect("lock")
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    ));
    let told: Vec<String> = slack
        .calls()
        .iter()
        .map(|call| format!("{call:?}"))
        .collect();
    assert!(
        told.iter().any(|text| text.contains(&new_id)),
        "Slack was told the new key's id: {told:?}"
    );
    places.push(("Slack".into(), told.join("\n")));
    let store_dir = world.service.store.clone();
    world.service.terminate();
    places.push(("the service's log".into(), world.service.log_text()));
    let mut files = Vec::new();
    collect_files(&store_dir, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).expect("read a store file");
        for secret in [&lost_secret, &new_secret] {
            assert!(
                !bytes
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "a minted secret is in {}",
                file.display()
            );
        }
    }
    for (place, text) in &places {
        for secret in [&lost_secret, &new_secret] {
            // The secret's distinctive tail, so a partly redacted copy is caught too.
            let tail = &secret[secret.len() - 24..];
            assert!(!text.contains(tail), "a minted secret is in {place}");
        }
    }
}

fn collect_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}
