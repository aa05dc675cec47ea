//! What the hardware says about an exit beyond its reason: kvm_exit's `info1` and `info2` (VMX:
//! the exit qualification and the IDT-vectoring information; SVM: EXITINFO1 and EXITINFO2),
//! decoded into the I/O port, size, direction and string/rep of an I/O exit, the access bits (and
//! on SVM the GPA) of a nested page fault, the direction of an MSR exit, the register of a CR
//! access.
//!
//! The bit layouts are data ([`LAYOUTS`]), one row per (isa, reasons, info word), copied from the
//! manuals: Intel SDM vol. 3C, tables 28-3 (CR access), 28-5 (I/O instructions) and 28-7 (EPT
//! violations); AMD APM vol. 2, §15.10.2 figure 15-2 (IOIO), §15.25.6 (nested page faults: the
//! #PF error code in EXITINFO1, the GPA in EXITINFO2), §15.11 (MSR) and §15.8.1 (CR intercepts,
//! "decode assists"). The typed [`decode`] reads only what a row names, so a wrong bit is a wrong
//! row, caught by the tests below against encodings worked out from those tables.

use kvmtrace_common::{MsrDir, PortDir};

use super::reasons::{ISA_SVM, ISA_VMX};

/// A bit field of an info word.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub lo: u8,
    pub width: u8,
}

const fn f(name: &'static str, lo: u8, width: u8) -> Field {
    Field { name, lo, width }
}

/// The layout of info word `word` (1 or 2) for exit reasons `reasons` of `isa`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub isa: u32,
    pub reasons: (u32, u32),
    pub word: u8,
    pub fields: &'static [Field],
}

const VMX_CR_ACCESS: u32 = 28;
const VMX_IO: u32 = 30;
const VMX_MSR_READ: u32 = 31;
const VMX_MSR_WRITE: u32 = 32;
const VMX_EPT_VIOLATION: u32 = 48;
const SVM_CR_READ: (u32, u32) = (0x00, 0x0f);
const SVM_CR_WRITE: (u32, u32) = (0x10, 0x1f);
const SVM_IOIO: u32 = 0x7b;
const SVM_MSR: u32 = 0x7c;
const SVM_NPF: u32 = 0x400;

pub const LAYOUTS: &[Layout] = &[
    // SDM table 28-3: control-register accesses. access: 0 MOV to CR, 1 MOV from CR, 2 CLTS,
    // 3 LMSW.
    Layout {
        isa: ISA_VMX,
        reasons: (VMX_CR_ACCESS, VMX_CR_ACCESS),
        word: 1,
        fields: &[
            f("cr", 0, 4),
            f("access", 4, 2),
            f("lmsw_memory", 6, 1),
            f("gpr", 8, 4),
            f("lmsw_data", 16, 16),
        ],
    },
    // SDM table 28-5: I/O instructions.
    Layout {
        isa: ISA_VMX,
        reasons: (VMX_IO, VMX_IO),
        word: 1,
        fields: &[
            f("size_minus_1", 0, 3),
            f("in", 3, 1),
            f("string", 4, 1),
            f("rep", 5, 1),
            f("immediate", 6, 1),
            f("port", 16, 16),
        ],
    },
    // SDM table 28-7: EPT violations (the GPA is a VMCS field of its own, not in kvm_exit).
    Layout {
        isa: ISA_VMX,
        reasons: (VMX_EPT_VIOLATION, VMX_EPT_VIOLATION),
        word: 1,
        fields: &[
            f("read", 0, 1),
            f("write", 1, 1),
            f("fetch", 2, 1),
            f("readable", 3, 1),
            f("writable", 4, 1),
            f("executable", 5, 1),
            f("gla_valid", 7, 1),
            f("gla_translation", 8, 1),
        ],
    },
    // APM figure 15-2: IOIO intercept, EXITINFO1. SZ8/16/32 one-hot; A16/32/64 the address size.
    Layout {
        isa: ISA_SVM,
        reasons: (SVM_IOIO, SVM_IOIO),
        word: 1,
        fields: &[
            f("in", 0, 1),
            f("string", 2, 1),
            f("rep", 3, 1),
            f("sz8", 4, 1),
            f("sz16", 5, 1),
            f("sz32", 6, 1),
            f("a16", 7, 1),
            f("a32", 8, 1),
            f("a64", 9, 1),
            f("segment", 10, 3),
            f("port", 16, 16),
        ],
    },
    // APM §15.11: EXITINFO1 is 0 for RDMSR, 1 for WRMSR.
    Layout {
        isa: ISA_SVM,
        reasons: (SVM_MSR, SVM_MSR),
        word: 1,
        fields: &[f("write", 0, 1)],
    },
    // APM §15.25.6: nested page fault, EXITINFO1 = the #PF error code and two more bits.
    Layout {
        isa: ISA_SVM,
        reasons: (SVM_NPF, SVM_NPF),
        word: 1,
        fields: &[
            f("present", 0, 1),
            f("write", 1, 1),
            f("user", 2, 1),
            f("reserved_bit", 3, 1),
            f("fetch", 4, 1),
            f("final_gpa", 32, 1),
            f("page_table_walk", 33, 1),
        ],
    },
    // APM §15.25.6: EXITINFO2 is the faulting guest physical address.
    Layout {
        isa: ISA_SVM,
        reasons: (SVM_NPF, SVM_NPF),
        word: 2,
        fields: &[f("gpa", 0, 64)],
    },
    // APM §15.8.1 (decode assists): bit 63 set for MOV CRx, with the GPR in bits 3:0; clear for
    // CLTS, LMSW and the like.
    Layout {
        isa: ISA_SVM,
        reasons: (SVM_CR_READ.0, SVM_CR_WRITE.1),
        word: 1,
        fields: &[f("gpr", 0, 4), f("mov_cr", 63, 1)],
    },
];

