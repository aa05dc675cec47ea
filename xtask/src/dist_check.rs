//! Checks of `cargo xtask dist`'s artefacts on this machine, each against something the build did
//! not define: ldd on the binary; `--version` against git and cargo metadata; the .deb's file list
//! against the subcommands `kvmtrace --help` names; every man page through man-db; and the
//! packaged bash completion through bash itself, as a user's shell would load it.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};

use crate::{
    dist::Dist,
    requirements::require,
    sh::{cargo, cmd, output, run},
};

pub fn check(dist: &Dist) -> anyhow::Result<()> {
    require(&["ldd", "man", "bash", "dpkg-deb", "git"])?;
    is_static(&dist.binary)?;
    version(&dist.binary)?;
    let subcommands = subcommands(&dist.binary)?;
    package_files(&dist.deb, &subcommands)?;
    man_pages(&dist.dir.join("man"), &subcommands)?;
    // What dpkg would put on disk, unpacked here only to run man and bash on it (the install
    // itself is tested with dpkg in L1: `cargo xtask dist --l1`).
    let tree = dist.dir.join("check-root");
    run(cmd("dpkg-deb").arg("-x").arg(&dist.deb).arg(&tree))?;
    man_by_name(&tree)?;
    bash_completion(&tree, &subcommands)?;
    std::fs::remove_dir_all(&tree)?;
    eprintln!(
        "dist: static binary, --version, package files, {} man pages, bash completion: ok",
        subcommands.len() + 1
    );
    Ok(())
}

/// Runs `c`; returns its stdout and stderr together (for tools that print verdicts on either).
fn both(c: &mut std::process::Command) -> anyhow::Result<(bool, String)> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn is_static(binary: &Path) -> anyhow::Result<()> {
    let (_, text) = both(cmd("ldd").arg(binary))?;
    ensure!(
        text.contains("not a dynamic executable"),
        "ldd {}: expected `not a dynamic executable`, got: {}",
        binary.display(),
        text.trim()
    );
    eprintln!("dist: ldd {}: {}", binary.display(), text.trim());
    Ok(())
}

/// `kvmtrace --version` names this version, this commit and the aya version cargo resolved.
fn version(binary: &Path) -> anyhow::Result<()> {
    let metadata = output(cargo().args(["metadata", "--format-version", "1", "--locked"]))
        .context("cargo metadata")?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    let version_of = |name: &str| -> anyhow::Result<String> {
        metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["version"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no {name} in cargo metadata"))
    };
    let commit = output(cmd("git").args(["rev-parse", "--short", "HEAD"]))
        .context("git rev-parse")?
        .trim()
        .to_string();
    let expected = format!(
        "kvmtrace {}\ncommit {commit}\naya {}",
        version_of("kvmtrace")?,
        version_of("aya")?
    );
    let got = output(cmd(binary.to_str().context("path")?).arg("--version"))
        .context("kvmtrace --version")?;
    ensure!(
        got.trim() == expected,
        "kvmtrace --version said {got:?}, expected {expected:?}"
    );
    Ok(())
}

/// The subcommands `kvmtrace --help` lists (without `help`).
fn subcommands(binary: &Path) -> anyhow::Result<Vec<String>> {
    let help =
        output(cmd(binary.to_str().context("path")?).arg("--help")).context("kvmtrace --help")?;
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    ensure!(
        names.len() >= 4,
        "kvmtrace --help lists too few subcommands: {names:?}"
    );
    Ok(names)
}

/// The .deb holds exactly the binary, three completions and a man page per (sub)command, and
/// depends on nothing.
fn package_files(deb: &Path, subcommands: &[String]) -> anyhow::Result<()> {
    let listing = output(cmd("dpkg-deb").arg("-c").arg(deb)).context("dpkg-deb -c")?;
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix('.'))
        .collect();
    let mut expected: Vec<String> = [
        "/usr/bin/kvmtrace",
        "/usr/share/bash-completion/completions/kvmtrace",
        "/usr/share/zsh/vendor-completions/_kvmtrace",
        "/usr/share/fish/vendor_completions.d/kvmtrace.fish",
        "/usr/share/man/man1/kvmtrace.1.gz",
    ]
    .map(String::from)
    .into();
    expected.extend(
        subcommands
            .iter()
            .map(|s| format!("/usr/share/man/man1/kvmtrace-{s}.1.gz")),
    );
    for path in &expected {
        ensure!(
            files.contains(&path.as_str()),
            "{} lacks {path}; it has {files:#?}",
            deb.display()
        );
    }
    let depends = output(cmd("dpkg-deb").arg("-f").arg(deb).arg("Depends")).unwrap_or_default();
    ensure!(
        depends.trim().is_empty(),
        "the .deb of a static binary should depend on nothing, it says: {depends}"
    );
    Ok(())
}

