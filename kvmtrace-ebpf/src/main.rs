//! kvmtrace's eBPF programs. Each `kvm:*` tracepoint family has its own file under `probes/`; the
//! shared state (filter, maps, counters, configuration) is in `state.rs`.
#![no_std]
#![no_main]

mod probes;
mod state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Any reachable panic path makes the verifier reject the program: the loop never returns.
    #[allow(clippy::empty_loop, reason = "a panic in BPF must not be reachable")]
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
