//! The BTF scan (kvmtrace/src/tp/btf.rs) must never panic, whatever the bytes: it reads the
//! kernel's file, but a truncated, foreign or corrupt one must give None, not a crash. What it
//! finds must be a byte offset its bit offset could be.
#![no_main]

use kvmtrace::tp::btf::member_offset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (structure, member) in [("task_struct", "pid"), ("a", "b"), ("", "")] {
        if let Some(offset) = member_offset(data, structure, member) {
            assert!(offset <= u32::MAX / 8, "{structure}.{member} at byte {offset}");
        }
    }
});
