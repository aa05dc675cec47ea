//! The source layout's rules (issue #10), checked on every test run: no module over
//! [`MAX_CODE_LINES`] lines of code (its test module aside), and nothing outside `app/` (and the
//! binaries) knows the command line.

use std::path::{Path, PathBuf};

const MAX_CODE_LINES: usize = 400;
/// Lines of a subcommand's file in `app/` (wiring only; the work is in the layers below).
const MAX_APP_LINES: usize = 150;

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

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Lines of code: up to a trailing `#[cfg(test)] mod tests`, without blank lines; files that
/// are all tests (`tests.rs`, `tests/`) and generated tables count 0.
fn code_lines(path: &Path, text: &str) -> usize {
    let rel = path
        .strip_prefix(src())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    if rel.ends_with("tests.rs") || rel.contains("/tests/") || text.starts_with("// @generated") {
        return 0;
    }
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end].iter().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn no_module_is_over_the_size_limit() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut over: Vec<String> = files
        .iter()
        .map(|f| (f, code_lines(f, &std::fs::read_to_string(f).unwrap())))
        .filter(|(_, n)| *n > MAX_CODE_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "over {MAX_CODE_LINES} lines of code: {over:#?}"
    );
}

#[test]
fn subcommands_are_wiring_only() {
    let mut files = Vec::new();
    sources(&src().join("app"), &mut files);
    let over: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_APP_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(
        over.is_empty(),
        "app/ files over {MAX_APP_LINES} lines: {over:#?}"
    );
}

#[test]
fn only_app_knows_the_command_line() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let allowed = |rel: &str| {
        rel.starts_with("app/") || rel.starts_with("bin/") || rel == "cli.rs" || rel == "main.rs"
    };
    let mut offenders: Vec<String> = files
        .iter()
        .filter(|f| !allowed(&f.strip_prefix(src()).unwrap().to_string_lossy()))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.contains("crate::cli") || text.lines().any(|l| l.trim_start().starts_with("cli::"))
        })
        .map(|f| f.display().to_string())
        .collect();
    offenders.sort();
    assert!(
        offenders.is_empty(),
        "import the command line outside app/: {offenders:#?}"
    );
}

#[test]
fn the_rules_see_what_they_check() {
    // A file with a big test module counts only its code; a test file counts nothing.
    let code = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    fn b() {}\n}\n";
    assert_eq!(code_lines(&src().join("x.rs"), code), 1);
    assert_eq!(code_lines(&src().join("top/tests.rs"), code), 0);
}
