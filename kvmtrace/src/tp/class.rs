//! What kind of work an exit reason is, by its uapi code (never by its display name): which
//! detail table explains it (ports for I/O, addresses for MMIO/NPF/EPT, MSRs, CPUID functions)
//! and whether its time is a halted vCPU rather than handling.

use super::reasons::{ISA_SVM, ISA_VMX};

/// The classes that have a detail table or a meaning of their own; everything else is Other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitClass {
    Io,
    Mmio,
    Msr,
    Cpuid,
    Halt,
    Other,
}

/// (VMX basic reason, SVM exit code, class), from the SDM's and APM's tables as the kernel's
/// uapi headers (vmx.h, svm.h) number them.
const CLASSES: &[(Option<u32>, Option<u32>, ExitClass)] = &[
    (Some(0x1e), Some(0x7b), ExitClass::Io), // IO_INSTRUCTION / io
    (Some(0x30), Some(0x400), ExitClass::Mmio), // EPT_VIOLATION / npf
    (Some(0x31), None, ExitClass::Mmio),     // EPT_MISCONFIG (MMIO SPTEs)
    (Some(0x1f), Some(0x7c), ExitClass::Msr), // MSR_READ / msr (both directions)
    (Some(0x20), None, ExitClass::Msr),      // MSR_WRITE
    (Some(0x0a), Some(0x72), ExitClass::Cpuid), // CPUID / cpuid
    (Some(0x0c), Some(0x78), ExitClass::Halt), // HLT / hlt
    (None, Some(0xa6), ExitClass::Halt),     // idle-halt
];

/// The class of kvm_exit's (isa, exit_reason). VMX flag bits above bit 15 are ignored; with isa
/// 0 (no `isa` field) VMX codes are tried first, as the names are.
pub fn exit_class(isa: u32, code: u32) -> ExitClass {
    let vmx = || {
        CLASSES
            .iter()
            .find(|(v, _, _)| *v == Some(code & 0xffff))
            .map(|c| c.2)
    };
    let svm = || {
        CLASSES
            .iter()
            .find(|(_, s, _)| *s == Some(code))
            .map(|c| c.2)
    };
    match isa {
        ISA_VMX => vmx(),
        ISA_SVM => svm(),
        _ => vmx().or_else(svm),
    }
    .unwrap_or(ExitClass::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tp::reasons::exit_reason_name;

    #[test]
    fn classes_match_the_generated_names() {
        for (isa, code, class) in [
            (ISA_VMX, 0x1e, ExitClass::Io),
            (ISA_VMX, 0x31, ExitClass::Mmio),
            (ISA_VMX, 0x20, ExitClass::Msr),
            (ISA_VMX, 0x0a, ExitClass::Cpuid),
            (ISA_VMX, 0x0c, ExitClass::Halt),
            (ISA_VMX, 0x8000_001e, ExitClass::Io),
            (ISA_SVM, 0x7b, ExitClass::Io),
            (ISA_SVM, 0x400, ExitClass::Mmio),
            (ISA_SVM, 0x7c, ExitClass::Msr),
            (ISA_SVM, 0x72, ExitClass::Cpuid),
            (ISA_SVM, 0x78, ExitClass::Halt),
            (ISA_SVM, 0xa6, ExitClass::Halt),
            (ISA_SVM, 0x1e, ExitClass::Other),
        ] {
            assert_eq!(
                exit_class(isa, code),
                class,
                "{}",
                exit_reason_name(isa, code)
            );
        }
        // The names the table's comments claim, from the generated tables.
        assert_eq!(exit_reason_name(ISA_VMX, 0x1e), "IO_INSTRUCTION");
        assert_eq!(exit_reason_name(ISA_SVM, 0x400), "npf");
        assert_eq!(exit_reason_name(ISA_SVM, 0xa6), "idle-halt");
        assert_eq!(exit_class(0, 0x0c), ExitClass::Halt);
    }
}
