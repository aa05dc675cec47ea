//! The detail tables of one VM (ports, MMIO addresses, MSRs, CPUID functions, and the userspace
//! exit counts), built from decoded keys by one builder: each table sorted by count, biggest
//! first, and beyond `max_rows` folded into its "other keys" row with the events the kernel could
//! not key. With them, every table adds up to the exact total of its kind.

use std::collections::BTreeMap;

use kvmtrace_common::{Detail, DetailKind, UserspaceExit};

use super::{CpuidRow, MmioRow, MsrRow, OtherKeysRow, PortRow, rate};
use crate::{
    model::{VmKeys, identity::VcpuLabel},
    names::detail_kind_name,
};

/// Userspace exits counted per (vCPU, exit); their rows also need round trips ([`super::exits`]).
pub(super) struct UserspaceCount {
    pub vcpu: Option<VcpuLabel>,
    pub exit: UserspaceExit,
    pub count: u64,
}

#[derive(Default)]
pub(super) struct DetailTables {
    pub ports: Vec<PortRow>,
    pub mmio: Vec<MmioRow>,
    pub msrs: Vec<MsrRow>,
    pub cpuid: Vec<CpuidRow>,
    pub userspace: Vec<UserspaceCount>,
    pub other: Vec<OtherKeysRow>,
    /// Every detail event of the VM.
    pub events: u64,
}

/// What the folding needs of a row of any detail table.
trait KeyRow {
    fn vcpu(&self) -> Option<VcpuLabel>;
    fn detail(&self) -> Detail;
    fn count(&self) -> u64;
}

macro_rules! key_row {
    ($($row:ty),*) => {$(
        impl KeyRow for $row {
            fn vcpu(&self) -> Option<VcpuLabel> {
                self.vcpu
            }
            fn detail(&self) -> Detail {
                self.detail
            }
            fn count(&self) -> u64 {
                self.count
            }
        }
    )*};
}
key_row!(PortRow, MmioRow, MsrRow, CpuidRow);

type OtherRows = BTreeMap<(Option<VcpuLabel>, DetailKind), OtherKeysRow>;

impl DetailTables {
    /// The tables of a VM's keys (`keys`).
    pub fn build(
        keys: &VmKeys,
        secs: f64,
        label: &dyn Fn(u32) -> Option<VcpuLabel>,
        max_rows: Option<usize>,
    ) -> DetailTables {
        let mut counts: BTreeMap<(Option<VcpuLabel>, Detail), u64> = BTreeMap::new();
        let mut t = DetailTables::default();
        for &(k, n) in &keys.details {
            t.events += n;
            if let Some(detail) = k.decode() {
                *counts.entry((label(k.tid), detail)).or_default() += n;
            }
        }
        let mut other = OtherRows::new();
        for ((vcpu, detail), count) in counts {
            let per_sec = rate(count, secs);
            match detail {
                Detail::Port { port, dir, size } => t.ports.push(PortRow {
                    vcpu,
                    detail,
                    port,
                    direction: dir.as_str(),
                    size: size.into(),
                    count,
                    per_sec,
                }),
                Detail::Mmio { gpa, access, len } => t.mmio.push(MmioRow {
                    vcpu,
                    detail,
                    gpa,
                    access: access.as_str(),
                    len,
                    count,
                    per_sec,
                }),
                Detail::Msr {
                    index,
                    dir,
                    faulted,
                } => t.msrs.push(MsrRow {
                    vcpu,
                    detail,
                    msr: index,
                    access: dir.as_str(),
                    faulted,
                    count,
                    per_sec,
                }),
                Detail::Cpuid { function } => t.cpuid.push(CpuidRow {
                    vcpu,
                    detail,
                    function,
                    count,
                    per_sec,
                }),
                Detail::UserspaceExit(exit) => {
                    t.userspace.push(UserspaceCount { vcpu, exit, count })
                }
                Detail::Other(kind) => other_row(&mut other, vcpu, kind).unkeyed_events += count,
            }
        }
        sort_and_fold(&mut t.ports, max_rows, &mut other);
        sort_and_fold(&mut t.mmio, max_rows, &mut other);
        sort_and_fold(&mut t.msrs, max_rows, &mut other);
        sort_and_fold(&mut t.cpuid, max_rows, &mut other);
        t.other = other
            .into_values()
            .map(|mut o| {
                o.count = o.folded_events + o.unkeyed_events;
                o.per_sec = rate(o.count, secs);
                o
            })
            .collect();
        t.other
            .sort_by(|a, b| b.count.cmp(&a.count).then(a.vcpu.cmp(&b.vcpu)));
        t
    }
}

/// Sorts a table by count (biggest first, then by key), keeps the first `limit` rows and folds
/// the rest into "other keys".
fn sort_and_fold<T: KeyRow>(rows: &mut Vec<T>, limit: Option<usize>, other: &mut OtherRows) {
    rows.sort_by(|a, b| {
        b.count()
            .cmp(&a.count())
            .then(a.detail().cmp(&b.detail()))
            .then(a.vcpu().cmp(&b.vcpu()))
    });
    let Some(limit) = limit else {
        return;
    };
    for row in rows.drain(limit.min(rows.len())..) {
        let o = other_row(other, row.vcpu(), row.detail().kind());
        o.folded_keys += 1;
        o.folded_events += row.count();
    }
}

/// The "other keys" row of (vCPU, kind), created empty.
fn other_row(
    other: &mut OtherRows,
    vcpu: Option<VcpuLabel>,
    kind: DetailKind,
) -> &mut OtherKeysRow {
    other.entry((vcpu, kind)).or_insert_with(|| OtherKeysRow {
        vcpu,
        kind: detail_kind_name(kind),
        detail_kind: kind,
        count: 0,
        per_sec: 0.0,
        folded_keys: 0,
        folded_events: 0,
        unkeyed_events: 0,
    })
}
