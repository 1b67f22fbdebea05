//! Hostile traffic, bounded, on loopback: while valid findings flow, a publisher sends poison
//! (invalid UTF-8), oversized, deeply nested and secret-laden findings and decisions. Intake never
//! stops, every valid finding starts its run within seconds, and afterwards no key-shaped string
//! is in the store's files, the run events, the dead letters, the admin API or the log.

use std::time::Duration;

use quench_proto::RunEventKind;
use sha2::{Digest, Sha256};

use crate::intake::dead_letters;
use crate::service::{GATE_PLAYBOOK, World, finding};
use crate::support::{NatsServer, eventually_async, hex, http_get};

const VIEWER: &str = "viewer-token-for-the-hostile-traffic-test";
/// How long a valid finding may take to start its run while the flood goes on.
const START_WITHIN: Duration = Duration::from_secs(10);
const VALID: usize = 30;

/// A key of `shape` whose secret part is unique to `n`; the part redaction must remove is what
/// the test looks for afterwards.
fn key(shape: &str, n: usize) -> (String, String) {
    let secret = format!("{n:04}Zq7Xv9Lm2Np4Rt6Wy8Bc1Df3Gh5Jk0Ms");
    let key = match shape {
        "legacy" => format!("sk-{secret}T3BlbkFJ{secret}"),
        prefix => format!("sk-{prefix}-{secret}T3BlbkFJ{secret}"),
    };
    (key, secret)
}

/// Keys of every documented shape, glued to what precedes them (word characters, non-ASCII
/// letters) and JSON-escaped, as they would sit in a scanner's report.
fn secret_laden_strings(n: usize) -> (Vec<String>, Vec<String>) {
    let mut texts = Vec::new();
    let mut secrets = Vec::new();
    for (index, shape) in ["proj", "svcacct", "admin", "service", "legacy"]
        .into_iter()
        .enumerate()
    {
        let (key, secret) = key(shape, n * 10 + index);
        let glue = ["OPENAI_KEY_", "x", "0", "é", "Ж"][index];
        texts.push(format!("{glue}{key} trailing"));
        secrets.push(secret);
    }
    (texts, secrets)
}

