//! The deployment files in `deploy/`, checked by the tools that will read them: `nats-server -t`
//! on the NATS config; quench's own loader (`--dump-config`) on every example config; every
//! YAML file parsed, each Kubernetes object complete and each container hardened; each compose
//! service with a health check; each systemd unit with its hardening; and the names that tie
//! them together (secret files, NATS users and inbox prefixes, credentials) agreeing across
//! files. `docker compose config -q` runs where Docker Compose is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{self, gateway_bin, quench_bin};

fn deploy() -> PathBuf {
    support::root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Files under `dir` (recursively) whose names end with one of `suffixes`, sorted.
fn files_under(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.file_name().and_then(|name| name.to_str())
                && suffixes.iter().any(|suffix| name.ends_with(suffix))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(support::root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Output of a quench binary with `env` and no other `QUENCH_*` variables (none from the test's
/// own environment).
fn run_clean(mut command: Command, env: &[(String, String)]) -> Output {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("QUENCH_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command.output().expect("the binary runs")
}

// ---------------------------------------------------------------------------------------------
// NATS

const NATS_PASSWORDS: [(&str, &str); 3] = [
    ("QUENCH_RUNNER_NATS_PASSWORD", "runner-password-for-tests"),
    ("QUENCH_GATEWAY_NATS_PASSWORD", "gateway-password-for-tests"),
    ("QUENCH_SCANNER_NATS_PASSWORD", "scanner-password-for-tests"),
];

/// The `$VARIABLE`s deploy/nats-server.conf reads from the server's environment (values
/// written `key: $NAME`; a `$` inside a quoted subject such as `"$JS.API.>"` is no variable).
fn nats_variables() -> BTreeSet<String> {
    read(&deploy().join("nats-server.conf"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (_, value) = line.split_once(':')?;
            let name = value.trim().strip_prefix('$')?;
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[test]
fn nats_server_accepts_the_deploy_config_with_the_passwords_in_its_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A copy whose JetStream directory is writable here (`-t` only reads it, but a check that
    // never points at /var/lib cannot be surprised by it).
    let store = dir.path().join("jetstream");
    let copy: Vec<String> = read(&deploy().join("nats-server.conf"))
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("store_dir:") {
                format!("  store_dir: \"{}\"", store.display())
            } else {
                line.to_owned()
            }
        })
        .collect();
    let config = dir.path().join("nats-server.conf");
    std::fs::write(&config, copy.join("\n")).expect("write the copy");

    assert_eq!(
        nats_variables(),
        NATS_PASSWORDS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect::<BTreeSet<_>>(),
        "the passwords nats-server.conf reads from its environment"
    );
    let nats_server = |with_passwords: bool| {
        let mut command = Command::new("nats-server");
        // As compose and Kubernetes start it: with the monitoring port for /healthz.
        command.args(["-t", "-c"]).arg(&config).args(["-m", "8222"]);
        for (name, value) in NATS_PASSWORDS {
            command.env_remove(name);
            if with_passwords {
                command.env(name, value);
            }
        }
        command
            .output()
            .expect("nats-server runs (tests/run installs it)")
    };
    assert!(
        crate::support::nats_server_syncs(),
        "deploy/nats-server.conf sets `sync_interval`, which needs nats-server 2.10 or newer: run \
         ./tests/run (it installs the pinned one) or put a newer nats-server first on PATH"
    );
    let jetstream = read(&deploy().join("nats-server.conf"));
    let jetstream = jetstream
        .split("jetstream {")
        .nth(1)
        .and_then(|block| block.split('}').next())
        .expect("a jetstream block");
    assert!(
        jetstream
            .lines()
            .any(|line| line.trim() == "sync_interval: always"),
        "JetStream syncs every write before acknowledging it:{jetstream}"
    );
    let accepted = nats_server(true);
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "nats-server -t refused deploy/nats-server.conf:\n{}{}",
        String::from_utf8_lossy(&accepted.stdout),
        String::from_utf8_lossy(&accepted.stderr)
    );
    let refused = nats_server(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "without the passwords in its environment nats-server must refuse the config"
    );
    assert!(stderr.contains("QUENCH_RUNNER_NATS_PASSWORD"), "{stderr}");
}

/// nats-server children, killed on drop.
struct Servers(Vec<std::process::Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three servers started from deploy/nats-cluster.conf (and the nats-server.conf it includes),
/// with only their addresses and directories rewritten for loopback, form a JetStream cluster
/// that keeps three copies of a stream for `quench-runner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_a_cluster_from_the_deploy_config() {
    let base = read(&deploy().join("nats-server.conf"));
    let cluster = read(&deploy().join("nats-cluster.conf"));
    assert!(cluster.contains("include ./nats-server.conf"), "{cluster}");
    let clients: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut servers = Servers(Vec::new());
    for index in 0..3 {
        let here = dir.path().join(format!("nats-{index}"));
        std::fs::create_dir_all(&here).expect("dir");
        let base = base
            .replace(
                "store_dir: /var/lib/nats/jetstream",
                &format!("store_dir: \"{}\"", here.join("jetstream").display()),
            )
            .replace(
                "listen: 0.0.0.0:4222",
                &format!("listen: 127.0.0.1:{}", clients[index]),
            );
        std::fs::write(here.join("nats-server.conf"), base).expect("write");
        let mut local = cluster.replace(
            "listen: 0.0.0.0:6222",
            &format!("listen: 127.0.0.1:{}", routes[index]),
        );
        for (other, port) in routes.iter().enumerate() {
            local = local.replace(
                &format!("nats-route://nats-{other}.nats:6222"),
                &format!("nats-route://127.0.0.1:{port}"),
            );
        }
        assert!(
            !local.contains(".nats:6222"),
            "every route rewritten:\n{local}"
        );
        std::fs::write(here.join("nats-cluster.conf"), local).expect("write");
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(here.join("nats-cluster.conf"))
            .env("NATS_SERVER_NAME", format!("nats-{index}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (name, value) in NATS_PASSWORDS {
            command.env(name, value);
        }
        servers.0.push(command.spawn().expect("nats-server runs"));
    }
    let client = async_nats::ConnectOptions::with_user_and_password(
        "quench-runner".to_owned(),
        NATS_PASSWORDS[0].1.to_owned(),
    )
    .custom_inbox_prefix("_INBOX.runner")
    .retry_on_initial_connect()
    .connect(format!("127.0.0.1:{}", clients[0]))
    .await
    .expect("quench-runner connects");
    let jetstream = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: "QUENCH_FINDINGS".to_owned(),
        subjects: vec!["quench.findings.>".to_owned()],
        num_replicas: 3,
        ..Default::default()
    };
    let mut tries = 0;
    let info = loop {
        match jetstream.create_or_update_stream(config.clone()).await {
            Ok(info) => break info,
            Err(error) => {
                tries += 1;
                assert!(tries < 60, "no three-copy stream on the cluster: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    let cluster_info = info.cluster.expect("a clustered stream");
    assert_eq!(cluster_info.name.as_deref(), Some("quench"));
    assert_eq!(
        cluster_info.replicas.len(),
        2,
        "two copies beside the leader"
    );
    let ack = jetstream
        .publish("quench.findings.test", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("acknowledged by a majority");
    assert_eq!(ack.sequence, 1);
}

// ---------------------------------------------------------------------------------------------
// quench's configs

/// An example config and what it must say.
struct Example {
    path: &'static str,
    gateway: bool,
    /// Where its secret files are expected: every `*_file` path starts with it.
    secrets_dir: &'static str,
    nats_user: &'static str,
    inbox_prefix: &'static str,
}

const EXAMPLES: [Example; 5] = [
    Example {
        path: "deploy/quench.toml",
        gateway: false,
        secrets_dir: "/run/secrets/",
        nats_user: "quench-runner",
        inbox_prefix: "_INBOX.runner",
    },
    Example {
        path: "deploy/quench-gateway.toml",
        gateway: true,
        secrets_dir: "/run/secrets/",
        nats_user: "quench-gateway",
        inbox_prefix: "_INBOX.gateway",
    },
    Example {
        path: "deploy/kubernetes-cluster/quench.toml",
        gateway: false,
        secrets_dir: "/run/secrets/",
        nats_user: "quench-runner",
        inbox_prefix: "_INBOX.runner",
    },
    Example {
        path: "deploy/systemd/quench.toml",
        gateway: false,
        secrets_dir: "/run/credentials/quench.service/",
        nats_user: "quench-runner",
        inbox_prefix: "_INBOX.runner",
    },
    Example {
        path: "deploy/systemd/quench-gateway.toml",
        gateway: true,
        secrets_dir: "/run/credentials/quench-gateway.service/",
        nats_user: "quench-gateway",
        inbox_prefix: "_INBOX.gateway",
    },
];

/// The `(key, path)` of every `*_file = "…"` line that is not commented out.
fn secret_files(toml: &str) -> Vec<(String, String)> {
    toml.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            let value = value.trim();
            let path = value.strip_prefix('"')?.strip_suffix('"')?;
            key.ends_with("_file")
                .then(|| (key.to_owned(), path.to_owned()))
        })
        .collect()
}

/// The file names of a config's secrets (the last component of each `*_file` path).
fn secret_names(relative_path: &str) -> BTreeSet<String> {
    secret_files(&read(&support::root().join(relative_path)))
        .into_iter()
        .map(|(_, path)| {
            Path::new(&path)
                .file_name()
                .and_then(|name| name.to_str())
                .expect("a file name")
                .to_owned()
        })
        .collect()
}

/// What `--dump-config` made of an example config, run with its secret files in a temporary
/// directory (the paths rewritten in a copy) and `env` set.
struct Dump {
    output: Output,
    stdout: String,
    stderr: String,
    /// The `(key, path)` of each secret in the original file.
    secrets: Vec<(String, String)>,
    /// What the secret files held.
    values: Vec<String>,
}

fn dump_config(example: &Example, env: &[(String, String)]) -> Dump {
    let source = read(&support::root().join(example.path));
    let secrets = secret_files(&source);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut copy = source.clone();
    let mut values = Vec::new();
    for (_, path) in &secrets {
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .expect("a file name");
        let file = dir.path().join(name);
        let value = format!("{name}-value-for-tests");
        std::fs::write(&file, format!("{value}\n")).expect("write a secret");
        values.push(value);
        copy = copy.replace(&format!("\"{path}\""), &format!("\"{}\"", file.display()));
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &copy).expect("write the copy");

    let mut command = if example.gateway {
        Command::new(gateway_bin())
    } else {
        let mut command = Command::new(quench_bin());
        command.arg("serve");
        command
    };
    command.arg("--config").arg(&config).arg("--dump-config");
    let output = run_clean(command, env);
    Dump {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        output,
        secrets,
        values,
    }
}

#[test]
fn quench_loads_every_example_config_and_redacts_its_secrets() {
    let nats_conf = read(&deploy().join("nats-server.conf"));
    for example in &EXAMPLES {
        let Dump {
            output,
            stdout,
            stderr,
            secrets,
            values,
        } = dump_config(example, &[]);
        assert!(
            !secrets.is_empty(),
            "{} names its secrets as *_file",
            example.path
        );
        for (key, path) in &secrets {
            assert!(
                path.starts_with(example.secrets_dir),
                "{}: `{key}` = {path:?} should be under {}",
                example.path,
                example.secrets_dir
            );
        }
        assert_eq!(
            output.status.code(),
            Some(0),
            "{} is refused by quench's loader:\n{stderr}",
            example.path
        );
        assert_eq!(
            stdout.matches("= \"<redacted>\"").count(),
            secrets.len(),
            "{}: each of {secrets:?} is printed as <redacted>:\n{stdout}",
            example.path
        );
        for value in &values {
            assert!(
                !stdout.contains(value.as_str()) && !stderr.contains(value.as_str()),
                "{}: a secret was printed:\n{stdout}{stderr}",
                example.path
            );
        }
        // The NATS user and inbox prefix are the ones deploy/nats-server.conf allows together.
        assert!(
            stdout.contains(&format!("user = \"{}\"", example.nats_user))
                && stdout.contains(&format!("inbox_prefix = \"{}\"", example.inbox_prefix)),
            "{}: NATS user {} with inbox prefix {}:\n{stdout}",
            example.path,
            example.nats_user,
            example.inbox_prefix
        );
        let user_block = nats_conf
            .split("user: ")
            .find(|block| block.starts_with(example.nats_user))
            .unwrap_or_else(|| panic!("nats-server.conf has the user {}", example.nats_user));
        assert!(
            user_block.contains(&format!("\"{}.>\"", example.inbox_prefix)),
            "nats-server.conf lets {} subscribe to {}.>",
            example.nats_user,
            example.inbox_prefix
        );
        assert!(
            stdout.contains("sync = \"always\"") || example.gateway,
            "{}: the runner fdatasyncs every commit",
            example.path
        );
    }
}

/// The copies kustomize reads (only files below a kustomization's directory) equal their
/// originals. The cluster's quench.toml differs on purpose: see
/// `quench_loads_the_cluster_config_with_the_pods_environment`.
#[test]
fn kubernetes_uses_identical_copies_of_the_configs() {
    for (dir, name) in [
        ("kubernetes", "quench.toml"),
        ("kubernetes", "quench-gateway.toml"),
        ("kubernetes", "nats-server.conf"),
        ("kubernetes-cluster", "nats-cluster.conf"),
    ] {
        assert!(
            read(&deploy().join(name)) == read(&deploy().join(dir).join(name)),
            "deploy/{dir}/{name} must be a copy of deploy/{name} (kustomize reads files only \
             below its directory): cp deploy/{name} deploy/{dir}/{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// YAML

/// The YAML documents of a file (separated by `---` lines), as JSON with every scalar a string;
/// duplicate keys are refused.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else if let Some(chunk) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .iter()
        .filter(|chunk| {
            chunk.lines().any(|line| {
                let line = line.trim();
                !line.is_empty() && !line.starts_with('#')
            })
        })
        .map(|chunk| {
            let options = marked_yaml::LoaderOptions::default()
                .error_on_duplicate_keys(true)
                .prevent_coercion(true);
            let node = marked_yaml::parse_yaml_with_options(0, chunk, options)
                .unwrap_or_else(|error| panic!("{} is not valid YAML: {error}", relative(path)));
            yaml_json(&node)
        })
        .collect()
}

fn yaml_json(node: &marked_yaml::Node) -> Value {
    match node {
        marked_yaml::Node::Scalar(scalar) => Value::String(scalar.as_str().to_owned()),
        marked_yaml::Node::Sequence(sequence) => {
            Value::Array(sequence.iter().map(yaml_json).collect())
        }
        marked_yaml::Node::Mapping(mapping) => Value::Object(
            mapping
                .iter()
                .map(|(key, value)| (key.as_str().to_owned(), yaml_json(value)))
                .collect(),
        ),
    }
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let files = files_under(&deploy(), &[".yaml", ".yml"]);
    assert!(files.len() >= 8, "deploy/ has its YAML files: {files:?}");
    for file in files {
        assert!(
            !yaml_documents(&file).is_empty(),
            "{} has no document",
            relative(&file)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every object in deploy/kubernetes, with the file it is in.
fn kubernetes_objects() -> Vec<(String, Value)> {
    files_under(&deploy().join("kubernetes"), &[".yaml", ".yml"])
        .into_iter()
        .flat_map(|file| {
            let name = relative(&file);
            yaml_documents(&file)
                .into_iter()
                .map(move |document| (name.clone(), document))
        })
        .collect()
}

fn object<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, object)| object)
        .find(|object| {
            text(object, "/kind") == Some(kind) && text(object, "/metadata/name") == Some(name)
        })
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {kind} {name}"))
}

/// The pod spec of a workload, if the object has one.
fn pod_spec(object: &Value) -> Option<&Value> {
    match text(object, "/kind")? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.pointer("/spec/template/spec")
        }
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template/spec"),
        "Pod" => object.pointer("/spec"),
        _ => None,
    }
}

/// What a pod spec lacks of the hardening every container here must keep.
fn hardening_problems(pod: &Value, long_running: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if text(pod, "/automountServiceAccountToken") != Some("false") {
        problems.push("automountServiceAccountToken: false".to_owned());
    }
    let containers = ["/containers", "/initContainers"]
        .iter()
        .filter_map(|pointer| pod.pointer(pointer).and_then(Value::as_array))
        .flatten()
        .collect::<Vec<_>>();
    if containers.is_empty() {
        problems.push("no containers".to_owned());
    }
    for container in containers {
        let name = text(container, "/name").unwrap_or("?");
        let mut lacks = |what: &str| problems.push(format!("container {name}: {what}"));
        let either = |pointer: &str| {
            text(container, &format!("/securityContext{pointer}"))
                .or_else(|| text(pod, &format!("/securityContext{pointer}")))
        };
        if text(container, "/securityContext/readOnlyRootFilesystem") != Some("true") {
            lacks("securityContext.readOnlyRootFilesystem: true");
        }
        if text(container, "/securityContext/allowPrivilegeEscalation") != Some("false") {
            lacks("securityContext.allowPrivilegeEscalation: false");
        }
        if !strings(container, "/securityContext/capabilities/drop").contains(&"ALL".to_owned()) {
            lacks("securityContext.capabilities.drop: [ALL]");
        }
        if either("/runAsNonRoot") != Some("true") {
            lacks("securityContext.runAsNonRoot: true");
        }
        if either("/seccompProfile/type") != Some("RuntimeDefault") {
            lacks("securityContext.seccompProfile.type: RuntimeDefault");
        }
        for resource in [
            "/resources/requests/cpu",
            "/resources/requests/memory",
            "/resources/limits/memory",
        ] {
            if text(container, resource).is_none() {
                lacks(&resource[1..].replace('/', "."));
            }
        }
        if long_running {
            for probe in ["/readinessProbe", "/livenessProbe"] {
                if container.pointer(probe).is_none() {
                    lacks(&probe[1..]);
                }
            }
        }
    }
    problems
}

#[test]
fn kubernetes_objects_are_complete_and_every_container_is_hardened() {
    let objects = kubernetes_objects();
    let mut problems = Vec::new();
    let mut workloads = 0;
    for (file, object) in &objects {
        let kind = text(object, "/kind").unwrap_or_default();
        if text(object, "/apiVersion").is_none() || kind.is_empty() {
            problems.push(format!("{file}: an object without apiVersion or kind"));
        }
        let name = text(object, "/metadata/name");
        if name.is_none() && kind != "Kustomization" {
            problems.push(format!("{file}: a {kind} without metadata.name"));
        }
        if let Some(pod) = pod_spec(object) {
            workloads += 1;
            let long_running = !matches!(kind, "Job" | "CronJob" | "Pod");
            for problem in hardening_problems(pod, long_running) {
                problems.push(format!("{file}: {kind} {}: {problem}", name.unwrap_or("?")));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/kubernetes:\n  {}",
        problems.join("\n  ")
    );
    assert!(workloads >= 4, "NATS, runner, gateway and the audit Job");

    // The check itself: a container without a read-only root filesystem is caught.
    let runner = object(&objects, "StatefulSet", "quench-runner");
    let mut weakened = pod_spec(runner).expect("a pod spec").clone();
    if let Some(context) = weakened
        .pointer_mut("/containers/0/securityContext")
        .and_then(Value::as_object_mut)
    {
        context.remove("readOnlyRootFilesystem");
    }
    assert_eq!(
        hardening_problems(&weakened, true),
        ["container runner: securityContext.readOnlyRootFilesystem: true"]
    );
}

#[test]
fn kubernetes_runs_one_runner_on_a_volume_two_gateways_and_denies_by_default() {
    let objects = kubernetes_objects();

    let runner = object(&objects, "StatefulSet", "quench-runner");
    assert_eq!(
        text(runner, "/spec/replicas"),
        Some("1"),
        "one runner per store"
    );
    let claim = text(runner, "/spec/volumeClaimTemplates/0/metadata/name").expect("a PVC");
    let pod = pod_spec(runner).expect("a pod spec");
    let mounts = pod
        .pointer("/containers/0/volumeMounts")
        .and_then(Value::as_array)
        .expect("volume mounts");
    assert!(
        mounts
            .iter()
            .any(|mount| text(mount, "/name") == Some(claim)
                && text(mount, "/mountPath") == Some("/var/lib/quench")),
        "the PVC holds /var/lib/quench"
    );
    assert_eq!(
        text(pod, "/containers/0/readinessProbe/httpGet/path"),
        Some("/readyz")
    );
    let grace: u64 = text(pod, "/terminationGracePeriodSeconds")
        .and_then(|value| value.parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(grace > 20, "more than the runner's 20 s grace");

    let gateway = object(&objects, "Deployment", "quench-gateway");
    assert_eq!(text(gateway, "/spec/replicas"), Some("2"));
    object(&objects, "Service", "quench-gateway");
    object(&objects, "Service", "nats");
    object(&objects, "StatefulSet", "nats");

    let deny = object(&objects, "NetworkPolicy", "default-deny");
    assert_eq!(
        deny.pointer("/spec/podSelector"),
        Some(&Value::Object(Default::default()))
    );
    assert_eq!(strings(deny, "/spec/policyTypes"), ["Ingress", "Egress"]);

    // The Secrets hold exactly the files each config reads, and nats-server's environment
    // holds every password its config refers to.
    for (secret, config) in [
        ("quench-runner", "deploy/quench.toml"),
        ("quench-gateway", "deploy/quench-gateway.toml"),
    ] {
        let keys: BTreeSet<String> = object(&objects, "Secret", secret)
            .pointer("/stringData")
            .and_then(Value::as_object)
            .map(|data| data.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, secret_names(config), "Secret {secret} and {config}");
    }
    let nats_env: BTreeSet<String> = pod_spec(object(&objects, "StatefulSet", "nats"))
        .and_then(|pod| pod.pointer("/containers/0/env"))
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|variable| text(variable, "/name").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        nats_variables().is_subset(&nats_env),
        "the NATS pod's environment has {:?}",
        nats_variables()
    );

    // kustomization.yaml names every manifest but the two applied by hand.
    let kustomization = object_of_kind(&objects, "Kustomization");
    let listed: BTreeSet<String> = strings(kustomization, "/resources").into_iter().collect();
    let manifests: BTreeSet<String> = files_under(&deploy().join("kubernetes"), &[".yaml"])
        .iter()
        .filter_map(|file| file.file_name().and_then(|name| name.to_str()))
        .filter(|name| !["kustomization.yaml", "secrets.yaml", "audit-verify.yaml"].contains(name))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, manifests, "kustomization.yaml resources");
    for generator in kustomization
        .pointer("/configMapGenerator")
        .and_then(Value::as_array)
        .expect("configMapGenerator")
    {
        for file in strings(generator, "/files") {
            assert!(
                deploy().join("kubernetes").join(&file).is_file(),
                "configMapGenerator file {file}"
            );
        }
    }
}

/// The environment of a workload's first container in a pod named `pod_name` with the address
/// `pod_ip`, as the kubelet makes it: a variable from the downward API (`fieldRef`) gets the
/// pod's name or address, and `$(NAME)` in a value is replaced by a variable defined *before*
/// it in the list (a later or unknown one is left as written, as Kubernetes leaves it).
fn pod_environment(workload: &Value, pod_name: &str, pod_ip: &str) -> Vec<(String, String)> {
    let mut defined: Vec<(String, String)> = Vec::new();
    for variable in pod_spec(workload)
        .and_then(|pod| pod.pointer("/containers/0/env"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = text(variable, "/name") else {
            continue;
        };
        let value = match (
            text(variable, "/value"),
            text(variable, "/valueFrom/fieldRef/fieldPath"),
        ) {
            (Some(value), _) => defined.iter().fold(value.to_owned(), |value, (name, set)| {
                value.replace(&format!("$({name})"), set)
            }),
            (None, Some("metadata.name")) => pod_name.to_owned(),
            (None, Some("status.podIP")) => pod_ip.to_owned(),
            _ => continue,
        };
        defined.push((name.to_owned(), value));
    }
    defined
}

/// The `QUENCH_*` environment of a workload's first container (see [`pod_environment`]).
fn quench_environment(workload: &Value, pod_name: &str, pod_ip: &str) -> Vec<(String, String)> {
    pod_environment(workload, pod_name, pod_ip)
        .into_iter()
        .filter(|(name, _)| name.starts_with("QUENCH_"))
        .collect()
}

#[test]
fn quench_loads_the_kubernetes_configs_with_the_pods_environment() {
    let objects = kubernetes_objects();
    for (kind, name, example) in [
        ("StatefulSet", "quench-runner", &EXAMPLES[0]),
        ("Deployment", "quench-gateway", &EXAMPLES[1]),
    ] {
        let env = quench_environment(
            object(&objects, kind, name),
            &format!("{name}-0"),
            "10.0.0.7",
        );
        let dump = dump_config(example, &env);
        assert_eq!(
            dump.output.status.code(),
            Some(0),
            "{kind} {name} with {env:?}:\n{}",
            dump.stderr
        );
        for (key, value) in &env {
            let key = key
                .strip_prefix("QUENCH_")
                .and_then(|key| key.split_once("__"))
                .map(|(_, key)| key.to_lowercase())
                .expect("QUENCH_<SECTION>__<KEY>");
            assert!(
                dump.stdout.contains(&format!("{key} = \"{value}\"")),
                "{kind} {name}: {key} = {value:?}:\n{}",
                dump.stdout
            );
        }
    }
    // The runner's admin API and probes are on the pod IP.
    let runner = quench_environment(
        object(&objects, "StatefulSet", "quench-runner"),
        "quench-runner-0",
        "10.0.0.7",
    );
    assert!(
        runner.contains(&("QUENCH_API__LISTEN".to_owned(), "10.0.0.7:8080".to_owned())),
        "{runner:?}"
    );
}

fn object_of_kind<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, object)| object)
        .find(|object| text(object, "/kind") == Some(kind))
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {kind}"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes, cluster mode: the overlay deploy/kubernetes-cluster

fn overlay() -> PathBuf {
    deploy().join("kubernetes-cluster")
}

/// How kustomize merges a list in a strategic-merge patch, by the list's path in the object
/// (indexes left out): by the key Kubernetes declares as its `patchMergeKey`, or (`None`, the
/// lists without one) the patch's list replaces the base's. A patch of a list not named here
/// fails the test: the merge below never guesses.
const PATCHED_LISTS: [(&str, Option<&str>); 8] = [
    ("/spec/ports", Some("port")),
    ("/spec/template/spec/containers", Some("name")),
    ("/spec/template/spec/containers/env", Some("name")),
    (
        "/spec/template/spec/containers/ports",
        Some("containerPort"),
    ),
    (
        "/spec/template/spec/containers/volumeMounts",
        Some("mountPath"),
    ),
    ("/spec/template/spec/volumes", Some("name")),
    ("/spec/template/spec/containers/args", None),
    (
        "/spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution",
        None,
    ),
];

/// Merges a strategic-merge patch into `base` as kustomize does for the fields listed in
/// [`PATCHED_LISTS`] and for mappings and scalars (replaced); `path` is where `base` is.
fn strategic_merge(base: &mut Value, patch: &Value, path: &str) {
    let (Some(base), Some(patch)) = (base.as_object_mut(), patch.as_object()) else {
        panic!("{path}: a patch merges a mapping into a mapping");
    };
    for (key, value) in patch {
        let here = format!("{path}/{key}");
        assert!(
            !key.starts_with('$') && !matches!(value.as_str(), Some("null" | "~")),
            "{here}: patch directives and deletions are not modelled here"
        );
        match value {
            Value::Object(_) => {
                let slot = base
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Default::default()));
                strategic_merge(slot, value, &here);
            }
            Value::Array(items) => {
                let (_, merge_key) = PATCHED_LISTS
                    .iter()
                    .find(|(list, _)| *list == here)
                    .unwrap_or_else(|| {
                        panic!("{here}: add how kustomize merges this list to PATCHED_LISTS")
                    });
                let Some(merge_key) = merge_key else {
                    base.insert(key.clone(), value.clone());
                    continue;
                };
                let list = base
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
                    .unwrap_or_else(|| panic!("{here} is a list"));
                for item in items {
                    let id = text(item, &format!("/{merge_key}"))
                        .unwrap_or_else(|| panic!("an item of {here} without {merge_key}"));
                    match list
                        .iter_mut()
                        .find(|existing| text(existing, &format!("/{merge_key}")) == Some(id))
                    {
                        Some(existing) => strategic_merge(existing, item, &here),
                        None => list.push(item.clone()),
                    }
                }
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A path a kustomization names (`resources`, `patches`, generator files), checked as kustomize
/// loads it: a file must be below the kustomization's directory; a directory (another
/// kustomization) may be anywhere but must not contain it (kustomize: "cycle detected").
fn kustomize_path(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let resolved = path
        .canonicalize()
        .unwrap_or_else(|error| panic!("{}: {name}: {error}", relative(dir)));
    if resolved.is_dir() {
        let here = dir.canonicalize().expect("the kustomization's directory");
        assert!(
            !here.starts_with(&resolved),
            "{}: the base {name} contains this directory, which kustomize refuses",
            relative(dir)
        );
        assert!(
            resolved.join("kustomization.yaml").is_file(),
            "{}: {name} is a directory without kustomization.yaml",
            relative(dir)
        );
    } else {
        assert!(
            Path::new(name)
                .components()
                .all(|part| matches!(part, std::path::Component::Normal(_))),
            "{}: kustomize reads only files below the kustomization's directory: {name}",
            relative(dir)
        );
    }
    resolved
}

/// What `kubectl apply -k DIR` applies, built as kustomize does for the features the
/// kustomizations here use: `resources` (files, and directories built the same way), `patches`
/// (strategic merge, each by a file naming its target), `configMapGenerator` (create, merge,
/// replace; the ConfigMaps keep their names, without kustomize's hash suffix) and `images`. The
/// namespace is not set. Panics on whatever else a kustomization says.
fn kustomize_build(dir: &Path) -> Vec<Value> {
    let mut documents = yaml_documents(&dir.join("kustomization.yaml"));
    assert_eq!(documents.len(), 1, "{}: one kustomization", relative(dir));
    let kustomization = documents.remove(0);
    let known = [
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "patches",
        "configMapGenerator",
        "images",
    ];
    for key in kustomization.as_object().expect("a mapping").keys() {
        assert!(
            known.contains(&key.as_str()),
            "{}/kustomization.yaml: `{key}` is not modelled by this test",
            relative(dir)
        );
    }
    let mut objects = Vec::new();
    for name in strings(&kustomization, "/resources") {
        let path = kustomize_path(dir, &name);
        if path.is_dir() {
            objects.extend(kustomize_build(&path));
        } else {
            objects.extend(yaml_documents(&path));
        }
    }
    for generator in kustomization
        .pointer("/configMapGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(generator, "/name").expect("a generator's name");
        let mut data = serde_json::Map::new();
        for file in strings(generator, "/files") {
            data.insert(
                file.clone(),
                Value::String(read(&kustomize_path(dir, &file))),
            );
        }
        let existing = objects.iter_mut().find(|object| {
            text(object, "/kind") == Some("ConfigMap")
                && text(object, "/metadata/name") == Some(name)
        });
        match (text(generator, "/behavior").unwrap_or("create"), existing) {
            ("create", None) => objects.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": data,
            })),
            ("merge", Some(existing)) => {
                existing["data"].as_object_mut().expect("data").extend(data)
            }
            ("replace", Some(existing)) => existing["data"] = Value::Object(data),
            (behavior, existing) => panic!(
                "{}: ConfigMap {name} with behavior {behavior} {} in the base",
                relative(dir),
                if existing.is_some() {
                    "exists"
                } else {
                    "does not exist"
                }
            ),
        }
    }
    for patch in kustomization
        .pointer("/patches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        assert_eq!(
            patch.as_object().map(|patch| patch.len()),
            Some(1),
            "{}: a patch is a file naming its target ({patch})",
            relative(dir)
        );
        let file = text(patch, "/path").expect("a patch's path");
        let documents = yaml_documents(&kustomize_path(dir, file));
        assert_eq!(documents.len(), 1, "{file}: one patch");
        let kind = text(&documents[0], "/kind").expect("kind");
        let name = text(&documents[0], "/metadata/name").expect("metadata.name");
        let target = objects
            .iter_mut()
            .find(|object| {
                text(object, "/kind") == Some(kind) && text(object, "/metadata/name") == Some(name)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}/{file} patches {kind} {name}, which its bases do not have",
                    relative(dir)
                )
            });
        assert_eq!(
            text(target, "/apiVersion"),
            text(&documents[0], "/apiVersion"),
            "{file}: the apiVersion of {kind} {name}"
        );
        strategic_merge(target, &documents[0], "");
    }
    for image in kustomization
        .pointer("/images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(image, "/name").expect("an image's name");
        for object in &mut objects {
            let Some(pod) = object.pointer_mut("/spec/template/spec") else {
                continue;
            };
            for container in pod
                .pointer_mut("/containers")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let current = text(container, "/image").unwrap_or_default().to_owned();
                let Some(tag) = current
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                else {
                    continue;
                };
                container["image"] = Value::String(format!(
                    "{}:{}",
                    text(image, "/newName").unwrap_or(name),
                    text(image, "/newTag").unwrap_or(tag)
                ));
            }
        }
    }
    objects
}

/// The object of `kind` named `name` among `objects`.
fn built<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| {
            text(object, "/kind") == Some(kind) && text(object, "/metadata/name") == Some(name)
        })
        .unwrap_or_else(|| panic!("the build has no {kind} {name}"))
}

/// `matchLabels` of a selector equal to the labels of a workload's pods (what each selects).
fn selects(selector: &Value, workload: &Value) -> bool {
    selector.pointer("/matchLabels").is_some_and(|labels| {
        labels.as_object().is_some_and(|labels| {
            labels.iter().all(|(key, value)| {
                workload
                    .pointer("/spec/template/metadata/labels")
                    .and_then(|pod| pod.get(key))
                    == Some(value)
            })
        })
    })
}

/// Whether a NetworkPolicy rule may let `port` through: `ports` absent (all ports), the port, or
/// a port given by name (whatever number the pod gives it).
fn rule_allows(rule: &Value, port: &str) -> bool {
    let allows = |entry: &Value| {
        text(entry, "/port").is_some_and(|given| given == port || given.parse::<u16>().is_err())
    };
    rule.pointer("/ports")
        .and_then(Value::as_array)
        .is_none_or(|ports| ports.iter().any(allows))
}

/// The overlay: three NATS servers from nats-cluster.conf and three runners in cluster mode,
/// built from the base's files and the overlay's patches as kustomize builds them.
#[test]
fn kubernetes_cluster_overlay_runs_three_nats_servers_and_three_runners() {
    let base = kubernetes_objects();
    assert_eq!(
        text(
            object(&base, "StatefulSet", "quench-runner"),
            "/spec/replicas"
        ),
        Some("1"),
        "deploy/kubernetes runs one runner"
    );
    let kustomization = &yaml_documents(&overlay().join("kustomization.yaml"))[0];
    assert!(
        strings(kustomization, "/resources").contains(&"../kubernetes".to_owned()),
        "the overlay builds on deploy/kubernetes"
    );
    assert_eq!(text(kustomization, "/namespace"), Some("quench"));
    let objects = kustomize_build(&overlay());

    // The overlay's own objects are complete, and every pod it runs keeps the hardening.
    let mut problems = Vec::new();
    for object in &objects {
        let kind = text(object, "/kind").unwrap_or_default();
        let name = text(object, "/metadata/name").unwrap_or("?");
        if text(object, "/apiVersion").is_none() || kind.is_empty() || name == "?" {
            problems.push(format!(
                "an object without apiVersion, kind or name: {object}"
            ));
        }
        if let Some(pod) = pod_spec(object) {
            for problem in hardening_problems(pod, !matches!(kind, "Job" | "CronJob" | "Pod")) {
                problems.push(format!("{kind} {name}: {problem}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/kubernetes-cluster:\n  {}",
        problems.join("\n  ")
    );

    // NATS: three servers from nats-cluster.conf, named after their pods, routes on 6222.
    let nats = built(&objects, "StatefulSet", "nats");
    assert_eq!(text(nats, "/spec/replicas"), Some("3"));
    assert_eq!(text(nats, "/spec/podManagementPolicy"), Some("Parallel"));
    let pod = pod_spec(nats).expect("a pod spec");
    let args = strings(pod, "/containers/0/args");
    let config = args
        .windows(2)
        .find(|pair| pair[0] == "-c")
        .map(|pair| pair[1].clone())
        .expect("nats-server -c FILE");
    assert_eq!(config, "/etc/nats/nats-cluster.conf", "{args:?}");
    let config_map = pod
        .pointer("/volumes")
        .and_then(Value::as_array)
        .and_then(|volumes| {
            volumes
                .iter()
                .find(|volume| text(volume, "/name") == Some("config"))
        })
        .and_then(|volume| text(volume, "/configMap/name"))
        .expect("the config volume");
    let files: BTreeSet<&String> = built(&objects, "ConfigMap", config_map)
        .pointer("/data")
        .and_then(Value::as_object)
        .map(|data| data.keys().collect())
        .unwrap_or_default();
    assert!(
        files.contains(&"nats-cluster.conf".to_owned())
            && files.contains(&"nats-server.conf".to_owned()),
        "nats-cluster.conf and the nats-server.conf it includes, side by side: {files:?}"
    );
    let server_name = pod
        .pointer("/containers/0/env")
        .and_then(Value::as_array)
        .and_then(|env| {
            env.iter()
                .find(|variable| text(variable, "/name") == Some("NATS_SERVER_NAME"))
        });
    assert_eq!(
        server_name.and_then(|variable| text(variable, "/valueFrom/fieldRef/fieldPath")),
        Some("metadata.name"),
        "each server is named after its pod"
    );
    let env: BTreeSet<String> = pod
        .pointer("/containers/0/env")
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|variable| text(variable, "/name").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        nats_variables().is_subset(&env),
        "the patch keeps the passwords in the environment: {env:?}"
    );
    let container_ports: Vec<(String, String)> = pod
        .pointer("/containers/0/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|port| {
                    Some((
                        text(port, "/name")?.to_owned(),
                        text(port, "/containerPort")?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    for port in [("client", "4222"), ("monitor", "8222"), ("cluster", "6222")] {
        assert!(
            container_ports.contains(&(port.0.to_owned(), port.1.to_owned())),
            "the NATS container's ports: {container_ports:?}"
        );
    }
    let service = built(&objects, "Service", "nats");
    assert_eq!(text(nats, "/spec/serviceName"), Some("nats"));
    assert_eq!(text(service, "/spec/clusterIP"), Some("None"), "headless");
    assert_eq!(
        text(service, "/spec/publishNotReadyAddresses"),
        Some("true"),
        "the servers resolve each other before they are ready"
    );
    let route_port = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ports| {
            ports
                .iter()
                .find(|port| text(port, "/targetPort") == Some("cluster"))
        })
        .and_then(|port| text(port, "/port"))
        .expect("the Service's route port");
    assert_eq!(route_port, "6222");
    // The routes in nats-cluster.conf are the pods' names under the Service.
    let routes: Vec<String> = read(&overlay().join("nats-cluster.conf"))
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("nats-route://"))
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = (0..3)
        .map(|index| format!("nats-route://nats-{index}.nats:{route_port}"))
        .collect();
    assert_eq!(routes, expected, "nats-cluster.conf's routes");

    // The runners: three, each on its own volume, updated one ready pod at a time.
    let runner = built(&objects, "StatefulSet", "quench-runner");
    assert_eq!(text(runner, "/spec/replicas"), Some("3"));
    assert_eq!(text(runner, "/spec/podManagementPolicy"), Some("Parallel"));
    assert!(
        matches!(
            text(runner, "/spec/updateStrategy/type"),
            None | Some("RollingUpdate")
        ),
        "with several partitions every runner becomes ready: updates roll"
    );
    let pod = pod_spec(runner).expect("a pod spec");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(
            text(pod, &format!("/containers/0/{probe}/httpGet/path")),
            Some(path),
            "the runner's {probe}"
        );
    }
    let claim = text(runner, "/spec/volumeClaimTemplates/0/metadata/name").expect("a PVC per pod");
    assert!(
        pod.pointer("/containers/0/volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|mounts| mounts
                .iter()
                .any(|mount| text(mount, "/name") == Some(claim)
                    && text(mount, "/mountPath") == Some("/var/lib/quench"))),
        "each runner's store on its own volume"
    );
    assert!(
        pod.pointer("/volumes")
            .and_then(Value::as_array)
            .is_some_and(|volumes| volumes
                .iter()
                .all(|volume| volume.get("persistentVolumeClaim").is_none())),
        "no volume shared between the runners"
    );
    let service = built(&objects, "Service", "quench-runner");
    assert_eq!(
        text(service, "/spec/publishNotReadyAddresses"),
        Some("false"),
        "the admin API only on ready runners"
    );
    let config_map = pod
        .pointer("/volumes")
        .and_then(Value::as_array)
        .and_then(|volumes| {
            volumes
                .iter()
                .find(|volume| text(volume, "/name") == Some("config"))
        })
        .and_then(|volume| text(volume, "/configMap/name"))
        .expect("the config volume");
    assert_eq!(
        built(&objects, "ConfigMap", config_map).pointer("/data"),
        Some(&serde_json::json!({"quench.toml": read(&overlay().join("quench.toml"))})),
        "the runners read the overlay's quench.toml"
    );

    // Spread over nodes, and evicted within a budget.
    for workload in [nats, runner] {
        let name = text(workload, "/metadata/name").expect("a name");
        let term = workload
            .pointer("/spec/template/spec/affinity/podAntiAffinity")
            .and_then(|anti| {
                anti.pointer("/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm")
            })
            .unwrap_or_else(|| panic!("{name}: anti-affinity"));
        assert_eq!(text(term, "/topologyKey"), Some("kubernetes.io/hostname"));
        assert!(
            selects(
                term.pointer("/labelSelector").expect("a selector"),
                workload
            ),
            "{name}"
        );
        let budgets: Vec<&Value> = objects
            .iter()
            .filter(|object| text(object, "/kind") == Some("PodDisruptionBudget"))
            .filter(|budget| {
                budget
                    .pointer("/spec/selector")
                    .is_some_and(|selector| selects(selector, workload))
            })
            .collect();
        assert_eq!(budgets.len(), 1, "{name}: one PodDisruptionBudget");
        // One NATS server at a time; one runner at a time (every runner is ready, so a budget
        // counts them all).
        assert_eq!(
            text(budgets[0], "/spec/maxUnavailable"),
            Some("1"),
            "{name}'s budget"
        );
    }

    // Port 6222 is open between the NATS servers and to nothing else.
    let mut route_rules = 0;
    for policy in objects
        .iter()
        .filter(|object| text(object, "/kind") == Some("NetworkPolicy"))
    {
        let name = text(policy, "/metadata/name").unwrap_or("?");
        let selector = policy.pointer("/spec/podSelector").expect("a podSelector");
        let on_nats =
            selector.as_object().is_some_and(serde_json::Map::is_empty) || selects(selector, nats);
        for (direction, peers) in [("/spec/ingress", "/from"), ("/spec/egress", "/to")] {
            for rule in policy
                .pointer(direction)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !on_nats || !rule_allows(rule, "6222") {
                    continue;
                }
                route_rules += 1;
                let peers = rule.pointer(peers).and_then(Value::as_array);
                assert!(
                    peers.is_some_and(|peers| !peers.is_empty()
                        && peers.iter().all(|peer| peer
                            .as_object()
                            .is_some_and(|peer| peer.len() == 1)
                            && peer
                                .pointer("/podSelector")
                                .is_some_and(|peer| selects(peer, nats)))),
                    "NetworkPolicy {name} opens port 6222 of the NATS pods to others than NATS \
                     pods: {rule}"
                );
            }
        }
    }
    assert_eq!(route_rules, 2, "routes in and out between the NATS pods");
}

/// `value` in a form in which two builds of the same objects compare equal: mappings in key
/// order, lists of mappings sorted (kustomize puts a patch's new items first), file modes in
/// decimal (kustomize writes `0440` as 288), and the `generated` ConfigMaps' names without
/// kustomize's hash suffix.
fn canonical(value: &Value, generated: &[String]) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> = map
                .iter()
                .map(|(key, value)| {
                    let value = match value.as_str() {
                        Some(mode) if key == "defaultMode" && mode.starts_with('0') => {
                            u32::from_str_radix(mode, 8).map_or_else(
                                |_| value.clone(),
                                |mode| Value::String(mode.to_string()),
                            )
                        }
                        _ => canonical(value, generated),
                    };
                    (key, value)
                })
                .collect();
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(key, value)| (key.clone(), value))
                    .collect(),
            )
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items
                .iter()
                .map(|item| canonical(item, generated))
                .collect();
            if items.iter().all(Value::is_object) {
                items.sort_by_key(Value::to_string);
            }
            Value::Array(items)
        }
        Value::String(string) => {
            let unhashed = generated.iter().find(|name| {
                string
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| {
                        hash.len() == 10
                            && hash
                                .bytes()
                                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
                    })
            });
            Value::String(unhashed.map_or_else(|| string.clone(), Clone::clone))
        }
        other => other.clone(),
    }
}

