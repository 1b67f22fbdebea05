//! Configuration as an operator meets it: layers (defaults, file, `QUENCH_<SECTION>__<KEY>`,
//! flags), secrets inline or from `*_file`, `--dump-config` with secrets redacted, and bad
//! values refused with their key and value before anything starts (exit 64).

use std::process::Output;

use crate::support;

fn quench(arguments: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(support::quench_bin());
    command.args(arguments);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("quench runs")
}

#[test]
fn layers_apply_in_order_and_secrets_are_redacted() {
    let directory = tempfile::tempdir().expect("temp dir");
    let secret_file = directory.path().join("admin-key");
    std::fs::write(&secret_file, "sk-admin-from-a-file\n").expect("write secret");
    let config = directory.path().join("quench.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[nats]
url = "nats://file.example:4222"
user = "quench"
password = "from-the-file"

[store]
path = "/var/lib/quench"
sync = "os"

[engine]
max_inflight_runs = 64

[openai]
admin_key_file = "{}"

[groups]
secops = ["lead@example.com", "U0SECOPS1"]
"#,
            secret_file.display()
        ),
    )
    .expect("write config");
    let output = quench(
        &[
            "serve",
            "--config",
            config.to_str().expect("utf-8"),
            "--dump-config",
            "--store",
            "/from/the/flag",
        ],
        &[
            ("QUENCH_NATS__URL", "nats://env.example:4222"),
            ("QUENCH_ENGINE__MAX_INFLIGHT_RUNS", "32"),
            ("QUENCH_TOKEN", "not-a-config-key"),
        ],
    );
    let dump = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dump.contains("url = \"nats://env.example:4222\""),
        "environment beats the file:\n{dump}"
    );
    assert!(
        dump.contains("path = \"/from/the/flag\""),
        "flags beat everything:\n{dump}"
    );
    assert!(
        dump.contains("sync = \"os\""),
        "the file beats the defaults:\n{dump}"
    );
    assert!(dump.contains("max_inflight_runs = 32"), "{dump}");
    assert!(
        dump.contains("secops = [\"lead@example.com\", \"U0SECOPS1\"]")
            || dump.contains("secops = [\n"),
        "{dump}"
    );
    assert!(
        dump.contains("admin_key = \"<redacted>\""),
        "a secret read from a file is shown redacted:\n{dump}"
    );
    assert!(dump.contains("password = \"<redacted>\""), "{dump}");
    assert!(
        !dump.contains("from-the-file") && !dump.contains("sk-admin-from-a-file"),
        "no secret in the dump:\n{dump}"
    );
}

