//! `record --stacks`: host stack samples of a real guest's vCPU thread on this host's KVM
//! (kvm_pvm here: no kvm_exit, so in-KVM_RUN samples are "kvm_run", not split by reason).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::*;

/// The sampling rate these tests ask for (the default).
const HZ: f64 = 999.0;

/// A guest whose VMM spends 300 µs on each port write, running before the recorder starts. The
/// samples outside KVM_RUN are the VMM handling KVM_EXIT_IO in `emulate_slow_io`, with the test
/// VMM's callers above it (its frame pointers); inside KVM_RUN the kernel frames run through
/// the KVM_RUN ioctl. The recording holds exactly the samples of the live report.
///
/// After every 20 port writes the guest makes 100 CPUIDs (handled in the kernel): port writes
/// alone spend so little time inside KVM_RUN on an AMD EPYC host (raw tracepoints) that 3 s of
/// samples found it not once (2026-11-27, before and after that session's changes).
#[test]
fn stacks_find_the_vmm_handler_and_kvm_run() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "stacks-io",
        &[
            "--vcpus",
            "1",
            "--loop",
            "--timeout",
            "60",
            "--run",
            "pio_out,port=0x80,count=20,vmm_us=300;cpuid,count=100",
        ],
    );
    guest.go();
    std::thread::sleep(Duration::from_secs(1));
    let file = temp("stacks.kvmtrace");
    let file_arg = file.to_str().unwrap();
    let report = record_to_end(&[
        "-d",
        "stacks-io",
        "--duration",
        "3s",
        "--interval",
        "500ms",
        "--stacks",
        "-o",
        file_arg,
        "--json",
    ]);
    let hs = &report["host_stacks"];
    let total = hs["samples"].as_u64().unwrap();
    assert_eq!(hs["lost"], 0, "{hs:#}");
    // The VMM's busy loop gives most samples a stack of their own (a new leaf address): every
    // one keeps its frames (the kernel's stack-trace map, one stack per hash bucket, lost 3 %).
    assert_eq!(hs["frames_lost"], 0, "of {total}: {hs:#}");
    // Each drain empties the epoch's sample and stack maps: nothing is left after the last.
    assert_eq!(
        report["counters"]["map_entries_at_stop"]["stacks"], 0,
        "{:#}",
        report["counters"]
    );
    let groups = hs["groups"].as_array().unwrap();
    assert!(
        groups.iter().all(|g| g["pid"] == guest.pid),
        "only the traced VM is sampled: {hs:#}"
    );

    // About one sample per 1/999 s the vCPU thread was on a CPU (procfs's figure).
    let vm = vm_of(&report, guest.pid);
    let cpu = &vm["cpu"][0];
    let on_cpu_secs =
        cpu["procfs_cpu_pct"].as_f64().unwrap() / 100.0 * cpu["wall_secs"].as_f64().unwrap();
    let expected = on_cpu_secs * HZ;
    assert!(
        (total as f64) > 0.85 * expected && (total as f64) < 1.1 * expected,
        "{total} samples for {on_cpu_secs:.2} s on a CPU at {HZ} Hz"
    );

    let group = |state: &str, reason: &str| {
        groups
            .iter()
            .find(|g| g["state"] == state && g["reason"] == reason)
            .unwrap_or_else(|| panic!("no {state} {reason} group: {hs:#}"))
    };
    // The VMM's time: nearly all of it is emulate_slow_io, reached from the vCPU loop.
    let vmm = group("vmm", "IO");
    assert!(vmm["share_pct"].as_f64().unwrap() > 80.0, "{hs:#}");
    let top = frames(&vmm["top"][0]);
    let handler = top
        .iter()
        .position(|f| f.ends_with("emulate_slow_io"))
        .unwrap_or_else(|| panic!("emulate_slow_io not in the top VMM path {top:?}"));
    assert!(
        top[..handler].iter().any(|f| f.ends_with("Vcpu::batch")),
        "the frames above the handler were unwound: {top:?}"
    );
    // Inside KVM_RUN: the kernel, under the vCPU's ioctl.
    let run = group("kvm_run", "-");
    assert!(
        run["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| frames(p).iter().any(|f| f == "kvm_vcpu_ioctl")),
        "{run:#}"
    );

    // The recording: the same samples, as folded stacks `VM;vCPU N;reason;state;frames`.
    let folded = kvmtrace_ok(&[
        "report", "-i", file_arg, "--format", "folded", "--weight", "samples",
    ]);
    let folded = String::from_utf8(folded).unwrap();
    let (mut sum, mut vmm_io, mut in_handler) = (0, 0, 0);
    for line in folded.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        sum += n;
        assert!(stack.starts_with("stacks-io;vCPU 0;"), "{line}");
        if stack.starts_with("stacks-io;vCPU 0;IO;vmm;") {
            vmm_io += n;
            if stack.contains("::emulate_slow_io;") || stack.ends_with("::emulate_slow_io") {
                in_handler += n;
            }
        }
    }
    assert_eq!(sum, total);
    assert_eq!(vmm_io, vmm["samples"].as_u64().unwrap());
    // Nearly all of the VMM's handling is the handler (the rest: KVM_RUN's return path).
    assert!(
        in_handler as f64 > 0.9 * vmm_io as f64,
        "{in_handler} of {vmm_io}"
    );
    let text = String::from_utf8(kvmtrace_ok(&["report", "-i", file_arg])).unwrap();
    assert!(
        text.contains("Hottest host paths per exit reason"),
        "{text}"
    );
    assert!(text.contains("stacks-io vmm IO: "), "{text}");

    // Nothing of the sampler stays loaded.
    let deadline = Instant::now() + Duration::from_secs(2);
    while loaded_kvmtrace_programs()
        .iter()
        .any(|p| p.name.starts_with("kvmtrace_stack"))
    {
        assert!(
            Instant::now() < deadline,
            "the stack sampling program is still loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The guest loops until it is dropped (killed).
    drop(guest);
}

/// `--weight samples` on a recording made without `--stacks` says how to get samples.
#[test]
fn samples_weight_needs_a_recording_with_stacks() {
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kvmtrace/tests/data/recordings/v2.kvmtrace"
    );
    let out = std::process::Command::new(kvmtrace_bin())
        .args([
            "report", "-i", golden, "--format", "folded", "--weight", "samples",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no host stack samples") && err.contains("record --stacks"),
        "{err}"
    );
}

fn frames(path: &Value) -> Vec<String> {
    path["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}
