//! The `quench` command line. Each subcommand is a function from parsed arguments to an exit
//! code; output goes to the writers it is given, so tests run commands in-process.
//!
//! Exit codes: 0 ok, 1 invalid or refused, 2 usage or I/O error, 64 configuration (EX_CONFIG),
//! 69 a service quench needs is unavailable (EX_UNAVAILABLE), 74 the store cannot be opened,
//! read or written (EX_IOERR), 77 authentication (EX_NOPERM).
//! The commands that talk to a running service through its admin API are in `remote`.

mod evidence;
mod remote;

pub use quench_common::cli::{
    ConfigArgs, EXIT_CONFIG, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, LogFormat,
    run_until_signalled,
};
use quench_common::cli::{load_config, runtime};
pub use remote::{
    ApiArgs, ApproveArgs, CampaignCommand, DlqCommand, EXIT_NOPERM, InventoryCommand,
    PlaybooksCommand, RunsCommand,
};

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::playbook::{self, Located, Severity};

#[derive(Debug, Parser)]
#[command(
    name = "quench",
    version,
    about = "Remediation engine for AI-platform credentials"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check playbooks (files, or directories of *.yaml) and report every problem at once.
    Validate(ValidateArgs),
    /// Run offline playbook tests (files, or directories of *.yaml; default workflows/tests).
    Test(TestArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the service: NATS intake, the engine, timers, the admin API and metrics.
    Serve(ServeArgs),
    /// Quickstart: `serve` with a nats-server child (unless NATS is configured), the store in
    /// ./data/state, playbooks from ./workflows, dry-run unless an OpenAI admin key is set.
    Up(UpArgs),
    /// Publish findings (a JSON or JSON-lines file, a directory of them, or - for stdin).
    Publish(PublishArgs),
    /// Scheduled playbooks.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Runs in the service (through its admin API).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Answer an approval gate as the token's identity (through the admin API).
    Approve(ApproveArgs),
    /// Playbooks in the service: list, apply, history, diff, enable, disable (admin API).
    Playbooks {
        #[command(subcommand)]
        command: PlaybooksCommand,
    },
    /// Dead-lettered messages: list and replay (admin API).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The estate inventory: OpenAI keys, service accounts, admin keys, users and projects
    /// with their risks and history (admin API).
    Inventory {
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Attestation campaigns (access reviews): start one over a scope of project keys, list
    /// them, and follow one's progress (admin API).
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Evidence packs for auditors: make a signed pack for a period (admin API), or verify one
    /// (`quench evidence verify PACK`).
    Evidence(EvidenceArgs),
}

/// `quench evidence`: `--from` and `--to` make a pack; `verify` checks one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    pub command: Option<EvidenceCommand>,
    /// Start of the period (inclusive): a date (UTC midnight) or an RFC 3339 time.
    #[arg(long, required = true)]
    pub from: Option<String>,
    /// End of the period: a date means the end of that day (UTC), a time is exclusive.
    #[arg(long, required = true)]
    pub to: Option<String>,
    /// Renderings to add to evidence.json (always written): `csv`, `html`, or `json` for none;
    /// repeat or separate with commas. Default: csv and html.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub format: Vec<crate::evidence::Format>,
    /// The directory to write (must not exist). Default: ./evidence-FROM-TO.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Check a pack: its signature, every file against the manifest, its internal consistency,
    /// and with --store or --audit, the pack against the audit chain.
    Verify(EvidenceVerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct EvidenceVerifyArgs {
    /// The pack's directory.
    pub pack: PathBuf,
    /// The public key you trust (SPKI PEM: `openssl pkey -in KEY -pubout`). Without it the
    /// signature is checked with the key the manifest names, which proves integrity, not origin.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// Also check the pack against this store's audit chain (offline: the service must not be
    /// running on it).
    #[arg(long, conflicts_with = "audit")]
    pub store: Option<PathBuf>,
    /// Also check the pack against an exported audit segment (`quench audit export`) that
    /// starts with entry #1 or the pack's first entry and reaches its last.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Each scheduled playbook with its next fire times (computed from the playbooks; the
    /// service keeps its own next tick in the store, which agrees unless a tick is being caught up).
    List(ScheduleListArgs),
}

#[derive(Debug, clap::Args)]
pub struct ScheduleListArgs {
    /// Playbook files or directories.
    #[arg(default_value = "workflows")]
    pub paths: Vec<PathBuf>,
    /// How many fire times to show per playbook.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Count from this time (RFC 3339) instead of now.
    #[arg(long)]
    pub from: Option<chrono::DateTime<chrono::FixedOffset>>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address of the admin API, /healthz, /readyz and /metrics (overrides `api.listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Store directory (overrides `store.path`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Playbooks directory (overrides `playbooks.dir`).
    #[arg(long)]
    pub playbooks: Option<PathBuf>,
}

/// `quench up`'s flags: `serve`'s, and `--demo`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Run against a simulated OpenAI organization served by this process, dry-run only, with
    /// nothing leaving this machine (state in ./data/demo).
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// NATS URL (overrides `nats.url`). Without it or a config, the `quench up` running in this
    /// directory (./data/up.json), else nats://127.0.0.1:4222.
    #[arg(long)]
    pub nats: Option<String>,
    /// Config file, for NATS credentials.
    #[arg(long, env = "QUENCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// A file, a directory, or - for standard input.
    pub path: PathBuf,
}

/// Exit code when the store cannot be opened, read or written (EX_IOERR).
pub const EXIT_STORE: u8 = 74;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Test files or directories.
    #[arg(default_value = "workflows/tests")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit chain and name the first entry that does not fit: through the
    /// running service's API, or offline with `--store`.
    Verify {
        /// The store directory (offline: the service must not be running on it).
        #[arg(long)]
        store: Option<PathBuf>,
        /// An exported segment (offline): checks it on its own.
        #[arg(long, conflicts_with = "store")]
        file: Option<PathBuf>,
        /// With --file: the hash the segment must follow (the previous segment's last hash).
        #[arg(long, requires = "file")]
        after: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Audit entries, newest first, with what each says (admin API).
    List(AuditListArgs),
    /// Write the entries before a sequence number to a JSON Lines file that verifies on its own
    /// (checked before the file is kept); `--prune` then removes them from the service.
    Export {
        /// Entries before this sequence number.
        #[arg(long)]
        before: u64,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Remove the exported entries from the service once the file verifies (admin).
        #[arg(long)]
        prune: bool,
        /// With several partitions: the partition whose audit chain to read (each has its
        /// own; `quench audit verify` checks them all).
        #[arg(long)]
        partition: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove exported entries through `--through`, proven by the hash the export ends with
    /// (admin); `audit verify` then starts from that checkpoint.
    Prune {
        #[arg(long)]
        through: u64,
        #[arg(long)]
        hash: String,
        /// With several partitions: the partition whose audit chain to read (each has its
        /// own; `quench audit verify` checks them all).
        #[arg(long)]
        partition: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `quench audit list`: filters combine (all must match).
#[derive(Debug, clap::Args)]
pub struct AuditListArgs {
    /// Entries before this sequence number (the `more:` of the previous page).
    #[arg(long)]
    pub before: Option<u64>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only this run's entries (its id, or a unique prefix of it).
    #[arg(long)]
    pub run: Option<String>,
    /// Only entries of runs of this finding key, e.g. `openai:project_key:key_abc`.
    #[arg(long)]
    pub key: Option<String>,
    /// Only entries of this kind, e.g. `decision`, `step_intent`, `step_dry_run`.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only entries by this actor (as the ACTOR column shows it).
    #[arg(long)]
    pub actor: Option<String>,
    /// With several partitions: the partition whose audit chain to read (default 0).
    #[arg(long)]
    pub partition: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Treat warnings as errors (for CI).
    #[arg(long)]
    pub deny_warnings: bool,
    /// The service config the playbooks will run with: literal `group:<name>` approvers must
    /// name a group it defines.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Playbook files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    let styled = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Not locked for the whole command: the service logs to stderr from other threads.
    let code = run(cli, &mut std::io::stdout(), &mut std::io::stderr(), styled);
    ExitCode::from(code)
}

/// Runs a parsed command, writing to the given streams; returns the exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write, styled: bool) -> u8 {
    match cli.command {
        Command::Validate(args) => validate(&args, out, err, styled),
        Command::Test(args) => test(&args, out, err),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    store,
                    file,
                    after,
                    api,
                },
        } => match (store, file) {
            (Some(store), _) => audit_verify(&store, out, err),
            (None, Some(file)) => audit_verify_file(&file, after.as_deref(), out, err),
            (None, None) => remote::audit_verify(&api, out, err),
        },
        Command::Audit {
            command:
                AuditCommand::Export {
                    before,
                    out: path,
                    prune,
                    partition,
                    api,
                },
        } => remote::audit_export(before, &path, prune, (&api, partition), out, err),
        Command::Audit {
            command:
                AuditCommand::Prune {
                    through,
                    hash,
                    partition,
                    api,
                },
        } => remote::audit_prune(through, &hash, (&api, partition), out, err),
        Command::Audit {
            command: AuditCommand::List(args),
        } => remote::audit_list(&args, out, err),
        Command::Runs { command } => remote::runs(&command, out, err),
        Command::Approve(args) => remote::approve(&args, out, err),
        Command::Playbooks { command } => remote::playbooks(&command, out, err),
        Command::Dlq { command } => remote::dlq(&command, out, err),
        Command::Inventory { command } => remote::inventory(&command, out, err),
        Command::Campaign { command } => remote::campaign(&command, out, err),
        Command::Evidence(args) => match &args.command {
            Some(EvidenceCommand::Verify(verify)) => evidence::verify(verify, out, err),
            None => remote::evidence(&args, out, err),
        },
        Command::Serve(args) => serve(&args, out, err),
        Command::Up(args) => up(&args, out, err),
        Command::Publish(args) => publish(&args, out, err),
        Command::Schedule {
            command: ScheduleCommand::List(args),
        } => schedule_list(&args, out, err),
    }
}

#[derive(Debug, Serialize)]
struct JsonReport {
    valid: bool,
    errors: usize,
    warnings: usize,
    files: Vec<JsonFile>,
    diagnostics: Vec<Located>,
}

#[derive(Debug, Serialize)]
struct JsonFile {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    playbook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    valid: bool,
}

/// `quench schedule list`.
pub fn schedule_list(args: &ScheduleListArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let loaded = match playbook::load_paths(&args.paths, None) {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_USAGE;
        }
    };
    let from = args
        .from
        .map_or_else(chrono::Utc::now, |from| from.with_timezone(&chrono::Utc));
    let mut rows = Vec::new();
    let mut invalid = false;
    for file in &loaded {
        let Some(playbook) = &file.compiled.playbook else {
            let _ = writeln!(
                err,
                "error: {} does not compile (see `quench validate`)",
                file.path.display()
            );
            invalid = true;
            continue;
        };
        let playbook::Trigger::Schedule(schedule) = &playbook.trigger else {
            continue;
        };
        let next = crate::engine::upcoming(schedule, from, args.count);
        rows.push(serde_json::json!({
            "playbook": playbook.name,
            "cron": schedule.line,
            "timezone": schedule.timezone.name(),
            "overlap": schedule.overlap,
            "catch_up": schedule.catch_up,
            "next": next,
        }));
    }
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &rows)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Human => rows.iter().try_for_each(|row| {
            let zone: chrono_tz::Tz = row["timezone"]
                .as_str()
                .and_then(|name| name.parse().ok())
                .unwrap_or(chrono_tz::UTC);
            let times: Vec<String> = row["next"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|time| time.as_str()?.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .map(|time| {
                    time.with_timezone(&zone)
                        .format("%a %Y-%m-%d %H:%M %Z")
                        .to_string()
                })
                .collect();
            writeln!(
                out,
                "{}  `{}` {}\n    next: {}",
                row["playbook"].as_str().unwrap_or_default(),
                row["cron"].as_str().unwrap_or_default(),
                row["timezone"].as_str().unwrap_or_default(),
                if times.is_empty() {
                    "never".to_owned()
                } else {
                    times.join(", ")
                }
            )
        }),
    };
    if written.is_err() {
        return EXIT_USAGE;
    }
    if invalid { EXIT_INVALID } else { EXIT_OK }
}

/// `quench validate`.
pub fn validate(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write, styled: bool) -> u8 {
    let groups: Option<std::collections::BTreeSet<String>> = match &args.config {
        Some(file) => {
            let Some(config) = load_config(Some(file), &crate::config::Overrides::default(), err)
            else {
                return EXIT_USAGE;
            };
            Some(config.groups.keys().cloned().collect())
        }
        None => None,
    };
    let mut loaded = match playbook::load_paths(&args.paths, groups.as_ref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_USAGE;
        }
    };
    // The files given are compared as the service would load them together.
    playbook::warn_overlaps(&mut loaded, |_| false);
    if loaded.is_empty() {
        let _ = writeln!(
            err,
            "error: no playbook files (*.yaml, *.yml) found in the given paths"
        );
        return EXIT_USAGE;
    }
    let count = |severity| {
        loaded
            .iter()
            .flat_map(|file| &file.compiled.diagnostics)
            .filter(|d| d.severity == severity)
            .count()
    };
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let valid = errors == 0 && !(args.deny_warnings && warnings > 0);
    let written = match args.format {
        Format::Json => {
            let report = JsonReport {
                valid,
                errors,
                warnings,
                files: loaded
                    .iter()
                    .map(|file| JsonFile {
                        file: file.path.display().to_string(),
                        playbook: file.compiled.playbook.as_ref().map(|p| p.name.clone()),
                        version: file.compiled.playbook.as_ref().map(|p| p.version.clone()),
                        valid: !file.compiled.has_errors(),
                    })
                    .collect(),
                diagnostics: loaded
                    .iter()
                    .flat_map(|file| file.report().located())
                    .collect(),
            };
            serde_json::to_writer_pretty(&mut *out, &report)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out))
        }
        Format::Human => {
            let mut text = String::new();
            for file in &loaded {
                text.push_str(&file.report().render(styled));
            }
            let verdict = if valid { "ok" } else { "failed" };
            let denied = if args.deny_warnings && warnings > 0 {
                " (warnings denied)"
            } else {
                ""
            };
            text.push_str(&format!(
                "validate {verdict}: {} playbook(s), {errors} error(s), {warnings} warning(s){denied}\n",
                loaded.len()
            ));
            out.write_all(text.as_bytes())
        }
    };
    if let Err(error) = written {
        let _ = writeln!(err, "error: cannot write the report: {error}");
        return EXIT_USAGE;
    }
    if valid { EXIT_OK } else { EXIT_INVALID }
}

#[derive(Debug, Serialize)]
struct JsonTestCase {
    file: String,
    playbook: String,
    case: String,
    passed: bool,
    failures: Vec<String>,
}

/// `quench test`.
pub fn test(args: &TestArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let files = match crate::testing::collect(&args.paths) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            let _ = writeln!(
                err,
                "error: no test files (*.yaml, *.yml) found in the given paths"
            );
            return EXIT_USAGE;
        }
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "error: cannot start the runtime: {error}");
            return EXIT_USAGE;
        }
    };
    let mut results = Vec::new();
    for file in &files {
        match runtime.block_on(crate::testing::run_file(file)) {
            Ok(report) => results.push(report),
            // Rendered diagnostics say `error[…]` themselves, with the place.
            Err(error @ crate::testing::Error::Format { .. }) => {
                let _ = write!(err, "{error}");
                return EXIT_USAGE;
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                return EXIT_USAGE;
            }
        }
    }
    let cases: Vec<JsonTestCase> = results
        .iter()
        .flat_map(|report| {
            report.cases.iter().map(|case| JsonTestCase {
                file: report.path.display().to_string(),
                playbook: report.playbook.clone(),
                case: case.name.clone(),
                passed: case.failures.is_empty(),
                failures: case.failures.clone(),
            })
        })
        .collect();
    let failed = cases.iter().filter(|case| !case.passed).count();
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &cases)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Human => {
            let mut text = String::new();
            for case in &cases {
                let verdict = if case.passed { "ok  " } else { "FAIL" };
                text.push_str(&format!("{verdict} {} › {}\n", case.playbook, case.case));
                for failure in &case.failures {
                    for line in failure.lines() {
                        text.push_str(&format!("       {line}\n"));
                    }
                }
            }
            let verdict = if failed == 0 { "ok" } else { "failed" };
            text.push_str(&format!(
                "test {verdict}: {} case(s) in {} file(s), {failed} failed\n",
                cases.len(),
                files.len()
            ));
            out.write_all(text.as_bytes())
        }
    };
    if let Err(error) = written {
        let _ = writeln!(err, "error: cannot write the report: {error}");
        return EXIT_USAGE;
    }
    if failed == 0 { EXIT_OK } else { EXIT_INVALID }
}

/// `quench audit verify --store PATH`.
pub fn audit_verify(path: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let offline = match open_offline(path, err) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    match offline.store.verify_audit() {
        Ok(report) => match report.first_bad {
            None => {
                let _ = writeln!(
                    out,
                    "audit chain ok: {} entries, head {}",
                    report.entries, report.head
                );
                EXIT_OK
            }
            Some((seq, why)) => {
                let _ = writeln!(out, "audit chain broken at entry #{seq}: {why}");
                let _ = writeln!(
                    out,
                    "entries #1 to #{} verify (head {})",
                    report.entries, report.head
                );
                EXIT_INVALID
            }
        },
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_STORE
        }
    }
}

/// A store opened by an offline reader, and the copy it reads when it may not write the store.
pub(crate) struct Offline {
    pub(crate) store: crate::store::Store,
    /// Removed after the store is closed (fields drop in order).
    _copy: Option<tempfile::TempDir>,
}

/// Opens a store for an offline reader (the service must not be running on it): the store
/// itself, or a copy of it when this user may not write it (sled 0.34 has no read-only mode).
/// Errors are reported, and their exit code returned.
pub(crate) fn open_offline(path: &std::path::Path, err: &mut dyn Write) -> Result<Offline, u8> {
    if !path.join("db").exists() {
        let _ = writeln!(
            err,
            "error: {} is not a quench store (no `db` file in it)",
            path.display()
        );
        return Err(EXIT_USAGE);
    }
    let mut config = crate::store::StoreConfig::new(path);
    config.sync = crate::store::SyncMode::Os;
    let mut copy = None;
    let opened = match crate::store::Store::open(&config) {
        Err(crate::store::Error::ReadOnly { .. }) => tempfile::tempdir()
            .map_err(|source| crate::store::Error::Copy {
                path: path.to_owned(),
                source,
            })
            .and_then(|directory| {
                let store = crate::store::Store::open_copy(&config, directory.path());
                copy = Some(directory);
                store
            }),
        opened => opened,
    };
    match opened {
        Ok(store) => {
            if copy.is_some() {
                let _ = writeln!(
                    err,
                    "note: {} cannot be written by this user; verifying a copy of it",
                    path.display()
                );
            }
            Ok(Offline { store, _copy: copy })
        }
        Err(error @ crate::store::Error::Locked { .. }) => {
            let _ = writeln!(
                err,
                "error: {error}; stop the service first, or verify through its admin API: \
                 `quench audit verify` without --store"
            );
            Err(EXIT_STORE)
        }
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            Err(EXIT_STORE)
        }
    }
}

/// `quench serve`.
pub fn serve(args: &ServeArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    run_service(args, false, false, out, err)
}

/// `quench audit verify --file`: an exported segment, on its own.
fn audit_verify_file(
    file: &std::path::Path,
    after: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            let _ = writeln!(err, "error: cannot read {}: {error}", file.display());
            return EXIT_USAGE;
        }
    };
    match crate::store::verify_segment(&text, after) {
        Ok(segment) => {
            let _ = writeln!(
                out,
                "segment ok: entries #{} to #{}, following {}, head {}",
                segment.first, segment.last, segment.prev, segment.head
            );
            EXIT_OK
        }
        Err(problem) => {
            let _ = writeln!(out, "segment broken: {problem}");
            EXIT_INVALID
        }
    }
}

/// `quench up`.
pub fn up(args: &UpArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    run_service(&args.serve, true, args.demo, out, err)
}

fn run_service(
    args: &ServeArgs,
    quickstart: bool,
    demo: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // `quench up` owns ./data: a second one in the same directory stops here, before it starts
    // a nats-server on the same JetStream directory or prints a banner with a token.
    let _instance = if quickstart && !args.common.dump_config {
        match crate::service::up::Instance::claim(&crate::service::up::data_dir()) {
            Ok(instance) => Some(instance),
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                return EXIT_INVALID;
            }
        }
    } else {
        None
    };
    // `quench up` reads ./quench.toml when no config is named, and says so in its banner.
    let mut common = args.common.clone();
    let local_config = crate::service::up::local_config();
    let config_file = match (&common.config, quickstart) {
        (Some(path), _) => Some(path.display().to_string()),
        (None, true) if local_config.is_file() => {
            common.config = Some(local_config.clone());
            Some(local_config.display().to_string())
        }
        (None, _) => None,
    };
    let mut overrides = crate::config::Overrides::default();
    if let Some(listen) = &args.listen {
        overrides.set("api", "listen", listen.as_str());
    }
    if let Some(store) = &args.store {
        overrides.set("store", "path", store.display().to_string());
    }
    if let Some(dir) = &args.playbooks {
        overrides.set("playbooks", "dir", dir.display().to_string());
    }
    let mut config = match common.load(overrides, out, err) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // The rails' cron lines, time zones, globs and action names, refused before anything starts.
    if let Err(error) = crate::engine::SafetyConfig::from_section(&config.safety) {
        let _ = writeln!(err, "error: configuration: {error}");
        return EXIT_CONFIG;
    }
    // The evidence signing key, refused before anything starts when it is not an Ed25519 key.
    if let Err(error) = crate::evidence::Signer::from_config(&config.evidence) {
        let _ = writeln!(err, "error: configuration: {error}");
        return EXIT_CONFIG;
    }
    // `quench up` starts its own NATS unless one is configured (flag, environment or file);
    // the demo always does.
    let own_nats = quickstart && (demo || !nats_configured(&common));
    // The shipped playbooks ask `group:secops`; a quickstart without `[groups]` gets a stand-in.
    let quickstart_group = quickstart && !config.groups.contains_key("secops");
    if quickstart_group {
        config
            .groups
            .insert("secops".to_owned(), vec!["secops@example.com".to_owned()]);
    }
    // A quickstart without API tokens gets one admin token for this run, so the banner's
    // commands work; named after the stand-in approver, so it may answer the sample's gate.
    let quickstart_token = (quickstart && config.api.tokens.is_empty()).then(|| {
        use sha2::Digest;
        let token = hex::encode(rand::random::<[u8; 24]>());
        config.api.tokens.push(crate::config::ApiToken {
            name: if quickstart_group {
                "secops@example.com".to_owned()
            } else {
                "quickstart".to_owned()
            },
            role: crate::config::Role::Admin,
            sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
        });
        token
    });
    let Some(result) = run_until_signalled(err, args.common.log_format, |shutdown| async move {
        let demo = match demo {
            true => Some(crate::service::demo::Demo::start(&mut config).await?),
            false => None,
        };
        let nats_dir = match demo {
            Some(_) => crate::service::demo::nats_dir(),
            None => crate::service::up::nats_dir(),
        };
        let child = if own_nats {
            let index = std::env::var("QUENCH_PYPI_INDEX")
                .unwrap_or_else(|_| crate::service::up::install::DEFAULT_INDEX.to_owned());
            let tools = crate::service::up::data_dir().join("tools");
            let mut say = |line: String| eprintln!("quench up: {line}");
            let server = match crate::service::up::install::find_or_install(
                &tools, &index, &mut say,
            )
            .await
            {
                Ok(server) => server,
                Err(missing) => {
                    return Err(crate::service::Error::from(
                        crate::service::up::StartError::from(missing),
                    ));
                }
            };
            match crate::service::up::NatsChild::start(&server, &nats_dir).await {
                Ok(child) => {
                    config.nats.url = child.url().to_owned();
                    Some(child)
                }
                Err(error) => return Err(crate::service::Error::from(error)),
            }
        } else {
            None
        };
        if quickstart {
            // Scheduled playbooks whose runs could only fail here are paused: say which.
            let unavailable = crate::service::unavailable(&config);
            let paused: Vec<(String, String)> =
                playbook::load_paths(std::slice::from_ref(&config.playbooks.dir), None)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|file| file.compiled.playbook.as_ref())
                    .filter(|playbook| matches!(playbook.trigger, playbook::Trigger::Schedule(_)))
                    .filter_map(|playbook| {
                        playbook
                            .blocked_by(&unavailable, config.mode())
                            .map(|why| (playbook.name.clone(), format!("schedule paused ({why})")))
                    })
                    .collect();
            let banner = crate::service::up::next_steps(&crate::service::up::Banner {
                nats: &config.nats.url,
                listen: &config.api.listen,
                dry_run: config.mode() == crate::playbook::Mode::DryRun,
                nats_child: child.as_ref(),
                stand_in_group: quickstart_group,
                token: quickstart_token.as_deref(),
                paused: &paused,
                config_file: config_file.as_deref(),
                demo: demo.as_ref(),
            });
            let ready = shutdown.clone();
            let listen = config.api.listen.clone();
            let endpoints = crate::service::up::Endpoints {
                pid: std::process::id(),
                api: format!("http://{listen}"),
                nats: config.nats.url.clone(),
            };
            // Printed once the service answers /readyz, so the commands work when shown; the
            // CLI finds this instance through ./data/up.json from then on.
            tokio::spawn(async move {
                while !ready.is_cancelled() {
                    if crate::service::ready(&listen).await {
                        if let Err(error) = endpoints.write(&crate::service::up::data_dir()) {
                            tracing::warn!(%error, "cannot write ./data/up.json: CLI commands need --api and --nats");
                        }
                        println!("{banner}");
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            });
        }
        let start = demo
            .as_ref()
            .map_or_else(Default::default, crate::service::demo::Demo::start_options);
        let served = crate::service::serve_with(config, start, shutdown).await;
        if quickstart {
            crate::service::up::Endpoints::remove(&crate::service::up::data_dir());
        }
        if let Some(child) = child {
            child.stop().await;
        }
        drop(demo);
        served
    }) else {
        return EXIT_USAGE;
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(
            error @ (crate::service::Error::Nats(_)
            | crate::service::Error::NatsChild(_)
            | crate::service::Error::Cluster(_)
            | crate::service::Error::PartitionLost),
        ) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_UNAVAILABLE
        }
        Err(error @ (crate::service::Error::Store(_) | crate::service::Error::CommitFailed)) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_STORE
        }
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_INVALID
        }
    }
}

/// Whether NATS was given by flag, environment or config file.
fn nats_configured(args: &ConfigArgs) -> bool {
    if args.nats.is_some() || std::env::var_os("QUENCH_NATS__URL").is_some() {
        return true;
    }
    args.config
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.get("nats").and_then(|nats| nats.get("url")).is_some())
}

/// `quench publish`.
pub fn publish(args: &PublishArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut overrides = crate::config::Overrides::default();
    let up = (args.config.is_none() && std::env::var_os("QUENCH_NATS__URL").is_none())
        .then(|| crate::service::up::Endpoints::of_running(&crate::service::up::data_dir()))
        .flatten();
    if let Some(url) = args.nats.as_ref().or(up.as_ref().map(|up| &up.nats)) {
        overrides.set("nats", "url", url.as_str());
    }
    let Some(config) = load_config(args.config.as_deref(), &overrides, err) else {
        return EXIT_CONFIG;
    };
    let findings = match crate::service::read_findings(&args.path) {
        Ok(findings) if !findings.is_empty() => findings,
        Ok(_) => {
            let _ = writeln!(err, "error: no findings in {}", args.path.display());
            return EXIT_USAGE;
        }
        Err(error) => {
            let _ = writeln!(err, "error: cannot read {}: {error}", args.path.display());
            return EXIT_USAGE;
        }
    };
    let Some(runtime) = runtime(err) else {
        return EXIT_USAGE;
    };
    let reports = runtime.block_on(async {
        let client = crate::service::connect(&config.nats).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        // No stream is created here: that is the runner's job, and a scanner's NATS user may
        // publish findings but not use the JetStream API (deploy/nats-server.conf).
        let reports = crate::service::publish_findings(&jetstream, findings).await;
        let _ = client.flush().await;
        Ok::<_, crate::service::Error>(reports)
    });
    let reports = match reports {
        Ok(reports) => reports,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_UNAVAILABLE;
        }
    };
    let mut failed = 0;
    for report in &reports {
        let id = report.id.as_deref().unwrap_or("-");
        match &report.outcome {
            Ok(ack) => {
                let _ = writeln!(out, "published {id} from {}: {ack}", report.origin);
            }
            Err(error) => {
                failed += 1;
                let _ = writeln!(out, "FAILED {id} from {}: {error}", report.origin);
            }
        }
    }
    let _ = writeln!(
        out,
        "publish: {} sent, {failed} failed",
        reports.len() - failed
    );
    if failed == 0 { EXIT_OK } else { EXIT_INVALID }
}
