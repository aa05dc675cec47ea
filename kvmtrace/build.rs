//! Builds the eBPF object (release, bpfel, nightly + bpf-linker) into OUT_DIR for embedding.
//! `AYA_BUILD_SKIP=1` writes an empty placeholder instead, so clippy and the pure-logic unit tests
//! run without nightly; such a binary refuses to trace.
//! Also gives `kvmtrace --version` the git commit and the aya version it was built from.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    version_info(Path::new(env!("CARGO_MANIFEST_DIR")));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("kvmtrace"), []).context("writing the placeholder eBPF object")?;
    }
    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kvmtrace-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "kvmtrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// Sets KVMTRACE_GIT_COMMIT (`git rev-parse --short HEAD`; "unknown" outside a git checkout) and
/// KVMTRACE_AYA_VERSION (the aya version Cargo.lock resolved; "unknown" without the workspace's
/// lock file), and asks to be rerun when either can change: a checkout moves HEAD, a commit moves
/// the branch HEAD points to.
fn version_info(manifest_dir: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KVMTRACE_GIT_COMMIT={commit}");
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // Only existing files: cargo reruns a build script on every build when one is missing.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let lock = manifest_dir.join("../Cargo.lock");
    let aya = fs::read_to_string(&lock)
        .ok()
        .and_then(|text| locked_version(&text, "aya"))
        .unwrap_or_else(|| "unknown".into());
    if lock.exists() {
        println!("cargo:rerun-if-changed={}", lock.display());
    }
    println!("cargo:rustc-env=KVMTRACE_AYA_VERSION={aya}");
}

/// The version of package `name` in a Cargo.lock (its `[[package]]` entry's `version`).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    lock.split("[[package]]").find_map(|entry| {
        let mut lines = entry.lines().map(str::trim);
        lines.find(|l| *l == format!("name = \"{name}\""))?;
        lines
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .map(str::to_string)
    })
}
