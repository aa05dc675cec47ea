//! Recording files (`kvmtrace record -o FILE`, read by `report -i`, `diff`).
//!
//! ```text
//! "KVMTRACE" | version: u32 LE | header length: u32 LE | header crc32: u32 LE
//!   | header (JSON, self-describing)
//! then one zstd stream, flushed after every record, of records:
//!   kind: u8 | length: u32 LE | crc32 of payload: u32 LE | payload
//!   kind 1 VM (JSON), 2 INTERVAL (binary, see codec.rs), 3 END (JSON)
//! ```
//! The file is written as the recording goes, so a recorder killed with SIGKILL (or stopped by a
//! full disk) leaves every interval that was flushed; a file without END is reported as cut
//! short. One writer per format version, one reader that rejects versions it does not know and
//! files that would take more memory than [`limits`] allows.

mod codec;
pub mod limits;
mod reader;
mod writer;

use std::collections::BTreeMap;

pub use reader::{Recording, read_bytes, read_file};
use serde::{Deserialize, Serialize};
pub use writer::Writer;

pub const MAGIC: &[u8; 8] = b"KVMTRACE";
/// The version this build writes (and the newest it reads).
pub const VERSION: u32 = 1;

const KIND_VM: u8 = 1;
const KIND_INTERVAL: u8 = 2;
const KIND_END: u8 = 3;

/// What the recording is: host, kernel, tracepoints, VMs, timing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub kvmtrace_version: String,
    pub host: String,
    pub kernel_release: String,
    pub kvm_module: Option<String>,
    /// The tracepoint format files used, by event name.
    pub formats: BTreeMap<String, String>,
    pub tracepoints_attached: Vec<String>,
    pub tracepoints_missing: Vec<String>,
    pub interval_ms: u64,
    /// Wall clock at the start, seconds since the Unix epoch.
    pub start_unix_secs: f64,
    pub command_line: Vec<String>,
}

impl Header {
    /// Escapes the text a report may show (for headers read from a file, which may come from
    /// anyone). The tracepoint formats are kept verbatim: they are not shown.
    pub fn escape_text(&mut self) {
        use crate::untrusted::escape_in_place;
        escape_in_place(&mut self.kvmtrace_version);
        escape_in_place(&mut self.host);
        escape_in_place(&mut self.kernel_release);
        if let Some(m) = &mut self.kvm_module {
            escape_in_place(m);
        }
        for s in self
            .tracepoints_attached
            .iter_mut()
            .chain(&mut self.tracepoints_missing)
            .chain(&mut self.command_line)
        {
            escape_in_place(s);
        }
    }
}

