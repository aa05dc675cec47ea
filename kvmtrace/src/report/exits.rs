//! The exit tables of one VM: kvm_exit reasons (in-kernel latency, the VMM's part, exits open at
//! stop) and userspace exits with their VMM round trips.

use std::collections::BTreeMap;

use kvmtrace_common::{LatencyKey, LatencyKind};

use super::{ExitRow, Latency, UserspaceRow, details::UserspaceCount, pct, rate};
use crate::{
    model::{InFlight, LatencyAgg, VmKeys, identity::VcpuLabel},
    tp::{
        class::{exit_class, userspace_class},
        reasons::{exit_reason_name, isa_name, userspace_exit_label},
    },
};

/// (vCPU, isa, reason): one row of the exits table.
type ExitKey = (Option<VcpuLabel>, u32, u32);

/// The exits table of VM `pid`, whose keys are `keys`.
pub(super) fn exit_rows(
    keys: &VmKeys,
    in_flight: &InFlight,
    pid: u32,
    secs: f64,
    label: &dyn Fn(u32) -> Option<VcpuLabel>,
) -> Vec<ExitRow> {
    let key = |k: &LatencyKey| (label(k.tid), k.isa, k.reason);
    let mut exits: BTreeMap<ExitKey, LatencyAgg> = BTreeMap::new();
    let mut open: BTreeMap<ExitKey, u64> = BTreeMap::new();
    let mut ended: BTreeMap<ExitKey, u64> = BTreeMap::new();
    for (counts, keys) in [
        (&mut open, &in_flight.exits),
        (&mut ended, &in_flight.ended_with_thread),
    ] {
        for (k, n) in keys.iter().filter(|(k, _)| k.tgid == pid) {
            exits.entry(key(k)).or_default();
            *counts.entry(key(k)).or_default() += n;
        }
    }
    let mut exit_vmm: BTreeMap<ExitKey, LatencyAgg> = BTreeMap::new();
    for &(k, v) in &keys.latency {
        match k.kind() {
            Some(LatencyKind::Exit) => exits.entry(key(k)).or_default().merge(v),
            Some(LatencyKind::ExitVmm) => exit_vmm.entry(key(k)).or_default().merge(v),
            _ => {}
        }
    }
    let total_exits: u64 = exits.values().map(|a| a.count).sum::<u64>()
        + open.values().sum::<u64>()
        + ended.values().sum::<u64>();
    let total_ns: u64 = exits.values().map(|a| a.total_ns).sum();
    let mut rows: Vec<ExitRow> = exits
        .into_iter()
        .map(|(key, a)| {
            let in_flight = open.get(&key).copied().unwrap_or(0);
            let ended_with_thread = ended.get(&key).copied().unwrap_or(0);
            let vmm = exit_vmm.get(&key).map(Latency::of);
            let (vcpu, isa, reason) = key;
            let count = a.count + in_flight + ended_with_thread;
            ExitRow {
                vcpu,
                isa: isa_name(isa),
                reason_code: reason,
                reason: exit_reason_name(isa, reason),
                isa_code: isa,
                class: exit_class(isa, reason),
                count,
                in_flight,
                ended_with_thread,
                count_pct: pct(count, total_exits),
                time_pct: pct(a.total_ns, total_ns),
                per_sec: rate(count, secs),
                latency: Latency::of(&a),
                vmm,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.vcpu.cmp(&b.vcpu))
            .then(a.reason_code.cmp(&b.reason_code))
    });
    rows
}

/// The userspace exits table of a VM: `counts`, with the round trips of its keys (`keys`).
pub(super) fn userspace_rows(
    keys: &VmKeys,
    counts: &[UserspaceCount],
    secs: f64,
    label: &dyn Fn(u32) -> Option<VcpuLabel>,
) -> Vec<UserspaceRow> {
    let mut round_trips: BTreeMap<(Option<VcpuLabel>, u32), LatencyAgg> = BTreeMap::new();
    for &(k, v) in keys
        .latency
        .iter()
        .filter(|(k, _)| k.kind() == Some(LatencyKind::VmmRoundTrip))
    {
        round_trips
            .entry((label(k.tid), k.reason))
            .or_default()
            .merge(v);
    }
    let total: u64 = counts.iter().map(|c| c.count).sum();
    let mut rows: Vec<UserspaceRow> = counts
        .iter()
        .map(|c| {
            let code = c.exit.round_trip_code();
            UserspaceRow {
                vcpu: c.vcpu,
                reason_code: code,
                reason: userspace_exit_label(c.exit),
                exit: c.exit,
                class: userspace_class(c.exit),
                count: c.count,
                count_pct: pct(c.count, total),
                per_sec: rate(c.count, secs),
                round_trip: round_trips.get(&(c.vcpu, code)).map(Latency::of),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.vcpu.cmp(&b.vcpu)));
    rows
}
