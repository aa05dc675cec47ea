//! The label sets of the exporter's series, each a type (not a list of strings), and the one
//! place a detail key becomes labels. A `vcpu` label is present only with `--per-vcpu`; label
//! values are escaped by prometheus-client, and VM names were escaped where they entered
//! kvmtrace ([`crate::untrusted`]).

use kvmtrace_common::{Detail as Decoded, DetailKey, DetailKind};
use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

type Result = std::result::Result<(), std::fmt::Error>;

/// Every per-VM series: the VM's identity (its name, the same across restarts; no pid, which
/// changes), and the vCPU with `--per-vcpu`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmLabels {
    pub vm: String,
    pub vcpu: Option<String>,
}

impl EncodeLabelSet for VmLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        ("vm", self.vm.as_str()).encode(e.encode_label())?;
        if let Some(vcpu) = &self.vcpu {
            ("vcpu", vcpu.as_str()).encode(e.encode_label())?;
        }
        Ok(())
    }
}

/// `kvmtrace_vm_info`: the process that has a VM identity now, and the VM's UUID (empty when
/// unknown).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoLabels {
    pub vm: String,
    pub pid: u32,
    pub uuid: String,
}

impl EncodeLabelSet for InfoLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        ("vm", self.vm.as_str()).encode(e.encode_label())?;
        ("pid", self.pid).encode(e.encode_label())?;
        ("uuid", self.uuid.as_str()).encode(e.encode_label())
    }
}

/// `kvmtrace_storm_active`: a storm going on now. `vcpu` is always there (`all` for a storm
/// spread over the VM's vCPUs), `what` the storm's key as reports name it, `diagnosis` the id
/// of the knowledge base's rule (empty when none applies).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StormLabels {
    pub vm: String,
    pub vcpu: String,
    pub what: String,
    pub diagnosis: String,
}

impl EncodeLabelSet for StormLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        ("vm", self.vm.as_str()).encode(e.encode_label())?;
        ("vcpu", self.vcpu.as_str()).encode(e.encode_label())?;
        ("what", self.what.as_str()).encode(e.encode_label())?;
        ("diagnosis", self.diagnosis.as_str()).encode(e.encode_label())
    }
}

/// Exits and their in-kernel latency: vendor (VMX, SVM) and exit reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitLabels {
    pub vm: VmLabels,
    pub isa: &'static str,
    pub reason: String,
}

impl EncodeLabelSet for ExitLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        self.vm.encode(e)?;
        ("isa", self.isa).encode(e.encode_label())?;
        ("reason", self.reason.as_str()).encode(e.encode_label())
    }
}

/// Userspace exits and their VMM round trips: the KVM_EXIT_* reason (`IO`, `MMIO`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonLabels {
    pub vm: VmLabels,
    pub reason: String,
}

impl EncodeLabelSet for ReasonLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        self.vm.encode(e)?;
        ("reason", self.reason.as_str()).encode(e.encode_label())
    }
}

/// A detail key as labels: `kind` port / mmio / msr / cpuid, `key` the port, guest physical
/// address, MSR or CPUID function (or `other`), `access` in/out, read/write (access sizes
/// merged; none for CPUID and "other").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Detail {
    pub kind: &'static str,
    pub key: String,
    pub access: Option<&'static str>,
}

impl Detail {
    /// The labels of a kernel detail key; None for userspace exits (their own metric) and for
    /// "other keys" rows.
    pub fn of(k: &DetailKey) -> Option<Detail> {
        let (kind, key, access) = match k.decode()? {
            Decoded::Port { port, dir, .. } => ("port", format!("{port:#06x}"), Some(dir.as_str())),
            Decoded::Mmio { gpa, access, .. } => {
                ("mmio", format!("{gpa:#x}"), Some(access.as_str()))
            }
            Decoded::Msr { index, dir, .. } => ("msr", format!("{index:#x}"), Some(dir.as_str())),
            Decoded::Cpuid { function } => ("cpuid", format!("{function:#x}"), None),
            Decoded::UserspaceExit(_) | Decoded::Other(_) => return None,
        };
        Some(Detail { kind, key, access })
    }

    /// The series of a kind's events without a series of their own.
    pub fn other(kind: DetailKind) -> Detail {
        Detail {
            kind: kind_label(kind),
            key: "other".into(),
            access: None,
        }
    }
}

/// The `kind` label of a detail kind.
fn kind_label(kind: DetailKind) -> &'static str {
    match kind {
        DetailKind::Pio => "port",
        DetailKind::Mmio => "mmio",
        DetailKind::Msr => "msr",
        DetailKind::Cpuid => "cpuid",
        DetailKind::UserspaceExit => "userspace_exit",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DetailLabels {
    pub vm: VmLabels,
    pub detail: Detail,
}

impl EncodeLabelSet for DetailLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        self.vm.encode(e)?;
        ("kind", self.detail.kind).encode(e.encode_label())?;
        ("key", self.detail.key.as_str()).encode(e.encode_label())?;
        if let Some(access) = self.detail.access {
            ("access", access).encode(e.encode_label())?;
        }
        Ok(())
    }
}

/// Where vCPU thread time went: guest, exit_handling (in-kernel), kvm_run (both, where the host
/// gives no kvm_exit to split them), vmm, blocked, runnable_wait.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuLabels {
    pub vm: VmLabels,
    pub category: &'static str,
}

impl EncodeLabelSet for CpuLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result {
        self.vm.encode(e)?;
        ("category", self.category).encode(e.encode_label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: DetailKind, a: u32, b: u64) -> DetailKey {
        DetailKey {
            tgid: 1,
            tid: 2,
            kind: kind as u32,
            a,
            b,
        }
    }

    #[test]
    fn detail_keys_become_labels() {
        let d = |kind, a, b| Detail::of(&key(kind, a, b)).map(|d| (d.kind, d.key, d.access));
        // Port 0x70, out, 1 byte: b = write | size << 8.
        assert_eq!(
            d(DetailKind::Pio, 0x70, 1 | 1 << 8),
            Some(("port", "0x0070".into(), Some("out")))
        );
        assert_eq!(
            d(DetailKind::Mmio, 2 | 4 << 8, 0xd000_0000),
            Some(("mmio", "0xd0000000".into(), Some("write")))
        );
        assert_eq!(
            d(DetailKind::Msr, 0xc000_0102, 0),
            Some(("msr", "0xc0000102".into(), Some("read")))
        );
        assert_eq!(
            d(DetailKind::Cpuid, 0x4000_0000, 0),
            Some(("cpuid", "0x40000000".into(), None))
        );
        assert_eq!(d(DetailKind::UserspaceExit, 2, 0), None);
        assert_eq!(Detail::of(&DetailKey::other(1, 2, DetailKind::Pio)), None);
    }
}
