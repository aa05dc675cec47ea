//! `record`'s live storm lines at scale (`cargo bench -p kvmtrace --bench watch`, run by `cargo
//! xtask bench`): the cost per interval of finding the storms that started or ended, with
//! 10 000 series (200 vCPU threads of 10 VMs, 50 ports each, as the bench's collector at scale),
//! after one minute and once the series are full (their share of the points budget, merged
//! once). Set against re-detecting every storm of the recording at each interval (what the live
//! lines did before), which grows with the recording. Exits non-zero when the watch's cost grows
//! with the recording (more than 4x; ~1x measured), or costs, full, more than a tenth of a full
//! detection. Ratios in one run: `cargo xtask test` runs it on whatever host CI has.

use std::time::{Duration, Instant};

use kvmtrace::{
    analyze::{
        storm_watch::{StormChanges, StormWatch},
        storms::{self, Config},
    },
    model::{
        Interval,
        identity::VcpuLabel,
        series::{Series, column},
    },
};
use kvmtrace_common::{Detail, DetailKey, PortDir};

const VMS: u32 = 10;
const VCPUS: u32 = 20;
const PORTS: u32 = 50;
const ROUNDS: usize = 20;

/// Interval `i`: every vCPU writes each of its ports 1 to 3 times (no storms).
fn interval(i: usize) -> Interval {
    let mut iv = Interval {
        at: Duration::from_secs(i as u64),
        ..Default::default()
    };
    for vm in 0..VMS {
        for vcpu in 0..VCPUS {
            for port in 0..PORTS {
                let detail = Detail::Port {
                    port: 0x200 + port as u16,
                    dir: PortDir::Out,
                    size: 1,
                };
                let n = 1 + (i as u64 + u64::from(port + vcpu)) % 3;
                iv.details.push((
                    DetailKey::encode(1000 + vm, 10_000 + vm * 100 + vcpu, &detail),
                    n,
                ));
            }
        }
    }
    iv
}

fn by_tid(_pid: u32, tid: u32) -> VcpuLabel {
    VcpuLabel::Tid(tid)
}

/// The watch's work for interval `iv`, just added to `series`: its column, then the update.
fn step(watch: &mut StormWatch, series: &Series, iv: &Interval) -> StormChanges {
    let width = series.width(series.ends.len() - 1);
    watch.update(&column(iv), width, series, &by_tid)
}

/// Median time per interval of the watch, and of a full detection, over the next ROUNDS
/// intervals.
fn per_interval(
    series: &mut Series,
    watch: &mut StormWatch,
    next: &mut usize,
) -> (Duration, Duration) {
    let (mut w, mut d) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        *next += 1;
        let iv = interval(*next);
        series.push(&iv);
        let t = Instant::now();
        let changes = step(watch, series, &iv);
        w.push(t.elapsed());
        assert!(changes.started.is_empty() && changes.ended.is_empty());
        let t = Instant::now();
        let all = storms::detect(series, &Config::default(), &by_tid);
        d.push(t.elapsed());
        assert!(all.is_empty());
    }
    w.sort();
    d.sort();
    (w[ROUNDS / 2], d[ROUNDS / 2])
}

fn main() {
    let keys = VMS * VCPUS * PORTS;
    let mut series = Series::default();
    let mut watch = StormWatch::new(Config::default());
    let mut next = 0;
    while next < 60 - ROUNDS {
        next += 1;
        let iv = interval(next);
        series.push(&iv);
        step(&mut watch, &series, &iv);
    }
    let (watch_minute, detect_minute) = per_interval(&mut series, &mut watch, &mut next);
    while next < 2 * series.max_points() {
        next += 1;
        let iv = interval(next);
        series.push(&iv);
        step(&mut watch, &series, &iv);
    }
    let (watch_full, detect_full) = per_interval(&mut series, &mut watch, &mut next);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("live storm lines: {keys} series, per interval (median of {ROUNDS})");
    println!(
        "  after 1 min:           watch {:.2} ms, full detection {:.2} ms",
        ms(watch_minute),
        ms(detect_minute)
    );
    println!(
        "  full ({} points a series): watch {:.2} ms, full detection {:.2} ms ({:.0}x)",
        series.ends.len(),
        ms(watch_full),
        ms(detect_full),
        detect_full.as_secs_f64() / watch_full.as_secs_f64()
    );
    let mut failed = false;
    if watch_full > 4 * watch_minute.max(Duration::from_micros(500)) {
        println!("  FAIL: the watch's cost grows with the recording");
        failed = true;
    }
    if watch_full * 10 > detect_full {
        println!("  FAIL: the watch, full, costs more than a tenth of a full detection");
        failed = true;
    }
    std::process::exit(i32::from(failed));
}
