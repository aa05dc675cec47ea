//! `cargo xtask setup`: installs what building and testing need on a Debian 12 machine, each step
//! skipped in well under a second when already satisfied:
//! llvm-22 (bpf-linker links it; the nightly's LLVM is 22), bpftool and bpftrace (tests and
//! benchmarks), rust-src for nightly (build-std for the BPF target), bpf-linker 0.13.0 built
//! against LLVM 22 (its default llvm-23 feature cannot read this nightly's bitcode), tracefs.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::sh::{cargo, cmd, output, run, succeeds};

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "bpftool",
    "bpftrace",
    "util-linux",
    "qemu-system-x86",
    "cpio",
    "kmod",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run_setup() -> anyhow::Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(cmd("apt-get").args(["update", "-qq"]))?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn rust_src() -> anyhow::Result<()> {
    let have =
        output(cmd("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if have {
        return Ok(());
    }
    if !succeeds(cmd("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "the nightly toolchain is missing; the eBPF build needs it (rustup toolchain install nightly)"
        );
    }
    run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(cmd("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let nightly_llvm =
        output(cmd("rustup").args(["run", "nightly", "rustc", "-vV"])).unwrap_or_default();
    let llvm_major = nightly_llvm
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot tell the nightly's LLVM version")?
        .to_string();
    if llvm_major != "22" {
        bail!(
            "the nightly uses LLVM {llvm_major}; this setup builds bpf-linker for LLVM 22 (see docs in toolchain notes)"
        );
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes, once)"
    );
    run(cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    run(cmd("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}
