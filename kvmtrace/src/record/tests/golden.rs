//! Golden recordings (`kvmtrace/tests/data/recordings/`): one file per format version, written
//! by that version's own writer, read back value by value by today's reader.
//!
//! Only the current version's file is ever rewritten, by the current writer:
//!
//! ```text
//! KVMTRACE_BLESS=1 cargo test -p kvmtrace --lib record::tests::golden
//! ```
//!
//! Do that when [`VERSION`] changes (with a new row in the table of `record/mod.rs` and a test
//! here for the new file); the files of older versions stay as their writers made them.

use std::{path::PathBuf, sync::Once};

use kvmtrace_common::{Detail, DetailKind, MsrDir, PortDir, UserspaceExit};

use super::golden_input::{self, Input, KEY_A, KEY_B, KEY_C, KEY_D, PORT_70_OUT, det};
use crate::record::{OLDEST_VERSION, Recording, VERSION, Writer, read_bytes, read_file};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/recordings")
        .join(name)
}

/// The current version's golden; with KVMTRACE_BLESS=1 rewritten first by the current writer
/// (once, before any test reads a golden).
fn current_golden() -> PathBuf {
    static BLESS: Once = Once::new();
    let path = golden_path(&format!("v{VERSION}.kvmtrace"));
    BLESS.call_once(|| {
        if std::env::var_os("KVMTRACE_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, write(&current_input())).unwrap();
        }
    });
    path
}

fn golden(name: &str) -> Recording {
    current_golden();
    read_file(&golden_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The input the current writer is given for its golden.
fn current_input() -> Input {
    golden_input::v4()
}

/// `input` as the current writer writes it, in memory.
fn write(input: &Input) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), "a buffer", &input.header).unwrap();
    w.vm(&input.vms[0]).unwrap();
    w.interval(&input.intervals[0]).unwrap();
    w.vm(&input.vms[1]).unwrap();
    for iv in &input.intervals[1..] {
        w.interval(iv).unwrap();
    }
    w.finish_stream(&input.end).unwrap().unwrap()
}

/// `rec` holds exactly `expected`, written in format `version`.
fn assert_holds(rec: &Recording, version: u32, expected: &Input) {
    assert_eq!(rec.version, version);
    assert_eq!(rec.header, expected.header);
    assert_eq!(rec.vms, expected.vms);
    assert_eq!(rec.intervals.len(), expected.intervals.len());
    for (i, (got, want)) in rec.intervals.iter().zip(&expected.intervals).enumerate() {
        assert_eq!(got.at, want.at, "interval {i}");
        assert_eq!(got.latency, want.latency, "interval {i}");
        assert_eq!(got.details, want.details, "interval {i}");
        assert_eq!(got.counters, want.counters, "interval {i}");
        assert_eq!(got.threads, want.threads, "interval {i}");
        assert_eq!(got.stacks, want.stacks, "interval {i}");
        assert_eq!(got.slow, want.slow, "interval {i}");
        assert_eq!(got.guest_rips, want.guest_rips, "interval {i}");
    }
    assert_eq!(rec.end.as_ref(), Some(&expected.end));
}

/// The count of `key` in interval `i`.
fn detail(rec: &Recording, i: usize, key: kvmtrace_common::DetailKey) -> u64 {
    let found: Vec<u64> = rec.intervals[i]
        .details
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|&(_, n)| n)
        .collect();
    assert_eq!(found.len(), 1, "{key:?} in interval {i}");
    found[0]
}

