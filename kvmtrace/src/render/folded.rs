//! Folded stacks `VM;vCPU N;REASON;detail weight`, the input of flamegraphs.
//!
//! With kvm_exit data, each exit reason's frame is weighted by its host time (or count), and the
//! part of it that detail tracepoints explain is split over its ports / MMIO addresses / MSRs /
//! CPUID functions in proportion to their counts. Without it (kvm_pvm), userspace exits are
//! weighted by their VMM round trip, and in-kernel detail events (MSR, CPUID) by count only
//! (under --weight time they are left out, since their time is not measured).
//!
//! With `record --guest-rips`, each (vCPU, reason, detail) frame is split once more over the
//! guest code its exits came from (`guest rtc_cmos_read+0x1d`), in proportion to its exits
//! there: exact for --weight count; for time, each exit of the frame is taken to cost the same.

use std::collections::BTreeMap;

use kvmtrace_common::{Detail, MmioAccess, MsrDir};

use super::Weight;
use crate::{
    model::identity::VcpuLabel,
    names::detail_frame,
    report::{Report, VmReport},
    tp::class::{ExitClass, exit_msr_dir},
};

/// Frame-safe text: no `;` (frame separator), and no line breaks or other control characters
/// (names are escaped where they enter kvmtrace; escaping again is a no-op, and keeps a folded
/// line one line whatever a report was built from).
fn frame(s: &str) -> String {
    crate::untrusted::escape(&s.replace(';', ","))
}

fn vcpu_frame(v: &Option<VcpuLabel>) -> String {
    v.map_or_else(|| "all vCPUs".into(), VcpuLabel::named)
}

/// (detail label, count) rows of the table that explains exits of `class` on `vcpu`; `msr_dir`:
/// the direction of an exit reason that has one (VMX's MSR_READ / MSR_WRITE).
fn details(
    vm: &VmReport,
    class: ExitClass,
    vcpu: &Option<VcpuLabel>,
    msr_dir: Option<MsrDir>,
) -> Vec<(String, u64)> {
    let on = |v: &Option<VcpuLabel>| v == vcpu;
    let Some(kind) = class.detail_kind() else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = vm
        .key_rows()
        .filter(|r| on(&r.vcpu) && r.detail.kind() == kind)
        .filter(|r| match r.detail {
            // An unsatisfied read goes on to user space as a second, satisfied event.
            Detail::Mmio { access, .. } => access != MmioAccess::UnsatisfiedRead,
            Detail::Msr { dir, .. } => msr_dir.is_none_or(|want| want == dir),
            _ => true,
        })
        .map(|r| (detail_frame(&r.detail), r.count))
        .collect();
    // Events without a row of their own stay in the picture, as one "other" frame.
    out.extend(
        vm.other_keys
            .iter()
            .filter(|o| o.detail_kind == kind && on(&o.vcpu))
            .map(|o| (detail_frame(&Detail::Other(o.detail_kind)), o.count)),
    );
    out
}

/// Splits the part of `weight` (of `events` exits) that `parts` explain over them, in
/// proportion to their counts: with fewer detail events than exits (400 npf exits, 200 of them
/// MMIO), only that share goes to the keys. The rest, and the rounding remainder, stay with the
/// parent frame. Returns (label, weight) and the parent's own weight.
fn split(weight: u64, events: u64, parts: &[(String, u64)]) -> (Vec<(String, u64)>, u64) {
    let total: u64 = parts.iter().map(|(_, n)| n).sum::<u64>().max(events);
    if total == 0 {
        return (Vec::new(), weight);
    }
    let shares: Vec<(String, u64)> = parts
        .iter()
        .map(|(l, n)| {
            (
                l.clone(),
                (weight as u128 * *n as u128 / total as u128) as u64,
            )
        })
        .collect();
    let used: u64 = shares.iter().map(|(_, w)| w).sum();
    (shares, weight - used)
}

/// (VM, vCPU or None for all, isa, reason, detail frame or None).
type GuestCodeAt = (u32, Option<VcpuLabel>, u32, u32, Option<String>);

/// The guest code frames of every (VM, vCPU, reason, detail) with `--guest-rips`, and of every
/// (VM, reason, detail) over all vCPUs: (frame, exits), built once per report.
fn guest_code_frames(report: &Report) -> BTreeMap<GuestCodeAt, Vec<(String, u64)>> {
    let mut by: BTreeMap<GuestCodeAt, BTreeMap<String, u64>> = BTreeMap::new();
    for g in report.guest_code.iter().flat_map(|gc| &gc.by_vcpu) {
        let detail = g.detail.as_ref().map(detail_frame);
        for vcpu in [Some(g.vcpu), None] {
            let at = by
                .entry((g.pid, vcpu, g.isa, g.reason_code, detail.clone()))
                .or_default();
            for r in &g.top {
                *at.entry(r.frame()).or_default() += r.exits;
            }
            if g.other != 0 {
                *at.entry("guest, other RIPs".into()).or_default() += g.other;
            }
        }
    }
    by.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// `stack` with weight `w`, split over the guest code frames `code` below it.
fn with_guest_code<'a>(
    stack: &[&'a str],
    w: u64,
    code: &'a [(String, u64)],
) -> Vec<(Vec<&'a str>, u64)> {
    let events = code.iter().map(|(_, n)| n).sum();
    let (parts, own) = split(w, events, code);
    let mut out = vec![(stack.to_vec(), own)];
    for ((_, pw), (label, _)) in parts.into_iter().zip(code) {
        let mut s = stack.to_vec();
        s.push(label);
        out.push((s, pw));
    }
    out
}

/// `lines` with each weight multiplied by `factor` (rounded to the nearest unit).
pub fn scaled(lines: &[String], factor: f64) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let (stack, w) = l.rsplit_once(' ')?;
            let w = (w.parse::<u64>().ok()? as f64 * factor).round() as u64;
            Some(format!("{stack} {w}"))
        })
        .collect()
}

