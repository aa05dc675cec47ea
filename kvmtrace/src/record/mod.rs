//! Recording files (`kvmtrace record -o FILE`, read by `report -i`, `diff`).
//!
//! ```text
//! "KVMTRACE" | version: u32 LE | header length: u32 LE | header crc32: u32 LE
//!   | header (JSON, self-describing)
//! then one zstd stream, flushed after every record, of records:
//!   kind: u8 | length: u32 LE | crc32 of payload: u32 LE | payload
//!   kind 1 VM (JSON), 2 INTERVAL (binary, see codec.rs), 3 END (JSON),
//!   4 STACKS (JSON, version 3 on: the host stack samples of the INTERVAL just before it)
//!   5 DEEP (JSON, version 4 on: the slow exits and guest RIPs of the INTERVAL before it, after
//!     its STACKS)
//! ```
//! The file is written as the recording goes, so a recorder killed with SIGKILL (or stopped by a
//! full disk) leaves every interval that was flushed; a file without END is reported as cut
//! short. One writer, for [`VERSION`]; one reader for every version from [`OLDEST_VERSION`] on,
//! that rejects versions it does not know and files that would take more memory than [`limits`]
//! allows.
//!
//! # Format versions
//!
//! The version changes with the binary INTERVAL payload or the meaning of what it holds. Fields
//! added to the JSON records with `#[serde(default)]` (older files read with them empty) need no
//! new version. Every version keeps a golden file written by its own writer in
//! `kvmtrace/tests/data/recordings/`, and a test reads each one back value by value
//! (`record/tests/golden.rs`; a new version without its golden fails there).
//!
//! | version | written by | INTERVAL payload |
//! |---------|------------|------------------|
//! | 1 | bc949b8 (record -o) to c04e879 | time, new latency and detail keys, latency entries (count, total, min, max, buckets), detail entries, counters; min and max since attach. Golden: `v1.kvmtrace` |
//! | 1, not bumped | c04e879 (CPU attribution) to 5beba80 | + per-thread CPU records after the counters (a count, then per thread: tgid, tid, six cumulative ns, procfs ns + 1 or 0 for none) |
//! | 1, not bumped | 5beba80 (kernel state with a lifecycle) to this change | the same bytes; min and max of the interval, "other keys" detail rows, VMM-in-exit latency keys; END fields added (serde default). Golden: `v1-threads.kvmtrace` |
//! | 2 | fc2867f (issue #10, recording format discipline) | the same bytes as the last version 1; the per-thread records are always there. Golden: `v2.kvmtrace` |
//! | 3 | 9fea71e (issue #11, `record --stacks`) | INTERVAL unchanged; a STACKS record may follow an INTERVAL (a reader of version 2 would stop at its unknown kind). Golden: `v3.kvmtrace` |
//! | 4 | this change (issue #11, `record --than`, `--guest-rips`) | INTERVAL unchanged; a DEEP record may follow an INTERVAL and its STACKS; the header may say `slow_threshold_ns` and `guest_rips`. Golden: `v4.kvmtrace` |
//!
//! Every file written before version 2 says version 1, in three shapes. The reader tells them
//! apart where the bytes do: a version 1 interval that ends after its counters has no per-thread
//! records (empty `threads`), one that goes on has them. Where only the meaning changed (min and
//! max since attach until 5beba80), the reader clamps a version 1 key's min and max to its
//! interval's buckets: the interval's own extremes within a bucket's width, unchanged for files
//! that already held them, and a whole recording's exact either way.
//!
//! Why 2 and not 3 for the format written now: the change of meaning at 5beba80 would deserve a
//! number of its own, but no file ever carried one; a number for the c04e879 shape would name
//! files that do not exist, and a reader could not use it. So 1 covers everything written under
//! that number, and 2 is the first number written for a payload that changed since 1.

mod codec;
pub mod limits;
mod reader;
mod writer;

use std::collections::BTreeMap;

pub use reader::{Recording, read_bytes, read_file};
use serde::{Deserialize, Serialize};
pub use writer::Writer;

pub const MAGIC: &[u8; 8] = b"KVMTRACE";
/// The version this build writes (and the newest it reads); see the table above.
pub const VERSION: u32 = 4;
/// The oldest version this build reads.
pub const OLDEST_VERSION: u32 = 1;

const KIND_VM: u8 = 1;
const KIND_INTERVAL: u8 = 2;
const KIND_END: u8 = 3;
const KIND_STACKS: u8 = 4;
const KIND_DEEP: u8 = 5;

/// A DEEP record: what `--than` and `--guest-rips` add to an interval. A field added later
/// (with serde's default) needs no new version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Deep {
    #[serde(default)]
    slow: crate::model::slow::SlowBatch,
    #[serde(default)]
    guest_rips: crate::model::rips::RipBatch,
}

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
    /// `record --than`: the slow-exit threshold (absent: slow exits were not captured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_threshold_ns: Option<u64>,
    /// `record --guest-rips`: exits were counted per guest RIP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest_rips: bool,
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
    /// CPU time the host lost to its own hypervisor while recording, % of all its CPUs' time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_steal_pct: Option<f64>,
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
pub(crate) mod tests;
