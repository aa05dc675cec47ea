//! Exact counts: what the guest did is what the report shows, under the right keys and vCPUs.

use serde_json::json;

use crate::harness::{
    Guest, Recorder, count_of, parse_json, record_guest, require_kvm_and_root, rows, vm_of,
};

/// Issue 2: 20 000 port writes to 0x70, 5 000 MMIO writes to 0xd0000000, 3 000 wrmsr 0xc0000102.
#[test]
fn port_mmio_msr_counts_are_exact() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-exact",
        &[
            "--run",
            "pio_out,port=0x70,count=20000;mmio_w,gpa=0xd0000000,count=5000;wrmsr,msr=0xc0000102,count=3000",
        ],
    );
    let (report, results) = record_guest(&mut guest, &[]);
    assert_eq!(results.len(), 3, "{results:?}");
    let vm = vm_of(&report, guest.pid);
    assert_eq!(vm["name"], "it-exact");

    assert_eq!(
        count_of(
            vm,
            "ports",
            &[
                ("port", json!(0x70)),
                ("direction", json!("out")),
                ("size", json!(1))
            ]
        ),
        20_000
    );
    assert_eq!(
        count_of(
            vm,
            "mmio",
            &[
                ("gpa", json!(0xd000_0000u64)),
                ("access", json!("write")),
                ("len", json!(4))
            ]
        ),
        5_000
    );
    assert_eq!(
        count_of(
            vm,
            "msrs",
            &[
                ("msr", json!(0xc000_0102u64)),
                ("access", json!("write")),
                ("faulted", json!(false))
            ]
        ),
        3_000
    );
    // Each of the 3 steps ends with one `out` to the done port 0xf0.
    assert_eq!(count_of(vm, "ports", &[("port", json!(0xf0))]), 3);
    assert_eq!(
        vm["ports"].as_array().unwrap().len(),
        2,
        "only ports 0x70 and 0xf0: {:#}",
        vm["ports"]
    );

    // Userspace exits and their VMM round trips: every IO/MMIO exit went to the VMM and back,
    // except the very last (the done port of the last step), after which the vCPU thread ended:
    // that trip ended with its thread, so nothing is in flight at stop (no ghost trips).
    let io = rows(vm, "userspace_exits", &[("reason", json!("IO"))]);
    let mmio = rows(vm, "userspace_exits", &[("reason", json!("MMIO"))]);
    assert_eq!((io.len(), mmio.len()), (1, 1));
    assert_eq!(io[0]["count"], 20_003);
    assert_eq!(mmio[0]["count"], 5_000);
    assert_eq!(io[0]["round_trip"]["count"], 20_002);
    assert_eq!(mmio[0]["round_trip"]["count"], 5_000);
    for rt in [&io[0]["round_trip"], &mmio[0]["round_trip"]] {
        let (min, p50, p99, max) = (
            rt["min_ns"].as_u64().unwrap(),
            rt["p50_ns"].as_u64().unwrap(),
            rt["p99_ns"].as_u64().unwrap(),
            rt["max_ns"].as_u64().unwrap(),
        );
        assert!(0 < min && min <= p50 && p50 <= p99 && p99 <= max, "{rt:#}");
    }
    assert_eq!(report["counters"]["round_trips_in_flight_at_stop"], 0);
    for lost in [
        "unpaired_exits",
        "unpaired_entries",
        "unpaired_userspace_exits",
        "latency_map_full",
        "detail_map_full",
        "thread_map_full",
    ] {
        assert_eq!(report["counters"][lost], 0, "{lost}");
    }
}

/// A thread's VMM round trips find their latency index in its own state while the reason
/// repeats; the index must not outlive its key. Here the IO key goes idle for twelve 200 ms
/// intervals (so the collector retires it after eight and frees its index), the port writes
/// resume (a new index), then MMIO exits take the next free index and port writes follow again:
/// every round trip is counted once, under its own reason.
#[test]
fn round_trips_stay_exact_when_their_key_is_retired_and_reused() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-rt-retire",
        &[
            "--run",
            "pio_out,port=0x70,count=3000;idle,ms=2400;pio_out,port=0x70,count=3000;mmio_w,gpa=0xd0000000,count=1000;pio_out,port=0x70,count=2000",
        ],
    );
    let (report, results) = record_guest(&mut guest, &[]);
    assert_eq!(results.len(), 5, "{results:?}");
    let vm = vm_of(&report, guest.pid);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 8_000);
    // Each guest step (not the idle one, spent in user space) ends with one `out` to the done
    // port 0xf0; the last one's trip never ends.
    let done = count_of(vm, "ports", &[("port", json!(0xf0))]);
    assert_eq!(done, 4);
    let io = rows(vm, "userspace_exits", &[("reason", json!("IO"))]);
    let mmio = rows(vm, "userspace_exits", &[("reason", json!("MMIO"))]);
    assert_eq!((io.len(), mmio.len()), (1, 1), "{vm:#}");
    assert_eq!(io[0]["round_trip"]["count"], 8_000 + done - 1);
    assert_eq!(mmio[0]["round_trip"]["count"], 1_000);
    for lost in ["unpaired_userspace_exits", "latency_map_full"] {
        assert_eq!(report["counters"][lost], 0, "{lost}");
    }
}