/// The closing record: what was open when recording stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// (key fields, count) of exits with no kvm_entry yet.
    pub exits_in_flight: Vec<([u32; 6], u64)>,
    pub round_trips_in_flight: u64,
    /// (key fields, count) of exits whose thread ended before their kvm_entry (absent in
    /// recordings made before it existed).
    #[serde(default)]
    pub exits_ended_with_thread: Vec<([u32; 6], u64)>,
    /// Kernel map entries after the last drain.
    #[serde(default)]
    pub map_entries_at_stop: Option<crate::model::MapEntries>,
    /// The tracer's cost over the recording (absent in recordings made before it existed).
    #[serde(default)]
    pub tracer_cost: Option<crate::model::cost::TracerCost>,
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("the file is empty")]
    Empty,
    #[error("not a kvmtrace recording (no KVMTRACE magic at the start)")]
    NotARecording,
    #[error(
        "recording format version {found} is newer than this kvmtrace reads ({VERSION}); use a newer kvmtrace"
    )]
    UnsupportedVersion { found: u32 },
    #[error("the header is cut short or unreadable: {0}")]
    BadHeader(String),
    #[error("corrupted: {0}")]
    Corrupted(String),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A file that asks for more than [`limits`] allows: a zstd bomb, millions of keys.
    #[error("the recording is over a limit of this reader (a damaged or hostile file): {what}")]
    TooLarge { what: String },
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use kvmtrace_common::{Counter, DetailKey, LatencyKey};

    use super::*;
    use crate::{
        model::identity::{Thread, Vm},
        model::{Interval, LatencyDelta},
    };

    pub fn header() -> Header {
        Header {
            kvmtrace_version: "test".into(),
            host: "h".into(),
            kernel_release: "6.18".into(),
            kvm_module: Some("kvm_amd".into()),
            formats: [("kvm_pio".to_string(), "name: kvm_pio".to_string())].into(),
            tracepoints_attached: vec!["kvm_pio".into()],
            tracepoints_missing: vec![],
            interval_ms: 1000,
            start_unix_secs: 1.5e9,
            command_line: vec!["kvmtrace".into()],
        }
    }

    pub fn interval(i: u64) -> Interval {
        let mut counters = [0; Counter::COUNT as usize];
        counters[Counter::DetailsSeen as usize] = 100 * i;
        Interval {
            at: Duration::from_millis(1000 * i + 7),
            latency: vec![(
                LatencyKey {
                    tgid: 10,
                    tid: 11,
                    vcpu_id: 0,
                    isa: 2,
                    reason: 0x7b,
                    kind: 0,
                },
                LatencyDelta {
                    count: 5,
                    total_ns: 5000,
                    min_ns: 900,
                    max_ns: 1100,
                    buckets: vec![(150, 5)],
                },
            )],
            details: vec![(
                DetailKey {
                    tgid: 10,
                    tid: 11,
                    kind: 1,
                    a: 0x70,
                    b: 1 | 1 << 8,
                },
                100,
            )],
            counters,
            threads: vec![],
        }
    }

    /// A complete recording of `n` intervals, as bytes.
    pub fn recording(n: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.kvmtrace");
        let file = Writer::create(&path).unwrap();
        let mut w = Writer::start(file, &path, &header()).unwrap();
        w.vm(&Vm {
            pid: 10,
            name: "vm".into(),
            aliases: Default::default(),
            threads: vec![Thread {
                tid: 11,
                comm: "CPU 0/KVM".into(),
            }],
        })
        .unwrap();
        for i in 1..=n {
            w.interval(&interval(i)).unwrap();
        }
        w.finish(&End::default()).unwrap();
        std::fs::read(&path).unwrap()
    }

    fn header_end(bytes: &[u8]) -> usize {
        20 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize
    }

    #[test]
    fn round_trip() {
        let rec = read_bytes(&recording(3)).unwrap();
        assert_eq!(rec.header, header());
        assert_eq!(rec.vms.len(), 1);
        assert_eq!(rec.intervals.len(), 3);
        assert_eq!(rec.intervals[2].latency, interval(3).latency);
        assert_eq!(rec.intervals[2].at, interval(3).at);
        assert!(!rec.cut_short());
    }

    #[test]
    fn every_truncation_reads_or_fails_cleanly() {
        let bytes = recording(5);
        let mut complete_prefixes = 0;
        for len in 0..bytes.len() {
            match read_bytes(&bytes[..len]) {
                Ok(rec) => {
                    // Only the zstd frame's epilogue may be missing from a "complete" prefix.
                    assert!(
                        rec.cut_short() || rec.intervals.len() == 5,
                        "a prefix of {len} bytes"
                    );
                    // Whatever was read is exact.
                    for (i, iv) in rec.intervals.iter().enumerate() {
                        assert_eq!(iv.details, interval(i as u64 + 1).details);
                    }
                    complete_prefixes += 1;
                }
                Err(e) => assert!(
                    len < header_end(&bytes),
                    "a prefix past the header should read as cut short, got {e} at {len}"
                ),
            }
        }
        assert!(complete_prefixes > 0);
        // The last interval survives a cut inside the END record.
        let rec = read_bytes(&bytes[..bytes.len() - 1]).unwrap();
        assert!(rec.intervals.len() >= 4, "{}", rec.intervals.len());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        assert!(matches!(read_bytes(b""), Err(FormatError::Empty)));
        assert!(matches!(
            read_bytes(b"hello world, not ours"),
            Err(FormatError::NotARecording)
        ));
        let mut newer = recording(1);
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let err = read_bytes(&newer).unwrap_err();
        assert!(matches!(err, FormatError::UnsupportedVersion { found } if found == VERSION + 1));
        assert!(
            err.to_string().contains("newer than this kvmtrace reads"),
            "{err}"
        );
        // Flipping any byte never panics, and never silently changes the data: the file is
        // rejected, or decodes to the original, or to a prefix of it reported as cut short (a
        // flipped length inside zstd's framing looks exactly like a truncated file).
        let good = recording(3);
        let original = read_bytes(&good).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x55;
            if let Ok(rec) = read_bytes(&bad) {
                assert_eq!(rec.header, original.header, "flip at {i}");
                let summary = |r: &Recording| {
                    r.intervals
                        .iter()
                        .map(|iv| (iv.at, iv.details.clone(), iv.latency.clone(), iv.counters))
                        .collect::<Vec<_>>()
                };
                let (got, all) = (summary(&rec), summary(&original));
                assert!(all.starts_with(&got), "flip at {i}: intervals changed");
                assert!(
                    original.vms.starts_with(&rec.vms),
                    "flip at {i}: VMs changed"
                );
                if !rec.cut_short() {
                    assert_eq!((got, &rec.end), (all, &original.end), "flip at {i}");
                }
            }
        }
    }
}