/// Where kubectl is installed, `kubectl kustomize` builds the overlay into the objects the test
/// builds itself (but for the namespace, which it sets on every object, and the ConfigMaps'
/// hash suffixes): the merge the other tests check is kustomize's.
#[test]
fn kubectl_builds_the_cluster_overlay_as_the_tests_do_where_kubectl_is_installed() {
    let available = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!(
            "kubectl is not available here: skipping `kubectl kustomize deploy/kubernetes-cluster`"
        );
        return;
    }
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay())
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/kubernetes-cluster:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("build.yaml");
    std::fs::write(&file, &output.stdout).expect("write the build");

    let ours = kustomize_build(&overlay());
    let generated: Vec<String> = ours
        .iter()
        .filter(|object| text(object, "/kind") == Some("ConfigMap"))
        .filter_map(|object| text(object, "/metadata/name").map(str::to_owned))
        .collect();
    let key = |object: &Value| {
        (
            text(object, "/kind").unwrap_or_default().to_owned(),
            text(object, "/metadata/name")
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let mut theirs = BTreeMap::new();
    for object in yaml_documents(&file) {
        let object = canonical(&object, &generated);
        if text(&object, "/kind") != Some("Namespace") {
            assert_eq!(
                text(&object, "/metadata/namespace"),
                Some("quench"),
                "{:?}",
                key(&object)
            );
        }
        let mut object = object;
        if let Some(metadata) = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
        {
            metadata.remove("namespace");
        }
        theirs.insert(key(&object), object);
    }
    let ours: BTreeMap<_, _> = ours
        .iter()
        .map(|object| (key(object), canonical(object, &generated)))
        .collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the objects of the build"
    );
    for (key, object) in &ours {
        assert!(
            theirs.get(key) == Some(object),
            "{key:?} as the test builds it:\n{}\nas kubectl kustomize does:\n{}",
            serde_json::to_string_pretty(object).unwrap_or_default(),
            serde_json::to_string_pretty(&theirs[key]).unwrap_or_default()
        );
    }
}

