//! `--json`: byte for byte against a golden file, and its schema: the exact keys and value types
//! of the report and every row type, so that adding, removing or renaming a field fails here
//! until it is deliberate (scripts read these names).
//!
//! The golden file is web01 per vCPU (`golden/report.json`). After a deliberate change, rewrite
//! it with `KVMTRACE_BLESS=1 cargo test -p kvmtrace --lib render::tests::json` and review the diff.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{fixture, output};
use crate::render::json;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/render/tests/golden/report.json"
);

fn json(report: &crate::report::Report) -> String {
    output(|out| json::render(report, out))
}

#[test]
fn web01_matches_the_golden_file() {
    let out = json(&fixture::web01(true));
    if std::env::var_os("KVMTRACE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(GOLDEN, &out).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap();
    assert!(
        out == golden,
        "--json output differs from {GOLDEN}; if the change is deliberate, rerun with \
         KVMTRACE_BLESS=1 and review the file's diff\n{}",
        first_difference(&golden, &out)
    );
}

fn first_difference(golden: &str, out: &str) -> String {
    let (g, o): (Vec<&str>, Vec<&str>) = (golden.lines().collect(), out.lines().collect());
    let at = (0..g.len().max(o.len()))
        .find(|&i| g.get(i) != o.get(i))
        .unwrap_or(0);
    format!(
        "line {}: golden {:?}, output {:?}",
        at + 1,
        g.get(at),
        o.get(at)
    )
}

/// A JSON value's type, as the schema says it.
enum T {
    U64,
    F64,
    Str,
    Bool,
    /// null or the type.
    Opt(&'static T),
    /// The key may be absent (`skip_serializing_if`).
    Omitted(&'static T),
    List(&'static T),
    Obj(&'static [(&'static str, T)]),
}
use T::*;

const LATENCY: T = Obj(&[
    ("count", U64),
    ("total_ns", U64),
    ("min_ns", U64),
    ("p50_ns", U64),
    ("p99_ns", U64),
    ("max_ns", U64),
]);

const STORM: T = Obj(&[
    ("pid", U64),
    ("tid", U64),
    ("vcpu", Str),
    ("what", Str),
    ("related", List(&Str)),
    ("start_secs", F64),
    ("end_secs", F64),
    ("ongoing", Bool),
    ("peak_rate", F64),
    ("mean_rate", F64),
    ("count", U64),
    ("cost_pct", Opt(&F64)),
    (
        "diagnosis",
        Opt(&Obj(&[
            ("rule", Str),
            ("title", Str),
            ("cause", Str),
            ("fix", Str),
            ("reference", Str),
        ])),
    ),
]);

const EXIT_ROW: T = Obj(&[
    ("vcpu", Opt(&Str)),
    ("isa", Str),
    ("reason_code", U64),
    ("reason", Str),
    ("count", U64),
    ("in_flight", U64),
    ("ended_with_thread", U64),
    ("count_pct", F64),
    ("time_pct", F64),
    ("per_sec", F64),
    ("latency", LATENCY),
    ("vmm", Opt(&LATENCY)),
]);

const USERSPACE_ROW: T = Obj(&[
    ("vcpu", Opt(&Str)),
    ("reason_code", U64),
    ("reason", Str),
    ("count", U64),
    ("count_pct", F64),
    ("per_sec", F64),
    ("round_trip", Opt(&LATENCY)),
]);

/// The rows of the detail tables: their own keys, then vcpu, count and per_sec.
macro_rules! key_row {
    ($($key:literal: $t:expr),*) => {
        Obj(&[$(($key, $t),)* ("vcpu", Opt(&Str)), ("count", U64), ("per_sec", F64)])
    };
}
const PORT_ROW: T = key_row!("port": U64, "direction": Str, "size": U64);
const MMIO_ROW: T = key_row!("gpa": U64, "access": Str, "len": U64);
const MSR_ROW: T = key_row!("msr": U64, "access": Str, "faulted": Bool);
const CPUID_ROW: T = key_row!("function": U64);
const OTHER_KEYS_ROW: T = key_row!(
    "kind": Str, "folded_keys": U64, "folded_events": U64, "unkeyed_events": U64
);

const CPU_ROW: T = Obj(&[
    ("vcpu", Str),
    ("tid", U64),
    ("wall_secs", F64),
    ("cpu_pct", F64),
    ("procfs_cpu_pct", Opt(&F64)),
    ("in_kvm_run_pct", F64),
    ("exit_handling_pct", Opt(&F64)),
    ("guest_pct", Opt(&F64)),
    ("vmm_pct", F64),
    ("blocked_pct", F64),
    ("blocked_in_kvm_run_pct", F64),
    ("runnable_wait_pct", F64),
]);

const CPU_SUMMARY: T = Obj(&[
    ("cpu_pct", F64),
    (
        "handling",
        List(&Obj(&[
            ("what", Str),
            ("pct_of_vm_cpu", F64),
            ("cpu_pct", F64),
        ])),
    ),
]);

const VM_REPORT: T = Obj(&[
    ("pid", U64),
    ("name", Str),
    (
        "vcpus",
        List(&Obj(&[
            ("label", Str),
            ("tid", U64),
            ("thread_name", Opt(&Str)),
        ])),
    ),
    ("total_exits", U64),
    ("total_userspace_exits", U64),
    ("detail_events", U64),
    ("exits", List(&EXIT_ROW)),
    ("userspace_exits", List(&USERSPACE_ROW)),
    ("ports", List(&PORT_ROW)),
    ("mmio", List(&MMIO_ROW)),
    ("msrs", List(&MSR_ROW)),
    ("cpuid", List(&CPUID_ROW)),
    ("other_keys", List(&OTHER_KEYS_ROW)),
    ("cpu", List(&CPU_ROW)),
    ("cpu_summary", Opt(&CPU_SUMMARY)),
]);

const COUNTERS: T = Obj(&[
    ("exits_seen", U64),
    ("entries_seen", U64),
    ("detail_events", U64),
    ("unpaired_exits", U64),
    ("unpaired_entries", U64),
    ("first_entries", U64),
    ("unpaired_userspace_exits", U64),
    ("exits_in_flight_at_stop", U64),
    ("exits_ended_with_thread", U64),
    ("round_trips_in_flight_at_stop", U64),
    ("latency_map_full", U64),
    ("detail_map_full", U64),
    ("thread_map_full", U64),
    (
        "map_entries_at_stop",
        Opt(&Obj(&[
            ("threads", U64),
            ("latency", U64),
            ("details", U64),
            ("stacks", U64),
        ])),
    ),
]);

const TRACER_COST: T = Obj(&[
    ("secs", F64),
    (
        "programs",
        List(&Obj(&[("program", Str), ("runs", U64), ("run_ns", U64)])),
    ),
    ("collector_cpu_ns", U64),
    ("unavailable", Opt(&Str)),
]);

const REPORT: T = Obj(&[
    ("duration_secs", F64),
    ("kvm_module", Opt(&Str)),
    ("tracepoints_attached", List(&Str)),
    ("tracepoints_missing", List(&Str)),
    ("notes", List(&Str)),
    ("per_vcpu", Bool),
    ("storms", List(&STORM)),
    ("vms", List(&VM_REPORT)),
    ("counters", COUNTERS),
    ("tracer_cost", Omitted(&TRACER_COST)),
    ("host_steal_pct", Omitted(&F64)),
    ("host_stacks", Omitted(&HOST_STACKS)),
    ("slow_exits", Omitted(&SLOW_EXITS)),
    ("storm_starts", Omitted(&List(&STORM_START))),
    ("guest_code", Omitted(&GUEST_CODE)),
]);

const HISTORY_ROW: T = Obj(&[
    ("offset_us", F64),
    ("kind", Str),
    ("reason", Str),
    ("total_ns", U64),
    ("detail", Opt(&Str)),
]);

const STORM_START: T = Obj(&[
    ("at_secs", F64),
    ("vm", Str),
    ("pid", U64),
    ("vcpu", Str),
    ("tid", U64),
    ("history", List(&HISTORY_ROW)),
]);

const GUEST_CODE: T = Obj(&[
    ("exits", U64),
    ("lost", U64),
    ("unavailable", Opt(&Str)),
    ("more_groups", U64),
    ("more_groups_exits", U64),
    (
        "groups",
        List(&Obj(&[
            ("vm", Str),
            ("pid", U64),
            ("reason", Str),
            ("detail", Opt(&Str)),
            ("exits", U64),
            ("other", U64),
            (
                "top",
                List(&Obj(&[
                    ("rip", Str),
                    ("symbol", Opt(&Str)),
                    ("exits", U64),
                    ("share_pct", F64),
                ])),
            ),
        ])),
    ),
]);

const SLOW_EXITS: T = Obj(&[
    ("threshold_ns", U64),
    ("captured", U64),
    ("lost", U64),
    (
        "by_reason",
        List(&Obj(&[
            ("vm", Str),
            ("pid", U64),
            ("kind", Str),
            ("reason", Str),
            ("count", U64),
        ])),
    ),
    (
        "slowest",
        List(&Obj(&[
            ("at_secs", F64),
            ("vm", Str),
            ("pid", U64),
            ("vcpu", Str),
            ("tid", U64),
            ("kind", Str),
            ("reason", Str),
            ("total_ns", U64),
            ("in_kernel_ns", U64),
            ("off_cpu_ns", U64),
            ("vmm_ns", U64),
            ("detail", Opt(&Str)),
            ("guest_rip", Opt(&Str)),
            ("exit_info", Opt(&Str)),
            ("info1", U64),
            ("info2", U64),
            ("history", List(&HISTORY_ROW)),
        ])),
    ),
]);

const HOST_STACKS: T = Obj(&[
    ("samples", U64),
    ("lost", U64),
    ("frames_lost", U64),
    (
        "groups",
        List(&Obj(&[
            ("pid", U64),
            ("vm", Str),
            ("state", Str),
            ("reason", Str),
            ("samples", U64),
            ("share_pct", F64),
            (
                "top",
                List(&Obj(&[
                    ("samples", U64),
                    ("share_pct", F64),
                    ("frames", List(&Str)),
                ])),
            ),
        ])),
    ),
]);

/// Checks `v` against `t`; `filled` records, per optional field (path without indexes), whether
/// any value had it.
fn check(v: &Value, t: &T, path: &str, filled: &mut BTreeMap<String, bool>) {
    let is = |ok: bool, what: &str| assert!(ok, "{path}: expected {what}, got {v}");
    match t {
        U64 => is(v.is_u64(), "an integer"),
        F64 => is(v.is_f64(), "a float"),
        Str => is(v.is_string(), "a string"),
        Bool => is(v.is_boolean(), "a bool"),
        Opt(t) | Omitted(t) => {
            *filled.entry(path.to_string()).or_default() |= !v.is_null();
            if !v.is_null() {
                check(v, t, path, filled);
            }
        }
        List(t) => {
            is(v.is_array(), "an array");
            for item in v.as_array().into_iter().flatten() {
                check(item, t, &format!("{path}[]"), filled);
            }
        }
        Obj(fields) => {
            is(v.is_object(), "an object");
            let Some(obj) = v.as_object() else { return };
            let mut want: Vec<&str> = fields
                .iter()
                .filter(|(k, t)| !matches!(t, Omitted(_)) || obj.contains_key(*k))
                .map(|(k, _)| *k)
                .collect();
            want.sort_unstable();
            let got: Vec<&str> = obj.keys().map(String::as_str).collect();
            assert_eq!(got, want, "{path}: keys");
            for (k, t) in *fields {
                let field = format!("{path}.{k}");
                match obj.get(*k) {
                    Some(v) => check(v, t, &field, filled),
                    None => check(&Value::Null, t, &field, filled),
                }
            }
        }
    }
}

/// web01 per vCPU and VM-wide, and kvm_pvm, together have every optional field both empty and
/// filled, but for the tracer cost's `unavailable` (the kernel kept statistics).
#[test]
fn the_schema_of_every_report_and_row_type() {
    let mut filled = BTreeMap::new();
    for report in [
        fixture::web01(true),
        fixture::web01(false),
        fixture::guest7_pvm(false),
    ] {
        let v: Value = serde_json::from_str(&json(&report)).unwrap();
        check(&v, &REPORT, "report", &mut filled);
    }
    let never: Vec<&String> = filled.iter().filter(|f| !f.1).map(|f| f.0).collect();
    assert_eq!(never, ["report.tracer_cost.unavailable"]);
}
