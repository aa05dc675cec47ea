//! Running commands: every child gets LLVM 22 first in PATH (bpf-linker's build and the eBPF
//! build need it) and a pinned RUSTUP_TOOLCHAIN. The pin matters: cargo runs rustc through the
//! rustup proxy in each dependency's directory, and a crate that ships a rust-toolchain.toml
//! (dashmap pins 1.85) would otherwise ask for a toolchain this machine does not have. The eBPF
//! build and fuzzing use `rustup run nightly`, which sets its own.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|p| p == LLVM_BIN) {
        c.env("PATH", format!("{LLVM_BIN}:{path}"));
    }
    if std::env::var_os("RUSTUP_TOOLCHAIN").is_none() {
        c.env("RUSTUP_TOOLCHAIN", "stable");
    }
    c.current_dir(root());
    c
}

pub fn cargo() -> Command {
    cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `c`, echoing it; fails on a non-zero exit.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", show(c));
    let status = c
        .status()
        .with_context(|| format!("starting {}", show(c)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(c));
    }
    Ok(())
}

/// Runs a `cargo test` command `c`, echoing its output, and returns how many tests passed (the sum
/// of its libtest "test result:" lines); fails on a non-zero exit.
pub fn run_counting(c: &mut Command) -> anyhow::Result<u64> {
    use std::io::BufRead as _;
    eprintln!("$ {}", show(c));
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", show(c)))?;
    let mut passed = 0;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            passed += passed_in(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(c));
    }
    Ok(passed)
}

/// N from a libtest summary `test result: ok. N passed; ...` (0 for other lines).
pub fn passed_in(line: &str) -> u64 {
    line.trim_start_matches("L1| ")
        .strip_prefix("test result: ok. ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs `c` quietly and returns whether it succeeded (for probes).
pub fn succeeds(c: &mut Command) -> bool {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output of `c` as text, if it ran and succeeded.
pub fn output(c: &mut Command) -> Option<String> {
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The built binary `name` in target/<profile>.
pub fn target_bin(profile: &str, name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    target.join(profile).join(name)
}
