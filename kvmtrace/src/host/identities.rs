//! Who the traced threads are, as tracing goes: the vCPU threads running when it starts, and the
//! VMs and threads that show up in each interval (named while they are still alive).

use std::collections::BTreeMap;

use super::{
    Host,
    thread_probe::{AtStart, probe},
};
use crate::model::{
    Interval,
    identity::{Thread, Vm, vcpu_index_of_comm},
};

/// The vCPU threads of the selected VMs as they are now: those inside KVM_RUN, and those named
/// as vCPUs (`CPU N/KVM`) wherever they are. Other threads of a VM get state at their first event.
pub fn running_vcpu_threads(host: &Host, vms: &BTreeMap<u32, Vm>) -> Vec<(u32, u32, AtStart)> {
    let mut out = Vec::new();
    for vm in vms.values() {
        for t in &vm.threads {
            let Some(at) = probe(&host.proc_root, vm.pid, t.tid) else {
                continue;
            };
            if at == AtStart::BlockedInRun || vcpu_index_of_comm(&t.comm).is_some() {
                out.push((vm.pid, t.tid, at));
            }
        }
    }
    out
}

/// Names for VMs and threads first seen in this interval (while they are still alive); returns
/// the pids whose identity changed.
pub fn learn_identities(host: &Host, directory: &mut BTreeMap<u32, Vm>, iv: &Interval) -> Vec<u32> {
    // Each (VM, thread) once: an interval has many keys per thread, and a VM's thread list is
    // searched linearly below (with 10 000 keys per interval that search was 4 % of `record`).
    let mut tids: Vec<(u32, u32)> = iv
        .latency
        .iter()
        .map(|(k, _)| (k.tgid, k.tid))
        .chain(iv.details.iter().map(|(k, _)| (k.tgid, k.tid)))
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let seen: Vec<SeenThread> = tids
        .into_iter()
        .map(|(tgid, tid)| SeenThread {
            tgid,
            tid,
            comm: None,
        })
        .collect();
    learn_threads(host, directory, &seen)
}

/// A VM's thread as the kernel first saw it, with its name then when the kernel gave it (what
/// names it if it is gone before /proc is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenThread {
    pub tgid: u32,
    pub tid: u32,
    pub comm: Option<String>,
}

/// Names for the VMs and threads of `threads` not in `directory` yet, read from /proc now;
/// returns the pids whose identity changed.
pub fn learn_threads(
    host: &Host,
    directory: &mut BTreeMap<u32, Vm>,
    threads: &[SeenThread],
) -> Vec<u32> {
    let mut changed = Vec::new();
    for seen in threads {
        let (tgid, tid) = (seen.tgid, seen.tid);
        let named_then = || Thread {
            tid,
            comm: seen.comm.clone().unwrap_or_default(),
        };
        match directory.get_mut(&tgid) {
            Some(vm) if vm.threads.iter().any(|t| t.tid == tid) => {}
            Some(vm) => {
                for t in host.threads(tgid) {
                    if !vm.threads.iter().any(|k| k.tid == t.tid) {
                        vm.threads.push(t);
                    }
                }
                // Gone already: the name the kernel saw, else an empty one (so /proc is not
                // scanned again for it).
                if !vm.threads.iter().any(|t| t.tid == tid) {
                    vm.threads.push(named_then());
                }
                changed.push(tgid);
            }
            None => {
                if let Some(mut vm) = host.vm(tgid) {
                    if seen.comm.is_some() && !vm.threads.iter().any(|t| t.tid == tid) {
                        vm.threads.push(named_then());
                    }
                    directory.insert(tgid, vm);
                    changed.push(tgid);
                }
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vm::tests::Fake;

    fn seen(tgid: u32, tid: u32, comm: Option<&str>) -> SeenThread {
        SeenThread {
            tgid,
            tid,
            comm: comm.map(String::from),
        }
    }

    fn thread_names(vm: &Vm) -> Vec<(u32, &str)> {
        vm.threads
            .iter()
            .map(|t| (t.tid, t.comm.as_str()))
            .collect()
    }

    /// A VM read from /proc as its thread is first seen; a thread already gone from /proc keeps
    /// the name the kernel saw; a VM already gone is not made up.
    #[test]
    fn new_threads_are_named_from_proc_else_from_the_kernel() {
        let f = Fake::new();
        let argv = ["qemu-system-x86_64", "-name", "guest=brief"];
        f.process(
            100,
            "qemu-system-x86",
            &argv,
            true,
            &[(100, "qemu-system-x86")],
        );
        let host = f.host();
        let mut directory = BTreeMap::new();
        let changed = learn_threads(
            &host,
            &mut directory,
            &[seen(100, 101, Some("CPU 0/KVM")), seen(300, 301, Some("x"))],
        );
        assert_eq!(changed, [100]);
        let vm = &directory[&100];
        assert_eq!(vm.name, "brief");
        assert_eq!(
            thread_names(vm),
            [(100, "qemu-system-x86"), (101, "CPU 0/KVM")]
        );
        // Known threads change nothing; a second gone thread of a known VM is added.
        assert!(learn_threads(&host, &mut directory, &[seen(100, 101, None)]).is_empty());
        assert_eq!(
            learn_threads(&host, &mut directory, &[seen(100, 102, Some("CPU 1/KVM"))]),
            [100]
        );
        assert_eq!(thread_names(&directory[&100])[2], (102, "CPU 1/KVM"));
        assert!(!directory.contains_key(&300));
    }
}
