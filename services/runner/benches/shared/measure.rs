//! What the benchmarks measure besides time (shared by `engine` and the inventory bench in
//! `tests/benches`): the process's memory and a directory's size on disk.

use std::path::Path;

/// A `/proc/self/status` memory field (`VmRSS`, `VmHWM`) in MiB.
pub(crate) fn rss_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Bytes of every file under `dir`.
pub(crate) fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() {
            size_on_disk(&path)
        } else {
            entry.metadata().map_or(0, |meta| meta.len())
        };
    }
    total
}
