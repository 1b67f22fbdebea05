//! `quench-gateway [--config FILE] [--nats URL] [--listen ADDR] [--dump-config]`: loads the
//! shared quench config (the runner's loader, so keys, layers, `*_file` secrets and errors are
//! the same), starts the gateway and stops it on SIGTERM or Ctrl-C (a second signal exits at
//! once). Exit codes as for `quench serve`: 64 for a configuration error, naming the key and
//! value; 69 when NATS is unreachable; 1 for any other failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use quench_runner::cli::{EXIT_CONFIG, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};
use quench_runner::config::Overrides;

use crate::server::{Error, Gateway};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "quench-gateway",
    version,
    about = "Verifies Slack clicks and scanner webhooks and publishes them to NATS for quench"
)]
pub struct Args {
    /// Config file (TOML); environment `QUENCH_<SECTION>__<KEY>` and flags override it.
    #[arg(long, env = "QUENCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// NATS URL (overrides `nats.url`).
    #[arg(long)]
    pub nats: Option<String>,
    /// Address to serve on (overrides `gateway.listen`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(run(&args, &mut std::io::stdout(), &mut std::io::stderr()))
}

/// Runs the gateway with parsed arguments; returns the exit code.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut overrides = Overrides::default();
    if let Some(url) = &args.nats {
        overrides.set("nats", "url", url.as_str());
    }
    if let Some(listen) = &args.listen {
        overrides.set("gateway", "listen", listen.as_str());
    }
    let Some(config) = quench_runner::cli::load_config(args.config.as_deref(), &overrides, err)
    else {
        return EXIT_CONFIG;
    };
    if args.dump_config {
        let _ = write!(out, "{}", config.dump());
        return EXIT_OK;
    }
    if let Err(error) = Gateway::check(&config) {
        let _ = writeln!(err, "error: configuration: {error}");
        return EXIT_CONFIG;
    }
    quench_runner::cli::init_tracing();
    let Some(runtime) = quench_runner::cli::runtime(err) else {
        return EXIT_USAGE;
    };
    let result = runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(quench_runner::cli::signals(shutdown.clone()));
        Gateway::build(&config).await?.run(shutdown).await
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(error @ Error::Nats(_)) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_UNAVAILABLE
        }
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            EXIT_INVALID
        }
    }
}
