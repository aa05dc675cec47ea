//! The tracer's own cost in the report: the kernel's BPF run-time statistics count one
//! kvmtrace_pio run per kvm_pio event, so the runs equal the port events the report counted,
//! and a recording keeps the cost for `report -i`.

use crate::harness::{
    Guest, count_of, kvmtrace_ok, parse_json, program_name, record_guest, require_kvm_and_root,
    vm_of,
};

#[test]
fn bpf_runs_match_the_events_counted_and_survive_the_recording() {
    require_kvm_and_root();
    let file = std::env::temp_dir().join(format!("kvmtrace-cost-{}.kvmtrace", std::process::id()));
    let mut guest = Guest::start("it-cost", &["--run", "pio_out,port=0x70,count=3000"]);
    let (report, _) = record_guest(&mut guest, &["-o", file.to_str().unwrap()]);
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
    let name = program_name("kvmtrace_pio");
    let pio = cost["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == name.as_str())
        .unwrap_or_else(|| panic!("no {name} in {cost:#}"));
    // The only VM on the host, idle until counting opened: every run was one of its events.
    assert_eq!(pio["runs"].as_u64().unwrap(), ports, "{cost:#}");
    let ns = pio["run_ns"].as_u64().unwrap();
    assert!(ns > 0 && ns / ports < 100_000, "{ns} ns for {ports} runs");
    assert!(cost["collector_cpu_ns"].as_u64().unwrap() > 0, "{cost:#}");
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