/// VMX's failed-VM-entry flag: the qualification then describes the failed entry, not the reason.
const VMX_FAILED_ENTRY: u32 = 1 << 31;

/// The reason the layouts are keyed by: VMX's basic reason (bits 15:0; the flags above it, but
/// for a failed entry, leave the qualification as it is). None for a failed VM entry.
fn basic_reason(isa: u32, reason: u32) -> Option<u32> {
    match isa {
        ISA_VMX if reason & VMX_FAILED_ENTRY != 0 => None,
        ISA_VMX => Some(reason & 0xffff),
        _ => Some(reason),
    }
}

/// Every field the layouts name for this exit, with its value, in table order.
pub fn fields(isa: u32, reason: u32, info1: u64, info2: u64) -> Vec<(&'static str, u64)> {
    let Some(reason) = basic_reason(isa, reason) else {
        return Vec::new();
    };
    LAYOUTS
        .iter()
        .filter(|l| l.isa == isa && (l.reasons.0..=l.reasons.1).contains(&reason))
        .flat_map(|l| {
            let word = if l.word == 1 { info1 } else { info2 };
            l.fields.iter().map(move |fd| (fd.name, bits(word, fd)))
        })
        .collect()
}

fn bits(word: u64, fd: &Field) -> u64 {
    let v = word >> fd.lo;
    if fd.width >= 64 {
        v
    } else {
        v & ((1u64 << fd.width) - 1)
    }
}

/// An exit's information, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Io {
        port: u16,
        /// Bytes per access: 1, 2 or 4.
        size: u8,
        dir: PortDir,
        string: bool,
        rep: bool,
    },
    /// EPT violation or nested page fault. `gpa`: SVM's EXITINFO2 (VMX keeps it elsewhere).
    Npf {
        gpa: Option<u64>,
        write: bool,
        fetch: bool,
    },
    /// The index is in ECX, not in the exit information (kvm_msr has it).
    Msr { dir: MsrDir },
    Cr {
        cr: u8,
        write: bool,
        /// The general-purpose register of a MOV (0 = RAX ... 15 = R15); None for CLTS, LMSW.
        gpr: Option<u8>,
    },
}

