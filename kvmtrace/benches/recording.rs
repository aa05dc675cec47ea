//! Recording benchmarks (`cargo bench -p kvmtrace --bench recording`, run by `cargo xtask bench`
//! and checked by `cargo xtask test`): the size of a one-hour recording of a realistic mix, and
//! the time `report -i` takes to read and report it. Exits non-zero when a bar is missed:
//! at most 5 MB per VM-hour, under 1 s for the report.
//!
//! The mix: 1 VM, 4 vCPUs, 1 s interval, per vCPU ~30 active keys: 8 exit reasons and 2 VMM round
//! trips with latency histograms, 20 detail keys (ports, MMIO addresses, MSRs, CPUID functions),
//! counts that vary from interval to interval, and each vCPU thread's CPU accounting.

use std::time::{Duration, Instant};

use kvmtrace::{
    model::{
        InFlight, Interval, LatencyDelta, ThreadCpu,
        identity::{Thread, Vm},
    },
    record::{End, Header, Writer},
    render,
    source::recording::{self as offline, Window},
};
use kvmtrace_common::{Counter, DetailKey, LatencyKey, bucket_index};

const VCPUS: u32 = 4;
const SECONDS: u64 = 3600;
const MAX_BYTES: u64 = 5_000_000;
const MAX_REPORT: Duration = Duration::from_secs(1);

/// A small deterministic PRNG (xorshift), so every run writes the same file.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn around(&mut self, mean: u64) -> u64 {
        mean / 2 + self.next() % (mean + 1)
    }
}

fn interval(second: u64, rng: &mut Rng, counters: &mut [u64; Counter::COUNT as usize]) -> Interval {
    let mut iv = Interval {
        at: Duration::from_secs(second),
        ..Default::default()
    };
    for v in 0..VCPUS {
        let tid = 1000 + v;
        for (i, reason) in [0x7b, 0x72, 0x78, 0x7c, 0x400, 0x60, 0x64, 0x6e]
            .into_iter()
            .enumerate()
        {
            let count = rng.around(2000 >> i);
            let typical = 800 + 300 * i as u64;
            let mut buckets: Vec<(u16, u32)> = (0..8)
                .map(|b| {
                    (
                        bucket_index(typical + b * typical / 10) as u16,
                        (count / 8) as u32,
                    )
                })
                .collect();
            buckets.dedup_by_key(|b| b.0);
            iv.latency.push((
                LatencyKey {
                    tgid: 1,
                    tid,
                    vcpu_id: v,
                    isa: 2,
                    reason,
                    kind: 0,
                },
                LatencyDelta {
                    count,
                    total_ns: count * typical,
                    min_ns: typical / 2,
                    max_ns: typical * 20,
                    buckets,
                },
            ));
        }
        for reason in [2u32, 6] {
            let count = rng.around(500);
            iv.latency.push((
                LatencyKey {
                    tgid: 1,
                    tid,
                    vcpu_id: v,
                    isa: 0,
                    reason,
                    kind: 1,
                },
                LatencyDelta {
                    count,
                    total_ns: count * 20_000,
                    min_ns: 9000,
                    max_ns: 400_000,
                    buckets: vec![(bucket_index(20_000) as u16, count as u32)],
                },
            ));
        }
        for d in 0..20u32 {
            let (kind, a, b) = match d % 4 {
                0 => (1, 0x70 + d, 1 | 1 << 8),
                1 => (2, 2 | 4 << 8, 0xfebf_0000 + 0x1000 * d as u64),
                2 => (3, 0x6e0 + d, 1),
                _ => (4, d, 0),
            };
            iv.details.push((
                DetailKey {
                    tgid: 1,
                    tid,
                    kind,
                    a,
                    b,
                },
                rng.around(300),
            ));
        }
    }
    counters[Counter::ExitsSeen as usize] += iv.latency.iter().map(|(_, d)| d.count).sum::<u64>();
    counters[Counter::DetailsSeen as usize] += iv.details.iter().map(|(_, n)| n).sum::<u64>();
    iv.counters = *counters;
    // Cumulative CPU accounting of each vCPU thread.
    for v in 0..VCPUS {
        let base = second * 1_000_000_000;
        iv.threads.push(ThreadCpu {
            tgid: 1,
            tid: 1000 + v,
            tracked_ns: base,
            run_ns: base / 2 + rng.around(1_000_000),
            off_run_blocked_ns: base / 4 + rng.around(1_000_000),
            off_run_runnable_ns: rng.around(100_000) * second,
            off_user_blocked_ns: base / 8,
            off_user_runnable_ns: rng.around(10_000) * second,
            procfs_ns: Some(base / 2),
            procfs_tracked_ns: base,
        });
    }
    iv
}

fn main() {
    let dir = std::env::temp_dir().join("kvmtrace-bench");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("one-hour.kvmtrace");
    let header = Header {
        kernel_release: "synthetic".into(),
        interval_ms: 1000,
        ..Default::default()
    };
    let mut w =
        Writer::start(Writer::create(&path).expect("create"), &path, &header).expect("start");
    let threads = (0..VCPUS)
        .map(|v| Thread {
            tid: 1000 + v,
            comm: format!("CPU {v}/KVM"),
        })
        .collect();
    w.vm(&Vm {
        pid: 1,
        name: "bench-vm".into(),
        aliases: Default::default(),
        threads,
    })
    .expect("vm");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut counters = [0; Counter::COUNT as usize];
    let write_start = Instant::now();
    for s in 1..=SECONDS {
        w.interval(&interval(s, &mut rng, &mut counters))
            .expect("interval");
    }
    let raw = w.raw_bytes;
    w.finish(&End::default()).expect("finish");
    let write_time = write_start.elapsed();
    let size = std::fs::metadata(&path).expect("size").len();

    let report_start = Instant::now();
    let loaded = offline::load(&path, Window::default()).expect("read");
    let report = offline::build_report(&loaded, true, &Default::default(), None);
    let mut sink = Vec::new();
    render::text::render(&report, &mut sink).expect("render");
    let report_time = report_start.elapsed();
    let _ = InFlight::default();

    println!("recording: 1 VM, {VCPUS} vCPUs, ~30 keys per vCPU, {SECONDS} x 1 s intervals");
    println!(
        "  size {:.2} MB per VM-hour ({:.2} MB before compression), written in {:.2} s",
        size as f64 / 1e6,
        raw as f64 / 1e6,
        write_time.as_secs_f64()
    );
    println!(
        "  report -i (read + aggregate + render text): {:.3} s",
        report_time.as_secs_f64()
    );
    let mut failed = false;
    if size > MAX_BYTES {
        println!("  FAIL: more than {} MB per VM-hour", MAX_BYTES / 1_000_000);
        failed = true;
    }
    if report_time > MAX_REPORT {
        println!("  FAIL: the report took longer than {MAX_REPORT:?}");
        failed = true;
    }
    let _ = std::fs::remove_file(&path);
    std::process::exit(i32::from(failed));
}
