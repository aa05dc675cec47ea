//! The field offsets the eBPF programs read, taken from this kernel's format files and checked
//! against the sizes the programs assume.

use kvmtrace_common::{Config, FIELD_ABSENT};

use super::format::Format;
use crate::error::Error;

/// How the programs read a field.
struct Want {
    event: &'static str,
    field: &'static str,
    size: u32,
    required: bool,
    set: fn(&mut Config, u32),
}

const WANTS: &[Want] = &[
    Want {
        event: "kvm_exit",
        field: "exit_reason",
        size: 4,
        required: true,
        set: |c, o| c.exit_reason = o,
    },
    Want {
        event: "kvm_exit",
        field: "isa",
        size: 4,
        required: false,
        set: |c, o| c.exit_isa = o,
    },
    Want {
        event: "kvm_exit",
        field: "vcpu_id",
        size: 4,
        required: false,
        set: |c, o| c.exit_vcpu_id = o,
    },
    Want {
        event: "kvm_exit",
        field: "guest_rip",
        size: 8,
        required: false,
        set: |c, o| c.exit_rip = o,
    },
    Want {
        event: "kvm_exit",
        field: "info1",
        size: 8,
        required: false,
        set: |c, o| c.exit_info1 = o,
    },
    Want {
        event: "kvm_exit",
        field: "info2",
        size: 8,
        required: false,
        set: |c, o| c.exit_info2 = o,
    },
    Want {
        event: "kvm_entry",
        field: "vcpu_id",
        size: 4,
        required: false,
        set: |c, o| c.entry_vcpu_id = o,
    },
    Want {
        event: "kvm_pio",
        field: "rw",
        size: 4,
        required: true,
        set: |c, o| c.pio_rw = o,
    },
    Want {
        event: "kvm_pio",
        field: "port",
        size: 4,
        required: true,
        set: |c, o| c.pio_port = o,
    },
    Want {
        event: "kvm_pio",
        field: "size",
        size: 4,
        required: true,
        set: |c, o| c.pio_size = o,
    },
    Want {
        event: "kvm_mmio",
        field: "type",
        size: 4,
        required: true,
        set: |c, o| c.mmio_type = o,
    },
    Want {
        event: "kvm_mmio",
        field: "len",
        size: 4,
        required: true,
        set: |c, o| c.mmio_len = o,
    },
    Want {
        event: "kvm_mmio",
        field: "gpa",
        size: 8,
        required: true,
        set: |c, o| c.mmio_gpa = o,
    },
    Want {
        event: "kvm_msr",
        field: "write",
        size: 4,
        required: true,
        set: |c, o| c.msr_write = o,
    },
    Want {
        event: "kvm_msr",
        field: "ecx",
        size: 4,
        required: true,
        set: |c, o| c.msr_ecx = o,
    },
    Want {
        event: "kvm_msr",
        field: "exception",
        size: 1,
        required: false,
        set: |c, o| c.msr_exception = o,
    },
    Want {
        event: "kvm_cpuid",
        field: "function",
        size: 4,
        required: true,
        set: |c, o| c.cpuid_function = o,
    },
    Want {
        event: "kvm_userspace_exit",
        field: "reason",
        size: 4,
        required: true,
        set: |c, o| c.uexit_reason = o,
    },
    Want {
        event: "kvm_userspace_exit",
        field: "errno",
        size: 4,
        required: true,
        set: |c, o| c.uexit_errno = o,
    },
    Want {
        event: "kvm_fpu",
        field: "load",
        size: 4,
        required: true,
        set: |c, o| c.fpu_load = o,
    },
    Want {
        event: "sched_switch",
        field: "prev_pid",
        size: 4,
        required: true,
        set: |c, o| c.sched_prev_pid = o,
    },
    Want {
        event: "sched_switch",
        field: "prev_state",
        size: 8,
        required: true,
        set: |c, o| c.sched_prev_state = o,
    },
    Want {
        event: "sched_switch",
        field: "next_pid",
        size: 4,
        required: true,
        set: |c, o| c.sched_next_pid = o,
    },
];

/// Fills `cfg`'s offsets from the formats of the tracepoints that exist (`formats`). Tracepoints
/// missing from `formats` keep FIELD_ABSENT (their programs are not attached); a present
/// tracepoint missing a required field, or with a field of another size, is an error.
pub fn fill(cfg: &mut Config, formats: &[Format]) -> Result<(), Error> {
    for want in WANTS {
        let Some(format) = formats.iter().find(|f| f.name == want.event) else {
            continue;
        };
        match format.field(want.field) {
            Some(field) if field.size == want.size => (want.set)(cfg, field.offset),
            Some(field) => {
                return Err(Error::FieldLayout {
                    event: want.event,
                    field: want.field,
                    why: format!("size {} where {} was expected", field.size, want.size),
                });
            }
            None if want.required => {
                return Err(Error::FieldLayout {
                    event: want.event,
                    field: want.field,
                    why: "missing".into(),
                });
            }
            None => (want.set)(cfg, FIELD_ABSENT),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tp::format::parse;

    fn load(dir: &str, names: &[&str]) -> Vec<Format> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/formats");
        names
            .iter()
            .map(|n| {
                let path = format!("{root}/{dir}/{n}.format");
                parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
            })
            .collect()
    }

    const EVENTS: [&str; 9] = [
        "kvm_exit",
        "kvm_entry",
        "kvm_pio",
        "kvm_mmio",
        "kvm_msr",
        "kvm_cpuid",
        "kvm_userspace_exit",
        "kvm_fpu",
        "sched_switch",
    ];

    /// Each kernel's real format files (the nested rig checks they are what its L1 prints).
    #[test]
    fn offsets_of_every_kernel_tested() {
        for kernel in ["5.10", "6.1", "6.12", "6.18"] {
            let mut cfg = Config::UNSET;
            fill(&mut cfg, &load(kernel, &EVENTS)).unwrap();
            // Every tested kernel has the usual offsets (Debian's 5.10.223 backports kvm_exit's
            // vcpu_id), so the programs' direct loads apply on each.
            assert_eq!(cfg, kvmtrace_common::USUAL_OFFSETS, "kernel {kernel}");
        }
    }

    #[test]
    fn only_the_loaded_formats_are_filled() {
        let mut cfg = Config::UNSET;
        fill(&mut cfg, &load("6.1", &["kvm_exit", "kvm_entry"])).unwrap();
        assert_eq!(
            (cfg.exit_reason, cfg.exit_isa, cfg.exit_vcpu_id),
            (8, 24, 56)
        );
        assert_eq!(cfg.entry_vcpu_id, 8);
        // Not loaded: stays absent.
        assert_eq!(cfg.pio_port, FIELD_ABSENT);
    }

    #[test]
    fn a_resized_field_is_an_error() {
        let mut formats = load("6.18", &["kvm_mmio"]);
        formats[0]
            .fields
            .iter_mut()
            .find(|f| f.name == "gpa")
            .unwrap()
            .size = 4;
        let mut cfg = Config::UNSET;
        let err = fill(&mut cfg, &formats).unwrap_err().to_string();
        assert!(
            err.contains("kvm_mmio") && err.contains("gpa") && err.contains("size 4"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_optional_field_reads_as_absent() {
        let mut formats = load("6.18", &["kvm_exit"]);
        formats[0].fields.retain(|f| f.name != "isa");
        let mut cfg = Config::UNSET;
        fill(&mut cfg, &formats).unwrap();
        assert_eq!(cfg.exit_isa, FIELD_ABSENT);
        assert_eq!(cfg.exit_reason, 8);
    }
}
