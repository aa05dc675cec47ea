//! The recording reader must never panic, whatever the bytes: truncated, corrupted, hostile.
//! Whatever it accepts must also report without panicking, and every format it renders must be
//! safe to print on a terminal: no control characters from the file, only line breaks of ours.
//! The run's RSS limit (xtask/src/fuzz.rs) catches inputs that make the reader allocate without
//! bound.
#![no_main]

use kvmtrace::{render::{self, Weight}, untrusted};
use libfuzzer_sys::fuzz_target;

/// Every line is already escaped: escaping it again changes nothing.
fn assert_terminal_safe(format: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        assert_eq!(untrusted::escape(line), line, "{format} output");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = kvmtrace::record::read_bytes(data) {
        let loaded = kvmtrace::source::recording::from_recording(rec, Default::default());
        let report = kvmtrace::source::recording::build_report(&loaded, true, &Default::default(), None);
        let mut out = Vec::new();
        let _ = render::text::render(&report, &mut out);
        assert_terminal_safe("text", &out);
        out.clear();
        let _ = render::json::render(&report, &mut out);
        assert_terminal_safe("json", &out);
        out.clear();
        let _ = render::csv::render(&report, &mut out);
        assert_terminal_safe("csv", &out);
        for line in render::folded::lines(&report, Weight::Time) {
            assert_terminal_safe("folded", line.as_bytes());
        }
    }
});
