//! Static x86_64 builds (glibc, crt-static; the eBPF object embedded by kvmtrace/build.rs) for
//! where nothing was built: the nested rig's L1, whose initramfs has no libc, and the .deb of
//! `cargo xtask dist`. Both use the same invocation in the same target directory, so whichever
//! runs second reuses the first's build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::sh::{cargo, output, root, run};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static binaries of kvmtrace (the tool and kvmtrace-gen) and of the test guest.
pub struct Binaries {
    pub kvmtrace: PathBuf,
    /// kvmtrace-gen: completions and man pages from the clap definition.
    pub generator: PathBuf,
    pub testvm: PathBuf,
}

fn target_dir() -> PathBuf {
    // Under target/nested/ for history: the nested rig was the first user, and moving it would
    // cost every checkout one more full release build.
    root().join("target/nested/cargo")
}

/// crt-static links glibc in; relocation-model=static makes a plain static executable rather than
/// rustc's default static-pie, so `ldd` says "not a dynamic executable" (for static-pie it says
/// "statically linked"). The price: no ASLR for the binary's own code. The eBPF object is built
/// with its own flags (aya-build sets CARGO_ENCODED_RUSTFLAGS), so these do not reach it.
fn configure(c: &mut Command, target_dir: &Path) {
    c.env(
        "RUSTFLAGS",
        "-C target-feature=+crt-static -C relocation-model=static -C force-frame-pointers=yes",
    )
    .arg("--release")
    .args(["--target", TARGET])
    .arg("--target-dir")
    .arg(target_dir);
}

pub fn binaries() -> anyhow::Result<Binaries> {
    let target_dir = target_dir();
    let mut build = cargo();
    build.args(["build", "-p", "kvmtrace", "-p", "kvmtrace-tests", "--bins"]);
    configure(&mut build, &target_dir);
    run(&mut build)?;
    let bin = target_dir.join(TARGET).join("release");
    Ok(Binaries {
        kvmtrace: bin.join("kvmtrace"),
        generator: bin.join("kvmtrace-gen"),
        testvm: bin.join("kvmtrace-testvm"),
    })
}

/// The static integration-test executable (tests/it).
pub fn integration_tests() -> anyhow::Result<PathBuf> {
    let mut test = cargo();
    test.args([
        "test",
        "-p",
        "kvmtrace-tests",
        "--test",
        "it",
        "--no-run",
        "--message-format=json",
    ]);
    configure(&mut test, &target_dir());
    let json = output(&mut test).context("building the integration tests")?;
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "it")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("no `it` test executable in cargo's output")
}