/// `[section]` and line of each line of a `--dump-config`, each secret file's path reduced to
/// its file name (the dumps put them in different temporary directories).
fn dump_lines(dump: &Dump) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut lines = Vec::new();
    for line in dump.stdout.lines() {
        if line.starts_with('[') {
            section = line.to_owned();
        }
        let line = match line.split_once("_file = ") {
            Some((key, path)) => {
                let name = Path::new(path.trim_matches('"'))
                    .file_name()
                    .and_then(|name| name.to_str())
                    .unwrap_or_default();
                format!("{key}_file = {name}")
            }
            None => line.to_owned(),
        };
        lines.push((section.clone(), line));
    }
    lines
}

/// The runners' quench.toml loads with the environment of their pods, as deploy/quench.toml
/// does, and quench makes the same of it but for `[nats] url` (the three servers of the
/// StatefulSet `nats`), `[nats] replicas = 3`, `[cluster] enabled = true`, `[cluster]
/// partitions` (several) and `[cluster] peers` (the runners' pods).
#[test]
fn quench_loads_the_cluster_config_with_the_pods_environment() {
    let objects = kustomize_build(&overlay());
    let runner = built(&objects, "StatefulSet", "quench-runner");
    let env = quench_environment(runner, "quench-runner-1", "10.0.0.7");
    assert!(
        env.contains(&("QUENCH_API__LISTEN".to_owned(), "10.0.0.7:8080".to_owned())),
        "{env:?}"
    );
    let cluster_example = EXAMPLES
        .iter()
        .find(|example| example.path == "deploy/kubernetes-cluster/quench.toml")
        .expect("the cluster config is an example");
    let single = dump_config(&EXAMPLES[0], &env);
    let cluster = dump_config(cluster_example, &env);
    for dump in [&single, &cluster] {
        assert_eq!(dump.output.status.code(), Some(0), "{}", dump.stderr);
    }
    assert!(
        cluster.stdout.contains("\nlisten = \"10.0.0.7:8080\"\n"),
        "the pod's environment applies:\n{}",
        cluster.stdout
    );
    let (single, cluster) = (dump_lines(&single), dump_lines(&cluster));
    assert_eq!(single.len(), cluster.len(), "{single:?}\n{cluster:?}");
    let differences: Vec<(String, String)> = single
        .iter()
        .zip(&cluster)
        .filter(|(single, cluster)| single != cluster)
        .map(|(_, (section, line))| (section.clone(), line.clone()))
        .collect();

    let nats = built(&objects, "StatefulSet", "nats");
    let replicas: usize = text(nats, "/spec/replicas")
        .and_then(|replicas| replicas.parse().ok())
        .expect("replicas");
    let service = text(nats, "/spec/serviceName").expect("serviceName");
    let servers: Vec<String> = (0..replicas)
        .map(|index| format!("nats://nats-{index}.{service}:4222"))
        .collect();
    let partitions: u32 = cluster
        .iter()
        .filter(|(section, _)| section == "[cluster]")
        .find_map(|(_, line)| line.strip_prefix("partitions = "))
        .and_then(|count| count.parse().ok())
        .expect("[cluster] partitions");
    assert!(
        partitions > 1,
        "every runner serves: partitions = {partitions}"
    );
    let expected = [
        ("[nats]", format!("url = \"{}\"", servers.join(","))),
        ("[nats]", "replicas = 3".to_owned()),
        ("[cluster]", "enabled = true".to_owned()),
        ("[cluster]", format!("partitions = {partitions}")),
        (
            "[cluster]",
            "peers = [\"*.quench-runner-pods.quench.svc.cluster.local:8080\"]".to_owned(),
        ),
    ]
    .map(|(section, line)| (section.to_owned(), line));
    assert_eq!(
        differences, expected,
        "the cluster's quench.toml is deploy/quench.toml but for five keys"
    );
    // Each runner is named after its pod.
    assert!(
        cluster.contains(&("[cluster]".to_owned(), "runner = \"\"".to_owned())),
        "[cluster] runner = \"\""
    );
}

