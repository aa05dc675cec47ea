//! `cargo xtask fuzz [--seconds N]`: runs the fuzz targets (fuzz/, cargo-fuzz on nightly) for a
//! bounded time, split between them, each on a copy of its checked-in seed corpus (cargo-fuzz
//! comes from `cargo xtask setup`):
//! - `read_recording`: the reader never panics on arbitrary bytes, and what it accepts reports
//!   safely;
//! - `roundtrip_recording`: what the writer writes, the reader reads back unchanged;
//! - `btf_member_offset`: the BTF scan never panics on arbitrary bytes.
//!
//! The eBPF object is not needed for any of them, so it is skipped (AYA_BUILD_SKIP).

use anyhow::Context as _;

use crate::{
    requirements::require,
    sh::{cmd, root, run},
};

/// Peak RSS of the fuzzing process, and the largest single allocation, in MiB.
const FUZZ_RSS_LIMIT_MB: u32 = 1024;
const FUZZ_MALLOC_LIMIT_MB: u32 = 256;

/// The targets, each run for an equal share of the time.
const TARGETS: [&str; 3] = ["read_recording", "roundtrip_recording", "btf_member_offset"];

pub fn run_fuzz(seconds: u64) -> anyhow::Result<()> {
    require(&["cargo-fuzz"])?;
    let share = (seconds / TARGETS.len() as u64).max(1);
    for target in TARGETS {
        fuzz_target(target, share)?;
    }
    Ok(())
}

fn fuzz_target(target: &str, seconds: u64) -> anyhow::Result<()> {
    // The fuzzer adds what it finds to its corpus directory: give it a scratch copy.
    let corpus = root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    for seed in std::fs::read_dir(root().join("fuzz/corpus").join(target))? {
        let seed = seed?.path();
        std::fs::copy(&seed, corpus.join(seed.file_name().context("seed name")?))?;
    }
    run(cmd("rustup")
        .current_dir(root().join("fuzz"))
        .env("AYA_BUILD_SKIP", "1")
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        .arg(&corpus)
        // A recording must not make the reader allocate without bound (a zstd bomb, millions
        // of keys): an input that pushes the process past these limits is a crash. The reader's
        // own limits (kvmtrace/src/record/limits.rs) stay far below them, even under ASan.
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            &format!("-rss_limit_mb={FUZZ_RSS_LIMIT_MB}"),
            &format!("-malloc_limit_mb={FUZZ_MALLOC_LIMIT_MB}"),
        ]))
}