#[test]
fn bad_values_name_their_key_and_exit_64() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("QUENCH_ENGINE__MAX_INFLIGHT_RUNS", "lots")],
            "`engine.max_inflight_runs` (from the environment variable QUENCH_ENGINE__MAX_INFLIGHT_RUNS): must be integer, found a string",
        ),
        (&[("QUENCH_STORE__SYNC", "sometimes")], "sometimes"),
        (
            &[("QUENCH_NATS__URL", "http://127.0.0.1:4222")],
            "`nats.url` = \"http://127.0.0.1:4222\": must be nats://, tls://, ws:// or wss:// URLs separated by commas",
        ),
        (
            &[("QUENCH_NATS__URL", "nats://127.0.0.1:4222, http://b:4222")],
            "`nats.url` = \"http://b:4222\": must be nats://",
        ),
        (
            &[("QUENCH_NATS__REPLICAS", "7")],
            "`nats.replicas` = \"7\": must be 1 (a single server) to 5",
        ),
        (&[("QUENCH_API__LISTEN", "localhost-ish")], "localhost-ish"),
        (
            &[
                ("QUENCH_NATS__TOKEN", "t"),
                ("QUENCH_NATS__TOKEN_FILE", "/tmp/x"),
            ],
            "`nats.token` and `nats.token_file`",
        ),
        (
            &[("QUENCH_OPENAI__ADMIN_KEY_FILE", "/nonexistent/key")],
            "`openai.admin_key_file` = \"/nonexistent/key\": cannot read it",
        ),
        (&[("QUENCH_NATS__URLL", "nats://x:1")], "urll"),
        (
            &[
                ("QUENCH_CONSOLE__OIDC__ISSUER", "http://idp.example.com"),
                ("QUENCH_CONSOLE__OIDC__CLIENT_ID", "quench"),
                ("QUENCH_CONSOLE__OIDC__DEFAULT_ROLE", "viewer"),
            ],
            "`console.oidc.issuer` = \"http://idp.example.com\": must use https",
        ),
        (
            &[
                ("QUENCH_CONSOLE__OIDC__ISSUER", "https://idp.example.com"),
                ("QUENCH_CONSOLE__OIDC__CLIENT_ID", "quench"),
            ],
            "`console.oidc.roles` = \"{}\": maps no group to a role and there is no default_role",
        ),
        (
            &[
                ("QUENCH_API__LISTEN", "10.0.0.1:8080"),
                ("QUENCH_CONSOLE__OIDC__ISSUER", "https://idp.example.com"),
                ("QUENCH_CONSOLE__OIDC__CLIENT_ID", "quench"),
                ("QUENCH_CONSOLE__OIDC__DEFAULT_ROLE", "viewer"),
            ],
            "`console.oidc.redirect_url` = \"\": is needed when api.listen is not loopback",
        ),
        (
            &[
                ("QUENCH_CONSOLE__OIDC__ISSUER", "https://idp.example.com"),
                ("QUENCH_CONSOLE__OIDC__CLIENT_ID", "quench"),
                ("QUENCH_CONSOLE__OIDC__DEFAULT_ROLE", "viewer"),
                (
                    "QUENCH_CONSOLE__OIDC__REDIRECT_URL",
                    "https://quench.example.com/callback",
                ),
            ],
            "must end in /console/oidc/callback",
        ),
        (
            &[("QUENCH_STORE__RETAIN_ENDED", "10s")],
            "`store.retain_ended` = \"10s\": must be a duration of at least 1m (e.g. 90d) or `forever`",
        ),
        (
            &[("QUENCH_CLUSTER__LEASE", "1s")],
            "`cluster.lease` = \"1s\": must be a duration from 2s to 2m, e.g. 10s",
        ),
        (
            &[("QUENCH_CLUSTER__PARTITIONS", "2000")],
            "`cluster.partitions` = \"2000\": must be from 1 to 1024",
        ),
        (
            &[("QUENCH_CLUSTER__PARTITIONS", "0")],
            "`cluster.partitions` = \"0\": must be from 1 to 1024",
        ),
        (
            &[
                ("QUENCH_CLUSTER__ENABLED", "true"),
                ("QUENCH_CLUSTER__PARTITIONS", "8"),
                ("QUENCH_CLUSTER__PEERS", "[\"127.0.0.1:8080\"]"),
                ("QUENCH_SAFETY__MAX_MUTATIONS_PER_HOUR", "5"),
            ],
            "`safety.max_mutations_per_hour` = \"5\": is smaller than `[cluster] partitions = 8`",
        ),
        (
            &[
                ("QUENCH_CLUSTER__ENABLED", "true"),
                ("QUENCH_CLUSTER__PARTITIONS", "8"),
            ],
            "`cluster.peers` = \"[]\": must list the hosts runners advertise",
        ),
        (
            &[("QUENCH_CLUSTER__PEERS", "[\"http://quench-0:8080\"]")],
            "`cluster.peers[0]` = \"http://quench-0:8080\": not a host",
        ),
        (
            &[("QUENCH_CLUSTER__PEERS", "[\"private:10.0.0.5:8080\"]")],
            "`cluster.peers[0]` = \"private:10.0.0.5:8080\": peers take no `private:` prefix",
        ),
        (
            &[("QUENCH_CLUSTER__ADVERTISE", "quench-0:8080")],
            "`cluster.advertise` = \"quench-0:8080\": must be the http:// or https:// URL",
        ),
        (
            &[("QUENCH_CLUSTER__RUNNER", "Runner_A")],
            "`cluster.runner` = \"Runner_A\": must be a DNS label",
        ),
    ];
    for (env, expected) in cases {
        let output = quench(&["serve", "--dump-config"], env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(
            stderr.starts_with("error: configuration: ") && stderr.contains(expected),
            "{env:?}: {stderr}"
        );
    }
    let output = quench(&["serve", "--config", "/nonexistent/quench.toml"], &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("config file /nonexistent/quench.toml does not exist")
    );
}

