//! The `quench` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    quench_runner::cli::main()
}
