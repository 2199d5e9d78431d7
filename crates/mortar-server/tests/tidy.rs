//! House rules that review alone does not keep (as rust-analyzer's `tidy` test does): every
//! source file says what it holds in a `//!` line; engines stay pure (no tokio, sqlx, axum or
//! serde); no source file grows past 800 lines (DESIGN.md §13: split along seams). Files
//! already past the budget are listed with their size as a ceiling that may only go down —
//! the platform-kit issue splits them.

use std::path::{Path, PathBuf};

/// Files over the budget today, and the most lines each may have until it is split.
const OVERSIZED: &[(&str, usize)] = &[];

const BUDGET: usize = 800;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crates/*/src/**/*.rs`, as paths relative to the workspace root.
fn all_sources() -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut files);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn every_source_file_starts_with_a_doc_line() {
    let missing: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "start these with a `//!` line saying what they hold: {missing:#?}"
    );
}

#[test]
fn engines_do_no_io_and_know_no_wire_format() {
    let mut impure = Vec::new();
    for (path, text) in all_sources() {
        if !path.ends_with("/engine.rs") && !path.contains("/engine/") {
            continue;
        }
        for word in [
            "tokio",
            "sqlx",
            "axum",
            "serde",
            "SystemTime::now",
            "Instant::now",
        ] {
            if text.contains(word) {
                impure.push(format!("{path}: {word}"));
            }
        }
    }
    assert!(
        impure.is_empty(),
        "engines are pure (DESIGN.md §4): {impure:#?}"
    );
}

#[test]
fn no_source_file_grows_past_the_budget() {
    let mut over = Vec::new();
    for (path, text) in all_sources() {
        let lines = text.lines().count();
        let ceiling = OVERSIZED
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(BUDGET, |(_, c)| *c);
        if lines > ceiling {
            over.push(format!("{path}: {lines} lines (at most {ceiling})"));
        }
    }
    assert!(
        over.is_empty(),
        "split these along their seams (DESIGN.md §13): {over:#?}"
    );
}
