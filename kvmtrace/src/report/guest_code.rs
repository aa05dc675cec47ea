//! The report's "Guest code per exit reason" (`record --guest-rips`): for each VM, exit reason
//! and detail (port, MMIO address, MSR, CPUID function), the guest RIPs its exits came from,
//! most first, named through `--guest-symbols`: "io exits to port 0x70: 93 % from
//! rtc_cmos_read+0x1d". The same per vCPU feeds the flamegraph's frames below the detail.

use std::collections::BTreeMap;

use kvmtrace_common::detail::Detail;
use serde::Serialize;

use crate::{
    model::{
        Aggregate, decode_detail,
        identity::VcpuLabel,
        rips::{GuestRips, RipGroup},
    },
    names::detail_phrase,
    tp::reasons::exit_reason_name,
};

/// RIPs shown per group; the rest is one "other" count.
const TOP: usize = 5;
/// Groups kept, most exits first (the text shows fewer: [`TEXT_GROUPS`]); the rest are counted
/// in [`GuestCode::more_groups`].
const GROUPS: usize = 100;
pub const TEXT_GROUPS: usize = 15;

#[derive(Clone, Debug, Serialize)]
pub struct GuestCode {
    /// Exits with a known RIP.
    pub exits: u64,
    /// Exits the kernel could not key (its map was full): counted nowhere below.
    pub lost: u64,
    /// Why there is nothing to show, when there is not (no kvm_exit on this host).
    pub unavailable: Option<String>,
    /// Per (VM, reason, detail), most exits first.
    pub groups: Vec<GuestCodeGroup>,
    /// Groups beyond `groups`, and their exits.
    pub more_groups: u64,
    pub more_groups_exits: u64,
    /// The same per vCPU (all groups), for the flamegraph.
    #[serde(skip)]
    pub by_vcpu: Vec<VcpuGuestCode>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GuestCodeGroup {
    pub vm: String,
    pub pid: u32,
    pub reason: String,
    /// What the exits were about ("port 0x0070 (RTC index) out"); None for exits without a
    /// detail event (HLT, or where the detail tracepoints were not attached).
    pub detail: Option<String>,
    pub exits: u64,
    pub top: Vec<GuestRipRow>,
    /// Exits from RIPs beyond the top ones.
    pub other: u64,
}

/// One vCPU's exits of one reason and detail, by guest RIP.
#[derive(Clone, Debug)]
pub struct VcpuGuestCode {
    pub pid: u32,
    pub vcpu: VcpuLabel,
    pub isa: u32,
    pub reason_code: u32,
    pub reason: String,
    pub detail: Option<Detail>,
    pub top: Vec<GuestRipRow>,
    pub other: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GuestRipRow {
    /// "0xffffffff81033f1d"; "0x0" where the guest's state is encrypted (SEV-ES, SNP, TDX).
    pub rip: String,
    #[serde(skip)]
    pub address: u64,
    /// "rtc_cmos_read+0x1d", from `--guest-symbols`.
    pub symbol: Option<String>,
    pub exits: u64,
    pub share_pct: f64,
}

impl GuestRipRow {
    /// Its flamegraph frame.
    pub fn frame(&self) -> String {
        match (&self.symbol, self.address) {
            (Some(s), _) => format!("guest {s}"),
            (None, 0) => "guest RIP hidden (encrypted state)".into(),
            (None, _) => format!("guest {}", self.rip),
        }
    }
}

/// A group's RIP -> exits and its exits under no RIP: its exits, the top RIPs by exits as rows,
/// and the exits of the rest.
fn top_rows(at: BTreeMap<u64, u64>, unkeyed: u64) -> (u64, Vec<GuestRipRow>, u64) {
    let exits = at.values().sum::<u64>() + unkeyed;
    let mut at: Vec<(u64, u64)> = at.into_iter().collect();
    at.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<GuestRipRow> = at
        .iter()
        .take(TOP)
        .map(|&(rip, n)| GuestRipRow {
            rip: format!("{rip:#x}"),
            address: rip,
            symbol: None,
            exits: n,
            share_pct: crate::model::pct(n, exits),
        })
        .collect();
    let shown: u64 = top.iter().map(|r| r.exits).sum();
    (exits, top, exits - shown)
}

/// RIP -> exits per key of `by`, with the exits counted under no RIP (the model's bound).
type Grouped<K> = BTreeMap<K, (BTreeMap<u64, u64>, u64)>;

fn grouped<K: Ord>(rips: &GuestRips, by: impl Fn(&RipGroup) -> K) -> Grouped<K> {
    let mut out: Grouped<K> = BTreeMap::new();
    for (&(group, rip), &n) in &rips.counts {
        *out.entry(by(&group)).or_default().0.entry(rip).or_default() += n;
    }
    for (group, &n) in &rips.unkeyed {
        out.entry(by(group)).or_default().1 += n;
    }
    out
}

/// None when the recording was made without `--guest-rips`.
pub fn build(
    agg: &Aggregate,
    vm_name: &dyn Fn(u32) -> String,
    vcpu_label: &dyn Fn(u32, u32) -> VcpuLabel,
) -> Option<GuestCode> {
    let rips: &GuestRips = &agg.rips;
    if !rips.enabled {
        return None;
    }
    let mut groups: Vec<GuestCodeGroup> = grouped(rips, |g| (g.0, g.2, g.3, g.4))
        .into_iter()
        .map(|((pid, isa, reason, detail), (at, unkeyed))| {
            let (exits, top, other) = top_rows(at, unkeyed);
            GuestCodeGroup {
                vm: vm_name(pid),
                pid,
                reason: exit_reason_name(isa, reason),
                detail: decode_detail(pid, 0, detail).map(|d| detail_phrase(&d)),
                exits,
                top,
                other,
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.exits
            .cmp(&a.exits)
            .then(a.reason.cmp(&b.reason))
            .then(a.detail.cmp(&b.detail))
    });
    let exits = groups.iter().map(|g| g.exits).sum();
    let rest = groups.split_off(groups.len().min(GROUPS));
    let by_vcpu = grouped(rips, |g| *g)
        .into_iter()
        .map(|((pid, tid, isa, reason, detail), (at, unkeyed))| {
            let (_, top, other) = top_rows(at, unkeyed);
            VcpuGuestCode {
                pid,
                vcpu: vcpu_label(pid, tid),
                isa,
                reason_code: reason,
                reason: exit_reason_name(isa, reason),
                detail: decode_detail(pid, tid, detail),
                top,
                other,
            }
        })
        .collect();
    let unavailable = (exits == 0 && rips.lost == 0 && agg.counter(kvmtrace_common::Counter::ExitsSeen) == 0)
        .then(|| {
            "no kvm_exit event fired: this host's KVM does not emit it (kvm_pvm), so there are no guest RIPs to show".to_string()
        });
    Some(GuestCode {
        exits,
        lost: rips.lost,
        unavailable,
        more_groups: rest.len() as u64,
        more_groups_exits: rest.iter().map(|g| g.exits).sum(),
        groups,
        by_vcpu,
    })
}
