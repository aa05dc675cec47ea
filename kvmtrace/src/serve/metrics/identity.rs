//! VM identities. A VM's series carry its name (`vm`), never its pid: a VM restarted under the
//! same name (a new process, a new pid) takes over its identity, so its series and counters go
//! on, and `kvmtrace_vm_info{vm, pid, uuid}` says which process has the identity now. The rule,
//! applied at a process's first sight:
//!
//! - a name no identity has: a new identity;
//! - the name of an identity whose process ended (within the grace period, while its series
//!   are still there): the new process takes it over;
//! - the name of an identity whose process still runs (two live VMs with one name): the newcomer
//!   is `NAME (pid N)`, for as long as it lives (its series never change name).
//!
//! A VM without a name is `pid N`. Series of an identity whose process has been gone for the
//! grace period are removed, and so is every trace of its processes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{Exporter, Owned, Proc, VmState};
use crate::{model::identity::Vm, serve::labels::InfoLabels};

impl Exporter {
    /// The identity of process `pid`: bound at its first sight, by the rule above.
    pub(super) fn bind(&mut self, pid: u32, directory: &BTreeMap<u32, Vm>) -> String {
        if let Some(p) = self.procs.get(&pid) {
            return p.vm.clone();
        }
        let name = directory
            .get(&pid)
            .map_or_else(|| format!("pid {pid}"), |v| v.name.clone());
        let name = match self.vms.get(&name) {
            Some(v) if v.gone_since.is_none() && v.pid != pid => format!("{name} (pid {pid})"),
            _ => name,
        };
        let uuid = (self.uuid_of)(pid).unwrap_or_default();
        match self.vms.get_mut(&name) {
            // Ended, and now restarted under its name (or, for `NAME (pid N)`, an earlier
            // process with the same name and pid): the same identity, a new process.
            Some(v) => {
                let old = InfoLabels {
                    vm: name.clone(),
                    pid: v.pid,
                    uuid: std::mem::replace(&mut v.uuid, uuid),
                };
                v.pid = pid;
                v.gone_since = None;
                self.disown(&name, &Owned::Info(old));
            }
            None => {
                self.vms.insert(
                    name.clone(),
                    VmState {
                        pid,
                        uuid,
                        owned: HashSet::new(),
                        topk: BTreeMap::new(),
                        cpu: HashMap::new(),
                        vcpus: HashMap::new(),
                        gone_since: None,
                    },
                );
            }
        }
        self.procs.insert(
            pid,
            Proc {
                vm: name.clone(),
                gone_since: None,
            },
        );
        self.identity_gauges_of(&name);
        name
    }

    /// `vm_running` and `vm_info` of every identity (created again if the series cap refused
    /// them before).
    pub(super) fn identity_gauges(&mut self) {
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            self.identity_gauges_of(&name);
        }
    }

    fn identity_gauges_of(&mut self, name: &str) {
        let Some(v) = self.vms.get(name) else { return };
        let running = v.gone_since.is_none();
        let info = InfoLabels {
            vm: name.to_string(),
            pid: v.pid,
            uuid: v.uuid.clone(),
        };
        let labels = Self::vm_labels(name, None);
        if self.ensure(name, Owned::Running(labels.clone())) {
            self.f.vm_running.get_or_create(&labels).set(running as i64);
        }
        if self.ensure(name, Owned::Info(info.clone())) {
            self.f.vm_info.get_or_create(&info).set(1);
        }
    }

    /// The processes the exporter counts events of (to ask whether they still run).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Notes whether process `pid` still runs; an identity whose process ended starts its grace
    /// period.
    pub fn set_running(&mut self, pid: u32, running: bool, now: Instant) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        match (running, p.gone_since) {
            (false, None) => p.gone_since = Some(now),
            (true, Some(_)) => p.gone_since = None,
            _ => return,
        }
        let (vm, gone_since) = (p.vm.clone(), p.gone_since);
        if let Some(v) = self.vms.get_mut(&vm)
            && v.pid == pid
        {
            v.gone_since = gone_since;
            if let Some(g) = self.f.vm_running.get(&Self::vm_labels(&vm, None)) {
                g.set(running as i64);
            }
        }
        self.gauges();
    }

    /// Process `pid` ended and its pid now belongs to another process: its events no longer
    /// count under its identity, which (if the process had it) starts its grace period.
    pub fn forget(&mut self, pid: u32, now: Instant) {
        self.set_running(pid, false, now);
        if let Some(p) = self.procs.remove(&pid) {
            self.drop_threads(&p.vm, pid);
        }
    }

    /// Removes every series of the identities whose process has been gone for at least
    /// `grace`, and the processes gone that long; returns the pids of those processes.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Vec<u32> {
        let old = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) >= grace);
        let gone: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, v)| old(v.gone_since))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.remove_vm(name);
        }
        let pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| old(p.gone_since) || !self.vms.contains_key(&p.vm))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in &pids {
            if let Some(p) = self.procs.remove(pid) {
                self.drop_threads(&p.vm, *pid);
            }
        }
        if !gone.is_empty() {
            self.storms.retain(|s| self.vms.contains_key(&s.vm));
        }
        self.gauges();
        pids
    }

    /// Removes every series of identity `vm` now.
    fn remove_vm(&mut self, vm: &str) {
        if let Some(v) = self.vms.remove(vm) {
            for o in &v.owned {
                o.remove_from(&self.f);
                self.series -= o.cost();
            }
        }
    }

    /// Forgets the threads of process `pid` (gone) in identity `vm`, and its storms.
    fn drop_threads(&mut self, vm: &str, pid: u32) {
        self.storm_watch.forget(pid);
        if let Some(v) = self.vms.get_mut(vm) {
            v.cpu.retain(|&(p, _), _| p != pid);
            v.vcpus.retain(|&(p, _), _| p != pid);
        }
    }
}
