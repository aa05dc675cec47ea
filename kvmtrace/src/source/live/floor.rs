//! The bench's floor: kvmtrace's empty programs attached to the given tracepoints, classic or
//! raw, so `cargo xtask bench` can put the attach mechanisms' own cost beside kvmtrace's
//! programs on the same events (see kvmtrace-ebpf's probes/floor.rs).

use aya::{
    Ebpf, EbpfLoader,
    programs::{RawTracePoint, TracePoint},
};
use kvmtrace_common::programs;

use super::{EBPF_OBJECT, bump_memlock_rlimit, check_root, kernel::program};
use crate::error::Error;

/// Attaches the empty classic (`raw` false) or raw tracepoint program to every (category,
/// event) of `events`; they stay attached while the returned object lives.
#[doc(hidden)]
pub fn attach_floor(raw: bool, events: &[(&str, &str)]) -> Result<Ebpf, Error> {
    check_root()?;
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoBpfObject);
    }
    bump_memlock_rlimit();
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| Error::bpf("loading the eBPF object", e))?;
    if raw {
        let name = programs::FLOOR_RAW;
        let p: &mut RawTracePoint = program(&mut ebpf, name)?;
        p.load()
            .map_err(|e| Error::bpf(format!("loading {name}"), e))?;
        for (_, event) in events {
            p.attach(event)
                .map_err(|e| Error::bpf(format!("attaching {name} to {event}"), e))?;
        }
    } else {
        let name = programs::FLOOR_CLASSIC;
        let p: &mut TracePoint = program(&mut ebpf, name)?;
        p.load()
            .map_err(|e| Error::bpf(format!("loading {name}"), e))?;
        for (category, event) in events {
            p.attach(category, event)
                .map_err(|e| Error::bpf(format!("attaching {name} to {category}:{event}"), e))?;
        }
    }
    Ok(ebpf)
}
