//! The report's "Slowest exits" (`record --than`): how many exits and VMM round trips reached
//! the threshold per (VM, reason), and the slowest ones one by one, with their time split, detail
//! event, guest RIP and decoded exit information.

use std::time::Duration;

use serde::Serialize;

use crate::{
    model::{
        Aggregate, decode_detail,
        identity::VcpuLabel,
        slow::{FlightExit, SlowExit, SlowKind},
    },
    names::detail_phrase,
    tp::{
        exit_info::{ExitInfo, decode},
        reasons::{exit_reason_name, userspace_exit_name},
    },
};

/// Slow exits listed one by one in the report (JSON); the text shows [`TEXT_ROWS`].
const ROWS: usize = 100;
pub const TEXT_ROWS: usize = 20;

#[derive(Clone, Debug, Serialize)]
pub struct SlowExits {
    pub threshold_ns: u64,
    /// Exits and round trips captured (each at least the threshold).
    pub captured: u64,
    /// Not captured: the kernel's ring buffer was full.
    pub lost: u64,
    /// Captured per (VM, kind, reason), most first.
    pub by_reason: Vec<SlowCount>,
    /// The slowest, slowest first (at most 100).
    pub slowest: Vec<SlowRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SlowCount {
    pub vm: String,
    pub pid: u32,
    pub kind: SlowKind,
    pub reason: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SlowRow {
    /// Seconds since the recording started.
    pub at_secs: f64,
    pub vm: String,
    pub pid: u32,
    pub vcpu: VcpuLabel,
    pub tid: u32,
    pub kind: SlowKind,
    pub reason: String,
    pub total_ns: u64,
    /// On CPU in the kernel (exits only).
    pub in_kernel_ns: u64,
    /// Off CPU: halted, waiting or preempted (an exit: outside the VMM part).
    pub off_cpu_ns: u64,
    pub vmm_ns: u64,
    /// The port, MMIO address or MSR of the exit, when a detail event came with it.
    pub detail: Option<String>,
    /// Exits only, where kvm_exit gives it: "0xffffffff81001234".
    pub guest_rip: Option<String>,
    /// The exit information decoded, where its reason has a layout.
    pub exit_info: Option<String>,
    pub info1: u64,
    pub info2: u64,
    /// `--flight N`: the vCPU's exits and round trips up to this one (it last), oldest first.
    pub history: Vec<HistoryRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    /// Its start relative to the slow one's start (0 or less; the slow exit itself is 0).
    pub offset_us: f64,
    pub kind: SlowKind,
    pub reason: String,
    pub total_ns: u64,
    pub detail: Option<String>,
}

/// None when the recording was made without `--than`.
pub fn build(
    agg: &Aggregate,
    vm_name: &dyn Fn(u32) -> String,
    vcpu: &dyn Fn(u32, u32) -> VcpuLabel,
) -> Option<SlowExits> {
    let profile = &agg.slow;
    let threshold_ns = profile.threshold_ns?;
    let mut by_reason: Vec<SlowCount> = profile
        .counts
        .iter()
        .map(|(&(pid, kind, isa, reason), &count)| SlowCount {
            vm: vm_name(pid),
            pid,
            kind,
            reason: reason_name(kind, isa, reason),
            count,
        })
        .collect();
    by_reason.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    let slowest = profile
        .slowest
        .iter()
        .take(ROWS)
        .map(|e| row(e, vm_name, vcpu))
        .collect();
    Some(SlowExits {
        threshold_ns,
        captured: profile.captured(),
        lost: profile.lost,
        by_reason,
        slowest,
    })
}

fn row(
    e: &SlowExit,
    vm_name: &dyn Fn(u32) -> String,
    vcpu: &dyn Fn(u32, u32) -> VcpuLabel,
) -> SlowRow {
    let is_exit = e.kind == SlowKind::Exit;
    SlowRow {
        at_secs: e.at.as_secs_f64(),
        vm: vm_name(e.tgid),
        pid: e.tgid,
        vcpu: vcpu(e.tgid, e.tid),
        tid: e.tid,
        kind: e.kind,
        reason: reason_name(e.kind, e.isa, e.reason),
        total_ns: e.total_ns,
        in_kernel_ns: e.in_kernel_on_cpu_ns(),
        off_cpu_ns: e.off_cpu_ns,
        vmm_ns: e.vmm_ns,
        detail: e.detail().map(|d| detail_phrase(&d)),
        guest_rip: (is_exit && e.guest_rip != 0).then(|| format!("{:#x}", e.guest_rip)),
        exit_info: if is_exit {
            decode(e.isa, e.reason, e.info1, e.info2).map(|i| exit_info_phrase(&i))
        } else {
            None
        },
        info1: e.info1,
        info2: e.info2,
        history: history_rows(&e.history, e.at, e.tgid, e.tid),
    }
}

/// A flight recorder's exits, each start relative to `at`.
fn history_rows(history: &[FlightExit], at: Duration, tgid: u32, tid: u32) -> Vec<HistoryRow> {
    history
        .iter()
        .map(|h| HistoryRow {
            offset_us: (h.at.as_nanos() as f64 - at.as_nanos() as f64) / 1e3,
            kind: h.kind,
            reason: reason_name(h.kind, h.isa, h.reason),
            total_ns: h.total_ns,
            detail: decode_detail(tgid, tid, h.detail).map(|d| detail_phrase(&d)),
        })
        .collect()
}

/// A vCPU's exits starting to come at the storm rate (`--flight`), with what led into it.
#[derive(Clone, Debug, Serialize)]
pub struct StormStartRow {
    /// The storm's first exit, seconds since the recording started.
    pub at_secs: f64,
    pub vm: String,
    pub pid: u32,
    pub vcpu: VcpuLabel,
    pub tid: u32,
    /// Oldest first, each start relative to the storm's first exit (before it: below 0).
    pub history: Vec<HistoryRow>,
}

/// The storm starts the flight recorder saw, in time order.
pub fn storm_starts(
    agg: &Aggregate,
    vm_name: &dyn Fn(u32) -> String,
    vcpu: &dyn Fn(u32, u32) -> VcpuLabel,
) -> Vec<StormStartRow> {
    agg.slow
        .storm_starts
        .iter()
        .map(|s| StormStartRow {
            at_secs: s.at.as_secs_f64(),
            vm: vm_name(s.tgid),
            pid: s.tgid,
            vcpu: vcpu(s.tgid, s.tid),
            tid: s.tid,
            history: history_rows(&s.history, s.at, s.tgid, s.tid),
        })
        .collect()
}

/// An exit's reason as the exit tables name it ("hlt", "EPT_VIOLATION"); a round trip's
/// userspace exit as "KVM_EXIT_IO".
fn reason_name(kind: SlowKind, isa: u32, reason: u32) -> String {
    match kind {
        SlowKind::Exit => exit_reason_name(isa, reason),
        SlowKind::VmmRoundTrip => format!("KVM_EXIT_{}", userspace_exit_name(reason)),
    }
}

/// "out 0x70, 1 byte", "in 0x1f0, 2 bytes, rep string", "gpa 0xfee00000 write",
/// "MSR write", "mov to cr3 from r12".
pub fn exit_info_phrase(info: &ExitInfo) -> String {
    match *info {
        ExitInfo::Io {
            port,
            size,
            dir,
            string,
            rep,
        } => {
            let mut s = format!(
                "{} {port:#x}, {size} byte{}",
                dir.as_str(),
                if size == 1 { "" } else { "s" }
            );
            if rep {
                s.push_str(", rep");
            }
            if string {
                s.push_str(", string");
            }
            s
        }
        ExitInfo::Npf { gpa, write, fetch } => {
            let access = if fetch {
                "fetch"
            } else if write {
                "write"
            } else {
                "read"
            };
            match gpa {
                Some(gpa) => format!("gpa {gpa:#x} {access}"),
                None => access.to_string(),
            }
        }
        ExitInfo::Msr { dir } => format!("MSR {}", dir.as_str()),
        ExitInfo::Cr { cr, write, gpr } => {
            let op = if write { "to" } else { "from" };
            match gpr {
                Some(r) => format!(
                    "mov {op} cr{cr} {} {}",
                    if write { "from" } else { "to" },
                    GPRS[r as usize & 15]
                ),
                None => format!("cr{cr} {}", if write { "write" } else { "read" }),
            }
        }
    }
}

const GPRS: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

#[cfg(test)]
mod tests {
    use kvmtrace_common::{MsrDir, PortDir};

    use super::*;

    #[test]
    fn exit_information_reads_as_a_phrase() {
        let io = ExitInfo::Io {
            port: 0x1f0,
            size: 2,
            dir: PortDir::In,
            string: true,
            rep: true,
        };
        assert_eq!(exit_info_phrase(&io), "in 0x1f0, 2 bytes, rep, string");
        let npf = ExitInfo::Npf {
            gpa: Some(0xfee0_0000),
            write: true,
            fetch: false,
        };
        assert_eq!(exit_info_phrase(&npf), "gpa 0xfee00000 write");
        assert_eq!(
            exit_info_phrase(&ExitInfo::Msr { dir: MsrDir::Write }),
            "MSR write"
        );
        let cr = ExitInfo::Cr {
            cr: 3,
            write: true,
            gpr: Some(12),
        };
        assert_eq!(exit_info_phrase(&cr), "mov to cr3 from r12");
    }

    #[test]
    fn svm_io_exit_decodes_from_its_exitinfo1() {
        // APM 15.10.2: port in bits 31:16, SZ8 bit 4, IN bit 0 clear = OUT.
        let info1 = 0x0070_0010;
        let info = decode(2, 0x7b, info1, 0).unwrap();
        assert_eq!(exit_info_phrase(&info), "out 0x70, 1 byte");
    }
}
