//! `cargo xtask test`: everything CI checks, in order: set-up, formatting, clippy (also for the
//! eBPF crate, on nightly, since it builds for another target), unit tests, then the integration
//! tests against real guests as root, one at a time (twice: raw and classic tracepoint programs),
//! the nested-SVM suite (real kvm_exit), the
//! release artefacts (`dist`: static binary, man pages, completions, .deb) and the .deb installed
//! with dpkg in the nested rig's L1, the recording and live-storm-line benchmarks' bars, and a bounded fuzzing run of
//! the recording reader. xtask's own unit tests (the requirements scan among them) run with
//! `--lib --bins`: xtask is a binary crate in the default members.

use anyhow::Context as _;

use crate::{
    dist, fuzz, nested, setup,
    sh::{cargo, cmd, run, run_counting},
};

/// What a full run from a fresh clone writes (target/, fuzz/target, the nested rig's kernels and
/// apt cache: 6.2 GB measured), with room to spare. A full disk once failed CI 15 minutes in,
/// inside a build script, with an error that named neither the disk nor the need.
const DISK_NEEDED_GIB: u64 = 9;

pub fn run_tests() -> anyhow::Result<()> {
    check_free_space()?;
    setup::run_setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate builds only for the BPF target, with nightly's build-std, so it gets its own
    // clippy run (as aya-template does); bpf_target_arch is the cfg aya-build passes.
    run(cmd("rustup")
        .current_dir(crate::sh::root().join("kvmtrace-ebpf"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        )
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "../target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ]))?;
    run(cargo().args(["build", "--bins"]))?;
    let mut passed = run_counting(cargo().args(["test", "--lib", "--bins"]))?;
    let integration = [
        "test",
        "-p",
        "kvmtrace-tests",
        "--test",
        "it",
        "--",
        "--test-threads=1",
    ];
    // Raw tracepoint programs where the kernel takes them (the default), then every test again
    // on the classic tracepoint programs, the fallback for kernels that refuse raw ones.
    passed += run_counting(cargo().args(integration))?;
    passed += run_counting(cargo().env("KVMTRACE_ATTACH", "classic").args(integration))?;
    // The tests that need real kvm_exit/kvm_entry run inside the nested SVM L1, on each kernel
    // line users run (5.10, 6.1, 6.12).
    passed += nested::run_nested(&nested::KernelLine::ALL, &nested::Options::default())?;
    // What users install: built statically, checked here, then installed and used in L1.
    dist::run_dist(true)?;
    // Recording size and offline report speed bars, and the live storm lines' and record's work
    // per interval not growing with the recording (each exits non-zero when missed).
    run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "recording"]))?;
    run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "watch"]))?;
    run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "collect"]))?;
    // The recording reader never panics on arbitrary bytes.
    fuzz::run_fuzz(60)?;
    eprintln!("xtask test: all checks passed");
    // The plain closing line: every test that ran (unit, integration, nested L1), none failed.
    println!("tests: {passed} passed, 0 failed");
    Ok(())
}

/// Fails at once, and says what to free, when the checkout's file system cannot hold a full run.
/// What this checkout already built counts as available: a warm run rewrites little of it.
fn check_free_space() -> anyhow::Result<()> {
    let root = crate::sh::root();
    let free = free_bytes(&root)?;
    let reusable = dir_size(&root.join("target")) + dir_size(&root.join("fuzz/target"));
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    eprintln!(
        "xtask test: {:.1} GiB free on {}, {:.1} GiB already built",
        gib(free),
        root.display(),
        gib(reusable)
    );
    if free + reusable < DISK_NEEDED_GIB << 30 {
        anyhow::bail!(
            "a full test run needs about {DISK_NEEDED_GIB} GiB on {} (target/, fuzz/target, the \
             nested rig's kernels); only {:.1} GiB are free. Free space there (old checkouts' \
             target directories, `cargo clean`) and run again",
            root.display(),
            gib(free)
        );
    }
    Ok(())
}

/// Bytes free to an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a NUL-terminated path and stat points to writable memory of the right
    // type; statvfs fills it completely when it returns 0.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail * stat.f_frsize)
}

/// Apparent size of the files under `dir` (0 when it does not exist).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |meta| meta.len()),
            _ => 0,
        })
        .sum()
}
