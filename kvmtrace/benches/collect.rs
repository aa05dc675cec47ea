//! `record`'s work per interval at scale (`cargo bench -p kvmtrace --bench collect`, run by
//! `cargo xtask bench`): what it does with a drained interval of 10 000 detail keys and 200
//! latency keys (200 vCPU threads of 10 VMs, 50 ports each, as the bench's collector at scale):
//! add it to the running aggregate and its series, and encode it into the recording. Keys come
//! in the same order at every interval, as a live drain yields them (by pool index). Exits
//! non-zero when the work per interval grows with the recording (full series more than 3x the
//! work after a minute; ~1.2x measured): `cargo xtask test` runs it.

use std::time::{Duration, Instant};

use kvmtrace::{
    model::{Aggregate, Interval, LatencyDelta, series::Series},
    record::{Header, Writer},
};
use kvmtrace_common::{
    Detail, DetailKey, LatencyKey, LatencyKind, PortDir, UserspaceExit, bucket_index,
};

const VMS: u32 = 10;
const VCPUS: u32 = 20;
const PORTS: u32 = 50;
const ROUNDS: usize = 30;

/// The keys in a drain's order: interleaved across threads, as their first events claimed
/// pool indexes (a fixed shuffle).
fn keys() -> (Vec<DetailKey>, Vec<LatencyKey>) {
    let mut details = Vec::new();
    let mut latency = Vec::new();
    for vm in 0..VMS {
        for vcpu in 0..VCPUS {
            let (tgid, tid) = (1000 + vm, 10_000 + vm * 100 + vcpu);
            for port in 0..PORTS {
                let detail = Detail::Port {
                    port: 0x200 + port as u16,
                    dir: PortDir::Out,
                    size: 1,
                };
                details.push(DetailKey::encode(tgid, tid, &detail));
            }
            latency.push(LatencyKey {
                tgid,
                tid,
                vcpu_id: vcpu,
                isa: 0,
                reason: UserspaceExit::Reason(2).round_trip_code(),
                kind: LatencyKind::VmmRoundTrip as u32,
            });
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..details.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        details.swap(i, (state % (i as u64 + 1)) as usize);
    }
    (details, latency)
}

/// Interval `i`: every key counted 1 to 3 times, each round trip a few µs.
fn interval(i: usize, details: &[DetailKey], latency: &[LatencyKey]) -> Interval {
    let mut iv = Interval {
        at: Duration::from_secs(i as u64),
        ..Default::default()
    };
    for (n, key) in details.iter().enumerate() {
        iv.details.push((*key, 1 + (i + n) as u64 % 3));
    }
    for key in latency {
        let ns = 3_000 + (i as u64 % 7) * 100;
        iv.latency.push((
            *key,
            LatencyDelta {
                count: 50,
                total_ns: 50 * ns,
                min_ns: ns,
                max_ns: ns,
                buckets: vec![(bucket_index(ns) as u16, 50)],
            },
        ));
    }
    iv
}

/// What the rest of the host touches between two drains (a second apart): the collector finds
/// its data in memory, not in the caches, as it does at every real drain.
const OTHER_WORK_BYTES: usize = 64 << 20;

fn evict_caches(other: &mut [u8], i: usize) {
    for line in other.chunks_mut(64) {
        line[0] = line[0].wrapping_add(i as u8);
    }
    std::hint::black_box(other);
}

/// `record`'s state, and the interval to come.
struct Recorder {
    details: Vec<DetailKey>,
    latency: Vec<LatencyKey>,
    /// The series are timed apart from the aggregate's maps.
    series: Series,
    aggregate: Aggregate,
    /// The file's bytes are not kept.
    writer: Writer<std::io::Sink>,
    /// The rest of the host's memory, touched between intervals.
    other: Vec<u8>,
    next: usize,
}

/// Medians over ROUNDS intervals.
struct PerInterval {
    series: Duration,
    aggregate: Duration,
    encode: Duration,
}

impl Recorder {
    /// One interval: (series, aggregate, encode) times.
    fn step(&mut self) -> [Duration; 3] {
        self.next += 1;
        let iv = interval(self.next, &self.details, &self.latency);
        evict_caches(&mut self.other, self.next);
        let t = Instant::now();
        self.series.push(&iv);
        let series = t.elapsed();
        let t = Instant::now();
        self.aggregate.apply(&iv);
        let aggregate = t.elapsed();
        let t = Instant::now();
        self.writer.interval(&iv).expect("encode");
        [series, aggregate, t.elapsed()]
    }

    fn measure(&mut self) -> PerInterval {
        let mut times: [Vec<Duration>; 3] = Default::default();
        for _ in 0..ROUNDS {
            for (all, t) in times.iter_mut().zip(self.step()) {
                all.push(t);
            }
        }
        let [series, aggregate, encode] = times.map(|mut all| {
            all.sort();
            all[ROUNDS / 2]
        });
        PerInterval {
            series,
            aggregate,
            encode,
        }
    }
}

fn main() {
    let (details, latency) = keys();
    let header = Header {
        kernel_release: "synthetic".into(),
        interval_ms: 1000,
        ..Default::default()
    };
    let mut rec = Recorder {
        details,
        latency,
        series: Series::default(),
        aggregate: Aggregate {
            without_series: true,
            ..Default::default()
        },
        writer: Writer::new(std::io::sink(), "bench", &header).expect("writer"),
        other: vec![0u8; OTHER_WORK_BYTES],
        next: 0,
    };
    while rec.next < 60 - ROUNDS {
        rec.step();
    }
    let minute = rec.measure();
    while rec.next < 2 * rec.series.max_points() {
        rec.step();
    }
    let full = rec.measure();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "record's work per interval: {} detail keys, {} latency keys (median of {ROUNDS})",
        rec.details.len(),
        rec.latency.len()
    );
    let print = |when: &str, t: &PerInterval| {
        println!(
            "  {when}: series {:.2} ms, aggregate {:.2} ms, encode and compress {:.2} ms",
            ms(t.series),
            ms(t.aggregate),
            ms(t.encode)
        )
    };
    print("after 1 min", &minute);
    print(
        &format!("full ({} points a series)", rec.series.ends.len()),
        &full,
    );
    let total = |t: &PerInterval| t.series + t.aggregate + t.encode;
    if total(&full) > 3 * total(&minute).max(Duration::from_micros(500)) {
        println!("  FAIL: record's work per interval grows with the recording");
        std::process::exit(1);
    }
}
