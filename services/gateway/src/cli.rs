//! `quench-gateway [--config FILE] [--nats URL] [--listen ADDR] [--dump-config]`: loads the
//! shared quench config (`quench_common`'s loader, as the runner's, so keys, layers, `*_file`
//! secrets and errors are the same), starts the gateway and stops it on SIGTERM or Ctrl-C (a second signal exits at
//! once). Exit codes as for `quench serve`: 64 for a configuration error, naming the key and
//! value; 69 when NATS is unreachable; 1 for any other failure.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use quench_common::cli::{
    ConfigArgs, EXIT_CONFIG, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE,
    run_until_signalled,
};
use quench_common::config::Overrides;

use crate::server::{Error, Gateway};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "quench-gateway",
    version,
    about = "Verifies Slack clicks and scanner webhooks and publishes them to NATS for quench"
)]
pub struct Args {
    #[command(flatten)]
    pub common: ConfigArgs,
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
    if let Some(listen) = &args.listen {
        overrides.set("gateway", "listen", listen.as_str());
    }
    let config = match args.common.load(overrides, out, err) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(error) = Gateway::check(&config) {
        let _ = writeln!(err, "error: configuration: {error}");
        return EXIT_CONFIG;
    }
    let Some(result) = run_until_signalled(err, args.common.log_format, |shutdown| async move {
        Gateway::build(&config).await?.run(shutdown).await
    }) else {
        return EXIT_USAGE;
    };
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
