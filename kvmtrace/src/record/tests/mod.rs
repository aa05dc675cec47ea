//! The recording format's tests: round trips, damaged files, and (golden.rs) the golden files
//! of every version. Helpers here serve the other modules' tests too.

mod golden;
mod golden_input;

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
        slow_threshold_ns: None,
        guest_rips: false,
    }
}

/// The one VM of the test recordings: pid 10 with vCPU thread 11.
pub fn vm() -> Vm {
    Vm {
        pid: 10,
        name: "vm".into(),
        aliases: Default::default(),
        threads: vec![Thread {
            tid: 11,
            comm: "CPU 0/KVM".into(),
        }],
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
        stacks: Default::default(),
        slow: Default::default(),
        guest_rips: Default::default(),
    }
}

/// A complete recording of `n` intervals, as bytes.
pub fn recording(n: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.kvmtrace");
    let file = Writer::create(&path).unwrap();
    let mut w = Writer::start(file, &path, &header()).unwrap();
    w.vm(&vm()).unwrap();
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

#[test]
fn versions_from_the_oldest_to_this_one_are_read_and_no_other() {
    let good = recording(2);
    let with_version = |v: u32| {
        let mut bytes = good.clone();
        bytes[8..12].copy_from_slice(&v.to_le_bytes());
        read_bytes(&bytes)
    };
    for v in OLDEST_VERSION..=VERSION {
        let rec = with_version(v).unwrap();
        assert_eq!((rec.version, rec.intervals.len()), (v, 2));
    }
    for v in [0, VERSION + 1, u32::MAX] {
        let err = with_version(v).unwrap_err();
        assert!(matches!(err, FormatError::UnsupportedVersion { found } if found == v));
    }
}

#[test]
fn a_stream_holds_the_bytes_of_a_file() {
    let mut w = Writer::new(Vec::new(), "a buffer", &header()).unwrap();
    w.vm(&vm()).unwrap();
    for i in 1..=3 {
        w.interval(&interval(i)).unwrap();
    }
    // Cut short: what is out so far reads, without END.
    let so_far = read_bytes(w.output()).unwrap();
    assert_eq!((so_far.intervals.len(), so_far.cut_short()), (3, true));
    let bytes = w.finish_stream(&End::default()).unwrap().unwrap();
    assert_eq!(bytes, recording(3));
}

/// Stack samples must name stacks the file declared before (or with) them; their frames are
/// escaped like every other text read from a file.
#[test]
fn stack_records_are_checked_and_escaped() {
    use crate::model::stacks::{HostStack, SampleKey, StackBatch};
    let with_stacks = |batch: StackBatch| {
        let mut w = Writer::new(Vec::new(), "a buffer", &header()).unwrap();
        let mut iv = interval(1);
        iv.stacks = batch;
        w.interval(&iv).unwrap();
        w.finish_stream(&End::default()).unwrap().unwrap()
    };
    let sample = |stack| {
        (
            SampleKey {
                stack,
                ..SampleKey::default()
            },
            3,
        )
    };
    let dangling = with_stacks(StackBatch {
        samples: vec![sample(0)],
        ..StackBatch::default()
    });
    let err = read_bytes(&dangling).unwrap_err();
    assert!(err.to_string().contains("a stack not in the file"), "{err}");
    let ok = with_stacks(StackBatch {
        new_stacks: vec![HostStack {
            kernel: vec!["k\u{1b}[2J".into()],
            user: vec![],
        }],
        samples: vec![sample(0)],
        lost: 0,
    });
    let rec = read_bytes(&ok).unwrap();
    let frame = &rec.intervals[0].stacks.new_stacks[0].kernel[0];
    assert!(!frame.contains('\u{1b}'), "{frame:?}");
}

/// A first interval with megabytes of new frames goes out in several STACKS records and reads
/// back as the one batch it was.
#[test]
fn a_large_stack_batch_is_split_and_read_back_whole() {
    use crate::model::stacks::{HostStack, SampleKey, StackBatch};
    let stacks: Vec<HostStack> = (0..3000)
        .map(|i| HostStack {
            kernel: (0..100).map(|f| format!("kernel_fn_{i}_{f}")).collect(),
            user: (0..100).map(|f| format!("user_fn_{f}")).collect(),
        })
        .collect();
    let batch = StackBatch {
        samples: (0..3000)
            .map(|i| {
                (
                    SampleKey {
                        stack: i,
                        ..SampleKey::default()
                    },
                    1 + i as u64,
                )
            })
            .collect(),
        new_stacks: stacks,
        lost: 7,
    };
    let mut w = Writer::new(Vec::new(), "a buffer", &header()).unwrap();
    let mut iv = interval(1);
    iv.stacks = batch.clone();
    w.interval(&iv).unwrap();
    w.interval(&interval(2)).unwrap();
    let bytes = w.finish_stream(&End::default()).unwrap().unwrap();
    let rec = read_bytes(&bytes).unwrap();
    assert_eq!(rec.intervals[0].stacks, batch);
    assert!(rec.intervals[1].stacks.is_empty());
}
