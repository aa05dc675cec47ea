//! `kvmtrace list` as a table: pid, name, vCPU threads.

use std::io;

use crate::model::identity::Vm;

pub fn render(vms: &[Vm], out: &mut impl io::Write) -> io::Result<()> {
    if vms.is_empty() {
        return writeln!(
            out,
            "No VMs (processes with a KVM VM file descriptor) on this host."
        );
    }
    writeln!(
        out,
        "{:>8}  {:<24}  {:>5}  vCPU threads",
        "PID", "NAME", "vCPUs"
    )?;
    for vm in vms {
        let vcpus: Vec<String> = vm
            .vcpu_threads()
            .map(|t| format!("{} ({})", t.tid, t.comm))
            .collect();
        writeln!(
            out,
            "{:>8}  {:<24}  {:>5}  {}",
            vm.pid,
            vm.name,
            vcpus.len(),
            vcpus.join(", ")
        )?;
    }
    Ok(())
}