/// The same keys JSON-escaped in the raw body (`\u002d` for `-`), which only a parser undoes.
fn escaped(text: &str) -> String {
    text.replace('-', "\\u002d")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_survives_hostile_traffic_and_no_key_leaks_anywhere() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connects");
    let sha = hex(&Sha256::digest(VIEWER.as_bytes()));
    let config =
        format!("[[api.tokens]]\nname = \"viewer\"\nrole = \"viewer\"\nsha256 = \"{sha}\"\n");
    let mut world = World::on(
        nats,
        client.clone(),
        &[GATE_PLAYBOOK],
        &[
            ("QUENCH_NATS__ACK_WAIT", "2s"),
            ("QUENCH_NATS__MAX_DELIVER", "3"),
        ],
        Some(&config),
    )
    .await;
    let jetstream = async_nats::jetstream::new(client.clone());

    let mut secrets = Vec::new();
    // The hostile publisher: every kind of bad message on both streams, over and over.
    let hostile = {
        let jetstream = jetstream.clone();
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        let findings = "quench.findings.openai.api_key.leaked";
        bodies.push((findings.to_owned(), vec![0xff; 360_000]));
        bodies.push((findings.to_owned(), vec![b'{'; 900_000]));
        bodies.push((
            findings.to_owned(),
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ));
        let mut nested = finding("nested", "key_nested");
        let mut deep = serde_json::json!("bottom");
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        nested["evidence"] = serde_json::json!({"deep": deep});
        bodies.push((findings.to_owned(), nested.to_string().into_bytes()));
        let mut oversized = finding("oversized", "key_oversized");
        oversized["title"] = serde_json::json!("t".repeat(900_000));
        bodies.push((findings.to_owned(), oversized.to_string().into_bytes()));
        let mut invalid_utf8 =
            br#"{"schema":"quench.finding/v1","id":"bad-utf8","title":""#.to_vec();
        invalid_utf8.extend_from_slice(&[0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c, 0xbc]);
        invalid_utf8.extend_from_slice(br#""}"#);
        bodies.push((findings.to_owned(), invalid_utf8));
        for n in 0..4 {
            let (texts, found) = secret_laden_strings(1000 + n);
            secrets.extend(found);
            // Invalid findings (no kind) that quote keys: they go to the dead-letter queue.
            let invalid = serde_json::json!({"schema": "quench.finding/v1", "id": format!("x{n}"),
                "title": texts.join(" "), "evidence": {"keys": texts}});
            bodies.push((findings.to_owned(), invalid.to_string().into_bytes()));
            bodies.push((
                findings.to_owned(),
                escaped(&invalid.to_string()).into_bytes(),
            ));
            let raw = format!("not json at all {}", texts.join(" "));
            bodies.push((findings.to_owned(), raw.into_bytes()));
            let decision = serde_json::json!({"schema": "quench.decision/v1", "id": format!("d{n}"),
                "run_id": texts[0], "gate": texts[1], "token": texts[2], "choice": texts[3],
                "actor": {"via": "slack", "id": texts[4]}, "decided_at": "2026-11-20T10:05:00Z"});
            bodies.push((
                format!("quench.decisions.r{n}"),
                escaped(&decision.to_string()).into_bytes(),
            ));
            bodies.push((
                format!("quench.decisions.r{n}"),
                decision.to_string().into_bytes(),
            ));
        }
        bodies.push(("quench.decisions.poison".to_owned(), vec![0xff; 360_000]));
        bodies.push(("quench.decisions.huge".to_owned(), vec![b'['; 900_000]));
        tokio::spawn(async move {
            for round in 0..3 {
                for (subject, body) in &bodies {
                    jetstream
                        .publish(subject.clone(), body.clone().into())
                        .await
                        .expect("publish")
                        .await
                        .expect("stream ack");
                }
                tokio::time::sleep(Duration::from_millis(200 * round)).await;
            }
        })
    };

    // Valid findings, each quoting keys in its title and evidence, while the flood goes on.
    let mut published = Vec::new();
    for n in 0..VALID {
        let (texts, found) = secret_laden_strings(n);
        secrets.extend(found);
        let id = format!("valid-{n}");
        let mut valid = finding(&id, &format!("key_valid_{n}"));
        valid["title"] = serde_json::json!(format!("leaked: {}", texts[n % texts.len()]));
        valid["evidence"] = serde_json::json!({"match": texts, "escaped": "see body"});
        let body = if n % 2 == 0 {
            valid.to_string()
        } else {
            escaped(&valid.to_string())
        };
        jetstream
            .publish(
                "quench.findings.openai.api_key.leaked",
                body.into_bytes().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stream ack");
        published.push((
            format!("openai.api_key.leaked:key_valid_{n}"),
            chrono::Utc::now(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hostile.await.expect("the hostile publisher finishes");

    let all_started = tokio::time::timeout(Duration::from_secs(30), async {
        while world.count("run_started") < VALID {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        all_started.is_ok(),
        "{} of {VALID} valid findings started their runs; the log:\n{}",
        world.count("run_started"),
        world.service.log_text()
    );
    let events = world.events();
    for (key, sent) in &published {
        let event = events
            .iter()
            .find(|event| event.kind == RunEventKind::RunStarted && event.finding_key == *key)
            .unwrap_or_else(|| panic!("no run started for {key}"));
        let waited = (event.at - *sent).to_std().unwrap_or_default();
        assert!(waited < START_WITHIN, "{key} waited {waited:?} for its run");
    }
    eventually_async(
        Duration::from_secs(30),
        "every hostile message is dealt with",
        || async {
            pending(&jetstream, "QUENCH_FINDINGS", "quench-findings").await == Some(0)
                && pending(&jetstream, "QUENCH_DECISIONS", "quench-decisions").await == Some(0)
        },
    )
    .await;
    let (status, readiness) = http_get(&world.service.listen, "/readyz").expect("/readyz");
    assert_eq!(status, 200, "{readiness}");

    // Nothing key-shaped anywhere a person or another process can read.
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for event in world.events() {
        let text = serde_json::to_vec(&event).expect("serialises");
        places.push(("a run event".to_owned(), text));
    }
    for letter in dead_letters(&client).await {
        places.push((format!("a dead letter ({})", letter.reason), letter.body));
    }
    quench_common::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let api = |path: String| {
        let http = http.clone();
        let url = format!("http://{}{path}", world.service.listen);
        async move {
            let response = http
                .get(&url)
                .bearer_auth(VIEWER)
                .send()
                .await
                .expect("API");
            assert_eq!(response.status(), 200, "GET {url}");
            response.text().await.expect("body")
        }
    };
    let runs = api("/api/v1/runs?limit=100".to_owned()).await;
    places.push(("GET /api/v1/runs".to_owned(), runs.clone().into_bytes()));
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("JSON");
    let ids: Vec<String> = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|run| run["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), VALID, "{runs}");
    for id in ids {
        let path = format!("/api/v1/runs/{id}");
        places.push((format!("GET {path}"), api(path).await.into_bytes()));
    }
    let dlq = api("/api/v1/dlq?limit=500".to_owned()).await;
    places.push(("GET /api/v1/dlq".to_owned(), dlq.into_bytes()));
    let audit = api("/api/v1/audit?limit=1000".to_owned()).await;
    places.push(("GET /api/v1/audit".to_owned(), audit.into_bytes()));
    assert_eq!(world.service.terminate(), Some(0), "SIGTERM exits 0");
    places.push(("the log".to_owned(), world.service.log_text().into_bytes()));
    for file in walk(&world.service.store) {
        let bytes = std::fs::read(&file).expect("store file");
        places.push((format!("store file {}", file.display()), bytes));
    }
    for secret in &secrets {
        for (place, bytes) in &places {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "the secret part {secret} of a key is in {place}"
            );
        }
    }
}

async fn pending(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Option<u64> {
    let stream = jetstream.get_stream(stream).await.ok()?;
    let info = stream.consumer_info(consumer).await.ok()?;
    Some(info.num_pending + u64::try_from(info.num_ack_pending).ok()?)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
