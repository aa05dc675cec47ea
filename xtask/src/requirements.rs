//! What this project needs from the machine, in one table: every program xtask, the build
//! scripts and the tests run, and the few files builds link against, with where each comes from
//! and why. `cargo xtask setup` installs exactly this table; "X is missing" errors
//! ([`require`]) name the entry's source from it; and a unit test scans xtask/src, tests/ and
//! kvmtrace/build.rs for every program they spawn and fails naming any that is not here.
//!
//! The scan sees `cmd` and `Command::new` calls with a literal program name, and the names in
//! `require` lists. Programs that only run inside
//! `sh -c` scripts (find, gzip and cpio for the L1 initramfs, umount in the tests' tracefs
//! script) are listed by hand. Programs run inside the nested rig's L1 come from its initramfs
//! (busybox, dpkg), not from this machine.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::sh::{LLVM_BIN, cmd, output};

/// Where a requirement comes from: what `cargo xtask setup` does when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Debian package (`apt-get install`).
    Apt(&'static str),
    /// A rustup component of a toolchain (`rustup component add`).
    Component {
        toolchain: &'static str,
        component: &'static str,
    },
    /// A pinned `cargo install --locked CRATE --version V ARGS`; its program is `what`.
    Cargo {
        krate: &'static str,
        version: &'static str,
        args: &'static [&'static str],
    },
    /// rustup and its stable and nightly toolchains: preinstalled on this project's machines
    /// (docs/toolchain notes); setup cannot install them, only say so.
    Rustup,
}

pub struct Requirement {
    /// A program looked up in PATH, a file (an absolute path), or a rustup component's name.
    pub what: &'static str,
    pub source: Source,
    pub why: &'static str,
}

use Source::{Apt, Cargo, Component, Rustup};

