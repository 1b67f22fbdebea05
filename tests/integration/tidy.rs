//! House rules checked by a test: every Rust file says what it is in a `//!` line, and no test is
//! switched off or reduced to "it panics".

use std::path::Path;

fn rust_files(directory: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("readable directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc_and_no_test_is_disabled() {
    let root = crate::support::root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    // Spelled in pieces so this file does not trip its own check.
    let forbidden = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{relative}: does not start with a `//!` line"));
        }
        for pattern in forbidden {
            if text.contains(pattern) {
                problems.push(format!("{relative}: contains `{pattern}`"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
