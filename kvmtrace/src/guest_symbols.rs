//! `--guest-symbols NAME=FILE`: names for the guest RIPs of VM NAME, from a file copied out of
//! the guest: its kernel's System.map or /proc/kallsyms ("address type name" lines), or an ELF
//! binary with symbols (a vmlinux, a firmware or unikernel image). Read with blazesym.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::{
    error::Error,
    report::{Report, guest_code::GuestCode},
};

/// One `--guest-symbols` argument.
#[derive(Clone, Debug)]
pub struct GuestSymbols {
    /// A VM name or pid, as in `-d`.
    pub vm: String,
    pub file: PathBuf,
}

/// clap's parser for `NAME=FILE`.
pub fn parse(s: &str) -> Result<GuestSymbols, String> {
    match s.split_once('=') {
        Some((vm, file)) if !vm.is_empty() && !file.is_empty() => Ok(GuestSymbols {
            vm: vm.to_string(),
            file: PathBuf::from(file),
        }),
        _ => Err(format!(
            "{s:?} is not NAME=FILE: give the VM's name (or pid) and the guest's System.map, kallsyms or ELF, e.g. vm01=/tmp/vm01.System.map"
        )),
    }
}

/// Names the report's guest RIPs; an error when there are symbol files but no guest RIPs.
pub fn name_rips(report: &mut Report, all: &[GuestSymbols], what: &str) -> Result<(), Error> {
    if all.is_empty() {
        return Ok(());
    }
    let Some(code) = &mut report.guest_code else {
        return Err(Error::Usage(format!(
            "{what} has no guest RIPs for --guest-symbols: record with `kvmtrace record --guest-rips`"
        )));
    };
    apply(code, all)
}

/// Fails early (before a recording starts) on a symbol file that cannot be read.
pub fn check_readable(all: &[GuestSymbols]) -> Result<(), Error> {
    all.iter().try_for_each(|gs| source(&gs.file).map(drop))
}

