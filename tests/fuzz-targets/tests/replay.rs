//! The stable half of fuzzing: every committed input — the seeds in `tests/fuzz/corpus/<target>/`
//! and the crashes found so far in `tests/fuzz/regressions/<target>/` — runs through its
//! target's body in `cargo test`, so a property that breaks fails CI without libFuzzer.
//! `tests/fuzz/run` fuzzes for longer (see README.md § Fuzzing).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quench_fuzz_targets::TARGETS;

/// The replay is part of the normal test run: it must stay quick.
const WITHIN: Duration = Duration::from_secs(60);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_keeps_its_targets_properties() {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "target {name} has no seed corpus");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("a corpus file reads");
            ran += 1;
            if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} inputs broke a property:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        started.elapsed() < WITHIN,
        "the replay took {:?}, more than {WITHIN:?}",
        started.elapsed()
    );
}

/// Each target is a cargo-fuzz binary of the same name, and each binary a target.
#[test]
fn the_cargo_fuzz_binaries_are_the_targets() {
    let mut binaries: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    binaries.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    names.sort();
    assert_eq!(binaries, names);
    let manifest =
        std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("the fuzz manifest reads");
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "tests/fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
