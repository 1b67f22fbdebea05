//! The subcommands that talk to a running service through its admin API (`--api`, `--token` or
//! `QUENCH_TOKEN`): runs, approvals, playbooks, dead letters and the online audit check. Tables
//! by default, `--json` for scripts.
//!
//! Exit codes: 0 done, 1 refused or invalid (the API said no, or a check failed), 2 usage or
//! local I/O, 64 bad `--api`, 69 the API cannot be reached (or says a dependency is down),
//! 77 authentication (no, unknown, or too weak a token).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{EXIT_CONFIG, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::playbook::{Located, Severity};
use crate::service::api::types::{
    AppliedView, ApplyRequest, AttributesRequest, AttributesView, AuditPage, AuditView,
    CancelRequest, Cancelled, DecisionRequest, DecisionResult, DlqPage, ErrorBody, History,
    IdentityDetail, InventoryPage, PlaybookList, PruneRequest, PruneResult, Replayed,
    RestartRequest, Restarted, RunDetail, RunPage, StepView, Verified, VersionSource,
};

/// Exit code for authentication and permission failures (EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// How long one API request may take (an audit verification reads the whole log).
const TIMEOUT: Duration = Duration::from_secs(300);

/// Where the API is and who is calling.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The admin API's base URL (https, or http to a loopback address). Default: the
    /// `quench up` running in this directory (./data/up.json), else http://127.0.0.1:8080.
    #[arg(long = "api", env = "QUENCH_API_URL")]
    pub url: Option<String>,
    /// A bearer token from the service's `[[api.tokens]]`.
    #[arg(long, env = "QUENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// open, running, waiting, completed, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        playbook: Option<String>,
        /// Finding key (exact).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The `next` cursor printed by the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A run: its steps, gates and audit entries.
    Show {
        /// The run id, or a unique prefix of it.
        run: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a run that has not ended.
    Cancel {
        /// The run id, or a unique prefix of it.
        run: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Restart a failed run from the step that failed it (a new attempt, same idempotency key).
    Restart {
        /// The run id, or a unique prefix of it.
        run: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `quench approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The run id, or a unique prefix of it.
    pub run: String,
    /// The approval step's id.
    #[arg(long)]
    pub gate: String,
    /// One of the gate's choices (e.g. approve, deny, revoke, keep).
    #[arg(long)]
    pub choice: String,
    /// The item answered, on a gate that asks per item (an attestation lists identities:
    /// `--item project_key:key_abc`).
    #[arg(long)]
    pub item: Option<String>,
    /// Said with the answer (for a key kept in an attestation, its purpose).
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum CampaignCommand {
    /// Start a campaign: every project key in the scope goes to its owner (the owner chain),
    /// one Slack message per owner, asked by the attestation playbook.
    Start {
        /// A name people recognise, e.g. "2026-Q4 key review".
        #[arg(long)]
        name: String,
        /// Only keys of this project (id).
        #[arg(long)]
        project: Option<String>,
        /// Only keys with this risk (leaked, unused, never_used, no_expiry, …).
        #[arg(long)]
        risk: Option<String>,
        /// Only keys whose resolved owner is in this team (`[teams]`).
        #[arg(long)]
        team: Option<String>,
        /// Only keys this user owns in OpenAI (email or id).
        #[arg(long)]
        owner: Option<String>,
        /// Only keys not used for at least this long, e.g. 90d.
        #[arg(long)]
        unused_for: Option<String>,
        /// The attestation playbook (default attest-openai-identities).
        #[arg(long)]
        playbook: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every campaign.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One campaign's progress: totals, per owner, per team, and (with --items) per key.
    Show {
        id: String,
        /// List every key with its state and answer.
        #[arg(long)]
        items: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PlaybooksCommand {
    /// Loaded playbooks, and files the service refused.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apply playbooks (files, or directories of *.yaml): each is compiled by the service and,
    /// when it compiles, written into its playbooks directory and made current.
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The versions a playbook has had, newest first.
    History {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A unified diff between two versions (full `sha256:…` or a unique prefix of the hex).
    Diff {
        name: String,
        from: String,
        to: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let a playbook start new runs again.
    Enable {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop a playbook from starting new runs (its open runs go on).
    Disable {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum InventoryCommand {
    /// Identities of the estate (keys, service accounts, admin keys, users, projects) with
    /// their risks, in id order.
    List {
        /// project, project_key, service_account, admin_key or user.
        #[arg(long)]
        kind: Option<String>,
        /// A project id.
        #[arg(long)]
        project: Option<String>,
        /// A key owner's email, user id or service-account id.
        #[arg(long)]
        owner: Option<String>,
        /// leaked, unused, never_used, no_expiry, unrestricted_scopes, owner_left, admin_key,
        /// too_old.
        #[arg(long)]
        risk: Option<String>,
        /// Keys not used for at least this long (e.g. 90d), never-used ones included.
        #[arg(long)]
        unused_for: Option<String>,
        /// Keys whose owner left the project or that name none.
        #[arg(long)]
        unowned: bool,
        /// Keys that expire within this long (e.g. 14d).
        #[arg(long)]
        expiring_within: Option<String>,
        /// Deleted identities too.
        #[arg(long)]
        include_deleted: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The `next` cursor printed by the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One identity: its facts, risks, attributes and history.
    Show {
        /// The identity's id, e.g. project_key:key_abc.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// How the inventory sync is doing.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Record who owns an identity: an email, or `team:<name>` (a team under `[teams]`).
    SetOwner {
        /// The identity, e.g. project_key:key_abc or service_account:svc_1.
        id: String,
        /// An email or team:<name>; "" clears it.
        owner: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Record what an identity is for.
    SetPurpose {
        /// The identity, e.g. project_key:key_abc.
        id: String,
        /// The purpose (at most 500 characters); "" clears it.
        purpose: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The owner and purpose recorded for an identity, with who set them and when.
    Attributes {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Dead-lettered messages, oldest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Republish dead letters to their original subjects and remove them from the DLQ.
    Replay {
        #[arg(required = true)]
        seqs: Vec<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Why a request did not give an answer to show.
#[derive(Debug)]
enum Failure {
    /// `--api` is not usable.
    Config(String),
    Unreachable(String),
    Auth(String),
    /// The API answered with an error.
    Refused(ErrorBody),
    /// What the command names does not exist (or is ambiguous).
    NotFound(String),
    Local(String),
}

impl Failure {
    fn report(self, err: &mut dyn Write) -> u8 {
        match self {
            Failure::Config(message) => {
                let _ = writeln!(err, "error: {message}");
                EXIT_CONFIG
            }
            Failure::Unreachable(message) => {
                let _ = writeln!(err, "error: {message}");
                EXIT_UNAVAILABLE
            }
            Failure::Auth(message) => {
                let _ = writeln!(err, "error: {message}");
                EXIT_NOPERM
            }
            Failure::Refused(body) => {
                let _ = writeln!(err, "error: {} ({})", body.error.message, body.error.code);
                for diagnostic in &body.diagnostics {
                    let _ = writeln!(err, "{}", diagnostic_line(diagnostic));
                }
                EXIT_INVALID
            }
            Failure::Local(message) => {
                let _ = writeln!(err, "error: {message}");
                EXIT_USAGE
            }
            Failure::NotFound(message) => {
                let _ = writeln!(err, "error: {message}");
                EXIT_INVALID
            }
        }
    }
}

/// One diagnostic as `file:line:col: error[code]: message` (and its help).
fn diagnostic_line(diagnostic: &Located) -> String {
    let severity = match diagnostic.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut line = format!(
        "{}:{}:{}: {severity}[{}]: {}",
        diagnostic.file, diagnostic.line, diagnostic.column, diagnostic.code, diagnostic.message
    );
    if let Some(help) = &diagnostic.help {
        line.push_str(&format!("\n    help: {help}"));
    }
    line
}

/// A blocking client of the admin API.
struct Client {
    base: url::Url,
    token: Option<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    /// Sent as `Quench-Partition`: the partition asked, in a cluster of several.
    partition: Option<u32>,
}

impl ApiArgs {
    /// `--api`, else the `quench up` running in this directory, else the default.
    pub fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            crate::service::up::Endpoints::of_running(&crate::service::up::data_dir())
                .map_or_else(|| "http://127.0.0.1:8080".to_owned(), |up| up.api)
        })
    }
}

impl Client {
    fn new(args: &ApiArgs) -> Result<Client, Failure> {
        let url = args.url();
        let mut base = quench_common::http::check_base_url(&url)
            .map_err(|problem| Failure::Config(format!("--api {url:?} {problem}")))?;
        // Paths are joined to it: keep a prefix such as `/quench` as a directory.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = quench_common::http::http_client_builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| Failure::Local(format!("cannot build the HTTP client: {error}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Failure::Local(format!("cannot start the runtime: {error}")))?;
        Ok(Client {
            base,
            token: args.token.clone().filter(|token| !token.is_empty()),
            http,
            runtime,
            partition: None,
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, Failure> {
        self.send::<T, ()>(Method::GET, path, query, None)
    }

    fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.send(Method::POST, path, &[], Some(body))
    }

    fn put<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.send(Method::PUT, path, &[], Some(body))
    }

    fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, Failure> {
        self.runtime.block_on(async {
            let (url, response) = self.request(method, path, query, body).await?;
            let bytes = response.bytes().await.map_err(|error| {
                Failure::Unreachable(format!("the answer from {url} broke off: {error}"))
            })?;
            serde_json::from_slice(&bytes)
                .map_err(|error| Failure::Local(format!("unexpected answer from {url}: {error}")))
        })
    }

    /// A GET whose body is written to `into` as it arrives (for answers that are not JSON and
    /// can be large, such as an audit export).
    fn download(
        &self,
        path: &str,
        query: &[(&str, String)],
        into: &mut dyn Write,
    ) -> Result<(), Failure> {
        self.runtime.block_on(async {
            let (url, mut response) = self.request::<()>(Method::GET, path, query, None).await?;
            while let Some(chunk) = response.chunk().await.map_err(|error| {
                Failure::Unreachable(format!("the answer from {url} broke off: {error}"))
            })? {
                into.write_all(&chunk)
                    .map_err(|error| Failure::Local(format!("cannot write: {error}")))?;
            }
            Ok(())
        })
    }

    /// Sends a request; a status other than success becomes the failure it stands for.
    async fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<(url::Url, reqwest::Response), Failure> {
        let url = self
            .base
            .join(path)
            .map_err(|error| Failure::Config(format!("--api {}: {error}", self.base)))?;
        let mut request = self.http.request(method, url.clone()).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(partition) = self.partition {
            request = request.header("quench-partition", partition);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            Failure::Unreachable(format!(
                "cannot reach the quench API at {}: {} (is `quench serve` running there? see --api)",
                self.base,
                error.without_url()
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok((url, response));
        }
        let bytes = response.bytes().await.map_err(|error| {
            Failure::Unreachable(format!("the answer from {url} broke off: {error}"))
        })?;
        let body: ErrorBody = serde_json::from_slice(&bytes).map_err(|_| {
            Failure::Refused(ErrorBody::new(
                "http",
                format!("{status} from {url}: {}", String::from_utf8_lossy(&bytes)),
            ))
        })?;
        Err(match (status, body.error.code.as_str()) {
            (StatusCode::UNAUTHORIZED, _) => Failure::Auth(format!(
                "{} (give --token or set QUENCH_TOKEN)",
                body.error.message
            )),
            (StatusCode::FORBIDDEN, "forbidden") => Failure::Auth(body.error.message),
            (StatusCode::SERVICE_UNAVAILABLE, _) => Failure::Unreachable(body.error.message),
            _ => Failure::Refused(body),
        })
    }
}

/// Runs an API command: builds the client, calls `body`, reports a failure.
fn with_client(
    args: &ApiArgs,
    err: &mut dyn Write,
    body: impl FnOnce(&Client) -> Result<u8, Failure>,
) -> u8 {
    match Client::new(args).and_then(|client| body(&client)) {
        Ok(code) => code,
        Err(failure) => failure.report(err),
    }
}

/// [`with_client`], asking `partition` (a cluster of several partitions) when one is named.
fn with_client_in(
    args: &ApiArgs,
    partition: Option<u32>,
    err: &mut dyn Write,
    body: impl FnOnce(&Client) -> Result<u8, Failure>,
) -> u8 {
    let client = Client::new(args).map(|client| Client {
        partition,
        ..client
    });
    match client.and_then(|client| body(&client)) {
        Ok(code) => code,
        Err(failure) => failure.report(err),
    }
}

fn print_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), Failure> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(std::io::Error::other)
        .and_then(|()| writeln!(out))
        .map_err(|error| Failure::Local(format!("cannot write the output: {error}")))
}

fn write_text(out: &mut dyn Write, text: &str) -> Result<(), Failure> {
    out.write_all(text.as_bytes())
        .map_err(|error| Failure::Local(format!("cannot write the output: {error}")))
}

/// Aligned columns: a header row, then each row; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (index, cell) in cells.into_iter().enumerate() {
            if index == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[index]));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn short(version: &str) -> String {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    hex.chars().take(12).collect()
}

fn time(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// A list request's query: `limit`, and each filter that is given.
fn list_query(
    limit: usize,
    filters: &[(&'static str, &Option<String>)],
) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", limit.to_string())];
    for (name, value) in filters {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    query
}

/// `quench runs …`.
pub(super) fn runs(command: &RunsCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match command {
        RunsCommand::List {
            state,
            playbook,
            key,
            limit,
            cursor,
            api,
        } => with_client(api, err, |client| {
            let query = list_query(
                *limit,
                &[
                    ("state", state),
                    ("playbook", playbook),
                    ("key", key),
                    ("cursor", cursor),
                ],
            );
            let page: RunPage = client.get("api/v1/runs", &query)?;
            if api.json {
                print_json(out, &page)?;
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = page
                .runs
                .iter()
                .map(|run| {
                    vec![
                        run.id.clone(),
                        run.playbook.clone(),
                        run.status.clone(),
                        or_dash(run.step.as_deref()),
                        time(&run.started_at),
                        run.key.clone(),
                    ]
                })
                .collect();
            let mut text = table(
                &["RUN", "PLAYBOOK", "STATUS", "STEP", "STARTED", "KEY"],
                &rows,
            );
            if let Some(next) = &page.next {
                text.push_str(&format!("more: --cursor {next}\n"));
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
        RunsCommand::Show { run, api } => with_client(api, err, |client| {
            let run = resolve_run(client, run)?;
            let detail: RunDetail = client.get(&format!("api/v1/runs/{}", segment(&run)), &[])?;
            if api.json {
                print_json(out, &detail)?;
                return Ok(EXIT_OK);
            }
            write_text(out, &show_run(&detail))?;
            Ok(EXIT_OK)
        }),
        RunsCommand::Cancel { run, reason, api } => with_client(api, err, |client| {
            let run = resolve_run(client, run)?;
            let cancelled: Cancelled = client.post(
                &format!("api/v1/runs/{}/cancel", segment(&run)),
                &CancelRequest {
                    reason: reason.clone(),
                },
            )?;
            if api.json {
                print_json(out, &cancelled)?;
            } else {
                write_text(out, &format!("run {} cancelled\n", cancelled.id))?;
            }
            Ok(EXIT_OK)
        }),
        RunsCommand::Restart { run, reason, api } => with_client(api, err, |client| {
            let run = resolve_run(client, run)?;
            let restarted: Restarted = client.post(
                &format!("api/v1/runs/{}/restart", segment(&run)),
                &RestartRequest {
                    reason: reason.clone(),
                },
            )?;
            if api.json {
                print_json(out, &restarted)?;
            } else {
                write_text(
                    out,
                    &format!(
                        "run {} restarted from step {}\n",
                        restarted.id, restarted.step
                    ),
                )?;
            }
            Ok(EXIT_OK)
        }),
    }
}

/// The run a command names: a full id as given, else the one run whose id starts with it.
fn resolve_run(client: &Client, given: &str) -> Result<String, Failure> {
    if uuid::Uuid::try_parse(given).is_ok() {
        return Ok(given.to_owned());
    }
    let page: RunPage = client.get(
        "api/v1/runs",
        &[("id_prefix", given.to_owned()), ("limit", "3".to_owned())],
    )?;
    match page.runs.as_slice() {
        [] => Err(Failure::NotFound(format!(
            "no run id starts with {given:?} (`quench runs list` shows them)"
        ))),
        [run] => Ok(run.id.clone()),
        runs => {
            let ids: Vec<&str> = runs.iter().map(|run| run.id.as_str()).collect();
            Err(Failure::NotFound(format!(
                "{given:?} is the start of more than one run id ({}{}): give more of it",
                ids.join(", "),
                if page.next.is_some() || runs.len() > 2 {
                    ", …"
                } else {
                    ""
                }
            )))
        }
    }
}

fn show_run(detail: &RunDetail) -> String {
    let run = &detail.run;
    let mut text = format!(
        "run       {}\nplaybook  {} ({})\nkey       {}\nstatus    {}\nmode      {}\nstarted   {}\n",
        run.id,
        run.playbook,
        short(&run.version),
        run.key,
        run.status,
        run.mode,
        time(&run.started_at)
    );
    if let Some(ended) = &run.ended_at {
        text.push_str(&format!("ended     {}\n", time(ended)));
    }
    if let (Some(id), Some(kind)) = (&run.finding_id, &run.finding_kind) {
        text.push_str(&format!("finding   {id} ({kind})\n"));
    }
    if let Some(failure) = &run.failure {
        text.push_str(&format!("failure   {failure}\n"));
    }
    if let Some(reason) = &run.cancelled {
        text.push_str(&format!("cancelled {reason}\n"));
    }
    if let Some(owner) = &detail.owner {
        text.push_str(&format!(
            "owner     {} ({}: {})\n",
            owner.recipient.as_deref().unwrap_or("nobody"),
            owner.link.as_str(),
            owner.source
        ));
    }
    // `on_failure` steps are shown when the run reached them.
    let shown: Vec<&StepView> = detail
        .steps
        .iter()
        .filter(|step| step.phase == "main" || step.status != "not_run")
        .collect();
    text.push_str("\nsteps:\n");
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|step| {
            vec![
                format!(
                    "  {}{}",
                    step.id,
                    if step.phase == "on_failure" {
                        " (on_failure)"
                    } else {
                        ""
                    }
                ),
                or_dash(step.action.as_deref()),
                step.status.clone(),
                step.finished_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), time),
                step_detail(step),
            ]
        })
        .collect();
    text.push_str(&table(
        &["  STEP", "ACTION", "STATUS", "FINISHED", "DETAIL"],
        &rows,
    ));
    for gate in &detail.gates {
        let state = match (&gate.decision, gate.closed) {
            (Some(choice), _) => format!("decided {choice} by {}", gate.decided_by.join(", ")),
            (None, true) => "closed".to_owned(),
            (None, false) => format!("open until {}", time(&gate.deadline)),
        };
        text.push_str(&format!(
            "\ngate {}: {}\n  choices: {}; approvers: {}; {state}\n",
            gate.step,
            gate.question,
            gate.choices.join(", "),
            gate.approvers.join(", ")
        ));
        for answer in &gate.answers {
            text.push_str(&format!(
                "  answered {} by {} via {} at {}{}\n",
                answer.choice,
                answer.actor,
                answer.via,
                time(&answer.at),
                answer
                    .comment
                    .as_deref()
                    .map_or_else(String::new, |comment| format!(": {}", quoted(comment)))
            ));
        }
        // Answers the engine refused are in the audit trail only: shown here, marked.
        for entry in detail.audit.iter().filter(|entry| {
            entry.kind == "decision"
                && entry.step.as_deref() == Some(gate.step.as_str())
                && entry.detail.get("refused").is_some()
        }) {
            let text_of = |name: &str| entry.detail.get(name).and_then(|value| value.as_str());
            text.push_str(&format!(
                "  REFUSED  {} by {} via {} at {}: {}\n",
                text_of("choice").unwrap_or("-"),
                who(entry),
                entry
                    .actor
                    .as_ref()
                    .and_then(|actor| actor.get("via"))
                    .and_then(|via| via.as_str())
                    .unwrap_or("-"),
                time(&entry.at),
                text_of("reason")
                    .or(text_of("refused"))
                    .unwrap_or("refused")
            ));
        }
    }
    text.push_str(&format!("\naudit ({} entries):\n", detail.audit.len()));
    let rows: Vec<Vec<String>> = detail
        .audit
        .iter()
        .map(|entry| {
            vec![
                format!("  #{}", entry.seq),
                time(&entry.at),
                entry.kind.clone(),
                or_dash(entry.step.as_deref()),
                who(entry),
                audit_detail(entry),
            ]
        })
        .collect();
    text.push_str(&table(
        &["  SEQ", "AT", "KIND", "STEP", "ACTOR", "DETAIL"],
        &rows,
    ));
    text
}

/// What a step did, in a line: the request it sent (or would have), a note's text, who
/// decided an approval, or its error.
fn step_detail(step: &StepView) -> String {
    if let Some(choice) = &step.choice {
        return format!(
            "{choice} by {}{}",
            step.decided_by.join(", "),
            step.via
                .as_deref()
                .map_or_else(String::new, |via| format!(" via {via}"))
        );
    }
    let mut parts: Vec<String> = Vec::new();
    match step.requests.as_slice() {
        [] => {}
        [request] => parts.push(request_line(request)),
        [first, ..] => parts.push(format!(
            "{} requests, first: {}",
            step.requests.len(),
            request_line(first)
        )),
    }
    if step.action.as_deref() == Some("note")
        && let Some(message) = step.output.get("message").and_then(|value| value.as_str())
    {
        parts.push(quoted(message));
    }
    if let Some(error) = &step.error {
        parts.push(error.clone());
    }
    parts.join("; ")
}

/// A request as one line: `DELETE /v1/organization/…`, `POST https://…`, `to #channel: "…"`.
fn request_line(request: &serde_json::Value) -> String {
    let text = |name: &str| request.get(name).and_then(|value| value.as_str());
    match (text("method"), text("path"), text("url"), text("to")) {
        (Some(method), Some(path), _, _) => format!("{method} {path}"),
        (Some(method), None, Some(url), _) => format!("{method} {url}"),
        (_, _, _, Some(to)) => match text("text") {
            Some(message) => format!("to {to}: {}", quoted(message)),
            None => format!("to {to}"),
        },
        _ => clip(&request.to_string()),
    }
}

/// An audit entry's detail, in a line: what matters for its kind.
fn audit_detail(entry: &AuditView) -> String {
    let detail = &entry.detail;
    let text = |name: &str| detail.get(name).and_then(|value| value.as_str());
    let line = match entry.kind.as_str() {
        "decision" => {
            let choice = text("choice").unwrap_or("-");
            let comment = text("comment")
                .map_or_else(String::new, |comment| format!(": {}", quoted(comment)));
            match (text("refused"), text("reason")) {
                (Some(_), Some(reason)) => format!("REFUSED {choice}: {reason}"),
                (Some(code), None) => format!("REFUSED {choice}: {code}"),
                _ => format!("{choice}{comment}"),
            }
        }
        "step_intent" | "step_dry_run" => {
            let action = text("action").unwrap_or("-");
            match detail.get("request") {
                Some(request) if !request.is_null() => {
                    format!("{action}: {}", request_line(request))
                }
                _ => action.to_owned(),
            }
        }
        "note" => text("message").map(quoted).unwrap_or_default(),
        _ => {
            let mut parts = Vec::new();
            for name in [
                "choice", "status", "outcome", "error", "reason", "key", "version",
            ] {
                if let Some(value) = text(name) {
                    parts.push(format!("{name}={value}"));
                }
            }
            parts.join(" ")
        }
    };
    clip(&line)
}

/// A text in quotes, on one line.
fn quoted(text: &str) -> String {
    clip(&format!("{:?}", text.replace('\n', " ")))
}

/// At most 100 characters.
fn clip(text: &str) -> String {
    const MAX: usize = 100;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(MAX - 1).collect();
        clipped.push('…');
        clipped
    }
}

/// `quench approve`.
pub(super) fn approve(args: &ApproveArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    with_client(&args.api, err, |client| {
        let run = resolve_run(client, &args.run)?;
        let result: DecisionResult = client.post(
            &format!(
                "api/v1/runs/{}/gates/{}/decision",
                segment(&run),
                segment(&args.gate)
            ),
            &DecisionRequest {
                choice: args.choice.clone(),
                item: args.item.clone(),
                comment: args.comment.clone(),
            },
        )?;
        if args.api.json {
            print_json(out, &result)?;
        } else if result.outcome == "decided" {
            write_text(
                out,
                &format!(
                    "gate {} of run {}: decided {}\n",
                    args.gate, run, result.choice
                ),
            )?;
        } else {
            write_text(
                out,
                &format!(
                    "gate {} of run {}: answer {} recorded ({} of {} needed)\n",
                    args.gate,
                    run,
                    result.choice,
                    result.answers.unwrap_or_default(),
                    result.quorum.unwrap_or_default()
                ),
            )?;
        }
        Ok(EXIT_OK)
    })
}

/// `quench playbooks …`.
pub(super) fn playbooks(
    command: &PlaybooksCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match command {
        PlaybooksCommand::List { api } => with_client(api, err, |client| {
            let list: PlaybookList = client.get("api/v1/playbooks", &[])?;
            if api.json {
                print_json(out, &list)?;
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = list
                .playbooks
                .iter()
                .map(|playbook| {
                    vec![
                        playbook.name.clone(),
                        short(&playbook.version),
                        if playbook.enabled {
                            "enabled"
                        } else {
                            "disabled"
                        }
                        .to_owned(),
                        playbook.trigger.clone(),
                    ]
                })
                .collect();
            let mut text = table(&["PLAYBOOK", "VERSION", "STATE", "TRIGGER"], &rows);
            for refused in &list.refused {
                text.push_str(&format!(
                    "\nrefused: {}{}\n",
                    refused.file,
                    refused
                        .serving
                        .as_deref()
                        .map(|version| format!(" (version {} keeps serving)", short(version)))
                        .unwrap_or_default()
                ));
                for diagnostic in &refused.diagnostics {
                    text.push_str(&format!("  {}\n", diagnostic_line(diagnostic)));
                }
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
        PlaybooksCommand::Apply { paths, api } => apply(paths, api, out, err),
        PlaybooksCommand::History { name, api } => with_client(api, err, |client| {
            let history: History =
                client.get(&format!("api/v1/playbooks/{}/history", segment(name)), &[])?;
            if api.json {
                print_json(out, &history)?;
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = history
                .versions
                .iter()
                .map(|entry| {
                    vec![
                        entry.version.clone(),
                        time(&entry.at),
                        entry.by.clone(),
                        if entry.current { "current" } else { "" }.to_owned(),
                    ]
                })
                .collect();
            write_text(out, &table(&["VERSION", "LOADED", "BY", ""], &rows))?;
            Ok(EXIT_OK)
        }),
        PlaybooksCommand::Diff {
            name,
            from,
            to,
            api,
        } => with_client(api, err, |client| {
            let fetch = |version: &str| -> Result<VersionSource, Failure> {
                client.get(
                    &format!(
                        "api/v1/playbooks/{}/versions/{}",
                        segment(name),
                        segment(version)
                    ),
                    &[],
                )
            };
            let (old, new) = (fetch(from)?, fetch(to)?);
            let diff = similar::TextDiff::from_lines(&old.source, &new.source)
                .unified_diff()
                .header(&old.version, &new.version)
                .to_string();
            if api.json {
                print_json(
                    out,
                    &serde_json::json!({"name": name, "from": old.version, "to": new.version, "diff": diff}),
                )?;
            } else {
                write_text(out, &diff)?;
            }
            Ok(EXIT_OK)
        }),
        PlaybooksCommand::Enable { name, api } => set_enabled(name, "enable", api, out, err),
        PlaybooksCommand::Disable { name, api } => set_enabled(name, "disable", api, out, err),
    }
}

fn set_enabled(
    name: &str,
    verb: &str,
    api: &ApiArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    with_client(api, err, |client| {
        let state: crate::service::api::types::EnabledView = client.post(
            &format!("api/v1/playbooks/{}/{verb}", segment(name)),
            &serde_json::json!({}),
        )?;
        if api.json {
            print_json(out, &state)?;
        } else {
            let now = if state.enabled { "enabled" } else { "disabled" };
            let note = if state.changed { "" } else { " (already)" };
            write_text(out, &format!("playbook {} {now}{note}\n", state.name))?;
        }
        Ok(EXIT_OK)
    })
}

fn apply(paths: &[PathBuf], api: &ApiArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let files = match crate::playbook::expand(paths) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            let _ = writeln!(
                err,
                "error: no playbook files (*.yaml, *.yml) in the given paths"
            );
            return EXIT_USAGE;
        }
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_USAGE;
        }
    };
    with_client(api, err, |client| {
        let mut results = Vec::new();
        let mut refused = 0;
        let mut text = String::new();
        for file in &files {
            let label = file.display().to_string();
            let source = std::fs::read_to_string(file)
                .map_err(|error| Failure::Local(format!("cannot read {label}: {error}")))?;
            let answer: Result<AppliedView, Failure> = client.post(
                "api/v1/playbooks",
                &ApplyRequest {
                    source,
                    file: Some(label.clone()),
                },
            );
            match answer {
                Ok(applied) => {
                    let what = if applied.changed {
                        "applied"
                    } else {
                        "unchanged"
                    };
                    text.push_str(&format!(
                        "{what}  {} {} ({label})\n",
                        applied.name,
                        short(&applied.version)
                    ));
                    for warning in &applied.warnings {
                        text.push_str(&format!("  {}\n", diagnostic_line(warning)));
                    }
                    results.push(serde_json::json!({"file": label, "applied": applied}));
                }
                Err(Failure::Refused(body)) => {
                    refused += 1;
                    text.push_str(&format!("refused  {label}: {}\n", body.error.message));
                    for diagnostic in &body.diagnostics {
                        text.push_str(&format!("  {}\n", diagnostic_line(diagnostic)));
                    }
                    results.push(serde_json::json!({"file": label, "refused": body}));
                }
                Err(other) => return Err(other),
            }
        }
        if api.json {
            print_json(out, &results)?;
        } else {
            text.push_str(&format!(
                "apply: {} applied or unchanged, {refused} refused\n",
                files.len() - refused
            ));
            write_text(out, &text)?;
        }
        Ok(if refused == 0 { EXIT_OK } else { EXIT_INVALID })
    })
}

/// `quench inventory …`.
pub(super) fn inventory(
    command: &InventoryCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match command {
        InventoryCommand::SetOwner { id, owner, api } => attributes(
            id,
            Some(AttributesRequest {
                owner: Some(owner.clone()),
                purpose: None,
            }),
            api,
            out,
            err,
        ),
        InventoryCommand::SetPurpose { id, purpose, api } => attributes(
            id,
            Some(AttributesRequest {
                owner: None,
                purpose: Some(purpose.clone()),
            }),
            api,
            out,
            err,
        ),
        InventoryCommand::Attributes { id, api } => attributes(id, None, api, out, err),
        InventoryCommand::List {
            kind,
            project,
            owner,
            risk,
            unused_for,
            unowned,
            expiring_within,
            include_deleted,
            limit,
            cursor,
            api,
        } => with_client(api, err, |client| {
            let mut query = list_query(
                *limit,
                &[
                    ("kind", kind),
                    ("project", project),
                    ("owner", owner),
                    ("risk", risk),
                    ("unused_for", unused_for),
                    ("expiring_within", expiring_within),
                    ("cursor", cursor),
                ],
            );
            if *unowned {
                query.push(("unowned", "true".to_owned()));
            }
            if *include_deleted {
                query.push(("include_deleted", "true".to_owned()));
            }
            let page: InventoryPage = client.get("api/v1/inventory", &query)?;
            if api.json {
                print_json(out, &page)?;
                return Ok(EXIT_OK);
            }
            let text_of = |value: &serde_json::Value| value.as_str().unwrap_or("-").to_owned();
            let rows: Vec<Vec<String>> = page
                .identities
                .iter()
                .map(|identity| {
                    let facts = &identity["facts"];
                    let owner = &facts["owner"];
                    let risks: Vec<&str> = identity["risks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|risk| risk["id"].as_str())
                        .collect();
                    let mut id = text_of(&identity["id"]);
                    if identity.get("deleted_at").is_some_and(|at| !at.is_null()) {
                        id.push_str(" (deleted)");
                    }
                    vec![
                        id,
                        text_of(&facts["name"]),
                        text_of(&facts["project_id"]),
                        owner["email"]
                            .as_str()
                            .or(owner["id"].as_str())
                            .unwrap_or("-")
                            .to_owned(),
                        text_of(&facts["last_used_at"]),
                        if risks.is_empty() {
                            "-".to_owned()
                        } else {
                            risks.join(",")
                        },
                    ]
                })
                .collect();
            let mut text = table(
                &["ID", "NAME", "PROJECT", "OWNER", "LAST USED", "RISKS"],
                &rows,
            );
            if let Some(next) = &page.next {
                text.push_str(&format!("more: --cursor {next}\n"));
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
        InventoryCommand::Show { id, api } => with_client(api, err, |client| {
            let detail: IdentityDetail =
                client.get(&format!("api/v1/inventory/{}", segment(id)), &[])?;
            if api.json {
                print_json(out, &detail)?;
                return Ok(EXIT_OK);
            }
            let identity = &detail.identity;
            let mut text = format!(
                "{}  ({})\n",
                identity["id"].as_str().unwrap_or("-"),
                identity["kind"].as_str().unwrap_or("-")
            );
            if let Some(deleted) = identity["deleted_at"].as_str() {
                text.push_str(&format!("deleted at {deleted}\n"));
            }
            if let Some(facts) = identity["facts"].as_object() {
                for (name, value) in facts {
                    let shown = match value {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    text.push_str(&format!("  {name}: {shown}\n"));
                }
            }
            let risks = identity["risks"].as_array().cloned().unwrap_or_default();
            text.push_str(if risks.is_empty() {
                "risks: none\n"
            } else {
                "risks:\n"
            });
            for risk in &risks {
                text.push_str(&format!(
                    "  {}: {}\n",
                    risk["id"].as_str().unwrap_or("-"),
                    risk["fact"].as_str().unwrap_or("-")
                ));
            }
            if let Some(attributes) = identity.get("attributes").filter(|value| !value.is_null()) {
                text.push_str(&format!("attributes: {attributes}\n"));
            }
            text.push_str("history:\n");
            for change in &detail.history {
                let fields: Vec<&str> = change["fields"]
                    .as_object()
                    .map(|fields| fields.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                text.push_str(&format!(
                    "  {}  {}  ({}) {}\n",
                    change["at"].as_str().unwrap_or("-"),
                    change["what"].as_str().unwrap_or("-"),
                    change["source"].as_str().unwrap_or("-"),
                    fields.join(", ")
                ));
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
        InventoryCommand::Status { api } => with_client(api, err, |client| {
            let status: serde_json::Value = client.get("api/v1/inventory/status", &[])?;
            print_json(out, &status)?;
            Ok(EXIT_OK)
        }),
    }
}

/// `quench dlq …`.
pub(super) fn dlq(command: &DlqCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match command {
        DlqCommand::List { limit, cursor, api } => with_client(api, err, |client| {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(cursor) = cursor {
                query.push(("cursor", cursor.to_string()));
            }
            let page: DlqPage = client.get("api/v1/dlq", &query)?;
            if api.json {
                print_json(out, &page)?;
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = page
                .messages
                .iter()
                .map(|message| {
                    vec![
                        message.seq.to_string(),
                        message.at.as_ref().map_or_else(|| "-".to_owned(), time),
                        or_dash(message.original_subject.as_deref()),
                        or_dash(message.reason.as_deref()),
                    ]
                })
                .collect();
            let mut text = table(&["SEQ", "AT", "SUBJECT", "REASON"], &rows);
            if let Some(next) = page.next {
                text.push_str(&format!("more: --cursor {next}\n"));
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
        DlqCommand::Replay { seqs, api } => with_client(api, err, |client| {
            let mut replayed = Vec::new();
            for seq in seqs {
                let done: Replayed =
                    client.post(&format!("api/v1/dlq/{seq}/replay"), &serde_json::json!({}))?;
                if !api.json {
                    write_text(out, &format!("replayed {} to {}\n", done.seq, done.subject))?;
                }
                replayed.push(done);
            }
            if api.json {
                print_json(out, &replayed)?;
            }
            Ok(EXIT_OK)
        }),
    }
}

/// `quench audit verify` against the running service.
pub(super) fn audit_verify(api: &ApiArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    with_client(api, err, |client| {
        let verified: Verified = client.get("api/v1/audit/verify", &[])?;
        if api.json {
            print_json(out, &verified)?;
        } else if verified.ok {
            write_text(
                out,
                &format!(
                    "audit chain ok: {} entries, head {}\n",
                    verified.entries, verified.head
                ),
            )?;
        } else {
            write_text(
                out,
                &format!(
                    "audit chain broken at entry #{}: {}\nentries #1 to #{} verify (head {})\n",
                    verified.first_bad.unwrap_or_default(),
                    verified.reason.as_deref().unwrap_or_default(),
                    verified.entries,
                    verified.head
                ),
            )?;
        }
        Ok(if verified.ok { EXIT_OK } else { EXIT_INVALID })
    })
}

/// `quench audit export`: the entries before `before`, written to `out_path` (beside it, then
/// renamed, once the file verifies on its own); with `prune`, then removed from the service.
pub(super) fn audit_export(
    before: u64,
    out_path: &std::path::Path,
    prune: bool,
    (api, partition): (&ApiArgs, Option<u32>),
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    with_client_in(api, partition, err, |client| {
        let partial = out_path.with_extension("partial");
        let local = |error: std::io::Error| {
            Failure::Local(format!("cannot write {}: {error}", partial.display()))
        };
        let mut file = std::fs::File::create(&partial).map_err(local)?;
        client.download(
            "api/v1/audit/export",
            &[("before", before.to_string())],
            &mut file,
        )?;
        file.sync_all().map_err(local)?;
        let text = std::fs::read_to_string(&partial).map_err(local)?;
        let segment = crate::store::verify_segment(&text, None).map_err(|problem| {
            Failure::Refused(ErrorBody::new(
                "export_does_not_verify",
                format!(
                    "the export in {} does not verify: {problem}",
                    partial.display()
                ),
            ))
        })?;
        std::fs::rename(&partial, out_path).map_err(local)?;
        write_text(
            out,
            &format!(
                "exported entries #{} to #{} to {} (they follow {}; the last hash is {})\n",
                segment.first,
                segment.last,
                out_path.display(),
                segment.prev,
                segment.head
            ),
        )?;
        if !prune {
            write_text(
                out,
                &format!(
                    "keep the file safe; then remove them from the service with:\n  quench audit prune --through {} --hash {}\n",
                    segment.last, segment.head
                ),
            )?;
            return Ok(EXIT_OK);
        }
        prune_through(client, segment.last, &segment.head, out)
    })
}

/// `quench audit prune`.
pub(super) fn audit_prune(
    through: u64,
    hash: &str,
    (api, partition): (&ApiArgs, Option<u32>),
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    with_client_in(api, partition, err, |client| {
        prune_through(client, through, hash, out)
    })
}

fn prune_through(
    client: &Client,
    through: u64,
    hash: &str,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let result: PruneResult = client.post(
        "api/v1/audit/prune",
        &PruneRequest {
            through,
            hash: hash.to_owned(),
        },
    )?;
    let text = match (result.checkpoint, result.checkpoint_hash) {
        (Some(seq), Some(hash)) => format!(
            "pruned the audit log through entry #{seq}; `audit verify` now starts after it (hash {hash})\n"
        ),
        _ => format!(
            "nothing pruned: entries are removed in whole stored records, and none ends by entry #{through}\n"
        ),
    };
    write_text(out, &text)?;
    Ok(EXIT_OK)
}

/// `quench audit list` against the running service.
pub(super) fn audit_list(
    args: &super::AuditListArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let api = &args.api;
    with_client_in(api, args.partition, err, |client| {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(before) = args.before {
            query.push(("before", before.to_string()));
        }
        if let Some(run) = &args.run {
            query.push(("run", resolve_run(client, run)?));
        }
        for (name, value) in [
            ("key", &args.key),
            ("kind", &args.kind),
            ("actor", &args.actor),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        let page: AuditPage = client.get("api/v1/audit", &query)?;
        if api.json {
            print_json(out, &page)?;
            return Ok(EXIT_OK);
        }
        let rows: Vec<Vec<String>> = page
            .entries
            .iter()
            .map(|entry| {
                vec![
                    entry.seq.to_string(),
                    time(&entry.at),
                    entry.kind.clone(),
                    or_dash(entry.playbook.as_deref()),
                    or_dash(entry.run_id.as_deref()),
                    or_dash(entry.step.as_deref()),
                    who(entry),
                    audit_detail(entry),
                ]
            })
            .collect();
        let mut text = table(
            &[
                "SEQ", "AT", "KIND", "PLAYBOOK", "RUN", "STEP", "ACTOR", "DETAIL",
            ],
            &rows,
        );
        if let Some(next) = page.next {
            text.push_str(&format!("more: --before {next}\n"));
        }
        write_text(out, &text)?;
        Ok(EXIT_OK)
    })
}

/// Who acted in an audit entry: its actor, or who loaded a playbook version.
fn who(entry: &AuditView) -> String {
    entry
        .actor
        .as_ref()
        .and_then(|actor| actor.get("id"))
        .or_else(|| entry.detail.get("by"))
        .and_then(|id| id.as_str())
        .unwrap_or("-")
        .to_owned()
}

/// A value as one URL path segment.
fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `quench inventory set-owner|set-purpose|attributes`: a change to an identity's attributes
/// (or none, to show them).
fn attributes(
    id: &str,
    request: Option<AttributesRequest>,
    api: &ApiArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    with_client(api, err, |client| {
        let path = format!("api/v1/inventory/{}/attributes", segment(id));
        let view: AttributesView = match &request {
            Some(request) => client.put(&path, request)?,
            None => client.get(&path, &[])?,
        };
        if api.json {
            print_json(out, &view)?;
            return Ok(EXIT_OK);
        }
        let line = |name: &str, attribute: &Option<crate::owners::Attribute>| match attribute {
            Some(attribute) => format!(
                "{name:<8} {}  (set by {} at {})\n",
                attribute.value,
                attribute.set_by,
                time(&attribute.set_at)
            ),
            None => format!("{name:<8} -\n"),
        };
        write_text(
            out,
            &format!(
                "{}\n{}{}",
                view.id,
                line("owner", &view.owner),
                line("purpose", &view.purpose)
            ),
        )?;
        Ok(EXIT_OK)
    })
}

/// `quench evidence --from --to`: the service makes and signs the pack; it is written to a new
/// directory (beside it, then renamed) and verified there before it is reported.
pub(super) fn evidence(args: &super::EvidenceArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use crate::evidence::Format;
    use base64::Engine as _;
    let (Some(from_text), Some(to_text)) = (&args.from, &args.to) else {
        let _ = writeln!(
            err,
            "error: give --from and --to (or `quench evidence verify PACK`)"
        );
        return EXIT_USAGE;
    };
    let bounds = crate::evidence::parse_bound(from_text, false)
        .map_err(|problem| format!("--from {problem}"))
        .and_then(|from| {
            crate::evidence::parse_bound(to_text, true)
                .map(|to| (from, to))
                .map_err(|problem| format!("--to {problem}"))
        })
        .and_then(|(from, to)| {
            crate::evidence::Period::new(from, to).map_err(|error| error.to_string())
        });
    let period = match bounds {
        Ok(period) => period,
        Err(problem) => {
            let _ = writeln!(err, "error: {problem}");
            return EXIT_USAGE;
        }
    };
    let formats: Vec<Format> = if args.format.is_empty() {
        vec![Format::Csv, Format::Html]
    } else {
        args.format
            .iter()
            .copied()
            .filter(|format| *format != Format::Json)
            .collect()
    };
    let dir = args.out.clone().unwrap_or_else(|| {
        let name = |text: &str| text.replace([':', '/', '\\', ' '], "-");
        PathBuf::from(format!("evidence-{}-{}", name(from_text), name(to_text)))
    });
    if dir.exists() {
        let _ = writeln!(
            err,
            "error: {} exists: give a new directory to --out",
            dir.display()
        );
        return EXIT_USAGE;
    }
    with_client(&args.api, err, |client| {
        let pack: crate::service::api::types::PackView = client.post(
            "api/v1/evidence",
            &crate::service::api::types::EvidenceRequest {
                from: period.from,
                to: period.to,
                formats: Some(formats.clone()),
            },
        )?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&pack.signature)
            .map_err(|error| Failure::Local(format!("the signature is not base64: {error}")))?;
        let signed = crate::evidence::Signed {
            files: pack.files,
            signature,
        };
        crate::evidence::write_pack(&signed, &dir).map_err(Failure::Local)?;
        let (verified, document) = crate::evidence::verify(&dir, None);
        if !verified.ok() {
            let mut text = format!("the pack written to {} does not verify:\n", dir.display());
            for check in verified.failures() {
                text.push_str(&format!(
                    "  {}: {}\n",
                    check.what,
                    check.problem.as_deref().unwrap_or_default()
                ));
            }
            return Err(Failure::Refused(ErrorBody::new(
                "pack_does_not_verify",
                text,
            )));
        }
        let summary = document
            .map(|document| document.summary)
            .unwrap_or_default();
        if args.api.json {
            print_json(
                out,
                &serde_json::json!({"pack": dir, "fingerprint": pack.fingerprint, "summary": summary}),
            )?;
        } else {
            write_text(
                out,
                &format!(
                    "wrote evidence pack {} ({} to {}): {} findings, {} mutating actions, {} exceptions\n\
                     signed by key {}\n\
                     check it with: quench evidence verify {} --public-key evidence-public.pem\n",
                    dir.display(),
                    period.from,
                    period.to,
                    summary.findings,
                    summary.actions,
                    summary.exceptions,
                    pack.fingerprint,
                    dir.display()
                ),
            )?;
        }
        Ok(EXIT_OK)
    })
}

/// `quench campaign`.
pub(super) fn campaign(command: &CampaignCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use crate::campaign::{Campaign, Counts, Progress, Scope, Start};
    let counts_row = |name: &str, counts: &Counts| {
        vec![
            name.to_owned(),
            counts.identities.to_string(),
            counts.answered.to_string(),
            counts.pending.to_string(),
            counts.defaulted.to_string(),
            counts.reassigned.to_string(),
            (counts.closed + counts.unassigned + counts.not_started).to_string(),
        ]
    };
    const COUNTS: [&str; 7] = [
        "",
        "KEYS",
        "ANSWERED",
        "PENDING",
        "DEFAULTED",
        "REASSIGNED",
        "NOT ASKED",
    ];
    match command {
        CampaignCommand::Start {
            name,
            project,
            risk,
            team,
            owner,
            unused_for,
            playbook,
            api,
        } => with_client(api, err, |client| {
            let start = Start {
                name: name.clone(),
                scope: Scope {
                    project: project.clone(),
                    risk: risk.clone(),
                    team: team.clone(),
                    owner: owner.clone(),
                    unused_for: unused_for.clone(),
                },
                playbook: playbook.clone(),
            };
            let campaign: Campaign = client.post("api/v1/campaigns", &start)?;
            if api.json {
                print_json(out, &campaign)?;
            } else {
                write_text(
                    out,
                    &format!(
                        "campaign {} started: {} key(s) in {} message(s); {} with nobody to ask\nfollow it: quench campaign show {}\n",
                        campaign.id,
                        campaign.identities,
                        campaign.parts,
                        campaign.unassigned.len(),
                        campaign.id
                    ),
                )?;
            }
            Ok(EXIT_OK)
        }),
        CampaignCommand::List { api } => with_client(api, err, |client| {
            #[derive(serde::Deserialize, serde::Serialize)]
            struct List {
                campaigns: Vec<Campaign>,
            }
            let list: List = client.get("api/v1/campaigns", &[])?;
            if api.json {
                print_json(out, &list)?;
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = list
                .campaigns
                .iter()
                .map(|campaign| {
                    vec![
                        campaign.id.clone(),
                        campaign.name.clone(),
                        campaign.scope.describe(),
                        campaign.started_at.format("%Y-%m-%d %H:%M").to_string(),
                        campaign.identities.to_string(),
                        campaign.completed_at.map_or_else(
                            || "running".to_owned(),
                            |at| format!("completed {}", at.format("%Y-%m-%d %H:%M")),
                        ),
                    ]
                })
                .collect();
            write_text(
                out,
                &table(&["ID", "NAME", "SCOPE", "STARTED", "KEYS", "STATUS"], &rows),
            )?;
            Ok(EXIT_OK)
        }),
        CampaignCommand::Show { id, items, api } => with_client(api, err, |client| {
            let progress: Progress =
                client.get(&format!("api/v1/campaigns/{}", segment(id)), &[])?;
            if api.json {
                print_json(out, &progress)?;
                return Ok(EXIT_OK);
            }
            let campaign = &progress.campaign;
            let mut text = format!(
                "{} ({}): {}\nscope: {}; playbook {}; started {} by {}\n",
                campaign.name,
                campaign.id,
                progress.status,
                campaign.scope.describe(),
                campaign.playbook,
                campaign.started_at.format("%Y-%m-%d %H:%M UTC"),
                campaign.started_by,
            );
            if let Some(deadline) = progress.deadline {
                text.push_str(&format!(
                    "deadline {}; unanswered keys get: {}\n",
                    deadline.format("%Y-%m-%d %H:%M UTC"),
                    progress.default_answer.as_deref().unwrap_or("-")
                ));
            }
            text.push('\n');
            let mut rows = vec![counts_row("total", &progress.totals)];
            rows.extend(
                progress
                    .by_owner
                    .iter()
                    .map(|(owner, counts)| counts_row(&format!("owner {owner}"), counts)),
            );
            rows.extend(
                progress
                    .by_team
                    .iter()
                    .map(|(team, counts)| counts_row(&format!("team {team}"), counts)),
            );
            text.push_str(&table(&COUNTS, &rows));
            if *items {
                let rows: Vec<Vec<String>> = progress
                    .items
                    .iter()
                    .map(|item| {
                        vec![
                            item.identity.clone(),
                            item.owner.clone(),
                            item.state.clone(),
                            item.choice.clone().unwrap_or_else(|| "-".to_owned()),
                            if item.by.is_empty() {
                                "-".to_owned()
                            } else {
                                item.by.join(", ")
                            },
                            item.comment
                                .as_deref()
                                .map_or_else(|| "-".to_owned(), quoted),
                        ]
                    })
                    .collect();
                text.push('\n');
                text.push_str(&table(
                    &["KEY", "OWNER", "STATE", "ANSWER", "BY", "SAID"],
                    &rows,
                ));
            }
            write_text(out, &text)?;
            Ok(EXIT_OK)
        }),
    }
}
