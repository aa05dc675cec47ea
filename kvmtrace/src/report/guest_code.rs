//! The report's "Guest code per exit reason" (`record --guest-rips`): for each VM and exit
//! reason, the guest RIPs its exits came from, most first, named through `--guest-symbols`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    model::{Aggregate, rips::GuestRips},
    tp::reasons::exit_reason_name,
};

/// RIPs shown per (VM, reason); the rest is one "other" count.
const TOP: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct GuestCode {
    /// Exits with a known RIP.
    pub exits: u64,
    /// Exits the kernel could not key (its map was full): counted nowhere below.
    pub lost: u64,
    /// Why there is nothing to show, when there is not (no kvm_exit on this host).
    pub unavailable: Option<String>,
    /// Most exits first.
    pub groups: Vec<GuestCodeGroup>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GuestCodeGroup {
    pub vm: String,
    pub pid: u32,
    pub reason: String,
    pub exits: u64,
    pub top: Vec<GuestRipRow>,
    /// Exits from RIPs beyond the top ones.
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

/// None when the recording was made without `--guest-rips`.
pub fn build(agg: &Aggregate, vm_name: &dyn Fn(u32) -> String) -> Option<GuestCode> {
    let rips: &GuestRips = &agg.rips;
    if !rips.enabled {
        return None;
    }
    let mut by_group: BTreeMap<(u32, u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for (&(pid, isa, reason, rip), &n) in &rips.counts {
        by_group
            .entry((pid, isa, reason))
            .or_default()
            .push((rip, n));
    }
    let mut groups: Vec<GuestCodeGroup> = by_group
        .into_iter()
        .map(|((pid, isa, reason), mut at)| {
            at.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let unkeyed = rips.unkeyed.get(&(pid, isa, reason)).copied().unwrap_or(0);
            let exits = at.iter().map(|a| a.1).sum::<u64>() + unkeyed;
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
            GuestCodeGroup {
                vm: vm_name(pid),
                pid,
                reason: exit_reason_name(isa, reason),
                exits,
                top,
                other: exits - shown,
            }
        })
        .collect();
    groups.sort_by(|a, b| b.exits.cmp(&a.exits).then(a.reason.cmp(&b.reason)));
    let exits = groups.iter().map(|g| g.exits).sum();
    let unavailable = (exits == 0 && rips.lost == 0 && agg.counter(kvmtrace_common::Counter::ExitsSeen) == 0)
        .then(|| {
            "no kvm_exit event fired: this host's KVM does not emit it (kvm_pvm), so there are no guest RIPs to show".to_string()
        });
    Some(GuestCode {
        exits,
        lost: rips.lost,
        unavailable,
        groups,
    })
}