pub const REQUIREMENTS: &[Requirement] = &[
    // Rust.
    req(
        "cargo",
        Rustup,
        "builds, tests, clippy, fmt, benches (stable 1.95)",
    ),
    req(
        "rustup",
        Rustup,
        "runs nightly: the eBPF build and clippy, fuzzing",
    ),
    req(
        "cc",
        Apt("gcc"),
        "rustc's linker; bpf-linker's build asks it for library paths",
    ),
    req(
        "/usr/lib/x86_64-linux-gnu/libc.a",
        Apt("libc6-dev"),
        "static glibc for the crt-static builds (nested rig, dist)",
    ),
    req(
        "rust-src",
        Component {
            toolchain: "nightly",
            component: "rust-src",
        },
        "build-std core for the bpfel-unknown-none eBPF build",
    ),
    req(
        "clippy",
        Component {
            toolchain: "nightly",
            component: "clippy",
        },
        "clippy of the eBPF crate (it only builds for the BPF target, on nightly)",
    ),
    req(
        "clippy",
        Component {
            toolchain: "stable",
            component: "clippy",
        },
        "cargo clippy in cargo xtask test",
    ),
    req(
        "rustfmt",
        Component {
            toolchain: "stable",
            component: "rustfmt",
        },
        "cargo fmt --check in cargo xtask test",
    ),
    req(
        "bpf-linker",
        Cargo {
            krate: "bpf-linker",
            version: "0.13.0",
            args: &["--no-default-features", "--features", "llvm-22"],
        },
        // Its default llvm-23 cannot read the bitcode of this nightly (LLVM 22).
        "links the eBPF object; built against LLVM 22, the nightly's LLVM",
    ),
    req(
        "cargo-deb",
        Cargo {
            krate: "cargo-deb",
            version: "3.8.0",
            args: &[],
        },
        "builds the .deb in cargo xtask dist (3.8.0 builds on rustc 1.95)",
    ),
    req(
        "cargo-fuzz",
        Cargo {
            krate: "cargo-fuzz",
            version: "0.13.2",
            args: &[],
        },
        "runs the recording reader's fuzz target (cargo xtask fuzz)",
    ),
    // LLVM 22 for bpf-linker's build (the toolchain notes' verified set).
    req(
        "/usr/lib/llvm-22/bin/llvm-config",
        Apt("llvm-22-dev"),
        "bpf-linker's build finds LLVM 22 with it (llvm-22-dev pulls in llvm-22)",
    ),
    req(
        "/usr/lib/llvm-22/lib/libLLVM.so",
        Apt("llvm-22-dev"),
        "bpf-linker links LLVM 22",
    ),
    req(
        "/usr/lib/llvm-22/lib/libclang.so",
        Apt("libclang-22-dev"),
        "part of the LLVM 22 set the toolchain notes verified for bpf-linker",
    ),
    req(
        "/usr/lib/x86_64-linux-gnu/libz.so",
        Apt("zlib1g-dev"),
        "LLVM's zlib, linked into bpf-linker",
    ),
    req(
        "/usr/lib/x86_64-linux-gnu/libzstd.so",
        Apt("libzstd-dev"),
        "LLVM's zstd, linked into bpf-linker",
    ),
    // Packages: setup, and the nested rig's downloads.
    req(
        "dpkg-query",
        Apt("dpkg"),
        "setup asks it which packages are installed",
    ),
    req(
        "apt-get",
        Apt("apt"),
        "setup installs; the nested rig downloads L1's packages",
    ),
    req(
        "apt-cache",
        Apt("apt"),
        "the nested rig finds Debian's current 5.10, 6.1 and 6.12 kernels",
    ),
    req(
        "dpkg-deb",
        Apt("dpkg"),
        "unpacks L1's packages; lists and checks the .deb",
    ),
    req(
        "git",
        Apt("git"),
        "kvmtrace/build.rs puts the commit in kvmtrace --version",
    ),
    // The nested rig (an L1 Linux under QEMU).
    req(
        "qemu-system-x86_64",
        Apt("qemu-system-x86"),
        "boots the nested rig's L1 VM (TCG, SVM CPU model)",
    ),
    req(
        "depmod",
        Apt("kmod"),
        "module dependencies of the L1 kernel",
    ),
    req("cpio", Apt("cpio"), "packs the L1 initramfs"),
    req(
        "xz",
        Apt("xz-utils"),
        "unpacks the compressed modules of Debian's 6.12 kernel",
    ),
    req("gzip", Apt("gzip"), "compresses the L1 initramfs"),
    req(
        "find",
        Apt("findutils"),
        "lists the L1 initramfs files for cpio",
    ),
    req(
        "sh",
        Apt("dash"),
        "runs the initramfs packing and test scripts",
    ),
    // Tests and benchmarks.
    req(
        "bpftool",
        Apt("bpftool"),
        "tests check no BPF program is left behind; bench reads run-time stats",
    ),
    req(
        "bpftrace",
        Apt("bpftrace"),
        "bench compares kvmtrace with a bpftrace count",
    ),
    req(
        "setpriv",
        Apt("util-linux"),
        "the not-root test runs kvmtrace as uid 65534",
    ),
    req(
        "unshare",
        Apt("util-linux"),
        "the tracefs test unmounts tracefs in a private mount namespace",
    ),
    req(
        "mount",
        Apt("mount"),
        "setup mounts tracefs when it is absent",
    ),
    req(
        "umount",
        Apt("mount"),
        "the tracefs test unmounts tracefs (in its sh script)",
    ),
    req(
        "uname",
        Apt("coreutils"),
        "bench records the kernel it measured",
    ),
    // dist: checks of the static binary, man pages and completions.
    req(
        "ldd",
        Apt("libc-bin"),
        "dist asserts the binary is not a dynamic executable",
    ),
    req("man", Apt("man-db"), "dist checks every man page renders"),
    req(
        "bash",
        Apt("bash"),
        "dist checks the bash completion offers the subcommands",
    ),
    // The exporter's tests. Installing the package may start its own server on :9090 (where a
    // service manager runs); the tests start theirs on a free loopback port.
    req(
        "prometheus",
        Apt("prometheus"),
        "the exporter test scrapes `kvmtrace serve` with a real Prometheus and queries it",
    ),
    req(
        "promtool",
        Apt("prometheus"),
        "the exporter test checks the /metrics exposition (promtool check metrics)",
    ),
    req(
        "tmux",
        Apt("tmux"),
        "the `top` test drives the terminal UI as a person would (send-keys, capture-pane)",
    ),
];

const fn req(what: &'static str, source: Source, why: &'static str) -> Requirement {
    Requirement { what, source, why }
}

/// The Debian packages of the table, each once, in table order.
pub fn apt_packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = Vec::new();
    for r in REQUIREMENTS {
        if let Apt(p) = r.source
            && !pkgs.contains(&p)
        {
            pkgs.push(p);
        }
    }
    pkgs
}

/// The table's entry for program `what`.
pub fn entry(what: &str) -> Option<&'static Requirement> {
    REQUIREMENTS.iter().find(|r| r.what == what)
}

/// Fails unless every one of `programs` (names from the table) is present, naming each missing
/// one with where it comes from and why it is needed.
pub fn require(programs: &[&str]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for &what in programs {
        let Some(r) = entry(what) else {
            bail!(
                "{what} is not in xtask/src/requirements.rs: add it there (setup installs that list)"
            );
        };
        if !present(r) {
            missing.push(format!("{what} is missing ({}; {})", r.source, r.why));
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}\nrun `cargo xtask setup`: it installs everything in xtask/src/requirements.rs",
            missing.join("\n")
        );
    }
    Ok(())
}

