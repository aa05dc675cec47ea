//! The user's world, not the harness's: VMs that were running long before the recorder, guests
//! that touch thousands of ports, VMs that come and go by the hundred during one recording, and
//! time windows of a recording. Exact expectations throughout.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Guest, Recorder, assert_cpu_matches_procfs, count_of, kvmtrace_ok, parse_json, record_running,
    require_kvm_and_root, rows, vm_of,
};

/// One CPU row: the recording's whole length, and the kernel's CPU figure agreeing with procfs.
fn assert_accounted_from_attach(report: &Value, row: &Value) {
    let duration = report["duration_secs"].as_f64().unwrap();
    let wall = row["wall_secs"].as_f64().unwrap();
    assert!(
        (wall - duration).abs() < 0.05,
        "wall {wall:.3} s vs recording {duration:.3} s: {row:#}"
    );
    assert_cpu_matches_procfs(report, row);
}

/// Issue 8.1: a vCPU halting on its LAPIC timer for seconds before the recorder starts is
/// accounted from the first instant of the recording (it sits in KVM_RUN, blocked).
#[test]
fn running_halted_guest_is_accounted_from_attach() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-run-hlt",
        &["--irqchip", "--run", "hlt_timer,count=100000000,us=2000"],
    );
    let report = record_running(&mut guest, Duration::from_secs(3), "5s");
    let vm = vm_of(&report, guest.pid);
    let cpu = vm["cpu"].as_array().unwrap();
    assert_eq!(cpu.len(), 1, "{cpu:#?}");
    assert_accounted_from_attach(&report, &cpu[0]);
    assert!(
        cpu[0]["blocked_pct"].as_f64().unwrap() > 50.0,
        "{:#}",
        cpu[0]
    );
}

/// Issue 8.1: vCPU threads that make no event for a long while after the recorder attaches, one
/// halted inside KVM_RUN (in-kernel LAPIC timer every 2 s) and one asleep in the VMM, are
/// accounted from the first instant from what /proc showed at attach: inside KVM_RUN blocked,
/// and outside blocked. (Without that, the first would start at its first event, up to 2 s late,
/// and the second would have no row at all.)
#[test]
fn silent_threads_inside_and_outside_kvm_run_are_seeded() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-seed",
        &[
            "--irqchip",
            "--vcpus",
            "2",
            "--run",
            "0:hlt_timer,count=1000,us=2000000",
            "--run",
            "1:idle,ms=60000",
        ],
    );
    let report = record_running(&mut guest, Duration::from_secs(1), "3s");
    let vm = vm_of(&report, guest.pid);
    let cpu = vm["cpu"].as_array().unwrap();
    assert_eq!(cpu.len(), 2, "{cpu:#?}");
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
    for r in cpu {
        let duration = report["duration_secs"].as_f64().unwrap();
        assert!((f(r, "wall_secs") - duration).abs() < 0.05, "{r:#}");
        assert!(f(r, "cpu_pct") < 1.0, "{r:#}");
        assert!(f(r, "blocked_pct") > 98.0, "{r:#}");
    }
    assert_eq!(cpu[0]["vcpu"], "0");
    assert!(f(&cpu[0], "blocked_in_kvm_run_pct") > 98.0, "{:#}", cpu[0]);
    assert_eq!(cpu[1]["vcpu"], "1");
    assert!(f(&cpu[1], "blocked_in_kvm_run_pct") < 1.0, "{:#}", cpu[1]);
}

/// Issue 8.1: a vCPU looping on an in-kernel exit at 100 % of a CPU, never returning to user
/// space, has a CPU row covering the whole recording, nearly all of it inside KVM_RUN.
#[test]
fn running_in_kernel_loop_has_a_cpu_row() {
    require_kvm_and_root();
    let mut guest = Guest::start("it-run-loop", &["--run", "cpuid,count=100000000000"]);
    let report = record_running(&mut guest, Duration::from_secs(2), "4s");
    let vm = vm_of(&report, guest.pid);
    let cpu = vm["cpu"].as_array().unwrap();
    assert_eq!(cpu.len(), 1, "{cpu:#?}");
    assert_accounted_from_attach(&report, &cpu[0]);
    // Never blocked and never in user space: on a CPU inside KVM_RUN, or waiting for one.
    let in_run = cpu[0]["in_kvm_run_pct"].as_f64().unwrap();
    let waiting = cpu[0]["runnable_wait_pct"].as_f64().unwrap();
    assert!(in_run + waiting > 99.0, "{:#}", cpu[0]);
    assert!(cpu[0]["vmm_pct"].as_f64().unwrap() < 0.5, "{:#}", cpu[0]);
    assert!(!vm["cpuid"].as_array().unwrap().is_empty(), "{vm:#}");
}

