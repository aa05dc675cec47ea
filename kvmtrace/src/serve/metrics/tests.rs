//! The exporter on plain values: exact cumulative counts, histograms, labels, the series cap,
//! the grace period, identities across restarts, storms and the tracer's cost.

use std::time::Duration;

use kvmtrace_common::{DetailKey, LatencyKind, bucket_index};

use super::*;
use crate::{
    model::identity::Thread,
    model::{LatencyDelta, ThreadCpu},
};

fn exporter(per_vcpu: bool, max_series: u64, top_keys: usize) -> (Registry, Exporter) {
    let mut r = Registry::with_prefix("kvmtrace");
    let e = Exporter::new(
        &mut r,
        Settings {
            per_vcpu,
            max_series,
            top_keys,
            storms: crate::analyze::storms::Config::default(),
        },
    );
    (r, e)
}

/// The exposition's sample lines of metric `name` (with any suffix), sorted.
fn samples(r: &Registry, name: &str) -> Vec<String> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, r).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn directory() -> BTreeMap<u32, Vm> {
    let vm = Vm {
        pid: 100,
        name: "vm1".into(),
        aliases: Default::default(),
        threads: vec![
            Thread {
                tid: 101,
                comm: "CPU 0/KVM".into(),
            },
            Thread {
                tid: 102,
                comm: "CPU 1/KVM".into(),
            },
        ],
    };
    [(100, vm)].into()
}

fn port(tid: u32, port: u32, n: u64) -> (DetailKey, u64) {
    let k = DetailKey {
        tgid: 100,
        tid,
        kind: DetailKind::Pio as u32,
        a: port,
        b: 1 | 1 << 8,
    };
    (k, n)
}

fn exit(tid: u32, reason: u32, samples: &[u64]) -> (LatencyKey, LatencyDelta) {
    let key = LatencyKey {
        tgid: 100,
        tid,
        vcpu_id: tid - 101,
        isa: 1,
        reason,
        kind: LatencyKind::Exit as u32,
    };
    let mut buckets: BTreeMap<u16, u32> = BTreeMap::new();
    for &s in samples {
        *buckets.entry(bucket_index(s) as u16).or_default() += 1;
    }
    let delta = LatencyDelta {
        count: samples.len() as u64,
        total_ns: samples.iter().sum(),
        min_ns: *samples.iter().min().unwrap(),
        max_ns: *samples.iter().max().unwrap(),
        buckets: buckets.into_iter().collect(),
    };
    (key, delta)
}

#[test]
fn counters_are_cumulative_and_exact() {
    let (r, mut e) = exporter(false, 1000, 10);
    let dir = directory();
    let mut counters = [0; Counter::COUNT as usize];
    counters[Counter::DetailsSeen as usize] = 7;
    let iv = Interval {
        details: vec![port(101, 0x70, 3), port(102, 0x70, 4)],
        latency: vec![exit(101, 30, &[300, 300, 5000])],
        counters,
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &dir);
    counters[Counter::DetailsSeen as usize] = 12;
    let ended: BTreeMap<LatencyKey, u64> = [(exit(101, 30, &[1]).0, 1)].into();
    let iv = Interval {
        details: vec![port(101, 0x70, 5)],
        counters,
        ..Default::default()
    };
    e.apply(&iv, &ended, &dir);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        ["kvmtrace_detail_events_total{vm=\"vm1\",kind=\"port\",key=\"0x0070\",access=\"out\"} 12"]
    );
    assert_eq!(
        samples(&r, "kvmtrace_exits_total"),
        ["kvmtrace_exits_total{vm=\"vm1\",isa=\"VMX\",reason=\"IO_INSTRUCTION\"} 4"]
    );
    assert_eq!(
        samples(&r, "kvmtrace_tracer_events_total{event=\"detail\"}"),
        ["kvmtrace_tracer_events_total{event=\"detail\"} 12"]
    );
}

