//! The recording reader must never panic, whatever the bytes: truncated, corrupted, hostile.
//! Whatever it accepts must also report without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = kvmtrace::record::read_bytes(data) {
        let loaded = kvmtrace::offline::from_recording(rec, Default::default());
        let report = kvmtrace::offline::build_report(&loaded, true, &Default::default());
        let mut sink = Vec::new();
        let _ = kvmtrace::render::text::render(&report, &mut sink);
        let _ = kvmtrace::render::folded::lines(&report, kvmtrace::cli::Weight::Time);
    }
});