/// A VMM that spends 300 µs in user space on each port write (guest running before the
/// recorder): that time is the VMM's, not KVM_RUN's, and it is the KVM_EXIT_IO round trips'
/// total. (kvm_userspace_exit comes after KVM_RUN's kvm_fpu unload; it once re-opened KVM_RUN
/// there, and this VMM read as 99 % "in KVM_RUN".)
#[test]
fn vmm_time_in_user_space_is_the_vmm_s() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-vmm-busy",
        &["--run", "pio_out,port=0x80,ms=60000,vmm_us=300"],
    );
    let report = record_running(&mut guest, Duration::from_secs(1), "3s");
    let vm = vm_of(&report, guest.pid);
    let cpu = &vm["cpu"][0];
    assert_accounted_from_attach(&report, cpu);
    let f = |k: &str| cpu[k].as_f64().unwrap();
    assert!(f("vmm_pct") > 85.0, "{cpu:#}");
    assert!(f("in_kvm_run_pct") < 15.0, "{cpu:#}");
    let io = rows(vm, "userspace_exits", &[("reason", json!("IO"))]);
    assert_eq!(io.len(), 1, "{vm:#}");
    let round_trips_secs = io[0]["round_trip"]["total_ns"].as_f64().unwrap() / 1e9;
    let vmm_secs = f("vmm_pct") / 100.0 * f("wall_secs");
    assert!(
        (vmm_secs - round_trips_secs).abs() < 0.05 * vmm_secs,
        "VMM {vmm_secs:.3} s on a CPU, KVM_EXIT_IO round trips {round_trips_secs:.3} s"
    );
}

/// Issue 8.2: one guest writes to 30 000 distinct ports while two others run, with a detail map
/// of 1 024 keys: the others are counted exactly under their own keys (the big one cannot take
/// more than its per-vCPU budget), the big one's total is exact (its top rows plus an "other
/// keys" row), the report stays short, and stderr does not get a line per dropped key.
#[test]
fn a_guest_with_thousands_of_ports_does_not_blind_the_others() {
    require_kvm_and_root();
    let mut wide = Guest::start(
        "it-keys-wide",
        &["--run", "pio_span,port=0x1000,span=30000,count=30000"],
    );
    let mut rtc = Guest::start("it-keys-rtc", &["--run", "pio_out,port=0x70,count=4321"]);
    let mut msr = Guest::start("it-keys-msr", &["--run", "wrmsr,msr=0xc0000102,count=1234"]);
    let recorder = Recorder::start(&[
        "-d",
        "it-keys-wide",
        "-d",
        "it-keys-rtc",
        "-d",
        "it-keys-msr",
        "--interval",
        "500ms",
        "--max-detail-keys",
        "1024",
        "--json",
    ]);
    wide.go();
    rtc.go();
    msr.go();
    wide.wait_finished();
    rtc.wait_finished();
    msr.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success());
    let report = parse_json(&out.stdout);

    let rtc_vm = vm_of(&report, rtc.pid);
    assert_eq!(count_of(rtc_vm, "ports", &[("port", json!(0x70))]), 4321);
    let msr_vm = vm_of(&report, msr.pid);
    assert_eq!(
        count_of(
            msr_vm,
            "msrs",
            &[("msr", json!(0xc000_0102u64)), ("access", json!("write"))]
        ),
        1234
    );

    let wide_vm = vm_of(&report, wide.pid);
    let ports = wide_vm["ports"].as_array().unwrap();
    assert!(ports.len() <= 50, "{} port rows", ports.len());
    let shown: u64 = ports.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    let other = rows(wide_vm, "other_keys", &[("kind", json!("ports"))]);
    assert_eq!(other.len(), 1, "{:#}", wide_vm["other_keys"]);
    // 30 000 writes and one `out` to the done port: every one of them counted.
    assert_eq!(shown + other[0]["count"].as_u64().unwrap(), 30_001);
    assert_eq!(report["counters"]["detail_map_full"], 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() < 10, "{stderr}");
}