/// The pods a NetworkPolicy peer (`from`/`to` entry) names when it names pods of the policy's
/// namespace by their labels alone (`podSelector` only); `None` for anything else.
fn peer_pods(peer: &Value) -> Option<&Value> {
    peer.as_object()
        .filter(|peer| peer.len() == 1)
        .and_then(|peer| peer.get("podSelector"))
}

/// With several partitions a runner forwards a request for a partition another runner serves
/// to that runner's `[cluster] advertise` address. In the overlay each runner advertises its
/// pod's name under the headless Service that governs the StatefulSet, on the port its admin
/// API listens on; that name resolves before the pod is ready, the NetworkPolicies let the
/// runners reach each other on that port, and quench loads the config with that environment.
#[test]
fn kubernetes_cluster_runners_serve_partitions_and_reach_each_other_by_their_pods_names() {
    let kustomization = &yaml_documents(&overlay().join("kustomization.yaml"))[0];
    let namespace = text(kustomization, "/namespace").expect("the overlay's namespace");
    let objects = kustomize_build(&overlay());
    let runner = built(&objects, "StatefulSet", "quench-runner");
    let name = text(runner, "/metadata/name").expect("a name");
    let replicas: u32 = text(runner, "/spec/replicas")
        .and_then(|replicas| replicas.parse().ok())
        .expect("replicas");
    let pods: Vec<String> = (0..replicas)
        .map(|index| format!("{name}-{index}"))
        .collect();

    // quench loads the runners' config with the environment of the pod quench-runner-1.
    let pod_name = &pods[1];
    let env = quench_environment(runner, pod_name, "10.0.0.7");
    let cluster_example = EXAMPLES
        .iter()
        .find(|example| example.path == "deploy/kubernetes-cluster/quench.toml")
        .expect("the cluster config is an example");
    let dump = dump_config(cluster_example, &env);
    assert_eq!(
        dump.output.status.code(),
        Some(0),
        "{env:?}:\n{}",
        dump.stderr
    );
    let lines = dump_lines(&dump);
    let value = |section: &str, key: &str| -> String {
        let prefix = format!("{key} = ");
        lines
            .iter()
            .filter(|(here, _)| here == section)
            .find_map(|(_, line)| line.strip_prefix(&prefix))
            .map(|value| value.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{section} {key}:\n{}", dump.stdout))
    };

    // Several partitions, and every runner of the StatefulSet is given some.
    let partitions: u32 = value("[cluster]", "partitions")
        .parse()
        .expect("a partition count");
    assert!(
        partitions > 1,
        "every runner serves: partitions = {partitions}"
    );
    let members: Vec<&str> = pods.iter().map(String::as_str).collect();
    for member in &members {
        assert!(
            (0..partitions).any(|partition| {
                quench_runner::cluster::partition::owner(partition, &members) == Some(member)
            }),
            "{member} is given none of {partitions} partitions among {members:?}"
        );
    }

    // The advertised address: what the pod's environment says, all of it expanded, on the port
    // the admin API listens on.
    let advertised = env
        .iter()
        .find(|(variable, _)| variable == "QUENCH_CLUSTER__ADVERTISE")
        .map(|(_, address)| address.clone())
        .unwrap_or_else(|| {
            panic!("QUENCH_CLUSTER__ADVERTISE in the runners' environment: {env:?}")
        });
    assert_eq!(
        value("[cluster]", "advertise"),
        advertised,
        "quench advertises the address of the environment"
    );
    // The other runners forward to it: `[cluster] peers` admits the advertised address.
    let peers: Vec<String> = lines
        .iter()
        .filter(|(here, _)| here == "[cluster]")
        .find_map(|(_, line)| line.strip_prefix("peers = "))
        .and_then(|list| serde_json::from_str(list).ok())
        .expect("[cluster] peers");
    let url = url::Url::parse(&advertised).expect("an advertised URL");
    assert!(
        peers
            .iter()
            .any(|peer| quench_common::http::AllowHost::parse(peer)
                .is_ok_and(|peer| peer.admits(&url))),
        "{advertised} is admitted by [cluster] peers = {peers:?}"
    );
    let listen = value("[api]", "listen");
    let (_, port) = listen.rsplit_once(':').expect("[api] listen is host:port");
    let authority = advertised
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .unwrap_or_else(|| panic!("{advertised}: http:// and the pod's name"));
    assert!(
        !authority.contains(['/', '$', '(', ')']),
        "{advertised}: a host and a port, every $(VARIABLE) expanded"
    );
    let (host, advertised_port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{advertised}: a port"));
    assert_eq!(
        advertised_port, port,
        "{advertised}: the port the admin API listens on ({listen})"
    );
    let pod = pod_spec(runner).expect("a pod spec");
    let admin = pod
        .pointer("/containers/0/ports")
        .and_then(Value::as_array)
        .and_then(|ports| {
            ports
                .iter()
                .find(|port| text(port, "/name") == Some("admin"))
        })
        .and_then(|port| text(port, "/containerPort"));
    assert_eq!(admin, Some(port), "the runner's container port `admin`");

    // The host: the pod's name under the Service that governs the StatefulSet, a headless one
    // that selects the runners and publishes them before they are ready.
    let service_name = text(runner, "/spec/serviceName").expect("the StatefulSet's serviceName");
    let names = [
        format!("{pod_name}.{service_name}"),
        format!("{pod_name}.{service_name}.{namespace}"),
        format!("{pod_name}.{service_name}.{namespace}.svc"),
        format!("{pod_name}.{service_name}.{namespace}.svc.cluster.local"),
    ];
    assert!(
        names.iter().any(|name| name == host),
        "{advertised}: the host is not the pod's name under the Service {service_name}: {names:?}"
    );
    let service = built(&objects, "Service", service_name);
    assert_eq!(
        text(service, "/spec/clusterIP"),
        Some("None"),
        "{service_name}: headless, so that each pod has its name"
    );
    assert_eq!(
        text(service, "/spec/publishNotReadyAddresses"),
        Some("true"),
        "{service_name}: a starting runner's name resolves"
    );
    let selector = service
        .pointer("/spec/selector")
        .filter(|selector| {
            selector
                .as_object()
                .is_some_and(|labels| !labels.is_empty())
        })
        .unwrap_or_else(|| panic!("{service_name}: a selector"));
    assert!(
        selects(&serde_json::json!({ "matchLabels": selector }), runner),
        "{service_name} selects the runner pods"
    );

    // The runners reach each other on that port: in (from runner pods) and out (to runner pods
    // only: no egress rule opens it wider).
    let mut ingress = false;
    let mut egress = false;
    for policy in objects
        .iter()
        .filter(|object| text(object, "/kind") == Some("NetworkPolicy"))
    {
        let policy_name = text(policy, "/metadata/name").unwrap_or("?");
        let on_runners = policy.pointer("/spec/podSelector").is_some_and(|selector| {
            selector.as_object().is_some_and(serde_json::Map::is_empty) || selects(selector, runner)
        });
        if !on_runners {
            continue;
        }
        for rule in policy
            .pointer("/spec/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|rule| rule_allows(rule, port))
        {
            ingress |= rule
                .pointer("/from")
                .and_then(Value::as_array)
                .is_some_and(|peers| {
                    peers.iter().filter_map(peer_pods).any(|pods| {
                        pods.as_object().is_some_and(serde_json::Map::is_empty)
                            || selects(pods, runner)
                    })
                });
        }
        for rule in policy
            .pointer("/spec/egress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|rule| rule_allows(rule, port))
        {
            let to_runners_only =
                rule.pointer("/to")
                    .and_then(Value::as_array)
                    .is_some_and(|peers| {
                        !peers.is_empty()
                            && peers.iter().all(|peer| {
                                peer_pods(peer).is_some_and(|pods| selects(pods, runner))
                            })
                    });
            assert!(
                to_runners_only,
                "NetworkPolicy {policy_name} lets the runners out on port {port} to others than \
                 runner pods: {rule}"
            );
            egress = true;
        }
    }
    assert!(
        ingress,
        "no NetworkPolicy admits the runners' port {port} from runner pods"
    );
    assert!(
        egress,
        "no NetworkPolicy lets the runners out to each other's port {port}"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose

fn compose() -> Value {
    let mut documents = yaml_documents(&deploy().join("compose.yaml"));
    assert_eq!(documents.len(), 1, "compose.yaml is one document");
    documents.remove(0)
}

/// Seconds of a duration written `45s`, `2m`, `1min` or `30`.
fn seconds(duration: &str) -> u64 {
    let duration = duration.trim();
    let (number, unit) = duration
        .find(|c: char| !c.is_ascii_digit())
        .map_or((duration, ""), |at| duration.split_at(at));
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration: {duration:?}"));
    match unit {
        "" | "s" => number,
        "m" | "min" => number * 60,
        other => panic!("unit {other:?} in {duration:?}"),
    }
}

#[test]
fn compose_services_have_health_checks_hardening_and_their_secrets() {
    let compose = compose();
    let services = compose
        .pointer("/services")
        .and_then(Value::as_object)
        .expect("services");
    assert_eq!(
        services.keys().map(String::as_str).collect::<Vec<_>>(),
        ["nats", "runner", "gateway"]
    );
    let declared: BTreeSet<String> = compose
        .pointer("/secrets")
        .and_then(Value::as_object)
        .map(|secrets| secrets.keys().cloned().collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, service) in services {
        if strings(service, "/healthcheck/test").len() < 2 {
            problems.push(format!("{name}: healthcheck.test"));
        }
        if text(service, "/read_only") != Some("true") {
            problems.push(format!("{name}: read_only: true"));
        }
        if !strings(service, "/cap_drop").contains(&"ALL".to_owned()) {
            problems.push(format!("{name}: cap_drop: [ALL]"));
        }
        if !strings(service, "/security_opt").contains(&"no-new-privileges:true".to_owned()) {
            problems.push(format!("{name}: security_opt: [no-new-privileges:true]"));
        }
        for secret in strings(service, "/secrets") {
            if !declared.contains(&secret) {
                problems.push(format!("{name}: secret {secret} is not declared"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "compose.yaml:\n  {}",
        problems.join("\n  ")
    );
    for (name, secret) in compose
        .pointer("/secrets")
        .and_then(Value::as_object)
        .expect("secrets")
    {
        assert_eq!(
            text(secret, "/file"),
            Some(format!("./secrets/{name}").as_str()),
            "secret {name} is a file in deploy/secrets"
        );
    }

    // Each quench service gets exactly the secret files its config reads, at /run/secrets.
    for (service, config, command) in [
        (
            "runner",
            "deploy/quench.toml",
            "quench serve --config /etc/quench/quench.toml",
        ),
        (
            "gateway",
            "deploy/quench-gateway.toml",
            "quench-gateway --config /etc/quench/quench-gateway.toml",
        ),
    ] {
        let service = &services[service];
        let mounted: BTreeSet<String> = strings(service, "/secrets").into_iter().collect();
        assert_eq!(
            mounted,
            secret_names(config),
            "compose secrets for {config}"
        );
        assert_eq!(strings(service, "/command").join(" "), command);
        let config_name = Path::new(config).file_name().and_then(|name| name.to_str());
        assert!(
            strings(service, "/volumes").iter().any(
                |volume| volume.starts_with(&format!("./{}:", config_name.unwrap_or_default()))
            ),
            "compose mounts {config}"
        );
    }
    let runner = &services["runner"];
    assert!(
        strings(runner, "/volumes")
            .iter()
            .any(|volume| volume.ends_with(":/var/lib/quench")),
        "the runner's store is on a volume"
    );
    assert!(
        seconds(text(runner, "/stop_grace_period").expect("stop_grace_period")) > 20,
        "more than the runner's 20 s grace"
    );
    assert!(
        strings(runner, "/healthcheck/test")
            .iter()
            .any(|part| part.ends_with("/readyz")),
        "the runner's health check is /readyz"
    );

    // nats-server gets every password its config reads, from the secret files.
    let nats = &services["nats"];
    assert_eq!(text(nats, "/image"), Some("nats:2.12.8-alpine"));
    let script = strings(nats, "/command").join("\n");
    for variable in nats_variables() {
        assert!(
            script.contains(&format!("export {variable}=\"$$(cat /run/secrets/")),
            "the NATS service sets {variable} from a secret file:\n{script}"
        );
    }
    assert!(
        script.contains("-c /etc/nats/nats-server.conf -m 8222"),
        "{script}"
    );
    assert!(
        strings(nats, "/healthcheck/test")
            .iter()
            .any(|part| part.starts_with("http://127.0.0.1:8222/healthz")),
        "NATS is checked on its monitoring port"
    );
}

#[test]
fn docker_compose_accepts_the_file_where_docker_is_installed() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!("docker compose is not available here: skipping `docker compose config -q`");
        return;
    }
    // A copy with the secret files and the playbooks directory compose expects next to it.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("deploy");
    std::fs::create_dir_all(copy.join("secrets")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("workflows")).expect("mkdir");
    for name in [
        "compose.yaml",
        "Dockerfile",
        "nats-server.conf",
        "quench.toml",
        "quench-gateway.toml",
    ] {
        std::fs::copy(deploy().join(name), copy.join(name)).expect("copy");
    }
    let compose = compose();
    for name in compose
        .pointer("/secrets")
        .and_then(Value::as_object)
        .expect("secrets")
        .keys()
    {
        std::fs::write(copy.join("secrets").join(name), "secret\n").expect("write a secret");
    }
    let output = Command::new("docker")
        .args(["compose", "-f"])
        .arg(copy.join("compose.yaml"))
        .args(["config", "-q"])
        .output()
        .expect("docker compose runs");
    assert!(
        output.status.success(),
        "docker compose config -q:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

/// A unit file as `section → [(key, value)]`, in order (keys repeat: `LoadCredential=`).
fn unit(name: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let path = deploy().join("systemd").join(name);
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    for (number, line) in read(&path).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}:{}: not `Key=value`: {line}", number + 1));
        assert!(
            !section.is_empty(),
            "{name}:{}: a key before any section",
            number + 1
        );
        sections
            .entry(section.clone())
            .or_default()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

fn values<'a>(
    unit: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    unit.get(section)
        .map(|entries| {
            entries
                .iter()
                .filter(|(name, _)| name == key)
                .map(|(_, value)| value.as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn systemd_units_are_hardened_and_load_the_credentials_their_configs_read() {
    for (name, config, binary) in [
        (
            "quench.service",
            "deploy/systemd/quench.toml",
            "quench serve",
        ),
        (
            "quench-gateway.service",
            "deploy/systemd/quench-gateway.toml",
            "quench-gateway",
        ),
    ] {
        let unit = unit(name);
        let mut problems = Vec::new();
        for (key, expected) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            ("RestrictSUIDSGID", "yes"),
            ("Restart", "on-failure"),
        ] {
            if !values(&unit, "Service", key).contains(&expected) {
                problems.push(format!("{key}={expected}"));
            }
        }
        let user = values(&unit, "Service", "User");
        if user.is_empty() && values(&unit, "Service", "DynamicUser") != ["yes"] {
            problems.push("User= or DynamicUser=yes".to_owned());
        }
        if user.contains(&"root") {
            problems.push("not User=root".to_owned());
        }
        match values(&unit, "Service", "TimeoutStopSec").as_slice() {
            [timeout] if seconds(timeout) > 20 => {}
            other => problems.push(format!("TimeoutStopSec above 20 s, not {other:?}")),
        }
        let exec = values(&unit, "Service", "ExecStart").join(" ");
        let config_name = Path::new(config)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if !exec.contains(&format!("{binary} --config /etc/quench/{config_name}")) {
            problems.push(format!(
                "ExecStart= runs {binary} with /etc/quench/{config_name}"
            ));
        }
        if values(&unit, "Install", "WantedBy") != ["multi-user.target"] {
            problems.push("WantedBy=multi-user.target".to_owned());
        }
        // LoadCredential=<name>:<source> for exactly the files the config names.
        let credentials: BTreeSet<String> = values(&unit, "Service", "LoadCredential")
            .iter()
            .filter_map(|value| value.split_once(':').map(|(name, _)| name.to_owned()))
            .collect();
        if credentials != secret_names(config) {
            problems.push(format!(
                "LoadCredential= {credentials:?} against {config}: {:?}",
                secret_names(config)
            ));
        }
        assert!(
            problems.is_empty(),
            "deploy/systemd/{name}:\n  {}",
            problems.join("\n  ")
        );
    }
    let runner = unit("quench.service");
    assert_eq!(values(&runner, "Service", "StateDirectory"), ["quench"]);
    assert!(
        read(&deploy().join("systemd/quench.toml")).contains("path = \"/var/lib/quench/state\""),
        "the store is in the unit's StateDirectory"
    );
}