#[test]
fn v1_reads_back_exactly() {
    let rec = golden("v1.kvmtrace");
    // What bc949b8's writer was given, but for the minima and maxima since attach, which read
    // as the interval's (clamped to its buckets; see the table in record/mod.rs).
    let mut expected = golden_input::v1();
    assert_eq!(expected.intervals[1].latency[0].1.max_ns, 16_500);
    expected.intervals[1].latency[0].1.max_ns = 1_599; // bucket 120: 1536 ..= 1599 ns
    assert_eq!(expected.intervals[2].latency[0].1.min_ns, 900);
    expected.intervals[2].latency[0].1.min_ns = 49_152; // bucket 200: 49 152 ..= 51 199 ns
    assert_holds(&rec, 1, &expected);

    // A few values spelled out, through the typed model.
    let i1 = &rec.intervals[0];
    assert_eq!(i1.at.as_nanos(), 1_000_000_123);
    assert_eq!(detail(&rec, 0, PORT_70_OUT), 1234);
    assert_eq!(
        PORT_70_OUT.decode(),
        Some(Detail::Port {
            port: 0x70,
            dir: PortDir::Out,
            size: 1
        })
    );
    assert_eq!(detail(&rec, 1, PORT_70_OUT), 1000);
    assert_eq!(detail(&rec, 0, det(4242, 4243, 1, 0x71, 1 << 8)), 1233);
    assert_eq!(
        detail(&rec, 0, det(4242, 4244, 2, 2 | 4 << 8, 0xfee0_0300)),
        77
    );
    assert_eq!(detail(&rec, 0, det(4242, 4243, 3, 0x6e0, 1)), 300);
    assert_eq!(
        det(4242, 4244, 3, 0x3a, 1 << 1).decode(),
        Some(Detail::Msr {
            index: 0x3a,
            dir: MsrDir::Read,
            faulted: true
        })
    );
    assert_eq!(detail(&rec, 0, det(4242, 4244, 4, 0x4000_0001, 0)), 12);
    assert_eq!(detail(&rec, 0, det(4242, 4244, 5, 2 | 1 << 31, 4)), 3);
    assert_eq!(
        det(4242, 4244, 5, 2 | 1 << 31, 4).decode(),
        Some(Detail::UserspaceExit(UserspaceExit::Restart { reason: 2 }))
    );
    assert_eq!(detail(&rec, 1, det(5000, 5001, 1, 0x3f8, 1 | 1 << 8)), 99);
    let (key, a) = &i1.latency[0];
    assert_eq!(
        (*key, a.count, a.total_ns, a.min_ns, a.max_ns),
        (KEY_A, 1500, 1_714_900, 900, 16_500)
    );
    assert_eq!(a.buckets, [(108, 1000), (120, 499), (176, 1)]);
    assert_eq!(i1.latency[1].0, KEY_B);
    assert_eq!(i1.latency[2].0, KEY_C);
    assert_eq!(
        i1.counters[kvmtrace_common::Counter::DetailsSeen as usize],
        4101
    );
    // Absent from version 1: no per-thread CPU records, no END fields added since.
    assert!(rec.intervals.iter().all(|iv| iv.threads.is_empty()));
    let end = rec.end.as_ref().unwrap();
    assert_eq!(end.exits_in_flight, [([4242, 4244, 1, 1, 48, 0], 1)]);
    assert!(end.exits_ended_with_thread.is_empty());
    assert_eq!((end.map_entries_at_stop, &end.tracer_cost), (None, &None));
    assert_eq!(rec.vms[1].threads[0].comm, "CPU 0/KVM");
}

#[test]
fn v1_with_threads_reads_back_exactly() {
    // Written by 138df17's writer (the last before version 2): per-thread records, still
    // labelled 1. Its minima and maxima are the interval's already: clamping changes nothing.
    let rec = golden("v1-threads.kvmtrace");
    assert_holds(&rec, 1, &golden_input::v2());
    assert_eq!(detail(&rec, 0, PORT_70_OUT), 1234);
    assert_eq!(rec.intervals[2].threads[0].procfs_ns, Some(u64::MAX - 1));
}

