//! `cargo xtask fuzz [--seconds N]`: runs the recording reader's fuzz target (fuzz/, cargo-fuzz on
//! nightly) for a bounded time on a copy of the checked-in seed corpus. Installs cargo-fuzz when
//! missing. The eBPF object is not needed for the reader, so it is skipped (AYA_BUILD_SKIP).

use anyhow::Context as _;

use crate::sh::{cargo, cmd, output, root, run};

pub fn run_fuzz(seconds: u64) -> anyhow::Result<()> {
    if output(cmd("cargo-fuzz").arg("--version")).is_none() {
        eprintln!("fuzz: installing cargo-fuzz (once)");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // The fuzzer adds what it finds to its corpus directory: give it a scratch copy.
    let corpus = root().join("target/fuzz-corpus/read_recording");
    std::fs::create_dir_all(&corpus)?;
    for seed in std::fs::read_dir(root().join("fuzz/corpus/read_recording"))? {
        let seed = seed?.path();
        std::fs::copy(&seed, corpus.join(seed.file_name().context("seed name")?))?;
    }
    run(cmd("rustup")
        .current_dir(root().join("fuzz"))
        .env("AYA_BUILD_SKIP", "1")
        .args(["run", "nightly", "cargo", "fuzz", "run", "read_recording"])
        .arg(&corpus)
        .args(["--", &format!("-max_total_time={seconds}")]))
}
