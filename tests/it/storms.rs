//! Storm detection on real guests: one storm where the guest made one, on the right vCPU, with
//! the right bounds, rate and diagnosis; none for a steady low-rate mix.

use serde_json::Value;

use crate::harness::{
    Guest, HostSteal, Recorder, assert_cpu_matches_procfs, parse_json, record_guest_with,
    require_kvm_and_root,
};

/// This host's vCPU makes at most ~16 000 port exits/s, so the storm is 10 000/s (the issue's
/// 20 000/s cannot be reached here) and the threshold 5 000/s.
const STORM: &str = "idle,ms=2000;pio_out,port=0x70,ms=3000,rate=10000;idle,ms=2000";
const ARGS: [&str; 6] = [
    "--interval",
    "500ms",
    "--storm-rate",
    "5000",
    "--json",
    "--watch",
];

/// The report, the recorder's stderr, and the CPU time this host's own hypervisor stole while
/// recording (in seconds, all CPUs).
fn record(guest: &mut Guest) -> (Value, String, f64) {
    let name = guest.name.clone();
    let mut args = vec!["-d", name.as_str()];
    args.extend_from_slice(&ARGS);
    let steal = HostSteal::start();
    let out = record_guest_with(guest, &args);
    (
        parse_json(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        steal.stolen_ns() as f64 / 1e9,
    )
}

/// `stolen`: seconds of CPU this host's hypervisor took meanwhile. A guest whose vCPU thread is
/// not run cannot keep its pace, so its storm can start or end that much later than planned
/// (CI saw a start 1.5 s late once, in a run on a busy host).
fn check_rtc_storm(report: &Value, vcpu: &str, stolen: f64) {
    let storms = report["storms"].as_array().unwrap();
    assert_eq!(storms.len(), 1, "exactly one storm: {storms:#?}");
    let s = &storms[0];
    assert_eq!(s["vcpu"], vcpu);
    assert_eq!(s["what"], "port 0x0070 (RTC index) out");
    // The truth: 2 s quiet, 3 s at 10 000/s, from `go` (a few ms after recording started).
    let (start, end) = (
        s["start_secs"].as_f64().unwrap(),
        s["end_secs"].as_f64().unwrap(),
    );
    // Interval ends are the drains' instants: up to one interval after the truth, plus the few
    // ms from recording start to `go` and the drain's own delay (CI saw an end at 5.503 s).
    let slack = 0.5 + 0.05;
    assert!(
        start >= 2.0 - slack && start <= 2.0 + slack + stolen,
        "start {start} within one 0.5 s interval of 2 s (host steal meanwhile {stolen:.3} s): {storms:#?}"
    );
    assert!(
        end >= 5.0 - slack && end <= 5.0 + slack + stolen,
        "end {end} within one 0.5 s interval of 5 s (host steal meanwhile {stolen:.3} s): {storms:#?}"
    );
    let mean = s["mean_rate"].as_f64().unwrap();
    assert!(
        (mean - 10_000.0).abs() <= 1000.0,
        "mean rate {mean} within 10 % of 10 000/s"
    );
    assert_eq!(s["ongoing"], false);
    let d = &s["diagnosis"];
    assert_eq!(d["rule"], "rtc");
    assert!(d["fix"].as_str().unwrap().contains("kvmclock"), "{d:#}");
}

#[test]
fn one_rtc_storm_with_bounds_rate_and_advice() {
    require_kvm_and_root();
    let mut guest = Guest::start("it-storm", &["--run", STORM]);
    let (report, stderr, stolen) = record(&mut guest);
    check_rtc_storm(&report, "0", stolen);
    // Live lines: one when it started, one when it ended.
    let started: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("storm started"))
        .collect();
    let ended: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("storm ended"))
        .collect();
    assert_eq!((started.len(), ended.len()), (1, 1), "{stderr}");
    assert!(
        started[0].contains("it-storm vCPU 0: port 0x0070 (RTC index) out"),
        "{}",
        started[0]
    );
}

#[test]
fn storm_on_one_of_two_vcpus_is_attributed_to_it() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-storm2",
        &[
            "--vcpus",
            "2",
            "--run",
            &format!("1:{STORM}"),
            "--run",
            "0:mmio_w,ms=7000,rate=500",
        ],
    );
    let (report, _, stolen) = record(&mut guest);
    check_rtc_storm(&report, "1", stolen);
}

