//! Every BPF program is detached and freed when kvmtrace ends: by --duration, SIGINT or SIGTERM.

use crate::harness::{Guest, Recorder, loaded_kvmtrace_programs, require_kvm_and_root};

fn check_cleanup(stop: impl FnOnce(Recorder) -> std::process::Output, how: &str) {
    require_kvm_and_root();
    assert!(
        loaded_kvmtrace_programs().is_empty(),
        "programs left over before the test"
    );
    let guest = Guest::start(&format!("it-clean-{how}"), &["--run", "pio_out,count=10"]);
    let recorder = Recorder::start(&["-d", &guest.name, "--duration", "3s"]);
    let loaded = loaded_kvmtrace_programs();
    assert_eq!(
        loaded.len(),
        9,
        "while recording, all 9 programs are loaded: {loaded:?}"
    );
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
    assert_eq!(
        loaded_kvmtrace_programs(),
        Vec::<String>::new(),
        "after {how}"
    );
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
