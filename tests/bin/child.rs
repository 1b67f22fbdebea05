//! What the crash-test children share (included by each with `#[path]`): the flags they are
//! given, and a `main` in which a failpoint's panic is the crash.

use std::future::Future;

use anyhow::Context;

/// The flags `--name value` in the order the child expects them.
pub(crate) struct Flags(std::iter::Skip<std::env::Args>);

impl Flags {
    pub(crate) fn new() -> Flags {
        Flags(std::env::args().skip(1))
    }

    /// The value of the next flag, which must be `--name`.
    pub(crate) fn next(&mut self, name: &str) -> anyhow::Result<String> {
        let flag = self
            .0
            .next()
            .with_context(|| format!("expected --{name}"))?;
        anyhow::ensure!(flag == format!("--{name}"), "expected --{name}, got {flag}");
        self.0
            .next()
            .with_context(|| format!("--{name} needs a value"))
    }
}

/// Runs the child on two worker threads with failpoints from `FAILPOINTS`. A failpoint's panic
/// is the crash: the process aborts at once, like kill -9 (no unwinding, no flushing).
pub(crate) fn main<A, F>(
    name: &'static str,
    args: impl FnOnce(Flags) -> anyhow::Result<A>,
    run: impl FnOnce(A) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{name}: crashing at {info}");
        std::process::abort();
    }));
    let _failpoints = fail::FailScenario::setup();
    let args = args(Flags::new())?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
