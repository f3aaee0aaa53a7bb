//! The repository carries everything its build, tests, benchmarks and docs
//! use: a fresh clone must work with nothing beside it. Folders next to a
//! developer's checkout (notes, helper scripts) are not part of the
//! project, so no tracked file may point into them.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (`git ls-files`), or, outside a git checkout, every
/// file below the repository but build output and the Python environment.
fn tracked_files() -> Vec<PathBuf> {
    let root = repo();
    if let Ok(out) = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
    {
        if out.status.success() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| root.join(String::from_utf8_lossy(name).as_ref()))
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("a readable folder")
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if ![".git", "target", ".venv"].contains(&name.to_string_lossy().as_ref()) {
                    dirs.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    // Built from pieces so that this file does not match itself.
    let outside = [
        // the folder of notes and peer scripts beside the main checkout
        format!("{}/shared", ".."),
        // this build machine's own folders
        format!("/{}/", "work"),
    ];
    let files = tracked_files();
    // Notes that live beside the repository: naming one is pointing out of
    // it, unless the repository has a file of that name itself.
    let notes: Vec<String> = ["DESIGN", "SQLITE-NOTES", "STYLE"]
        .iter()
        .map(|n| format!("{n}.md"))
        .filter(|n| !files.iter().any(|f| f.file_name() == Some(n.as_ref())))
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("Cargo.toml")),
        "no files found in {}",
        repo().display()
    );
    let root = repo();
    let mut problems = Vec::new();
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue; // deleted in the work tree but still tracked
        };
        let name = file.strip_prefix(&root).unwrap_or(file).display();
        for needle in &outside {
            if contains(&bytes, needle) {
                problems.push(format!("{name} mentions {needle}"));
            }
        }
        for note in &notes {
            if contains(&bytes, note) {
                problems.push(format!(
                    "{name} refers to {note}, which is not in the repository"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "files refer to things outside the repository, which a fresh clone does not have; \
         move what they need into the repository (scripts/, docs/) and point there:\n{}",
        problems.join("\n")
    );
}