/// The typed information of an exit, where its reason has a layout.
pub fn decode(isa: u32, reason: u32, info1: u64, info2: u64) -> Option<ExitInfo> {
    let all = fields(isa, reason, info1, info2);
    let get = |name: &str| all.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    let flag = |name: &str| get(name).is_some_and(|v| v != 0);
    let dir = |inbound: bool| if inbound { PortDir::In } else { PortDir::Out };
    Some(match (isa, basic_reason(isa, reason)?) {
        (ISA_VMX, VMX_IO) => ExitInfo::Io {
            port: get("port")? as u16,
            size: get("size_minus_1")? as u8 + 1,
            dir: dir(flag("in")),
            string: flag("string"),
            rep: flag("rep"),
        },
        (ISA_SVM, SVM_IOIO) => ExitInfo::Io {
            port: get("port")? as u16,
            size: if flag("sz32") {
                4
            } else if flag("sz16") {
                2
            } else {
                1
            },
            dir: dir(flag("in")),
            string: flag("string"),
            rep: flag("rep"),
        },
        (ISA_VMX, VMX_EPT_VIOLATION) => ExitInfo::Npf {
            gpa: None,
            write: flag("write"),
            fetch: flag("fetch"),
        },
        (ISA_SVM, SVM_NPF) => ExitInfo::Npf {
            gpa: get("gpa"),
            write: flag("write"),
            fetch: flag("fetch"),
        },
        (ISA_VMX, VMX_MSR_READ) => ExitInfo::Msr { dir: MsrDir::Read },
        (ISA_VMX, VMX_MSR_WRITE) => ExitInfo::Msr { dir: MsrDir::Write },
        (ISA_SVM, SVM_MSR) => ExitInfo::Msr {
            dir: if flag("write") {
                MsrDir::Write
            } else {
                MsrDir::Read
            },
        },
        (ISA_VMX, VMX_CR_ACCESS) => {
            let access = get("access")?;
            ExitInfo::Cr {
                cr: get("cr")? as u8,
                // MOV to CR, CLTS and LMSW all write; only MOV from CR reads.
                write: access != 1,
                gpr: (access <= 1).then(|| get("gpr").unwrap_or(0) as u8),
            }
        }
        (ISA_SVM, r) if (SVM_CR_READ.0..=SVM_CR_WRITE.1).contains(&r) => ExitInfo::Cr {
            cr: (r & 0xf) as u8,
            write: r >= SVM_CR_WRITE.0,
            gpr: flag("mov_cr").then(|| get("gpr").unwrap_or(0) as u8),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(port: u16, size: u8, dir: PortDir, string: bool, rep: bool) -> Option<ExitInfo> {
        Some(ExitInfo::Io {
            port,
            size,
            dir,
            string,
            rep,
        })
    }

    #[test]
    fn svm_ioio() {
        // `out 0x70, al`: SZ8 (bit 4), A64 (bit 9), port 0x70 in bits 31:16.
        assert_eq!(
            decode(ISA_SVM, SVM_IOIO, 0x0070_0210, 0),
            io(0x70, 1, PortDir::Out, false, false)
        );
        // `in eax, dx` with dx = 0xcfc: TYPE (bit 0) = in, SZ32 (bit 6).
        assert_eq!(
            decode(ISA_SVM, SVM_IOIO, 0x0cfc_0241, 0),
            io(0xcfc, 4, PortDir::In, false, false)
        );
        // `rep outsb` to 0x3f8: STR (bit 2), REP (bit 3), SZ8.
        assert_eq!(
            decode(ISA_SVM, SVM_IOIO, 0x03f8_021c, 0),
            io(0x3f8, 1, PortDir::Out, true, true)
        );
        // `in ax, dx`: SZ16 (bit 5).
        assert_eq!(
            decode(ISA_SVM, SVM_IOIO, 0x0061_0221, 0),
            io(0x61, 2, PortDir::In, false, false)
        );
    }

    #[test]
    fn vmx_io_qualification() {
        // `out 0x70, al`: size - 1 = 0, direction 0 (out), operand encoding 1 (immediate).
        assert_eq!(
            decode(ISA_VMX, VMX_IO, 0x0070_0040, 0),
            io(0x70, 1, PortDir::Out, false, false)
        );
        // `in ax, dx` (0xcfc): size - 1 = 1, direction 1 (in, bit 3).
        assert_eq!(
            decode(ISA_VMX, VMX_IO, 0x0cfc_0009, 0),
            io(0xcfc, 2, PortDir::In, false, false)
        );
        // `rep insd` from 0x1f0: size - 1 = 3, in, string (bit 4), REP (bit 5).
        assert_eq!(
            decode(ISA_VMX, VMX_IO, 0x01f0_003b, 0),
            io(0x1f0, 4, PortDir::In, true, true)
        );
    }

    #[test]
    fn nested_page_faults() {
        // SVM: a write by the guest kernel to an MMIO page (reserved bit set: KVM's MMIO SPTEs),
        // final GPA (bit 32); EXITINFO2 the GPA.
        assert_eq!(
            decode(ISA_SVM, SVM_NPF, 0x1_0000_000b, 0xfee0_0300),
            Some(ExitInfo::Npf {
                gpa: Some(0xfee0_0300),
                write: true,
                fetch: false
            })
        );
        // SVM: an instruction fetch from a page not present (ID, bit 4).
        assert_eq!(
            decode(ISA_SVM, SVM_NPF, 0x1_0000_0014, 0x10_0000),
            Some(ExitInfo::Npf {
                gpa: Some(0x10_0000),
                write: false,
                fetch: true
            })
        );
        // VMX: a write to a readable, not writable page, linear address valid and translated.
        let qual = 1 << 1 | 1 << 3 | 1 << 7 | 1 << 8;
        assert_eq!(
            decode(ISA_VMX, VMX_EPT_VIOLATION, qual, 0),
            Some(ExitInfo::Npf {
                gpa: None,
                write: true,
                fetch: false
            })
        );
        let named = fields(ISA_VMX, VMX_EPT_VIOLATION, qual, 0);
        assert!(named.contains(&("readable", 1)) && named.contains(&("writable", 0)));
    }

    #[test]
    fn msr_and_cr() {
        let msr = |dir| Some(ExitInfo::Msr { dir });
        assert_eq!(decode(ISA_SVM, SVM_MSR, 1, 0), msr(MsrDir::Write));
        assert_eq!(decode(ISA_SVM, SVM_MSR, 0, 0), msr(MsrDir::Read));
        assert_eq!(decode(ISA_VMX, VMX_MSR_READ, 0, 0), msr(MsrDir::Read));
        assert_eq!(decode(ISA_VMX, VMX_MSR_WRITE, 0, 0), msr(MsrDir::Write));
        // VMX `mov cr3, rax`: CR 3, access 0 (to CR), GPR 0.
        assert_eq!(
            decode(ISA_VMX, VMX_CR_ACCESS, 0x3, 0),
            Some(ExitInfo::Cr {
                cr: 3,
                write: true,
                gpr: Some(0)
            })
        );
        // VMX `mov rbx, cr8`: CR 8, access 1 (from CR), GPR 3 (RBX) in bits 11:8.
        assert_eq!(
            decode(ISA_VMX, VMX_CR_ACCESS, 0x318, 0),
            Some(ExitInfo::Cr {
                cr: 8,
                write: false,
                gpr: Some(3)
            })
        );
        // VMX `clts`: CR 0, access 2: a write with no register.
        assert_eq!(
            decode(ISA_VMX, VMX_CR_ACCESS, 0x20, 0),
            Some(ExitInfo::Cr {
                cr: 0,
                write: true,
                gpr: None
            })
        );
        // SVM write of CR0 (exit code 0x10) by `mov cr0, rdx` (GPR 2, bit 63 set).
        assert_eq!(
            decode(ISA_SVM, 0x10, 1 << 63 | 2, 0),
            Some(ExitInfo::Cr {
                cr: 0,
                write: true,
                gpr: Some(2)
            })
        );
        // SVM read of CR4 (exit code 0x04) without decode assists' bit 63: no register.
        assert_eq!(
            decode(ISA_SVM, 0x04, 0, 0),
            Some(ExitInfo::Cr {
                cr: 4,
                write: false,
                gpr: None
            })
        );
    }

    #[test]
    fn other_reasons_have_no_layout() {
        assert_eq!(decode(ISA_SVM, 0x72, 0x1234, 0x5678), None); // cpuid
        assert_eq!(decode(ISA_VMX, 12, 0, 0), None); // HLT
        assert!(fields(ISA_VMX, 10, u64::MAX, u64::MAX).is_empty());
        // A failed VM entry's qualification is about the entry, not an I/O instruction.
        assert_eq!(
            decode(ISA_VMX, VMX_IO | VMX_FAILED_ENTRY, 0x0070_0040, 0),
            None
        );
        // The other flags leave the qualification as it is (bit 27: exit from an enclave).
        assert_eq!(
            decode(ISA_VMX, VMX_IO | 1 << 27, 0x0070_0040, 0),
            io(0x70, 1, PortDir::Out, false, false)
        );
    }

    #[test]
    fn every_layout_fits_its_word() {
        for l in LAYOUTS {
            assert!(l.word == 1 || l.word == 2, "{l:?}");
            for fd in l.fields {
                assert!(
                    fd.width >= 1 && fd.lo as u32 + fd.width as u32 <= 64,
                    "{fd:?}"
                );
            }
        }
    }
}