#[test]
fn histograms_count_per_kernel_aligned_bucket_with_exact_sums() {
    let (r, mut e) = exporter(false, 1000, 10);
    let iv = Interval {
        latency: vec![exit(101, 30, &[300, 300, 5000])],
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &directory());
    let labels = r#"vm="vm1",isa="VMX",reason="IO_INSTRUCTION""#;
    let line = |suffix: &str, le: Option<&str>, n: &str| {
        let le = le.map(|le| format!(",le=\"{le}\"")).unwrap_or_default();
        format!("kvmtrace_exit_latency_seconds{suffix}{{{labels}{le}}} {n}")
    };
    // Cumulative: nothing below 256 ns, both 300 ns samples below 1.024 µs, the 5 µs one
    // below 16.384 µs; the sum is the kernel's exact total.
    let mut want = vec![
        line("_sum", None, "0.0000056"),
        line("_count", None, "3"),
        line("_bucket", Some("2.56e-07"), "0"),
        line("_bucket", Some("1.024e-06"), "2"),
        line("_bucket", Some("4.096e-06"), "2"),
        line("_bucket", Some("1.6384e-05"), "3"),
        line("_bucket", Some("+Inf"), "3"),
    ];
    for le in [
        "6.5536e-05",
        "0.000262144",
        "0.001048576",
        "0.004194304",
        "0.016777216",
        "0.067108864",
        "0.268435456",
        "1.073741824",
        "4.294967296",
        "17.179869184",
    ] {
        want.push(line("_bucket", Some(le), "3"));
    }
    want.sort();
    assert_eq!(samples(&r, "kvmtrace_exit_latency_seconds"), want);
}

#[test]
fn per_vcpu_labels_and_top_k_with_other() {
    let (r, mut e) = exporter(true, 1000, 1);
    let iv = Interval {
        details: vec![
            port(101, 0x70, 10),
            port(101, 0x71, 3),
            (DetailKey::other(100, 101, DetailKind::Pio), 2),
            port(102, 0x80, 1),
        ],
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &directory());
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        [
            "kvmtrace_detail_events_total{vm=\"vm1\",vcpu=\"0\",kind=\"port\",key=\"0x0070\",access=\"out\"} 10",
            "kvmtrace_detail_events_total{vm=\"vm1\",vcpu=\"0\",kind=\"port\",key=\"other\"} 5",
            "kvmtrace_detail_events_total{vm=\"vm1\",vcpu=\"1\",kind=\"port\",key=\"0x0080\",access=\"out\"} 1",
        ]
    );
}

#[test]
fn the_series_cap_counts_what_it_refuses() {
    // vm_running (1) + vm_info (1) + one port series (1): the second port has no room.
    let (r, mut e) = exporter(false, 3, 10);
    let iv = Interval {
        details: vec![port(101, 0x70, 10), port(101, 0x71, 3)],
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &directory());
    assert_eq!(samples(&r, "kvmtrace_detail_events_total").len(), 1);
    assert_eq!(
        samples(&r, "kvmtrace_series"),
        [
            "kvmtrace_series 3",
            "kvmtrace_series_dropped_total 1",
            "kvmtrace_series_limit 3"
        ]
    );
}

