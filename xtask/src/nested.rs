//! `cargo xtask nested`: real kvm:kvm_exit/kvm_entry in CI. This host's KVM (kvm_pvm) never emits
//! them, so this boots the nested rig's L1 ([`crate::l1`]: Debian's 6.1 kernel, kvm_amd) and runs
//! the `nested_l1` integration tests there (tests/nested/init) with static builds of kvmtrace,
//! the test guest and the tests.

use std::time::Instant;

use anyhow::{Context as _, bail};

pub use crate::l1::Options;
use crate::{
    l1::{self, Initramfs},
    static_build,
};

const RESULT_MARK: &str = "KVMTRACE-NESTED-RESULT rc=";

/// Returns how many tests passed inside L1.
pub fn run_nested(opts: &Options) -> anyhow::Result<u64> {
    let started = Instant::now();
    let kernel = l1::kernel()?;
    let bins = static_build::binaries()?;
    let tests = static_build::integration_tests()?;
    let tree = Initramfs::new("initramfs", &kernel, "tests/nested/init")?;
    tree.copy(&bins.kvmtrace, "kvmtrace")?;
    tree.copy(&bins.testvm, "kvmtrace-testvm")?;
    tree.copy(&tests, "it")?;
    let initramfs = tree.pack()?;
    let prepared = started.elapsed();
    let log = l1::boot(&kernel, &initramfs, opts, "serial.log")?;
    eprintln!(
        "nested: prepared in {:.1} s, L1 boot + tests in {:.1} s",
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
    verdict(&log)
}

/// Passes only if L1 reported its test run, the run exited 0, and it ran the expected tests;
/// returns how many passed.
fn verdict(log: &str) -> anyhow::Result<u64> {
    let rc = log
        .lines()
        .find_map(|l| l.split(RESULT_MARK).nth(1))
        .context(
            "L1 never reported a result (kernel panic or crash? see target/nested/serial.log)",
        )?;
    let summary = log
        .lines()
        .find(|l| l.starts_with("test result:"))
        .context("no libtest summary in L1's output")?;
    let passed = crate::sh::passed_in(summary);
    println!("nested L1: {summary}");
    if !rc.starts_with("0 ") || !summary.contains(" 0 failed") {
        bail!("the nested L1 tests failed: {summary} ({RESULT_MARK}{rc})");
    }
    if passed == 0 {
        bail!("the nested L1 run passed no test: {summary}");
    }
    Ok(passed)
}
