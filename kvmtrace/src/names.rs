//! Names of well-known I/O ports and MSRs, so a report says "RTC index" rather than 0x70, and
//! the words for a decoded detail key.

use kvmtrace_common::{Detail, DetailKind, UserspaceExit};

use crate::tp::reasons::{userspace_exit_label, userspace_exit_name};

/// (first port, last port, name)
const PORTS: &[(u16, u16, &str)] = &[
    (0x20, 0x21, "PIC master"),
    (0x40, 0x43, "PIT (i8254)"),
    (0x60, 0x60, "i8042 data"),
    (0x61, 0x61, "PC speaker / NMI status"),
    (0x64, 0x64, "i8042 status"),
    (0x70, 0x70, "RTC index"),
    (0x71, 0x71, "RTC data"),
    (0x80, 0x80, "POST / IO delay"),
    (0xa0, 0xa1, "PIC slave"),
    (0x2f8, 0x2ff, "COM2 serial"),
    (0x3f8, 0x3ff, "COM1 serial"),
    (0x402, 0x402, "QEMU debugcon"),
    (0x510, 0x511, "QEMU fw_cfg"),
    (0x600, 0x603, "ACPI PM1 event"),
    (0x604, 0x605, "ACPI PM1 control"),
    (0x608, 0x60b, "ACPI PM timer"),
    (0xb000, 0xb003, "ACPI PM1 event"),
    (0xb004, 0xb005, "ACPI PM1 control"),
    (0xb008, 0xb00b, "ACPI PM timer"),
    (0xcf8, 0xcfb, "PCI config address"),
    (0xcfc, 0xcff, "PCI config data"),
];

const MSRS: &[(u32, &str)] = &[
    (0x10, "IA32_TIME_STAMP_COUNTER"),
    (0x1b, "IA32_APIC_BASE"),
    (0x3a, "IA32_FEATURE_CONTROL"),
    (0x48, "IA32_SPEC_CTRL"),
    (0x49, "IA32_PRED_CMD"),
    (0xe7, "IA32_MPERF"),
    (0xe8, "IA32_APERF"),
    (0x10b, "IA32_FLUSH_CMD"),
    (0x6e0, "IA32_TSC_DEADLINE"),
    (0x802, "x2APIC ID"),
    (0x808, "x2APIC TPR"),
    (0x80b, "x2APIC EOI"),
    (0x830, "x2APIC ICR"),
    (0x832, "x2APIC LVT timer"),
    (0x838, "x2APIC timer initial count"),
    (0x839, "x2APIC timer current count"),
    (0x83f, "x2APIC self IPI"),
    (0xc000_0080, "EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0100, "FS_BASE"),
    (0xc000_0101, "GS_BASE"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"),
    (0x4b56_4d00, "KVM wall clock"),
    (0x4b56_4d01, "KVM system time (kvmclock)"),
    (0x4b56_4d02, "KVM async PF"),
    (0x4b56_4d03, "KVM steal time"),
    (0x4b56_4d04, "KVM PV EOI"),
    (0x4b56_4d05, "KVM poll control"),
];

pub fn port_name(port: u16) -> Option<&'static str> {
    PORTS
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
        .map(|(_, _, n)| *n)
}

pub fn msr_name(msr: u32) -> Option<&'static str> {
    MSRS.iter().find(|(m, _)| *m == msr).map(|(_, n)| *n)
}

/// `0x0070 RTC index`, or `0x1234` for a port without a name.
pub fn port_label(port: u16) -> String {
    match port_name(port) {
        Some(n) => format!("{port:#06x} {n}"),
        None => format!("{port:#06x}"),
    }
}

/// `0x6e0 IA32_TSC_DEADLINE`, or `0x1` for an MSR without a name.
pub fn msr_label(msr: u32) -> String {
    match msr_name(msr) {
        Some(n) => format!("{msr:#x} {n}"),
        None => format!("{msr:#x}"),
    }
}

/// A detail key as a phrase (storms, `top`): "port 0x0070 (RTC index) out", "MMIO 0xd0000000
/// write", "MSR 0x6e0 (IA32_TSC_DEADLINE) write", "CPUID 0x40000000", "KVM_EXIT_IO",
/// "other ports (many distinct keys)".
pub fn detail_phrase(d: &Detail) -> String {
    let named = |name: Option<&str>| name.map(|n| format!(" ({n})")).unwrap_or_default();
    match *d {
        Detail::Port { port, dir, .. } => {
            format!(
                "port {port:#06x}{} {}",
                named(port_name(port)),
                dir.as_str()
            )
        }
        Detail::Mmio { gpa, access, .. } => format!("MMIO {gpa:#x} {}", access.as_str()),
        Detail::Msr { index, dir, .. } => {
            format!("MSR {index:#x}{} {}", named(msr_name(index)), dir.as_str())
        }
        Detail::Cpuid { function } => format!("CPUID {function:#x}"),
        Detail::UserspaceExit(UserspaceExit::Reason(code)) => {
            format!("KVM_EXIT_{}", userspace_exit_name(code))
        }
        Detail::UserspaceExit(_) => "KVM_RUN error/restart".into(),
        Detail::Other(kind) => format!("other {} (many distinct keys)", detail_kind_name(kind)),
    }
}

/// A detail key as a flamegraph frame or diff key: "port 0x0070 RTC index out", "gpa 0xd0000000
/// write", "msr 0x6e0 IA32_TSC_DEADLINE write", "cpuid 0x0", "KVM_EXIT_IO", "other ports".
pub fn detail_frame(d: &Detail) -> String {
    match *d {
        Detail::Port { port, dir, .. } => format!("port {} {}", port_label(port), dir.as_str()),
        Detail::Mmio { gpa, access, .. } => format!("gpa {gpa:#x} {}", access.as_str()),
        Detail::Msr { index, dir, .. } => format!("msr {} {}", msr_label(index), dir.as_str()),
        Detail::Cpuid { function } => format!("cpuid {function:#x}"),
        Detail::UserspaceExit(exit) => userspace_exit_label(exit),
        Detail::Other(kind) => format!("other {}", detail_kind_name(kind)),
    }
}

/// What the keys of a detail kind are, for the "other keys" rows.
pub fn detail_kind_name(kind: DetailKind) -> &'static str {
    match kind {
        DetailKind::Pio => "ports",
        DetailKind::Mmio => "MMIO addresses",
        DetailKind::Msr => "MSRs",
        DetailKind::Cpuid => "CPUID functions",
        DetailKind::UserspaceExit => "userspace exit reasons",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(port_name(0x70), Some("RTC index"));
        assert_eq!(port_name(0x42), Some("PIT (i8254)"));
        assert_eq!(port_name(0x3fd), Some("COM1 serial"));
        assert_eq!(port_name(0x1234), None);
        assert_eq!(msr_name(0x6e0), Some("IA32_TSC_DEADLINE"));
        assert_eq!(msr_name(0x830), Some("x2APIC ICR"));
        assert_eq!(msr_name(0x1), None);
        assert_eq!(port_label(0x70), "0x0070 RTC index");
        assert_eq!(port_label(0x1234), "0x1234");
        assert_eq!(msr_label(0x6e0), "0x6e0 IA32_TSC_DEADLINE");
        assert_eq!(msr_label(0x1), "0x1");
    }
}