#[test]
fn a_gone_vm_keeps_its_series_for_the_grace_period_then_loses_them_all() {
    let (r, mut e) = exporter(true, 1000, 10);
    let t0 = Instant::now();
    let iv = Interval {
        details: vec![port(101, 0x70, 10)],
        latency: vec![exit(101, 30, &[300])],
        threads: vec![ThreadCpu {
            tgid: 100,
            tid: 101,
            tracked_ns: 1_000_000_000,
            run_ns: 600_000_000,
            off_run_blocked_ns: 100_000_000,
            ..Default::default()
        }],
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &directory());
    assert!(samples(&r, "kvmtrace_series ")[0] != "kvmtrace_series 0");
    e.set_running(100, false, t0);
    // Later intervals (its last events, or none) leave it marked gone.
    e.apply(&Interval::default(), &BTreeMap::new(), &directory());
    assert_eq!(
        samples(&r, "kvmtrace_vm_running"),
        ["kvmtrace_vm_running{vm=\"vm1\"} 0"]
    );
    assert_eq!(
        e.expire(t0 + Duration::from_secs(1), Duration::from_secs(2)),
        [0u32; 0]
    );
    assert_eq!(
        e.expire(t0 + Duration::from_secs(2), Duration::from_secs(2)),
        [100]
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
    assert!(!text.contains("vm1"), "{text}");
    assert_eq!(samples(&r, "kvmtrace_series "), ["kvmtrace_series 0"]);
}

#[test]
fn vcpu_time_by_category() {
    let (r, mut e) = exporter(false, 1000, 10);
    let t = |run_ns, off_run_blocked_ns| ThreadCpu {
        tgid: 100,
        tid: 101,
        tracked_ns: 2_000_000_000,
        run_ns,
        off_run_blocked_ns,
        off_user_runnable_ns: 100_000_000,
        ..Default::default()
    };
    let mut counters = [0; Counter::COUNT as usize];
    counters[Counter::ExitsSeen as usize] = 1;
    let iv = Interval {
        latency: vec![exit(101, 30, &[200_000_000])],
        threads: vec![t(1_500_000_000, 500_000_000)],
        counters,
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &directory());
    assert_eq!(
        samples(&r, "kvmtrace_vcpu_seconds_total"),
        [
            "kvmtrace_vcpu_seconds_total{vm=\"vm1\",category=\"blocked\"} 0.5",
            "kvmtrace_vcpu_seconds_total{vm=\"vm1\",category=\"exit_handling\"} 0.2",
            "kvmtrace_vcpu_seconds_total{vm=\"vm1\",category=\"guest\"} 0.8",
            "kvmtrace_vcpu_seconds_total{vm=\"vm1\",category=\"runnable_wait\"} 0.1",
            "kvmtrace_vcpu_seconds_total{vm=\"vm1\",category=\"vmm\"} 0.4",
        ]
    );
}

fn vm(pid: u32, name: &str) -> Vm {
    Vm {
        pid,
        name: name.into(),
        aliases: Default::default(),
        threads: vec![Thread {
            tid: pid + 1,
            comm: "CPU 0/KVM".into(),
        }],
    }
}

fn port_of(pid: u32, port: u32, n: u64) -> (DetailKey, u64) {
    let (mut k, n) = self::port(pid + 1, port, n);
    k.tgid = pid;
    (k, n)
}

fn writes(pid: u32, n: u64) -> Interval {
    Interval {
        details: vec![port_of(pid, 0x70, n)],
        ..Default::default()
    }
}

#[test]
fn a_vm_restarted_under_its_name_keeps_its_series_and_counts_on() {
    let (r, e) = exporter(false, 1000, 10);
    let mut e = e.with_uuids(|pid| Some(format!("uuid-of-{pid}")));
    let t0 = Instant::now();
    let first: BTreeMap<u32, Vm> = [(100, vm(100, "db"))].into();
    e.apply(&writes(100, 1000), &BTreeMap::new(), &first);
    assert_eq!(
        samples(&r, "kvmtrace_vm_info"),
        ["kvmtrace_vm_info{vm=\"db\",pid=\"100\",uuid=\"uuid-of-100\"} 1"]
    );
    e.set_running(100, false, t0);
    assert_eq!(
        samples(&r, "kvmtrace_vm_running"),
        ["kvmtrace_vm_running{vm=\"db\"} 0"]
    );
    // Within the grace period, a new process under the same name.
    let both: BTreeMap<u32, Vm> = [(100, vm(100, "db")), (200, vm(200, "db"))].into();
    e.apply(&writes(200, 500), &BTreeMap::new(), &both);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        [
            "kvmtrace_detail_events_total{vm=\"db\",kind=\"port\",key=\"0x0070\",access=\"out\"} 1500"
        ]
    );
    assert_eq!(
        samples(&r, "kvmtrace_vm_info"),
        ["kvmtrace_vm_info{vm=\"db\",pid=\"200\",uuid=\"uuid-of-200\"} 1"]
    );
    assert_eq!(
        samples(&r, "kvmtrace_vm_running"),
        ["kvmtrace_vm_running{vm=\"db\"} 1"]
    );
    // The old process's grace period ends: only it goes, the identity stays.
    assert_eq!(
        e.expire(t0 + Duration::from_secs(2), Duration::from_secs(2)),
        [100]
    );
    assert_eq!(e.pids(), [200]);
    assert_eq!(samples(&r, "kvmtrace_detail_events_total").len(), 1);
    assert_eq!(samples(&r, "kvmtrace_vms "), ["kvmtrace_vms 1"]);
    // A process of the old one that went on reporting would still count under the identity
    // until then; the identity goes once its current process has been gone for the grace.
    e.set_running(200, false, t0 + Duration::from_secs(3));
    assert_eq!(
        e.expire(t0 + Duration::from_secs(5), Duration::from_secs(2)),
        [200]
    );
    assert_eq!(samples(&r, "kvmtrace_series "), ["kvmtrace_series 0"]);
    // Later, the same name starts afresh.
    let again: BTreeMap<u32, Vm> = [(300, vm(300, "db"))].into();
    e.apply(&writes(300, 7), &BTreeMap::new(), &again);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        ["kvmtrace_detail_events_total{vm=\"db\",kind=\"port\",key=\"0x0070\",access=\"out\"} 7"]
    );
}

