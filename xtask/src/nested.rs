//! `cargo xtask nested`: real kvm:kvm_exit/kvm_entry in CI. This host's KVM (kvm_pvm) never emits
//! them, so this boots the nested rig's L1 ([`crate::l1`]: a Debian kernel with kvm_amd) and runs
//! the `nested_l1` integration tests there (tests/nested/init) with static builds of kvmtrace,
//! the test guest and the tests, once per kernel line asked for (`--kernel 5.10|6.1|6.12|all`).
//! L1 also prints the tracepoint formats kvmtrace reads; they must equal the fixtures in
//! kvmtrace/tests/data/formats/LINE/, so the unit tests of the offsets are those of the kernels
//! the suite ran on.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, bail};

pub use crate::l1::{KernelLine, Options};
use crate::{
    l1::{self, Initramfs},
    static_build,
};

const RESULT_MARK: &str = "KVMTRACE-NESTED-RESULT rc=";
const FORMAT_BEGIN: &str = "KVMTRACE-FORMAT-BEGIN ";
const FORMAT_END: &str = "KVMTRACE-FORMAT-END";

/// Runs the suite on each of `lines`, all of them even when one fails; returns how many tests
/// passed in all, or the failures of every line that failed.
pub fn run_nested(lines: &[KernelLine], opts: &Options) -> anyhow::Result<u64> {
    let mut passed = 0;
    let mut failures = Vec::new();
    for &line in lines {
        match run_on(line, opts) {
            Ok(n) => passed += n,
            Err(e) => {
                eprintln!("nested L1 {}: FAILED: {e:#}", line.label());
                failures.push(format!("{}: {e:#}", line.label()));
            }
        }
    }
    if !failures.is_empty() {
        bail!("the nested suite failed on:\n{}", failures.join("\n"));
    }
    Ok(passed)
}

/// Returns how many tests passed inside L1 running `line`.
fn run_on(line: KernelLine, opts: &Options) -> anyhow::Result<u64> {
    let started = Instant::now();
    let kernel = l1::kernel(line)?;
    let bins = static_build::binaries()?;
    let tests = static_build::integration_tests()?;
    let name = format!("initramfs-{}", line.label());
    let tree = Initramfs::new(&name, &kernel, "tests/nested/init")?;
    tree.copy(&bins.kvmtrace, "kvmtrace")?;
    tree.copy(&bins.testvm, "kvmtrace-testvm")?;
    tree.copy(&tests, "it")?;
    let initramfs = tree.pack()?;
    let prepared = started.elapsed();
    let log_name = format!("serial-{}.log", line.label());
    let log = l1::boot(&kernel, &initramfs, opts, &log_name)?;
    eprintln!(
        "nested {}: prepared in {:.1} s, L1 boot + tests in {:.1} s",
        line.label(),
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
    check_formats(line, &log)?;
    verdict(line, &log, &log_name)
}

/// The formats L1 printed, saved to target/nested/formats/LINE/, must equal the fixtures.
fn check_formats(line: KernelLine, log: &str) -> anyhow::Result<()> {
    let printed = formats_in(log);
    if printed.is_empty() {
        bail!(
            "L1 printed no tracepoint formats (see target/nested/serial-{}.log)",
            line.label()
        );
    }
    let saved = l1::work_dir().join("formats").join(line.label());
    std::fs::create_dir_all(&saved)?;
    let fixtures = crate::sh::root()
        .join("kvmtrace/tests/data/formats")
        .join(line.label());
    let mut stale = Vec::new();
    for (event, text) in &printed {
        let file = format!("{event}.format");
        std::fs::write(saved.join(&file), text)?;
        let fixture = std::fs::read_to_string(fixtures.join(&file)).unwrap_or_default();
        if without_id(&fixture) != without_id(text) {
            stale.push(file);
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} of kernel {} differ from the fixtures in {} (or are missing there): check the \
             offsets kvmtrace reads, then copy them from {}",
            stale.join(", "),
            line.label(),
            display(&fixtures),
            display(&saved)
        );
    }
    Ok(())
}

/// A format without its `ID:` line: the event number depends on what registered events before
/// it in that boot, not on the layout.
fn without_id(format: &str) -> Vec<&str> {
    format.lines().filter(|l| !l.starts_with("ID:")).collect()
}

fn display(p: &Path) -> String {
    p.strip_prefix(crate::sh::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// (event, format text) for each KVMTRACE-FORMAT block of `log`. An event that does not exist
/// on the kernel (cat fails) prints an empty block and is left out.
fn formats_in(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        let Some(event) = line.strip_prefix(FORMAT_BEGIN) else {
            continue;
        };
        let mut text = String::new();
        for l in lines.by_ref().take_while(|l| *l != FORMAT_END) {
            text.push_str(l);
            text.push('\n');
        }
        if !text.is_empty() {
            out.push((event.to_string(), text));
        }
    }
    out
}

/// Passes only if L1 reported its test run, the run exited 0, and it ran the expected tests;
/// returns how many passed.
fn verdict(line: KernelLine, log: &str, log_name: &str) -> anyhow::Result<u64> {
    let rc = log
        .lines()
        .find_map(|l| l.split(RESULT_MARK).nth(1))
        .with_context(|| {
            format!(
                "L1 never reported a result (kernel panic or crash? see target/nested/{log_name})"
            )
        })?;
    let summary = log
        .lines()
        .find(|l| l.starts_with("test result:"))
        .context("no libtest summary in L1's output")?;
    let passed = crate::sh::passed_in(summary);
    println!("nested L1 {}: {summary}", line.label());
    if !rc.starts_with("0 ") || !summary.contains(" 0 failed") {
        bail!("the nested L1 tests failed: {summary} ({RESULT_MARK}{rc})");
    }
    if passed == 0 {
        bail!("the nested L1 run passed no test: {summary}");
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_compare_without_their_event_number() {
        assert_eq!(
            without_id("name: a\nID: 1338\nformat:\n"),
            without_id("name: a\nID: 1419\nformat:\n")
        );
        assert_ne!(without_id("name: a\n"), without_id("name: b\n"));
    }

    #[test]
    fn format_blocks_are_cut_from_the_log() {
        let log = "L1: up\nKVMTRACE-FORMAT-BEGIN kvm_exit\nname: kvm_exit\n\tfield:int a;\n\
                   KVMTRACE-FORMAT-END\nKVMTRACE-FORMAT-BEGIN kvm_fpu\nKVMTRACE-FORMAT-END\n";
        assert_eq!(
            formats_in(log),
            vec![(
                "kvm_exit".to_string(),
                "name: kvm_exit\n\tfield:int a;\n".to_string()
            )]
        );
    }
}
