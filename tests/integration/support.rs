//! Shared test support: paths into the repository, checked-in generated files, and the `quench`
//! binary. Later areas add a real `nats-server` and the Slack and OpenAI fakes here.

use std::path::{Path, PathBuf};

/// The repository root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Compares a generated file with its checked-in copy. With `QUENCH_BLESS=1` the copy is
/// rewritten instead, which is how a deliberate change to a contract is recorded.
pub(crate) fn check_generated(relative: &str, generated: &serde_json::Value) {
    let path = root().join(relative);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(generated).expect("schemas serialize")
    );
    if std::env::var_os("QUENCH_BLESS").is_some() {
        std::fs::write(&path, &text)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text,
        "{relative} is stale: the types it is generated from changed.\n\
         Review the change, then regenerate with `QUENCH_BLESS=1 cargo test -p quench-tests` and commit it."
    );
}

/// The `quench` binary built by this `cargo test` run (`target/<profile>/quench`). The README's
/// test command builds the binaries before the tests, so this is always the current code.
pub(crate) fn quench_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("quench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (tests/run does this)",
        bin.display()
    );
    bin
}
