//! The `quench-gateway` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    quench_gateway::cli::main()
}