#[test]
fn unreachable_nats_is_reported_plainly() {
    let directory = tempfile::tempdir().expect("temp dir");
    let port = support::free_port();
    let output = quench(
        &[
            "serve",
            "--nats",
            &format!("nats://127.0.0.1:{port}"),
            "--listen",
            "127.0.0.1:0",
            "--store",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing --store value is a usage error: {stderr}"
    );

    let store = directory.path().join("state");
    let playbooks = support::root().join("workflows");
    let output = std::process::Command::new(support::quench_bin())
        .args([
            "serve",
            "--nats",
            &format!("nats://127.0.0.1:{port}"),
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(&store)
        .arg("--playbooks")
        .arg(&playbooks)
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// Every unknown key and wrongly typed value is reported at once, each with where it came from
/// and a did-you-mean, in plain words (not one garbled error per start).
#[test]
fn every_config_problem_is_reported_at_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let file = directory.path().join("quench.toml");
    std::fs::write(
        &file,
        "[engine]\nmax_inflight_run = 3\nmode = \"dryrun\"\n\n[natz]\nurl = \"nats://x:4222\"\n\n[api]\nlisten = 5\n",
    )
    .expect("write");
    let output = std::process::Command::new(crate::support::quench_bin())
        .args(["serve", "--config"])
        .arg(&file)
        .env("QUENCH_STORE__SYNCC", "os")
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    let shown = file.display().to_string();
    for line in [
        "5 problems:".to_owned(),
        format!("unknown key `engine.max_inflight_run` (from {shown}): did you mean `max_inflight_runs`?"),
        format!("`engine.mode` (from {shown}): `dryrun` is not one of `live`, `dry_run`"),
        format!("unknown key `natz` (from {shown}): did you mean `nats`?"),
        format!("`api.listen` (from {shown}): must be string, found a number"),
        "unknown key `store.syncc` (from the environment variable QUENCH_STORE__SYNCC): did you mean `sync`?".to_owned(),
    ] {
        assert!(stderr.contains(&line), "{line}\nin:\n{stderr}");
    }
    assert!(
        !stderr.contains("default."),
        "no figment profile names: {stderr}"
    );

    // A secret given with the wrong type is named by its key, never shown.
    let output = std::process::Command::new(crate::support::quench_bin())
        .args(["serve", "--dump-config"])
        .env("QUENCH_SLACK__BOT_TOKEN", "[\"xoxb-secret-in-a-list\"]")
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("`slack.bot_token`"), "{stderr}");
    assert!(!stderr.contains("xoxb-secret-in-a-list"), "{stderr}");
}

/// `[secret_stores.<name>]`: a Vault store and a Kubernetes store load, their credentials are
/// redacted in the dump, and each mistake stops the start with the key named.
#[test]
fn secret_stores_load_and_their_mistakes_are_named() {
    let directory = tempfile::tempdir().expect("temp dir");
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "k8s-token\n").expect("write token");
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    let good = write(
        "good.toml",
        &format!(
            r#"
[secret_stores.vault]
type = "vault"
address = "https://vault.example.com:8200"
auth = "approle"
role_id = "role-1"
secret_id = "inline-secret-id"

[secret_stores.k8s]
type = "kubernetes"
namespace = "payments"
token_file = "{}"
"#,
            token_file.display()
        ),
    );
    let output = quench(
        &[
            "serve",
            "--config",
            good.to_str().expect("utf-8"),
            "--dump-config",
        ],
        &[],
    );
    let dump = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dump.contains("[secret_stores.vault]"), "{dump}");
    assert!(
        dump.contains("mount = \"secret\""),
        "the default mount:\n{dump}"
    );
    assert!(
        dump.contains("api_server = \"https://kubernetes.default.svc\""),
        "{dump}"
    );
    assert!(
        !dump.contains("inline-secret-id"),
        "the secret id is redacted:\n{dump}"
    );

    let cases = [
        (
            "[secret_stores.v]\ntype = \"vault\"\naddress = \"http://vault.example.com\"\nauth = \"token\"\ntoken = \"t\"\n",
            "`secret_stores.v.address`",
        ),
        (
            "[secret_stores.v]\ntype = \"vault\"\naddress = \"https://vault.example.com\"\nauth = \"token\"\n",
            "needs `token_file`",
        ),
        (
            "[secret_stores.v]\ntype = \"vault\"\naddress = \"https://vault.example.com\"\nauth = \"approle\"\nsecret_id = \"s\"\n",
            "`secret_stores.v.role_id`",
        ),
        (
            "[secret_stores.v]\ntype = \"vault\"\naddress = \"https://vault.example.com\"\nauth = \"token\"\ntoken_file = \"/nonexistent/token\"\n",
            "`secret_stores.v.token_file`",
        ),
        (
            "[secret_stores.v]\ntype = \"vault\"\naddress = \"https://vault.example.com\"\nauth = \"token\"\ntoken = \"t\"\ntokn = \"x\"\n",
            "tokn",
        ),
        (
            "[secret_stores.k]\ntype = \"kubernetes\"\nnamespace = \"Payments\"\n",
            "`secret_stores.k.namespace`",
        ),
        ("[secret_stores.x]\ntype = \"aws\"\n", "secret_stores.x"),
    ];
    for (index, (text, expected)) in cases.into_iter().enumerate() {
        let path = write(&format!("bad{index}.toml"), text);
        let output = quench(
            &[
                "serve",
                "--config",
                path.to_str().expect("utf-8"),
                "--dump-config",
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{text}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text}: expected {expected} in:\n{stderr}"
        );
    }
}
