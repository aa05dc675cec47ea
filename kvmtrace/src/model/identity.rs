//! Who is who: VMs (a process, its names, its threads) and vCPUs, identified once and carried as
//! types, never parsed back from a label.

use std::{collections::BTreeMap, collections::BTreeSet, fmt, str::FromStr};

use kvmtrace_common::VCPU_UNKNOWN;
use serde::{Deserialize, Serialize};

use super::VmKeys;

/// A vCPU thread's identity as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: u32,
    /// `comm`: QEMU names vCPU threads `CPU N/KVM`.
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub pid: u32,
    /// The best name: libvirt's, else QEMU's `-name`, else the systemd machine, else `comm`.
    pub name: String,
    /// Every name the VM answers to with `-d`.
    pub aliases: BTreeSet<String>,
    pub threads: Vec<Thread>,
}

impl Vm {
    /// Threads that look like vCPUs (`CPU N/KVM`).
    pub fn vcpu_threads(&self) -> impl Iterator<Item = &Thread> {
        self.threads
            .iter()
            .filter(|t| vcpu_index_of_comm(&t.comm).is_some())
    }

    /// Escapes every name in place: for VMs read from a recording file, whose text is as
    /// untrusted as /proc's.
    pub fn escape_text(&mut self) {
        crate::untrusted::escape_in_place(&mut self.name);
        self.aliases = std::mem::take(&mut self.aliases)
            .into_iter()
            .map(|a| crate::untrusted::escape(&a))
            .collect();
        for t in &mut self.threads {
            crate::untrusted::escape_in_place(&mut t.comm);
        }
    }
}

/// `CPU 3/KVM` -> 3.
pub fn vcpu_index_of_comm(comm: &str) -> Option<u32> {
    comm.strip_prefix("CPU ")?
        .strip_suffix("/KVM")?
        .parse()
        .ok()
}

/// How reports name a vCPU thread: its index (kvm_exit's vcpu_id, else N of QEMU's `CPU N/KVM`),
/// else its tid. Orders indexes first, by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VcpuLabel {
    Index(u32),
    Tid(u32),
}

impl VcpuLabel {
    /// In a sentence or a frame: "vCPU 3", or "tid 1234".
    pub fn named(self) -> String {
        match self {
            VcpuLabel::Index(i) => format!("vCPU {i}"),
            VcpuLabel::Tid(_) => self.to_string(),
        }
    }
}

impl fmt::Display for VcpuLabel {
    /// "3", or "tid 1234".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuLabel::Index(i) => write!(f, "{i}"),
            VcpuLabel::Tid(t) => write!(f, "tid {t}"),
        }
    }
}

impl Serialize for VcpuLabel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for VcpuLabel {
    type Err = String;

    /// What a user types after `--vcpu`: "3" or "tid 1234".
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let number = |n: &str| n.trim().parse::<u32>().ok();
        match s.strip_prefix("tid") {
            Some(tid) => number(tid).map(VcpuLabel::Tid),
            None => number(s).map(VcpuLabel::Index),
        }
        .ok_or_else(|| format!("{s:?} is not a vCPU (a number such as 0, or \"tid 1234\")"))
    }
}

/// A vCPU thread of a VM.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Vcpu {
    pub label: VcpuLabel,
    pub tid: u32,
    pub thread_name: Option<String>,
}

/// The vCPUs of a VM (`keys`, its keys): every thread with events, plus threads named `CPU
/// N/KVM`; ordered by label. The label's index is kvm_exit's vcpu_id where known, else N from
/// the thread name.
pub fn vcpus_of(keys: &VmKeys, vm: Option<&Vm>) -> Vec<Vcpu> {
    let mut by_tid: BTreeMap<u32, Option<u32>> = BTreeMap::new();
    for (k, _) in &keys.latency {
        let id = (k.vcpu_id != VCPU_UNKNOWN).then_some(k.vcpu_id);
        let slot = by_tid.entry(k.tid).or_default();
        *slot = slot.or(id);
    }
    for (k, _) in &keys.details {
        by_tid.entry(k.tid).or_default();
    }
    let threads = vm.map(|v| v.threads.as_slice()).unwrap_or_default();
    for t in threads
        .iter()
        .filter(|t| vcpu_index_of_comm(&t.comm).is_some())
    {
        by_tid.entry(t.tid).or_default();
    }
    let mut out: Vec<Vcpu> = by_tid
        .into_iter()
        .map(|(tid, id)| {
            let thread_name = threads
                .iter()
                .find(|t| t.tid == tid)
                .map(|t| t.comm.clone());
            let index = id.or_else(|| thread_name.as_deref().and_then(vcpu_index_of_comm));
            Vcpu {
                label: index.map_or(VcpuLabel::Tid(tid), VcpuLabel::Index),
                tid,
                thread_name,
            }
        })
        .collect();
    out.sort_by_key(|v| (v.label, v.tid));
    out
}

/// The label of thread `tid` of `vm` when only the VM's threads are known (live storm lines).
pub fn label_of_thread(vm: Option<&Vm>, tid: u32) -> VcpuLabel {
    vm.and_then(|v| v.threads.iter().find(|t| t.tid == tid))
        .and_then(|t| vcpu_index_of_comm(&t.comm))
        .map_or(VcpuLabel::Tid(tid), VcpuLabel::Index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_index_from_thread_name() {
        assert_eq!(vcpu_index_of_comm("CPU 12/KVM"), Some(12));
        assert_eq!(vcpu_index_of_comm("CPU x/KVM"), None);
        assert_eq!(vcpu_index_of_comm("qemu-kvm"), None);
    }

    #[test]
    fn labels_print_parse_and_order() {
        for (text, label) in [
            ("0", VcpuLabel::Index(0)),
            ("tid 1234", VcpuLabel::Tid(1234)),
        ] {
            assert_eq!(text.parse::<VcpuLabel>(), Ok(label));
            assert_eq!(label.to_string(), text);
        }
        assert!("vcpu0".parse::<VcpuLabel>().is_err());
        let mut v = vec![VcpuLabel::Tid(5), VcpuLabel::Index(10), VcpuLabel::Index(2)];
        v.sort();
        assert_eq!(
            v,
            [VcpuLabel::Index(2), VcpuLabel::Index(10), VcpuLabel::Tid(5)]
        );
        assert_eq!(
            serde_json::to_string(&VcpuLabel::Tid(7)).unwrap(),
            "\"tid 7\""
        );
        assert_eq!(VcpuLabel::Index(3).named(), "vCPU 3");
        assert_eq!(VcpuLabel::Tid(7).named(), "tid 7");
    }
}