#[test]
fn steady_low_rate_mix_is_no_storm() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-calm",
        &[
            "--vcpus",
            "3",
            "--run",
            "0:pio_out,port=0x70,ms=5000,rate=800",
            "--run",
            "1:mmio_w,ms=5000,rate=500",
            "--run",
            "2:wrmsr,msr=0x6e0,ms=5000,rate=900",
        ],
    );
    let recorder = Recorder::start(&["-d", "it-calm", "--interval", "500ms", "--json"]);
    guest.go();
    guest.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    let report = parse_json(&out.stdout);
    assert_eq!(
        report["storms"].as_array().unwrap().len(),
        0,
        "{:#}",
        report["storms"]
    );
    // And the mix really ran at those rates.
    let vm = &report["vms"][0];
    let port = vm["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 0x70)
        .unwrap();
    assert_eq!(port["count"], 4000);
}

/// The kernel's CPU accounting of each vCPU thread agrees with procfs (utime + stime) within 5 %.
#[test]
fn cpu_attribution_matches_procfs() {
    require_kvm_and_root();
    // The threads stay alive (idle) past the recording: procfs can only be read while they exist.
    let mut guest = Guest::start(
        "it-cpu",
        &[
            "--vcpus",
            "2",
            "--run",
            "0:pio_out,port=0x70,ms=3000;idle,ms=4000",
            "--run",
            "1:mmio_w,ms=3000,rate=4000;idle,ms=4000",
        ],
    );
    let recorder = Recorder::start(&["-d", "it-cpu", "--interval", "500ms", "--json"]);
    guest.go();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let out = recorder.stop(libc::SIGINT);
    let report = parse_json(&out.stdout);
    let vm = &report["vms"][0];
    let rows = vm["cpu"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in rows {
        assert_cpu_matches_procfs(&report, r);
        let cpu = r["cpu_pct"].as_f64().unwrap();
        let parts = r["in_kvm_run_pct"].as_f64().unwrap() + r["vmm_pct"].as_f64().unwrap();
        assert!((parts - cpu).abs() < 1e-6, "KVM_RUN + VMM = CPU: {r:#}");
        let all =
            cpu + r["blocked_pct"].as_f64().unwrap() + r["runnable_wait_pct"].as_f64().unwrap();
        assert!((all - 100.0).abs() < 1e-6, "on + off = wall: {r:#}");
    }
    // vCPU 0 ran flat out for 3 of ~4 s; vCPU 1 mostly slept between paced batches.
    assert!(rows[0]["cpu_pct"].as_f64().unwrap() > 50.0, "{:#}", rows[0]);
    assert!(
        rows[1]["blocked_pct"].as_f64().unwrap() > 50.0,
        "{:#}",
        rows[1]
    );
    let top = &vm["cpu_summary"]["handling"][0];
    assert!(
        top["what"]
            .as_str()
            .unwrap()
            .starts_with("VMM handling of KVM_EXIT_IO (top port 0x0070 RTC index)"),
        "{top:#}"
    );
}

/// A vCPU that halts until its LAPIC timer fires (in-kernel irqchip) spends its time blocked
/// inside KVM_RUN, not on a CPU: HLT waiting is not CPU burn.
#[test]
fn hlt_waits_are_blocked_not_cpu() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-hlt",
        &[
            "--irqchip",
            "--run",
            "hlt_timer,count=2000,us=1000;idle,ms=3000",
        ],
    );
    let recorder = Recorder::start(&["-d", "it-hlt", "--interval", "500ms", "--json"]);
    guest.go();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = recorder.stop(libc::SIGINT);
    let report = parse_json(&out.stdout);
    let vm = &report["vms"][0];
    let cpu = &vm["cpu"][0];
    assert!(cpu["blocked_pct"].as_f64().unwrap() > 80.0, "{cpu:#}");
    assert!(cpu["cpu_pct"].as_f64().unwrap() < 20.0, "{cpu:#}");
    // One EOI per timer interrupt that woke a HLT.
    let eoi = vm["msrs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["msr"] == 0x80b)
        .unwrap();
    assert_eq!(eoi["count"], 2000);
}
