//! The bench's floor: kvmtrace's empty programs attached to the given tracepoints, classic or
//! raw, so `cargo xtask bench` can put the attach mechanisms' own cost beside kvmtrace's
//! programs on the same events (see kvmtrace-ebpf's probes/floor.rs). Each tracepoint gets its
//! own empty program, so each kvmtrace program can be set against the floor of its own events.

use aya::{
    Ebpf, EbpfLoader,
    programs::{RawTracePoint, TracePoint},
};
use kvmtrace_common::programs;

use super::{EBPF_OBJECT, bump_memlock_rlimit, check_root, kernel::program};
use crate::error::Error;

/// The empty program on the tracepoint of kvmtrace's program `prog` (one of
/// [`programs::ALL`]), classic or raw.
pub fn floor_program(prog: &str, raw: bool) -> String {
    let raw = if raw { "_raw" } else { "" };
    format!("{}{}{raw}", programs::FLOOR_PREFIX, programs::stem(prog))
}

/// Attaches the empty classic (`raw` false) or raw tracepoint program of each (kvmtrace program,
/// category, event) of `events` to its event; they stay attached while the returned object
/// lives.
#[doc(hidden)]
pub fn attach_floor(raw: bool, events: &[(&str, &str, &str)]) -> Result<Ebpf, Error> {
    check_root()?;
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoBpfObject);
    }
    bump_memlock_rlimit();
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| Error::bpf("loading the eBPF object", e))?;
    for &(prog, category, event) in events {
        let name = floor_program(prog, raw);
        let attached = if raw {
            let p: &mut RawTracePoint = program(&mut ebpf, &name)?;
            p.load().and_then(|()| p.attach(event).map(drop))
        } else {
            let p: &mut TracePoint = program(&mut ebpf, &name)?;
            p.load().and_then(|()| p.attach(category, event).map(drop))
        };
        attached.map_err(|e| Error::bpf(format!("attaching {name} to {category}:{event}"), e))?;
    }
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_program_has_its_floor() {
        assert_eq!(
            floor_program(programs::KVM_CPUID, true),
            "kvmtrace_floor_cpuid_raw"
        );
        assert_eq!(
            floor_program(programs::SCHED_SWITCH, false),
            "kvmtrace_floor_switch"
        );
    }
}
