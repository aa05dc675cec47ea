//! `cargo xtask test`: everything CI checks, in order: set-up, formatting, clippy (also for the
//! eBPF crate, on nightly, since it builds for another target), unit tests, then the integration
//! tests against real guests as root, one at a time (twice: raw and classic tracepoint programs),
//! the nested-SVM suite (real kvm_exit), the
//! release artefacts (`dist`: static binary, man pages, completions, .deb) and the .deb installed
//! with dpkg in the nested rig's L1, the recording benchmarks' bars, and a bounded fuzzing run of
//! the recording reader. xtask's own unit tests (the requirements scan among them) run with
//! `--lib --bins`: xtask is a binary crate in the default members.

use crate::{
    dist, fuzz, nested, setup,
    sh::{cargo, cmd, run, run_counting},
};

pub fn run_tests() -> anyhow::Result<()> {
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
    // Recording size and offline report speed bars (exits non-zero when missed).
    run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "recording"]))?;
    // The recording reader never panics on arbitrary bytes.
    fuzz::run_fuzz(60)?;
    eprintln!("xtask test: all checks passed");
    // The plain closing line: every test that ran (unit, integration, nested L1), none failed.
    println!("tests: {passed} passed, 0 failed");
    Ok(())
}
