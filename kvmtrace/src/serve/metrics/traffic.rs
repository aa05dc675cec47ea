//! Each interval's exits and their in-kernel latency, VMM round trips and userspace exits, and
//! detail keys through each VM's top K (the rest in the kind's "other" series).

use std::collections::{BTreeMap, HashMap};

use kvmtrace_common::{DetailKey, DetailKind, LatencyKey, LatencyKind, VCPU_UNKNOWN};

use super::{Exporter, Owned};
use crate::{
    model::Interval,
    model::identity::Vm,
    serve::{
        labels::{Detail, DetailLabels, ExitLabels, ReasonLabels, VmLabels},
        topk::TopK,
    },
    tp::{
        class::{ExitClass, exit_class},
        reasons::{exit_reason_name, isa_name, userspace_exit_label, userspace_exit_name},
    },
};

impl Exporter {
    /// Exits (count and latency) and VMM round trips; returns each thread's (pid, tid) exit
    /// handling time, for the CPU split.
    pub(super) fn latency(
        &mut self,
        iv: &Interval,
        directory: &BTreeMap<u32, Vm>,
    ) -> HashMap<(u32, u32), u64> {
        let mut handling: HashMap<(u32, u32), u64> = HashMap::new();
        for (k, d) in &iv.latency {
            let id = self.bind(k.tgid, directory);
            // A halt's exit->entry time is a blocked vCPU, not handling (as the CPU table).
            if k.kind == LatencyKind::Exit as u32 && exit_class(k.isa, k.reason) != ExitClass::Halt
            {
                *handling.entry((k.tgid, k.tid)).or_default() += d.total_ns;
            }
            let vcpu = self.vcpu_label(&id, k.tgid, k.tid, k.vcpu_id, directory);
            let vm = Self::vm_labels(&id, vcpu);
            if k.kind == LatencyKind::Exit as u32 {
                let l = ExitLabels {
                    vm,
                    isa: isa_name(k.isa),
                    reason: exit_reason_name(k.isa, k.reason),
                };
                if self.ensure(&id, Owned::Exits(l.clone())) {
                    self.f.exits.get_or_create(&l).inc_by(d.count);
                }
                if self.ensure(&id, Owned::ExitLatency(l.clone())) {
                    self.f
                        .exit_latency
                        .get_or_create(&l)
                        .add(&d.buckets, d.total_ns);
                }
            } else if k.kind == LatencyKind::VmmRoundTrip as u32 {
                let l = ReasonLabels {
                    vm,
                    reason: userspace_exit_name(k.reason),
                };
                if self.ensure(&id, Owned::RoundTrip(l.clone())) {
                    self.f
                        .round_trip
                        .get_or_create(&l)
                        .add(&d.buckets, d.total_ns);
                }
            }
        }
        handling
    }

    /// Exits whose thread ended before their kvm_entry: counted, never timed.
    pub(super) fn ended_exits(
        &mut self,
        ended: &BTreeMap<LatencyKey, u64>,
        directory: &BTreeMap<u32, Vm>,
    ) {
        for (k, &n) in ended {
            let id = self.bind(k.tgid, directory);
            let vcpu = self.vcpu_label(&id, k.tgid, k.tid, k.vcpu_id, directory);
            let l = ExitLabels {
                vm: Self::vm_labels(&id, vcpu),
                isa: isa_name(k.isa),
                reason: exit_reason_name(k.isa, k.reason),
            };
            if self.ensure(&id, Owned::Exits(l.clone())) {
                self.f.exits.get_or_create(&l).inc_by(n);
            }
        }
    }

    /// Userspace exits per reason, and detail keys through each VM's top K.
    pub(super) fn details(&mut self, iv: &Interval, directory: &BTreeMap<u32, Vm>) {
        // (identity, vCPU label, kind)
        type Group = (String, Option<String>, DetailKind);
        let mut keyed: BTreeMap<Group, BTreeMap<Detail, u64>> = BTreeMap::new();
        let mut unkeyed: BTreeMap<Group, u64> = BTreeMap::new();
        // Summed per series' thread first (the VM's, without --per-vcpu): each distinct key
        // is then labelled once, where labels per thread and key (strings made, compared and
        // dropped) were most of serve's CPU with 200 vCPU threads of 50 ports each.
        let per_vcpu = self.settings.per_vcpu;
        let mut summed: foldhash::HashMap<DetailKey, u64> = Default::default();
        for &(k, n) in &iv.details {
            let tid = if per_vcpu { k.tid } else { 0 };
            *summed.entry(DetailKey { tid, ..k }).or_default() += n;
        }
        for (k, n) in summed {
            let Some(kind) = DetailKind::from_u32(k.kind) else {
                continue;
            };
            let id = self.bind(k.tgid, directory);
            let vcpu = self.vcpu_label(&id, k.tgid, k.tid, VCPU_UNKNOWN, directory);
            if kind == DetailKind::UserspaceExit {
                let reason = match k.decode() {
                    Some(kvmtrace_common::Detail::UserspaceExit(exit)) => {
                        userspace_exit_label(exit)
                    }
                    _ => "other".into(),
                };
                let l = ReasonLabels {
                    vm: Self::vm_labels(&id, vcpu),
                    reason,
                };
                if self.ensure(&id, Owned::UserspaceExits(l.clone())) {
                    self.f.userspace_exits.get_or_create(&l).inc_by(n);
                }
                continue;
            }
            let group = (id, vcpu, kind);
            match Detail::of(&k) {
                Some(d) => *keyed.entry(group).or_default().entry(d).or_default() += n,
                None => *unkeyed.entry(group).or_default() += n,
            }
        }
        // Every top K every interval (also without events: rates decay).
        let mut groups: Vec<Group> = self
            .vms
            .iter()
            .flat_map(|(id, v)| v.topk.keys().map(move |(c, k)| (id.clone(), c.clone(), *k)))
            .collect();
        groups.extend(keyed.keys().cloned());
        groups.sort();
        groups.dedup();
        let empty = BTreeMap::new();
        for group in groups {
            let (id, vcpu, kind) = group.clone();
            let top_keys = self.settings.top_keys;
            let Some(vm) = self.vms.get_mut(&id) else {
                continue;
            };
            let topk = vm
                .topk
                .entry((vcpu.clone(), kind))
                .or_insert_with(|| TopK::new(top_keys));
            let a = topk.assign(keyed.get(&group).unwrap_or(&empty));
            let vm_labels = Self::vm_labels(&id, vcpu);
            for d in a.evicted {
                let o = Owned::Detail(DetailLabels {
                    vm: vm_labels.clone(),
                    detail: d,
                });
                self.disown(&id, &o);
            }
            for (d, n) in a.keyed {
                self.count_detail(&vm_labels, d, n);
            }
            let other = a.other + unkeyed.remove(&group).unwrap_or(0);
            if other > 0 {
                self.count_detail(&vm_labels, Detail::other(kind), other);
            }
        }
        // Events without a key of kinds that had no keyed events at all.
        for ((id, vcpu, kind), n) in unkeyed {
            let vm_labels = Self::vm_labels(&id, vcpu);
            self.count_detail(&vm_labels, Detail::other(kind), n);
        }
    }

    fn count_detail(&mut self, vm: &VmLabels, detail: Detail, n: u64) {
        let l = DetailLabels {
            vm: vm.clone(),
            detail,
        };
        if self.ensure(&vm.vm, Owned::Detail(l.clone())) {
            self.f.details.get_or_create(&l).inc_by(n);
        }
    }
}
