//! The `quench` command line. Each subcommand is a function from parsed arguments to an exit
//! code; output goes to the writers it is given, so tests run commands in-process.
//!
//! Exit codes (shared by `validate` and, later, `test`): 0 valid, 1 invalid, 2 usage or I/O error.

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
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Treat warnings as errors (for CI).
    #[arg(long)]
    pub deny_warnings: bool,
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

pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

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
    let code = run(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        styled,
    );
    ExitCode::from(code)
}

/// Runs a parsed command, writing to the given streams; returns the exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write, styled: bool) -> u8 {
    match cli.command {
        Command::Validate(args) => validate(&args, out, err, styled),
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

/// `quench validate`.
pub fn validate(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write, styled: bool) -> u8 {
    let loaded = match playbook::load_paths(&args.paths) {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return EXIT_USAGE;
        }
    };
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
