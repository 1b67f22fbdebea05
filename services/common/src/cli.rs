//! The command line every long-running quench process shares (`quench serve`, `quench up`,
//! `quench-gateway`): the config flags ([`ConfigArgs`]), the exit codes, logging to stderr as
//! text or JSON, a multi-threaded runtime, and a shutdown token cancelled by SIGTERM or SIGINT
//! ([`run_until_signalled`]; a second signal exits at once).

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;

use crate::config::{Config, Overrides};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The work was done and found something wrong (an invalid file, a failed test), or a service
/// stopped on an error of its own.
pub const EXIT_INVALID: u8 = 1;
/// The command line or its input cannot be used.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a configuration error (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when a service quench needs (NATS) is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// The flags of every long-running quench process (`quench serve`, `quench-gateway`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Config file (TOML); environment `QUENCH_<SECTION>__<KEY>` and flags override it.
    #[arg(long, env = "QUENCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// NATS URL (overrides `nats.url`).
    #[arg(long)]
    pub nats: Option<String>,
    /// Log lines as text or as JSON objects (with the fields of their spans).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How a long-running process writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ConfigArgs {
    /// Loads the config with `--nats` and the caller's `overrides` on top. `Err` is the exit
    /// code once there is nothing left to do: 64 after writing a configuration error, 0 after
    /// writing `--dump-config`'s output.
    pub fn load(
        &self,
        mut overrides: Overrides,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<Config, u8> {
        if let Some(url) = &self.nats {
            overrides.set("nats", "url", url.as_str());
        }
        let config = load_config(self.config.as_deref(), &overrides, err).ok_or(EXIT_CONFIG)?;
        if self.dump_config {
            let _ = write!(out, "{}", config.dump());
            return Err(EXIT_OK);
        }
        Ok(config)
    }
}

/// Loads the service config, writing a configuration error to `err` (the caller exits with
/// [`EXIT_CONFIG`]).
pub fn load_config(
    file: Option<&std::path::Path>,
    overrides: &Overrides,
    err: &mut dyn Write,
) -> Option<Config> {
    match Config::load(file, overrides) {
        Ok(config) => Some(config),
        Err(error) => {
            let _ = writeln!(err, "error: configuration: {error}");
            None
        }
    }
}

/// The multi-threaded runtime of a service, or `None` after writing why it cannot start.
pub fn runtime(err: &mut dyn Write) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            let _ = writeln!(err, "error: cannot start the runtime: {error}");
            None
        }
    }
}

/// Runs a service: logging, a multi-threaded runtime, and a shutdown token cancelled by the
/// first SIGTERM or SIGINT ([`signals`]). `None` (after writing why) when the runtime cannot
/// start.
pub fn run_until_signalled<F, T>(
    err: &mut dyn Write,
    log_format: LogFormat,
    service: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
) -> Option<T>
where
    F: std::future::Future<Output = T>,
{
    init_tracing(log_format);
    let runtime = runtime(err)?;
    let outcome = runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        service(shutdown).await
    });
    // Bounded: a task still running is dropped now, and a drop that waits on the runtime (a
    // store whose committer waits for a journal append cut off from NATS needs its timers,
    // which stop with it) would otherwise keep the process from exiting.
    runtime.shutdown_timeout(SHUTDOWN_WITHIN);
    Some(outcome)
}

/// How long the runtime may take to drop what is still running once the service returned.
const SHUTDOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// First SIGTERM or SIGINT: shut down gracefully. Second: exit at once.
async fn signals(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: exiting at once");
    #[expect(
        clippy::disallowed_methods,
        reason = "a second signal exits at once, as the house style asks"
    )]
    std::process::exit(130);
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal; a file, journald or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // One object per line; `span` and `spans` carry run_id, playbook and step.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