pub fn lines(report: &Report, weight: Weight) -> Vec<String> {
    if weight == Weight::Samples {
        return report
            .host_stacks
            .as_ref()
            .map(|hs| super::host_paths::folded(hs, frame))
            .unwrap_or_default();
    }
    let guest_code = guest_code_frames(report);
    let mut out = Vec::new();
    for vm in &report.vms {
        // The VM frame is its name, so recordings of the same VM compare (diff) even when its pid
        // changed; the pid is added only to tell apart two VMs of one name.
        let twins = report.vms.iter().filter(|v| v.name == vm.name).count();
        let vm_frame = frame(&if twins > 1 {
            format!("{} (pid {})", vm.name, vm.pid)
        } else {
            vm.name.clone()
        });
        let mut emit = |stack: &[&str], w: u64| {
            if w > 0 {
                out.push(format!(
                    "{vm_frame};{} {w}",
                    stack.iter().map(|s| frame(s)).collect::<Vec<_>>().join(";")
                ));
            }
        };
        if !vm.exits.is_empty() {
            for e in &vm.exits {
                let w = match weight {
                    Weight::Time => e.latency.total_ns,
                    Weight::Count | Weight::Samples => e.count,
                };
                let vcpu = vcpu_frame(&e.vcpu);
                let msr_dir = exit_msr_dir(e.isa_code, e.reason_code);
                let (parts, own) = split(w, e.count, &details(vm, e.class, &e.vcpu, msr_dir));
                let code = |detail: Option<&String>| {
                    let at = (vm.pid, e.vcpu, e.isa_code, e.reason_code, detail.cloned());
                    guest_code.get(&at).map_or(&[][..], Vec::as_slice)
                };
                for (stack, w) in with_guest_code(&[&vcpu, &e.reason], own, code(None)) {
                    emit(&stack, w);
                }
                for (label, pw) in &parts {
                    let stack = [vcpu.as_str(), &e.reason, label];
                    for (stack, w) in with_guest_code(&stack, *pw, code(Some(label))) {
                        emit(&stack, w);
                    }
                }
            }
            continue;
        }
        // No kvm_exit data: userspace exits (weighted by VMM time or count) and in-kernel
        // detail events (count only).
        for u in &vm.userspace_exits {
            let w = match (weight, &u.round_trip) {
                (Weight::Time, Some(l)) => l.total_ns,
                (Weight::Time, None) => 0,
                (Weight::Count | Weight::Samples, _) => u.count,
            };
            let vcpu = vcpu_frame(&u.vcpu);
            let reason = format!("VMM {}", u.reason);
            let (parts, own) = split(w, u.count, &details(vm, u.class, &u.vcpu, None));
            emit(&[&vcpu, &reason], own);
            for (label, pw) in parts {
                emit(&[&vcpu, &reason, &label], pw);
            }
        }
        if weight == Weight::Count {
            let mut vcpus: Vec<&Option<VcpuLabel>> = vm
                .msrs
                .iter()
                .map(|m| &m.vcpu)
                .chain(vm.cpuid.iter().map(|c| &c.vcpu))
                .collect();
            vcpus.sort();
            vcpus.dedup();
            for vcpu in vcpus {
                for (class, reason) in [(ExitClass::Msr, "msr"), (ExitClass::Cpuid, "cpuid")] {
                    for (label, n) in details(vm, class, vcpu, None) {
                        emit(&[&vcpu_frame(vcpu), reason, &label], n);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_proportional_and_loses_nothing() {
        let (parts, own) = split(1000, 3, &[("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(parts, vec![("a".into(), 333), ("b".into(), 666)]);
        assert_eq!(own, 1);
        assert_eq!(split(50, 7, &[]), (vec![], 50));
        // Half the exits explained: half the weight goes to the keys.
        let (parts, own) = split(1000, 6, &[("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(parts, vec![("a".into(), 166), ("b".into(), 333)]);
        assert_eq!(own, 501);
    }

    #[test]
    fn frames_never_contain_separators() {
        assert_eq!(frame("a;b"), "a,b");
        assert_eq!(frame("a\nb 7\u{1b}"), "a\\nb 7\\x1b");
        assert_eq!(vcpu_frame(&Some(VcpuLabel::Index(3))), "vCPU 3");
        assert_eq!(vcpu_frame(&Some(VcpuLabel::Tid(9))), "tid 9");
        assert_eq!(vcpu_frame(&None), "all vCPUs");
    }
}
