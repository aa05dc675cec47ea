//! What kind of work an exit reason is, by its uapi code (never by its display name): which
//! detail table explains it (ports for I/O, addresses for MMIO/NPF/EPT, MSRs, CPUID functions)
//! and whether its time is a halted vCPU rather than handling.

use kvmtrace_common::{DetailKind, MsrDir, UserspaceExit};

use super::reasons::{ISA_SVM, ISA_VMX, KVM_EXIT_REASONS, SVM_EXIT_REASONS, VMX_EXIT_REASONS, row};

/// The classes that have a detail table or a meaning of their own; everything else is Other.
/// Each row of the generated reason tables carries its class (`cargo xtask codegen`, from the
/// SDM's, the APM's and KVM's uapi codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitClass {
    Io,
    Mmio,
    Msr,
    Cpuid,
    Halt,
    Other,
}

impl ExitClass {
    /// Whether time spent in exits of this class is CPU time: a halted vCPU blocks until an
    /// interrupt, it does not burn a CPU.
    pub fn is_cpu_time(self) -> bool {
        self != ExitClass::Halt
    }

    /// The detail events that say what exits of this class touched (ports for I/O, ...); None
    /// for classes without a detail table.
    pub fn detail_kind(self) -> Option<DetailKind> {
        match self {
            ExitClass::Io => Some(DetailKind::Pio),
            ExitClass::Mmio => Some(DetailKind::Mmio),
            ExitClass::Msr => Some(DetailKind::Msr),
            ExitClass::Cpuid => Some(DetailKind::Cpuid),
            ExitClass::Halt | ExitClass::Other => None,
        }
    }
}

/// The class of kvm_exit's (isa, exit_reason). VMX flag bits above bit 15 are ignored; with isa
/// 0 (no `isa` field) VMX codes are tried first, as the names are.
pub fn exit_class(isa: u32, code: u32) -> ExitClass {
    let vmx = || row(VMX_EXIT_REASONS, code & 0xffff);
    let svm = || row(SVM_EXIT_REASONS, code);
    match isa {
        ISA_VMX => vmx(),
        ISA_SVM => svm(),
        _ => vmx().or_else(svm),
    }
    .map_or(ExitClass::Other, |r| r.2)
}

/// The direction of an MSR exit reason that has one: VMX's MSR_READ (0x1f) and MSR_WRITE (0x20);
/// SVM's msr exit covers both.
pub fn exit_msr_dir(isa: u32, code: u32) -> Option<MsrDir> {
    match (isa, code & 0xffff) {
        (ISA_VMX | 0, 0x1f) => Some(MsrDir::Read),
        (ISA_VMX | 0, 0x20) => Some(MsrDir::Write),
        _ => None,
    }
}

/// The class of KVM_RUN returning to user space: its KVM_EXIT_* reason's (restarts and errors
/// are Other).
pub fn userspace_class(exit: UserspaceExit) -> ExitClass {
    match exit {
        UserspaceExit::Reason(code) => {
            row(KVM_EXIT_REASONS, code).map_or(ExitClass::Other, |r| r.2)
        }
        _ => ExitClass::Other,
    }
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
        // KVM_EXIT_* codes from linux/kvm.h.
        for (code, class) in [
            (2, ExitClass::Io),
            (5, ExitClass::Halt),
            (6, ExitClass::Mmio),
            (29, ExitClass::Msr),
            (30, ExitClass::Msr),
            (7, ExitClass::Other),
        ] {
            assert_eq!(
                userspace_class(UserspaceExit::Reason(code)),
                class,
                "KVM_EXIT {code}"
            );
        }
        assert_eq!(
            userspace_class(UserspaceExit::Restart { reason: 2 }),
            ExitClass::Other
        );
    }
}
