//! The tracer's own cost in the report: the kernel's BPF run-time statistics count one
//! kvmtrace_pio run per kvm_pio event, so with them on all along (`--bpf-stats always`) the runs
//! equal the port events the report counted, and a recording keeps the cost for `report -i`. By
//! default they are on only in sampling windows (they slow every BPF program on the host), and
//! count only the windows' runs.

use std::time::Duration;

use crate::harness::{
    Guest, count_of, kvmtrace_ok, parse_json, program_name, record_guest, record_running,
    record_to_end, require_kvm_and_root, vm_of,
};

#[test]
fn bpf_runs_match_the_events_counted_and_survive_the_recording() {
    require_kvm_and_root();
    let file = std::env::temp_dir().join(format!("kvmtrace-cost-{}.kvmtrace", std::process::id()));
    let mut guest = Guest::start("it-cost", &["--run", "pio_out,port=0x70,count=3000"]);
    let (report, _) = record_guest(
        &mut guest,
        &["-o", file.to_str().unwrap(), "--bpf-stats", "always"],
    );
    let vm = vm_of(&report, guest.pid);
    let ports: u64 = vm["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert!(count_of(vm, "ports", &[("port", 0x70.into())]) >= 3000);
    let cost = &report["tracer_cost"];
    assert!(cost["unavailable"].is_null(), "{cost:#}");
    let pio = program_cost(cost, "kvmtrace_pio");
    // The only VM on the host, idle until counting opened: every run was one of its events.
    assert_eq!(pio["runs"].as_u64().unwrap(), ports, "{cost:#}");
    let ns = pio["run_ns"].as_u64().unwrap();
    assert!(ns > 0 && ns / ports < 100_000, "{ns} ns for {ports} runs");
    assert!(cost["collector_cpu_ns"].as_u64().unwrap() > 0, "{cost:#}");
    // Every event ran its program (the runs equal the events): the kernel skipped none, and
    // the report lists no skipped runs (bpf_prog_info's recursion_misses, read from each
    // program: a misread field would show here).
    assert!(cost.get("skipped").is_none(), "{cost:#}");
    // The recording keeps it: `report -i` shows the same cost, and the text has the line.
    let offline = parse_json(&kvmtrace_ok(&[
        "report",
        "-i",
        file.to_str().unwrap(),
        "--format",
        "json",
    ]));
    assert_eq!(offline["tracer_cost"], *cost);
    let text = String::from_utf8(kvmtrace_ok(&["report", "-i", file.to_str().unwrap()])).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Tracer cost over "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("BPF program runs") && line.contains("% of one CPU"),
        "{line}"
    );
}

/// A guest writing port 0x70 without pause, already running, recorded for 4 s with the default
/// sampled statistics: they were on for the first window only (1 s, closed at the first drain
/// after it), so the pio program's counted runs are that window's, well under the port writes
/// of the 4 s; and with `--bpf-stats off` there are no BPF figures at all.
#[test]
fn sampled_statistics_count_only_their_window() {
    require_kvm_and_root();
    let mut guest = Guest::start("it-cost-sampled", &["--run", "pio_out,port=0x70,ms=9000"]);
    let report = record_running(&mut guest, Duration::from_millis(500), "4s");
    let vm = vm_of(&report, guest.pid);
    let ports = count_of(vm, "ports", &[("port", 0x70.into())]);
    let cost = &report["tracer_cost"];
    assert!(cost["unavailable"].is_null(), "{cost:#}");
    let secs = cost["secs"].as_f64().unwrap();
    let stats_secs = cost["stats_secs"].as_f64().unwrap();
    // One window: 1 s, up to the drain after it (500 ms intervals).
    assert!((1.0..=1.8).contains(&stats_secs), "{cost:#}");
    assert!(secs >= 3.9, "{cost:#}");
    let runs = program_cost(cost, "kvmtrace_pio")["runs"].as_u64().unwrap();
    // Counted all along, the runs would be the port writes; the window holds under half of
    // them (the guest writes at a steady rate).
    assert!(ports > 10_000, "{ports} port writes");
    assert!(
        runs > 0 && runs * 2 < ports,
        "{runs} runs for {ports} writes: {cost:#}"
    );

    let report = record_to_end(&[
        "-d",
        "it-cost-sampled",
        "--duration",
        "1s",
        "--json",
        "--bpf-stats",
        "off",
    ]);
    let cost = &report["tracer_cost"];
    assert_eq!(cost["unavailable"], "--bpf-stats off", "{cost:#}");
    assert_eq!(cost["programs"], serde_json::json!([]), "{cost:#}");
}

/// The cost entry of kvmtrace's program `stem` (its raw variant where that is attached).
fn program_cost<'a>(cost: &'a serde_json::Value, stem: &str) -> &'a serde_json::Value {
    let name = program_name(stem);
    cost["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == name.as_str())
        .unwrap_or_else(|| panic!("no {name} in {cost:#}"))
}