#[test]
fn two_live_vms_with_one_name_are_told_apart_by_the_second_ones_pid() {
    let (r, mut e) = exporter(false, 1000, 10);
    let dir: BTreeMap<u32, Vm> = [(100, vm(100, "twin")), (200, vm(200, "twin"))].into();
    let iv = Interval {
        details: vec![port_of(100, 0x70, 3), port_of(200, 0x70, 4)],
        ..Default::default()
    };
    e.apply(&iv, &BTreeMap::new(), &dir);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        [
            "kvmtrace_detail_events_total{vm=\"twin (pid 200)\",kind=\"port\",key=\"0x0070\",access=\"out\"} 4",
            "kvmtrace_detail_events_total{vm=\"twin\",kind=\"port\",key=\"0x0070\",access=\"out\"} 3",
        ]
    );
    assert_eq!(
        samples(&r, "kvmtrace_vm_info"),
        [
            "kvmtrace_vm_info{vm=\"twin (pid 200)\",pid=\"200\",uuid=\"\"} 1",
            "kvmtrace_vm_info{vm=\"twin\",pid=\"100\",uuid=\"\"} 1",
        ]
    );
    // The first one ends: the second keeps its name (series never change names).
    e.set_running(100, false, Instant::now());
    e.apply(&writes(200, 1), &BTreeMap::new(), &dir);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total")[0],
        "kvmtrace_detail_events_total{vm=\"twin (pid 200)\",kind=\"port\",key=\"0x0070\",access=\"out\"} 5"
    );
}

#[test]
fn a_reused_pid_leaves_its_identity_and_counts_under_its_own() {
    let (r, mut e) = exporter(false, 1000, 10);
    let t0 = Instant::now();
    e.apply(
        &writes(100, 10),
        &BTreeMap::new(),
        &[(100, vm(100, "old"))].into(),
    );
    e.forget(100, t0);
    assert_eq!(e.pids(), [0u32; 0]);
    e.apply(
        &writes(100, 2),
        &BTreeMap::new(),
        &[(100, vm(100, "new"))].into(),
    );
    assert_eq!(
        samples(&r, "kvmtrace_vm_running"),
        [
            "kvmtrace_vm_running{vm=\"new\"} 1",
            "kvmtrace_vm_running{vm=\"old\"} 0"
        ]
    );
    assert_eq!(
        e.expire(t0 + Duration::from_secs(2), Duration::from_secs(2)),
        [0u32; 0]
    );
    assert!(samples(&r, "kvmtrace_vm_running").len() == 1);
    assert_eq!(
        samples(&r, "kvmtrace_detail_events_total"),
        ["kvmtrace_detail_events_total{vm=\"new\",kind=\"port\",key=\"0x0070\",access=\"out\"} 2"]
    );
}

/// Intervals of `n` writes to port 0x70 by VM 100's vCPU 0, 1 s apart, from second `from`.
fn storm_intervals(from: u64, counts: &[u64]) -> Vec<Interval> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &n)| Interval {
            at: Duration::from_secs(from + i as u64 + 1),
            details: vec![port(101, 0x70, n)],
            ..Default::default()
        })
        .collect()
}