/// Whether `r` is on this machine (without installing anything).
pub fn present(r: &Requirement) -> bool {
    match r.source {
        Component {
            toolchain,
            component,
        } => output(cmd("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with(component))),
        _ if r.what.starts_with('/') => Path::new(r.what).exists(),
        _ => find_program(r.what).is_some(),
    }
}

/// `program` in PATH as xtask's children see it (LLVM 22 first), then in the sbin directories
/// a non-login root shell may lack.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::iter::once(LLVM_BIN)
        .chain(path.split(':'))
        .chain(["/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Apt(p) => write!(f, "Debian package {p}"),
            Component {
                toolchain,
                component,
            } => write!(f, "rustup component {component} of {toolchain}"),
            Cargo { krate, version, .. } => write!(f, "cargo install {krate} {version}"),
            Rustup => write!(f, "rustup, with the stable and nightly toolchains"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Where spawned programs are looked for: everything that runs on this machine.
    const SCANNED: [&str; 4] = ["xtask/src", "tests/it", "tests/src", "kvmtrace/build.rs"];
    /// How a literal program name is spawned.
    const SPAWNS: [&str; 3] = ["cmd(\"", "Command::new(\"", "require(&[\""];

    fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for e in entries {
                rust_files(&e, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
    }

    /// Literal program names spawned in `source`: by `cmd` or `Command::new` with a string
    /// literal, and every name in a `require` list.
    fn spawned(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for pattern in SPAWNS {
            for (at, _) in source.match_indices(pattern) {
                let rest = &source[at + pattern.len() - 1..];
                let end = if pattern.starts_with("require") {
                    rest.find(']').unwrap_or(rest.len())
                } else {
                    rest[1..].find('"').map_or(rest.len(), |e| e + 2)
                };
                found.extend(
                    rest[..end]
                        .split(',')
                        .filter_map(|s| s.trim().strip_prefix('"')?.strip_suffix('"'))
                        .map(str::to_string),
                );
            }
        }
        found
    }

    #[test]
    fn every_spawned_program_is_in_the_table() {
        let root = crate::sh::root();
        let mut files = Vec::new();
        for dir in SCANNED {
            let path = root.join(dir);
            assert!(path.exists(), "{} is gone: update SCANNED", path.display());
            rust_files(&path, &mut files);
        }
        let mut missing = Vec::new();
        let mut seen = 0;
        for file in &files {
            let source = std::fs::read_to_string(file).unwrap();
            for program in spawned(&source) {
                seen += 1;
                if entry(&program).is_none() {
                    missing.push(format!(
                        "{program} (spawned in {})",
                        file.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
        assert!(
            seen > 20,
            "the scan found only {seen} spawns: is it broken?"
        );
        assert!(
            missing.is_empty(),
            "programs not in xtask/src/requirements.rs (so `cargo xtask setup` does not install \
             them): {missing:#?}"
        );
    }

    #[test]
    fn the_scanner_sees_each_spawn_form() {
        // Escaped quotes, so that the scan of this file does not see these.
        let source = "cmd(\"qemu-system-x86_64\").arg(\"x\"); Command::new(\"bpftool\");
            std::process::Command::new(\"setpriv\"); require(&[\"cpio\", \"depmod\"]);
            cmd(target_bin(\"release\", \"kvmtrace\")); Command::new(kvmtrace_bin())";
        assert_eq!(
            spawned(source),
            ["qemu-system-x86_64", "bpftool", "setpriv", "cpio", "depmod"]
        );
    }

    #[test]
    fn entries_are_unique_and_explained() {
        for (i, r) in REQUIREMENTS.iter().enumerate() {
            assert!(!r.why.is_empty(), "{}: say why", r.what);
            assert!(
                !REQUIREMENTS[..i]
                    .iter()
                    .any(|o| o.what == r.what && o.source == r.source),
                "{} twice",
                r.what
            );
        }
    }

    #[test]
    fn missing_programs_name_their_package() {
        let names = ["qemu-system-x86_64", "no-such-program-xyz"];
        let err = require(&names).unwrap_err();
        assert!(
            err.to_string()
                .contains("no-such-program-xyz is not in xtask/src/requirements.rs"),
            "{err}"
        );
        let qemu = entry("qemu-system-x86_64").unwrap();
        assert_eq!(qemu.source, Apt("qemu-system-x86"));
        assert!(apt_packages().contains(&"qemu-system-x86"));
    }
}
