//! `cargo xtask setup`: installs exactly the table in [`crate::requirements`] on a Debian 12
//! machine (apt packages, nightly components, pinned cargo tools), then mounts tracefs if it is
//! absent. Each step is skipped when already satisfied, so a warm run takes well under a second:
//! one dpkg-query for all packages, one component list per toolchain, one `--version` per tool.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::{
    requirements::{REQUIREMENTS, Source, apt_packages, find_program},
    sh::{cargo, cmd, output, run, succeeds},
};

pub fn run_setup() -> anyhow::Result<()> {
    rustup()?;
    apt()?;
    components()?;
    cargo_tools()?;
    tracefs()?;
    Ok(())
}

/// rustup and both toolchains come with the machine; say so plainly when they do not.
fn rustup() -> anyhow::Result<()> {
    for toolchain in ["stable", "nightly"] {
        if !succeeds(cmd("rustup").args(["run", toolchain, "rustc", "--version"])) {
            bail!(
                "the {toolchain} toolchain is missing (rustup toolchain install {toolchain}); \
                 this project builds on stable and builds its eBPF object on nightly"
            );
        }
    }
    Ok(())
}

/// The packages of `wanted` that dpkg does not list as installed (one dpkg-query for all).
fn not_installed<'a>(wanted: &[&'a str]) -> Vec<&'a str> {
    // dpkg-query exits 1 when some package is unknown, but still prints the others.
    let listed = cmd("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(wanted)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = listed
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split('\t').next())
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

fn apt() -> anyhow::Result<()> {
    let missing = not_installed(&apt_packages());
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

fn components() -> anyhow::Result<()> {
    for toolchain in ["stable", "nightly"] {
        let installed = output(cmd("rustup").args([
            "component",
            "list",
            "--toolchain",
            toolchain,
            "--installed",
        ]))
        .unwrap_or_default();
        for r in REQUIREMENTS {
            if let Source::Component {
                toolchain: t,
                component,
            } = r.source
                && t == toolchain
                && !installed.lines().any(|l| l.starts_with(component))
            {
                run(cmd("rustup").args(["component", "add", component, "--toolchain", t]))?;
            }
        }
    }
    Ok(())
}

fn cargo_tools() -> anyhow::Result<()> {
    for r in REQUIREMENTS {
        let Source::Cargo {
            krate,
            version,
            args,
        } = r.source
        else {
            continue;
        };
        let have = find_program(r.what)
            .and_then(|p| output(cmd(p.to_str()?).arg("--version")))
            .unwrap_or_default();
        if have.split_whitespace().any(|w| w == version) {
            continue;
        }
        if krate == "bpf-linker" {
            check_nightly_llvm()?;
        }
        eprintln!("setup: building {krate} {version} (once; a minute or two)");
        run(cargo()
            .args(["install", "--locked", krate, "--version", version])
            .args(args))?;
    }
    Ok(())
}

/// bpf-linker is built for LLVM 22 (the table's features): the nightly must use LLVM 22 too, or
/// the eBPF link fails later with "Invalid record".
fn check_nightly_llvm() -> anyhow::Result<()> {
    let nightly_llvm =
        output(cmd("rustup").args(["run", "nightly", "rustc", "-vV"])).unwrap_or_default();
    let llvm_major = nightly_llvm
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot tell the nightly's LLVM version")?;
    if llvm_major != "22" {
        bail!(
            "the nightly uses LLVM {llvm_major}; setup builds bpf-linker for LLVM 22 (see the toolchain notes)"
        );
    }
    Ok(())
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    run(cmd("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}