#[test]
fn a_storm_is_a_gauge_while_it_goes_on() {
    let (r, mut e) = exporter(false, 1000, 10);
    let dir = directory();
    let storm = "kvmtrace_storm_active{vm=\"vm1\",vcpu=\"0\",what=\"port 0x0070 (RTC index) out\",diagnosis=\"rtc\"} 1";
    let mut seen = Vec::new();
    for iv in storm_intervals(0, &[10, 10, 20_000, 20_000, 20_000, 10, 10]) {
        e.apply(&iv, &BTreeMap::new(), &dir);
        seen.push(samples(&r, "kvmtrace_storm_active").join("\n"));
    }
    // Sustained for 2 intervals (the default): there from the second stormy interval until the
    // first quiet one.
    assert_eq!(seen, ["", "", "", storm, storm, "", ""]);
    assert_eq!(samples(&r, "kvmtrace_series "), ["kvmtrace_series 3"]);
}

#[test]
fn the_storm_window_stays_bounded() {
    let (_r, mut e) = exporter(false, 1000, 10);
    let dir = directory();
    // 100 intervals of one port, then 100 of another: only the last 30 intervals are kept,
    // and the first port's key is gone once it has been quiet for all of them.
    let keys = |e: &Exporter| e.window.series(|_| true).by_key.len();
    for (i, iv) in storm_intervals(0, &[5; 100]).into_iter().enumerate() {
        e.apply(&iv, &BTreeMap::new(), &dir);
        assert!(e.window.len() <= storms::WINDOW, "at {i}");
    }
    assert_eq!(keys(&e), 1);
    for mut iv in storm_intervals(100, &[5; 100]) {
        iv.details = vec![port(101, 0x71, 5)];
        e.apply(&iv, &BTreeMap::new(), &dir);
    }
    assert_eq!((e.window.len(), keys(&e)), (storms::WINDOW, 1));
    // The rates are right at the window's start: a storm that began before it is still seen.
    for iv in storm_intervals(200, &[20_000; 40]) {
        e.apply(&iv, &BTreeMap::new(), &dir);
    }
    assert_eq!(e.storms.len(), 1);
}

#[test]
fn the_tracers_cost_is_the_kernels_figures_in_the_statistics_windows() {
    use crate::model::cost::{ProgramCost, SkippedRuns, TracerCost};
    let (r, e) = exporter(false, 1000, 10);
    let cost = |runs: u64, run_ns, cpu_ns| TracerCost {
        secs: 1.0,
        programs: vec![ProgramCost {
            program: "kvmtrace_pio".into(),
            runs,
            run_ns,
        }],
        collector_cpu_ns: cpu_ns,
        unavailable: None,
        stats_secs: Some(runs as f64 / 1000.0),
        skipped: vec![SkippedRuns {
            program: "kvmtrace_exit".into(),
            runs: runs / 1000,
        }],
    };
    e.set_cost(&cost(1000, 150_000, 2_000_000));
    e.set_cost(&cost(3000, 450_000, 5_000_000));
    assert_eq!(
        samples(&r, "kvmtrace_bpf_run"),
        [
            "kvmtrace_bpf_run_seconds_total{program=\"kvmtrace_pio\"} 0.00045",
            "kvmtrace_bpf_runs_total{program=\"kvmtrace_pio\"} 3000",
        ]
    );
    // The time they were counted in (sampled statistics): rates divide by its rate.
    assert_eq!(
        samples(&r, "kvmtrace_bpf_stats_seconds_total"),
        ["kvmtrace_bpf_stats_seconds_total 3.0"]
    );
    // Never lowered.
    e.set_cost(&cost(10, 10, 10));
    assert_eq!(
        samples(&r, "kvmtrace_collector_cpu_seconds_total"),
        ["kvmtrace_collector_cpu_seconds_total 0.005"]
    );
    assert_eq!(
        samples(&r, "kvmtrace_bpf_runs_total"),
        ["kvmtrace_bpf_runs_total{program=\"kvmtrace_pio\"} 3000"]
    );
    // The kernel's skips: cumulative, never lowered either.
    assert_eq!(
        samples(&r, "kvmtrace_bpf_skipped_runs_total"),
        ["kvmtrace_bpf_skipped_runs_total{program=\"kvmtrace_exit\"} 3"]
    );
}