/// Two vCPUs doing different work: each count is attributed to the vCPU that made it.
#[test]
fn per_vcpu_attribution_is_exact() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-vcpus",
        &[
            "--vcpus",
            "2",
            "--run",
            "0:pio_out,port=0x70,count=3000",
            "--run",
            "1:mmio_w,count=2000;wrmsr,msr=0xc0000102,count=1000",
        ],
    );
    let (report, _) = record_guest(&mut guest, &["--per-vcpu"]);
    let vm = vm_of(&report, guest.pid);
    let labels: Vec<&str> = vm["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["0", "1"]);
    assert_eq!(
        count_of(vm, "ports", &[("port", json!(0x70)), ("vcpu", json!("0"))]),
        3000
    );
    assert!(rows(vm, "ports", &[("port", json!(0x70)), ("vcpu", json!("1"))]).is_empty());
    assert_eq!(count_of(vm, "mmio", &[("vcpu", json!("1"))]), 2000);
    assert!(rows(vm, "mmio", &[("vcpu", json!("0"))]).is_empty());
    assert_eq!(count_of(vm, "msrs", &[("vcpu", json!("1"))]), 1000);
    assert!(rows(vm, "msrs", &[("vcpu", json!("0"))]).is_empty());
    assert_eq!(
        count_of(
            vm,
            "userspace_exits",
            &[("vcpu", json!("0")), ("reason", json!("IO"))]
        ),
        3001
    );
    assert_eq!(
        count_of(
            vm,
            "userspace_exits",
            &[("vcpu", json!("1")), ("reason", json!("MMIO"))]
        ),
        2000
    );
}

/// Home slots (`Config::home_slots`): a thread found in its home slot costs one array load, a
/// thread whose home another holds takes a shared slot. With one home slot for all
/// (KVMTRACE_HOME_SLOTS=1), five of six vCPU threads share: three of a VM that was running
/// before the recorder (seeded by the collector) and three of a VM started after it (their slots
/// claimed by their own first events). Every vCPU's port count is exact, and none is lost.
/// With BPF_NOEXIST taken out of the kernel's home-slot claim (two threads in one home slot),
/// it fails: port 0x70's writes are gone.
#[test]
fn threads_sharing_one_home_slot_count_exactly() {
    require_kvm_and_root();
    let plan = |base: u32| -> Vec<String> {
        (0..3)
            .flat_map(|v| {
                [
                    "--run".to_string(),
                    format!("{v}:pio_out,port={:#x},count={}", base + v, 1000 * (v + 1)),
                ]
            })
            .collect()
    };
    fn args(plan: &[String]) -> Vec<&str> {
        let mut args = vec!["--vcpus", "3"];
        args.extend(plan.iter().map(String::as_str));
        args
    }
    let (plan_before, plan_after) = (plan(0x70), plan(0x80));
    let mut before = Guest::start("it-home-before", &args(&plan_before));
    let recorder = Recorder::start_with_env(
        &["--json", "--interval", "200ms"].map(std::ffi::OsStr::new),
        &[("KVMTRACE_HOME_SLOTS", "1")],
    );
    let mut after = Guest::start("it-home-after", &args(&plan_after));
    before.go();
    after.go();
    before.wait_finished();
    after.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = parse_json(&out.stdout);
    for (guest, base) in [(&before, 0x70), (&after, 0x80)] {
        let vm = vm_of(&report, guest.pid);
        for v in 0..3u32 {
            // Each vCPU writes its own port.
            assert_eq!(
                count_of(vm, "ports", &[("port", json!(base + v))]),
                1000 * (u64::from(v) + 1),
                "VM {}, vCPU {v}: {vm:#}",
                guest.name
            );
        }
    }
    for lost in [
        "thread_map_full",
        "detail_map_full",
        "unpaired_userspace_exits",
    ] {
        assert_eq!(report["counters"][lost], 0, "{lost}");
    }
}

/// Two guests, one traced by name: the other one's events are absent.
#[test]
fn untraced_guest_is_absent() {
    require_kvm_and_root();
    let mut traced = Guest::start("it-traced", &["--run", "pio_out,port=0x70,count=1000"]);
    let mut other = Guest::start(
        "it-other",
        &["--run", "pio_out,port=0x80,count=1000;cpuid,count=500"],
    );
    other.go();
    let (report, _) = record_guest(&mut traced, &[]);
    other.wait_finished();
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "{report:#}");
    let vm = vm_of(&report, traced.pid);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 1000);
    assert!(rows(vm, "ports", &[("port", json!(0x80))]).is_empty());
    assert!(vm["cpuid"].as_array().unwrap().is_empty());
}

/// In-kernel exits (CPUID, MSR read) are counted exactly too.
#[test]
fn in_kernel_exits_are_exact() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-inkernel",
        &[
            "--run",
            "cpuid,fn=0x40000000,count=7000;rdmsr,msr=0xc0000102,count=4000",
        ],
    );
    let (report, _) = record_guest(&mut guest, &[]);
    let vm = vm_of(&report, guest.pid);
    assert_eq!(
        count_of(vm, "cpuid", &[("function", json!(0x4000_0000u64))]),
        7000
    );
    assert_eq!(
        count_of(
            vm,
            "msrs",
            &[("msr", json!(0xc000_0102u64)), ("access", json!("read"))]
        ),
        4000
    );
}
