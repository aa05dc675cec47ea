//! Integration tests: the real kvmtrace binary tracing real KVM guests (kvmtrace-testvm) through
//! real tracepoints. They need root, /dev/kvm and BPF, and fail (never skip silently) without them.
//! Run one at a time (`--test-threads=1`): they load BPF programs and count host-wide state.

mod harness;

mod cleanup;
mod cost;
mod counts;
mod errors;
mod files;
mod guest_code;
mod lifecycle;
mod names;
mod nested_l1;
mod options;
mod recordings;
mod serve;
mod slow;
mod stacks;
mod storms;
mod top;