#[test]
fn v2_reads_back_exactly() {
    let rec = golden("v2.kvmtrace");
    assert_holds(&rec, 2, &golden_input::v2());
    let i1 = &rec.intervals[0];
    assert_eq!(detail(&rec, 0, PORT_70_OUT), 1234);
    assert_eq!(
        detail(
            &rec,
            0,
            kvmtrace_common::DetailKey::other(4242, 4243, DetailKind::Pio)
        ),
        17
    );
    assert_eq!(i1.latency[3].0, KEY_D);
    assert_eq!(i1.latency[3].1.total_ns, 4_100_000);
    let t = &i1.threads[0];
    assert_eq!(
        (t.tid, t.run_ns, t.off_run_blocked_ns, t.procfs_ns),
        (4243, 950_000_000, 600_000_000, Some(360_000_000))
    );
    assert_eq!(i1.threads[1].procfs_ns, None);
    assert_eq!(rec.intervals[1].threads[2].procfs_ns, Some(0));
    assert_eq!(
        (
            rec.intervals[1].latency[0].1.min_ns,
            rec.intervals[1].latency[0].1.max_ns
        ),
        (910, 1_580)
    );
    let end = rec.end.as_ref().unwrap();
    assert_eq!(
        end.exits_ended_with_thread,
        [([5000, 5001, 0, 1, 30, 0], 2)]
    );
    assert_eq!(
        end.tracer_cost.as_ref().unwrap().collector_cpu_ns,
        12_345_678
    );
}

#[test]
fn v3_reads_back_exactly() {
    let rec = golden("v3.kvmtrace");
    assert_holds(&rec, 3, &golden_input::v3());
    let mut agg = crate::model::Aggregate::default();
    for iv in &rec.intervals {
        agg.apply(iv);
    }
    let profile = &agg.stacks;
    assert_eq!(profile.stacks.len(), 3);
    assert_eq!(profile.total(), 812 + 97 + 5 + 1);
    assert_eq!(profile.lost, 3);
    assert_eq!(profile.stacks[1].user[2], "emulate_port_io");
    assert_eq!(
        profile.stacks[0].frames().next_back(),
        Some("kvm_arch_vcpu_ioctl_run")
    );
}

#[test]
fn v4_reads_back_exactly() {
    let rec = golden("v4.kvmtrace");
    assert_holds(&rec, 4, &golden_input::v4());
    assert_eq!(rec.header.slow_threshold_ns, Some(1_000_000));
    let mut agg = crate::model::Aggregate::default();
    for iv in &rec.intervals {
        agg.apply(iv);
    }
    assert_eq!(agg.slow.captured(), 3);
    assert_eq!(agg.slow.lost, 7);
    assert_eq!(agg.slow.slowest[0].total_ns, 25_000_000);
    assert!(rec.header.guest_rips);
    assert_eq!(agg.slow.storm_starts.len(), 1);
    assert_eq!(agg.slow.storm_starts[0].history[1].reason, 0x7b);
    let io_at = |tid| agg.rips.counts[&((4242, tid, 2, 0x7b, None), 0xffff_ffff_8103_3f1d)];
    assert_eq!((io_at(4243), io_at(4244)), (9000, 40));
    assert_eq!(agg.rips.lost, 5);
    assert_eq!(
        agg.slow.slowest[1].detail(),
        Some(Detail::Port {
            port: 0x70,
            dir: PortDir::Out,
            size: 1
        })
    );
}

/// The current writer still writes what its golden holds.
#[test]
fn the_current_writer_writes_the_current_golden() {
    let written = read_bytes(&write(&current_input())).unwrap();
    assert_holds(&written, VERSION, &current_input());
    let golden = read_file(&current_golden()).unwrap();
    assert_holds(&golden, VERSION, &current_input());
}

/// A change of VERSION without a golden of its own fails here, and so does a golden that is
/// not of the version its name says.
#[test]
fn every_version_has_its_golden() {
    current_golden();
    for version in OLDEST_VERSION..=VERSION {
        let path = golden_path(&format!("v{version}.kvmtrace"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("no golden recording of version {version}: {e}"));
        assert_eq!(bytes[8..12], version.to_le_bytes(), "{}", path.display());
        assert_eq!(read_bytes(&bytes).unwrap().version, version);
    }
    assert_eq!(golden("v1-threads.kvmtrace").version, 1);
}