/// Every generated page renders through man-db without a warning, and says what it documents.
fn man_pages(dir: &Path, subcommands: &[String]) -> anyhow::Result<()> {
    let pages = std::iter::once("kvmtrace".to_string())
        .chain(subcommands.iter().map(|s| format!("kvmtrace-{s}")));
    for page in pages {
        let file = dir.join(format!("{page}.1"));
        let out = cmd("man")
            .args(["-P", "cat", "-l"])
            .arg(&file)
            .env("MANWIDTH", "100")
            .output()
            .with_context(|| format!("man -l {}", file.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {} failed or warned: {warnings}",
            file.display()
        );
        ensure!(
            text.contains("NAME") && text.contains(&page) && text.contains("OPTIONS"),
            "man -l {} rendered no NAME/OPTIONS for {page}:\n{text}",
            file.display()
        );
    }
    let record = output(
        cmd("man")
            .args(["-P", "cat", "-l"])
            .arg(dir.join("kvmtrace-record.1")),
    )
    .unwrap_or_default();
    ensure!(
        record.contains("--duration") && record.contains("--per-vcpu"),
        "kvmtrace-record.1 lacks the record options:\n{record}"
    );
    Ok(())
}

/// `man kvmtrace-record` finds the packaged (gzipped) page by name in its section.
fn man_by_name(tree: &Path) -> anyhow::Result<()> {
    let out = output(
        cmd("man")
            .args(["-P", "cat", "kvmtrace-record"])
            .env("MANPATH", tree.join("usr/share/man")),
    )
    .context("man kvmtrace-record (with MANPATH at the package's usr/share/man)")?;
    ensure!(
        out.contains("kvmtrace-record") && out.contains("--duration"),
        "man kvmtrace-record printed:\n{out}"
    );
    Ok(())
}

/// The packaged bash completion, sourced into bash, completes `kvmtrace <TAB>` to the
/// subcommands and `kvmtrace record --dur<TAB>` to `--duration`.
fn bash_completion(tree: &Path, subcommands: &[String]) -> anyhow::Result<()> {
    let file = tree.join("usr/share/bash-completion/completions/kvmtrace");
    let complete = |words: &str, current: usize| -> anyhow::Result<Vec<String>> {
        let script = format!(
            "source '{}' || exit 9; complete -p kvmtrace >/dev/null || exit 8; \
             COMP_WORDS=({words}); COMP_CWORD={current}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
             COMP_POINT=${{#COMP_LINE}}; \
             _kvmtrace kvmtrace \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let (ok, text) = both(cmd("bash").args(["--norc", "--noprofile", "-c", &script]))?;
        if !ok {
            bail!("bash completion script failed: {text}");
        }
        Ok(text.lines().map(|l| l.trim().to_string()).collect())
    };
    let offered = complete("kvmtrace ''", 1)?;
    for s in subcommands {
        ensure!(
            offered.contains(s),
            "`kvmtrace <TAB>` offers {offered:?}, not {s}"
        );
    }
    let offered = complete("kvmtrace record --dur", 2)?;
    ensure!(
        offered == ["--duration"],
        "`kvmtrace record --dur<TAB>` offers {offered:?}"
    );
    Ok(())
}
