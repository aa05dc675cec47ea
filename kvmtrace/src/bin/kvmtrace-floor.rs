//! `kvmtrace-floor classic|raw [EVENT...]`: attaches an empty program (a classic or a raw
//! tracepoint program) to every tracepoint kvmtrace traces (or to the EVENTs named), one per
//! tracepoint, says so on stdout, and stays until it is killed (the kernel then frees
//! everything: nothing is pinned). `cargo xtask bench` runs it to measure the attach mechanisms'
//! own cost beside kvmtrace's programs; it is not installed by the .deb.
use std::process::ExitCode;

use kvmtrace_common::programs;

fn main() -> ExitCode {
    // Killed with SIGINT by the bench; a shell that starts it in the background (no job control)
    // hands it SIGINT ignored, and it would then never end.
    // SAFETY: setting a signal's disposition to the default has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let mode = std::env::args().nth(1).unwrap_or_default();
    let raw = match mode.as_str() {
        "classic" => false,
        "raw" => true,
        _ => {
            eprintln!("usage: kvmtrace-floor classic|raw [EVENT...]");
            return ExitCode::from(2);
        }
    };
    // Optional: only these tracepoints (e.g. `kvm_fpu kvm_pio`), to time one mechanism's cost
    // on one event of a loop.
    let only: Vec<String> = std::env::args().skip(2).collect();
    let events: Vec<_> = programs::ALL
        .into_iter()
        .filter(|(_, _, event)| only.is_empty() || only.iter().any(|o| o == event))
        .collect();
    let _attached = match kvmtrace::source::live::attach_floor(raw, &events) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            eprintln!("kvmtrace-floor: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kvmtrace-floor: attached the empty {mode} program to {} tracepoints",
        events.len()
    );
    loop {
        std::thread::park();
    }
}
