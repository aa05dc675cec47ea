//! Bad input: a clear message naming the problem and the fix, and a non-zero exit.

use std::process::{Command, Output};

use crate::harness::{Guest, kvmtrace, kvmtrace_bin, require_kvm_and_root};

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr should contain {needle:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no report on failure");
}

#[test]
fn not_root() {
    require_kvm_and_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(kvmtrace_bin())
        .args(["record", "--duration", "1s"])
        .output()
        .expect("running setpriv");
    assert_fails_with(
        &out,
        "kvmtrace needs root to load BPF programs (running as uid 65534)",
    );
}

#[test]
fn unknown_vm_name_lists_the_vms() {
    require_kvm_and_root();
    let guest = Guest::start("it-known", &["--run", "pio_out,count=1"]);
    let out = kvmtrace(&["record", "-d", "no-such-vm", "--duration", "1s"]);
    assert_fails_with(&out, "no VM named `no-such-vm` on this host; VMs found: ");
    assert_fails_with(&out, &format!("it-known (pid {})", guest.pid));
}

#[test]
fn pid_that_is_not_a_vm() {
    require_kvm_and_root();
    let me = std::process::id().to_string();
    let out = kvmtrace(&["record", "-p", &me, "--duration", "1s"]);
    assert_fails_with(&out, &format!("process {me} is not a VM"));
    let out = kvmtrace(&["record", "-p", "4000000", "--duration", "1s"]);
    assert_fails_with(&out, "process 4000000 does not exist");
}

#[test]
fn tracefs_missing_is_explained() {
    require_kvm_and_root();
    let empty = std::env::temp_dir().join("kvmtrace-it-no-tracefs");
    std::fs::create_dir_all(&empty).unwrap();
    let out = kvmtrace(&[
        "record",
        "--tracefs",
        empty.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert_fails_with(
        &out,
        "mount it with: mount -t tracefs nodev /sys/kernel/tracing",
    );
}

/// With tracefs unmounted (in a private mount namespace), kvmtrace mounts it and records.
#[test]
fn tracefs_unmounted_gets_mounted() {
    require_kvm_and_root();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         test -d /sys/kernel/tracing/events && {{ echo still mounted; exit 3; }}; \
         exec {} record --duration 1s",
        kvmtrace_bin().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("kvmtrace: "),
        "a report"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = kvmtrace(&["record", "--interval", "1ms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the interval must be at least 100ms"));
}