/// Issue 8.3: 300 VMs start, work and end during one recording, with `--max-keys 32` (a latency
/// pool of 64 keys), 127 shared thread slots and 4 home slots (KVMTRACE_THREAD_SLOTS,
/// KVMTRACE_HOME_SLOTS): every VM's counts are exact, nothing is dropped (so the slots of the
/// threads that ended were handed out again, 300 vCPU threads through 131 slots), nothing is left in flight, and the kernel maps are back to empty at the end.
#[test]
fn three_hundred_vm_lifetimes_in_one_recording() {
    require_kvm_and_root();
    let args = [
        "--max-keys",
        "32",
        "--interval",
        "200ms",
        "--json",
        "--quiet",
        "--no-watch",
    ];
    let recorder = Recorder::start_with_env(
        &args.map(std::ffi::OsStr::new),
        &[
            ("KVMTRACE_THREAD_SLOTS", "128"),
            ("KVMTRACE_HOME_SLOTS", "4"),
        ],
    );
    let mut pids = Vec::new();
    for i in 0..300 {
        let mut guest = Guest::start(
            &format!("it-life-{i}"),
            &["--run", "pio_out,port=0x70,count=100"],
        );
        guest.go();
        guest.wait_finished();
        // Gone 100 ms later: before the next drain (200 ms) as often as not.
        std::thread::sleep(Duration::from_millis(100));
        pids.push((i, guest.pid));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success());
    let report = parse_json(&out.stdout);
    // The recorder sees each VM from its birth, so also its warm-up batch (2 writes to the
    // warm-up port 0xf2 and an `out` to the done port) before the 100 writes and their done
    // port: 102 + 2 IO exits, all timed round trips but the last, after which the VM ended.
    for (i, pid) in &pids {
        let vm = vm_of(&report, *pid);
        // Each lived less than an interval: named all the same, from /proc as its vCPU's
        // first event was seen (not "pid N" and "tid N").
        assert_eq!(vm["name"], format!("it-life-{i}"), "VM {pid}: {vm:#}");
        let vcpus = vm["vcpus"].as_array().unwrap();
        assert_eq!(vcpus.len(), 1, "VM {pid}: {vm:#}");
        assert_eq!(vcpus[0]["label"], "0", "VM {pid}: {vm:#}");
        assert_eq!(vcpus[0]["thread_name"], "CPU 0/KVM", "VM {pid}: {vm:#}");
        assert_eq!(
            count_of(vm, "ports", &[("port", json!(0x70))]),
            100,
            "VM {pid}: {vm:#}"
        );
        assert_eq!(
            count_of(vm, "ports", &[("port", json!(0xf2))]),
            2,
            "VM {pid}: {vm:#}"
        );
        assert_eq!(
            count_of(vm, "ports", &[("port", json!(0xf0))]),
            2,
            "VM {pid}"
        );
        let io = rows(vm, "userspace_exits", &[("reason", json!("IO"))]);
        assert_eq!(io[0]["count"], 104, "VM {pid}: {:#}", vm["userspace_exits"]);
        assert_eq!(io[0]["round_trip"]["count"], 103, "VM {pid}");
    }
    let c = &report["counters"];
    for zero in [
        "latency_map_full",
        "detail_map_full",
        "thread_map_full",
        "exits_in_flight_at_stop",
        "round_trips_in_flight_at_stop",
    ] {
        assert_eq!(c[zero], 0, "{zero}: {c:#}");
    }
    assert_eq!(
        c["map_entries_at_stop"],
        json!({"threads": 0, "latency": 0, "details": 0, "stacks": 0}),
        "{c:#}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() < 10, "{stderr}");
}

/// Issue 8.6: min and max are per interval, so a window of a recording shows its own extremes:
/// paced VMM round trips of ~10 ms early on do not show up in a window of fast ones later.
#[test]
fn a_window_shows_its_own_extremes() {
    require_kvm_and_root();
    let file =
        std::env::temp_dir().join(format!("kvmtrace-window-{}.kvmtrace", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut guest = Guest::start(
        "it-window",
        &[
            "--run",
            "pio_out,port=0x70,count=40,rate=20;pio_out,port=0x71,ms=3000",
        ],
    );
    let recorder = Recorder::start(&[
        "-d",
        "it-window",
        "--interval",
        "500ms",
        "--json",
        "-o",
        file.to_str().unwrap(),
    ]);
    guest.go();
    guest.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success());
    let io_max = |report: &Value| {
        let vm = vm_of(report, guest.pid);
        rows(vm, "userspace_exits", &[("reason", json!("IO"))])[0]["round_trip"]["max_ns"]
            .as_u64()
            .unwrap()
    };
    let whole = io_max(&parse_json(&out.stdout));
    assert!(
        whole >= 30_000_000,
        "paced round trips take ~50 ms: max {whole} ns"
    );
    // The paced phase ends about 2 s in; the window starts at 3 s.
    let window = parse_json(&kvmtrace_ok(&[
        "report",
        "-i",
        file.to_str().unwrap(),
        "--from",
        "3s",
        "--format",
        "json",
    ]));
    let windowed = io_max(&window);
    assert!(
        windowed < 25_000_000,
        "the window's max is its own: {windowed} ns (whole recording {whole} ns)"
    );
    let _ = std::fs::remove_file(&file);
}
