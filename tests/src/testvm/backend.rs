//! Which KVM this host has. kvm_pvm (a paravirtual KVM that needs no VMX/SVM) runs a guest in
//! hardware only after extra set-up; on VMX/SVM an ordinary long-mode guest runs natively.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// kvm_pvm: every page-table entry needs the User bit, the paravirtual "VIF" page must be
    /// registered before the first run, and CPUID is the synthetic `int $0x1a`.
    Pvm,
    /// kvm_intel / kvm_amd.
    Hardware,
}

impl Backend {
    pub fn detect() -> Backend {
        if Path::new("/sys/module/kvm_pvm").exists() {
            Backend::Pvm
        } else {
            Backend::Hardware
        }
    }
}

/// kvm_pvm's MSR holding the GPA of a vCPU's VIF page (| 1 = enable). Page layout: byte 0 virtual
/// IF, byte 1 pending, u64 CR2 at offset 8.
pub const MSR_PVM_VIF: u32 = 0x4b56_4d10;
