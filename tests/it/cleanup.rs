//! Every BPF program is detached and freed when kvmtrace ends: by --duration, SIGINT or SIGTERM.

use crate::harness::{
    Guest, Prog, Recorder, loaded_kvmtrace_programs, program_name, programs_left,
    require_kvm_and_root,
};

/// The programs this recorder loaded are exactly our 9 (raw tracepoint variants where they
/// exist, unless KVMTRACE_ATTACH=classic), and all of them are gone after it ends.
/// "This recorder's" = loaded after it started and not before (bpftool here cannot tell which
/// process holds a program), so a kvmtrace that ran earlier does not confuse the test.
fn check_cleanup(stop: impl FnOnce(Recorder) -> std::process::Output, how: &str) {
    require_kvm_and_root();
    let guest = Guest::start(&format!("it-clean-{how}"), &["--run", "pio_out,count=10"]);
    let before: Vec<u64> = loaded_kvmtrace_programs().iter().map(|p| p.id).collect();
    let recorder = Recorder::start(&["-d", &guest.name, "--duration", "3s"]);
    let ours: Vec<Prog> = loaded_kvmtrace_programs()
        .into_iter()
        .filter(|p| !before.contains(&p.id))
        .collect();
    let mut names: Vec<&str> = ours.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<String> = [
        "kvmtrace_cpuid",
        "kvmtrace_entry",
        "kvmtrace_exit",
        "kvmtrace_fpu",
        "kvmtrace_mmio",
        "kvmtrace_msr",
        "kvmtrace_pio",
        "kvmtrace_switch",
        "kvmtrace_uexit",
    ]
    .map(program_name)
    .into();
    expected.sort_unstable();
    assert_eq!(names, expected, "while recording");
    let out = stop(recorder);
    assert!(
        out.status.success(),
        "{how}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VM it-clean-"),
        "{how}: report printed"
    );
    let ids: Vec<u64> = ours.iter().map(|p| p.id).collect();
    assert_eq!(programs_left(&ids), Vec::<Prog>::new(), "after {how}");
}

#[test]
fn no_program_left_after_duration() {
    check_cleanup(|r| r.wait_exit(), "duration");
}

#[test]
fn no_program_left_after_sigint() {
    check_cleanup(|r| r.stop(libc::SIGINT), "sigint");
}

#[test]
fn no_program_left_after_sigterm() {
    check_cleanup(|r| r.stop(libc::SIGTERM), "sigterm");
}