/// Names the RIPs of every VM that has a symbol file.
pub fn apply(code: &mut GuestCode, all: &[GuestSymbols]) -> Result<(), Error> {
    let symbolizer = Symbolizer::new();
    for gs in all {
        let source = source(&gs.file)?;
        let pids: Vec<u32> = code
            .groups
            .iter()
            .filter(|g| g.vm == gs.vm || g.pid.to_string() == gs.vm)
            .map(|g| g.pid)
            .collect();
        if pids.is_empty() {
            let mut found: Vec<String> = code.groups.iter().map(|g| g.vm.clone()).collect();
            found.sort();
            found.dedup();
            return Err(Error::Usage(format!(
                "--guest-symbols {}: no guest RIPs of a VM named {:?} (VMs with guest RIPs: {}); give one of those names or its pid",
                gs.vm,
                gs.vm,
                if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                }
            )));
        }
        let of_vm = |pid: u32| pids.contains(&pid);
        let mut addrs: Vec<u64> = code
            .groups
            .iter()
            .filter(|g| of_vm(g.pid))
            .flat_map(|g| &g.top)
            .chain(
                code.by_vcpu
                    .iter()
                    .filter(|g| of_vm(g.pid))
                    .flat_map(|g| &g.top),
            )
            .map(|r| r.address)
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let input = match source {
            Source::Elf(_) => Input::VirtOffset(addrs.as_slice()),
            _ => Input::AbsAddr(addrs.as_slice()),
        };
        let syms = symbolizer.symbolize(&source, input).map_err(|e| {
            Error::Usage(format!(
                "--guest-symbols {}: cannot read symbols from {}: {e}",
                gs.vm,
                gs.file.display()
            ))
        })?;
        let names: HashMap<u64, String> = addrs
            .iter()
            .zip(syms)
            .filter_map(|(&addr, sym)| match sym {
                Symbolized::Sym(s) => {
                    let name = crate::untrusted::escape(&s.name);
                    Some((
                        addr,
                        if s.offset == 0 {
                            name
                        } else {
                            format!("{name}+{:#x}", s.offset)
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        let rows = code
            .groups
            .iter_mut()
            .filter(|g| of_vm(g.pid))
            .flat_map(|g| &mut g.top)
            .chain(
                code.by_vcpu
                    .iter_mut()
                    .filter(|g| of_vm(g.pid))
                    .flat_map(|g| &mut g.top),
            );
        for row in rows {
            if let Some(name) = names.get(&row.address) {
                row.symbol = Some(name.clone());
            }
        }
    }
    Ok(())
}

/// An ELF file by its magic number, else a kallsyms-format text file.
fn source(file: &Path) -> Result<Source<'static>, Error> {
    let head = std::fs::read(file)
        .map(|b| b.get(..4).map(<[u8]>::to_vec).unwrap_or_default())
        .map_err(|e| {
            Error::Usage(format!(
                "--guest-symbols: cannot read {}: {e}",
                file.display()
            ))
        })?;
    Ok(if head == b"\x7fELF" {
        let mut elf = Elf::new(file);
        elf.debug_syms = false;
        Source::Elf(elf)
    } else {
        Source::Kernel(Kernel {
            kallsyms: blazesym::MaybeDefault::Some(file.to_path_buf()),
            vmlinux: blazesym::MaybeDefault::None,
            kaslr_offset: Some(0),
            debug_syms: false,
            ..Kernel::default()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_equals_file() {
        let gs = parse("vm01=/tmp/System.map").unwrap();
        assert_eq!(gs.vm, "vm01");
        assert_eq!(gs.file, PathBuf::from("/tmp/System.map"));
        assert!(parse("vm01").unwrap_err().contains("NAME=FILE"));
        assert!(parse("=x").is_err());
    }

    fn code(rips: &[u64]) -> GuestCode {
        use crate::report::guest_code::{GuestCodeGroup, GuestRipRow};
        GuestCode {
            exits: 0,
            lost: 0,
            unavailable: None,
            groups: vec![GuestCodeGroup {
                vm: "vm01".into(),
                pid: 42,
                reason: "io".into(),
                detail: None,
                exits: 0,
                top: rips
                    .iter()
                    .map(|&address| GuestRipRow {
                        rip: format!("{address:#x}"),
                        address,
                        symbol: None,
                        exits: 1,
                        share_pct: 0.0,
                    })
                    .collect(),
                other: 0,
            }],
            more_groups: 0,
            more_groups_exits: 0,
            by_vcpu: Vec::new(),
        }
    }

    /// A guest's System.map (the test VMM's own routines, at their lower-half addresses, and a
    /// kernel's): each RIP gets the symbol at or below it, with the offset into it.
    #[test]
    fn a_system_map_names_rips_with_offsets() {
        let map = std::env::temp_dir().join(format!("kvmtrace-sysmap-{}", std::process::id()));
        std::fs::write(
            &map,
            "0000400000006000 T kvmtrace_g_pio_out\n\
             000040000000600c T kvmtrace_g_pio_span\n\
             ffffffff81033f00 t rtc_cmos_read\n\
             ffffffff81033f80 T rtc_cmos_write\n",
        )
        .unwrap();
        let mut c = code(&[
            0x4000_0000_6003,
            0xffff_ffff_8103_3f1d,
            0xffff_ffff_8103_3f80,
        ]);
        let files = [GuestSymbols {
            vm: "42".into(),
            file: map.clone(),
        }];
        apply(&mut c, &files).unwrap();
        let names: Vec<Option<&str>> = c.groups[0]
            .top
            .iter()
            .map(|r| r.symbol.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                Some("kvmtrace_g_pio_out+0x3"),
                Some("rtc_cmos_read+0x1d"),
                Some("rtc_cmos_write")
            ]
        );
        let wrong = [GuestSymbols {
            vm: "vm02".into(),
            file: map.clone(),
        }];
        let err = apply(&mut c, &wrong).unwrap_err().to_string();
        assert!(err.contains("VMs with guest RIPs: vm01"), "{err}");
        let _ = std::fs::remove_file(&map);
        let missing = [GuestSymbols {
            vm: "vm01".into(),
            file: map,
        }];
        assert!(
            check_readable(&missing)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
