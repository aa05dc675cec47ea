//! "Hottest host paths per exit reason": the host stack samples (`record --stacks`) grouped by
//! VM, what the vCPU was doing and the exit reason it was handling, with the top paths of each.

use std::collections::HashMap;

use kvmtrace_common::stacks::{NO_REASON, SampleState};
use serde::Serialize;

use crate::{
    model::{
        Aggregate,
        identity::VcpuLabel,
        pct,
        stacks::{LOST_FRAME, SampleKey},
    },
    tp::{
        class::{ExitClass, exit_class},
        reasons::{exit_reason_name, userspace_exit_name},
    },
};

/// Paths shown per group.
pub const TOP_PATHS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct HostStacks {
    pub samples: u64,
    /// Samples the kernel could not count (its sample map was full).
    pub lost: u64,
    /// Samples counted without their frames (`[stack lost]`: the kernel's stack map was full,
    /// or the kernel could not walk the stack).
    pub frames_lost: u64,
    /// Most samples first.
    pub groups: Vec<PathGroup>,
    /// Every (VM, vCPU, reason, state, stack): the flamegraph's input.
    #[serde(skip)]
    pub all: Vec<StackRow>,
}

/// The samples of one VM in one state and reason.
#[derive(Clone, Debug, Serialize)]
pub struct PathGroup {
    pub pid: u32,
    pub vm: String,
    pub state: &'static str,
    /// The exit reason being handled (in the VMM: the userspace exit, else the exit); "-" for
    /// none.
    pub reason: String,
    pub samples: u64,
    /// Of all samples.
    pub share_pct: f64,
    pub top: Vec<HostPath>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostPath {
    pub samples: u64,
    /// Of its group's samples.
    pub share_pct: f64,
    /// Root first: the VMM's frames, then the kernel's.
    pub frames: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct StackRow {
    pub pid: u32,
    pub vm: String,
    pub vcpu: VcpuLabel,
    pub reason: String,
    pub state: &'static str,
    pub frames: Vec<String>,
    pub samples: u64,
}

/// None when the recording has no samples.
pub fn build(
    agg: &Aggregate,
    vm_name: &dyn Fn(u32) -> String,
    vcpu: &dyn Fn(u32, u32) -> VcpuLabel,
) -> Option<HostStacks> {
    let profile = &agg.stacks;
    let total = profile.total();
    if total == 0 && profile.lost == 0 {
        return None;
    }
    let frames = |stack: u32| -> Vec<String> {
        profile
            .stacks
            .get(stack as usize)
            .map(|s| s.frames().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let frames_lost: u64 = profile
        .samples
        .iter()
        .filter(|(k, _)| {
            profile
                .stacks
                .get(k.stack as usize)
                .is_some_and(|s| s.frames().any(|f| f == LOST_FRAME))
        })
        .map(|(_, n)| n)
        .sum();
    let mut groups: HashMap<(u32, &'static str, String), HashMap<u32, u64>> = HashMap::new();
    let mut all = Vec::new();
    for (k, &n) in &profile.samples {
        let no_frames = profile
            .stacks
            .get(k.stack as usize)
            .is_none_or(|s| s.kernel.is_empty() && s.user.is_empty());
        let (state, reason) = describe(k, no_frames);
        let stacks = groups.entry((k.tgid, state, reason.clone())).or_default();
        *stacks.entry(k.stack).or_default() += n;
        all.push(StackRow {
            pid: k.tgid,
            vm: vm_name(k.tgid),
            vcpu: vcpu(k.tgid, k.tid),
            reason,
            state,
            frames: frames(k.stack),
            samples: n,
        });
    }
    let mut groups: Vec<PathGroup> = groups
        .into_iter()
        .map(|((pid, state, reason), stacks)| {
            let samples: u64 = stacks.values().sum();
            let mut top: Vec<(u32, u64)> = stacks.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(TOP_PATHS);
            PathGroup {
                pid,
                vm: vm_name(pid),
                state,
                reason,
                samples,
                share_pct: pct(samples, total),
                top: top
                    .into_iter()
                    .map(|(stack, n)| HostPath {
                        samples: n,
                        share_pct: pct(n, samples),
                        frames: frames(stack),
                    })
                    .collect(),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        (b.samples, a.pid, a.state, &a.reason).cmp(&(a.samples, b.pid, b.state, &b.reason))
    });
    Some(HostStacks {
        samples: total,
        lost: profile.lost,
        frames_lost,
        groups,
        all,
    })
}

/// (state, reason) in words. A vCPU in the kernel on a HLT exit is halted (polling before it
/// blocks), not handling. Inside KVM_RUN, a sample with no host frame at all (neither kernel
/// nor VMM) interrupted the guest itself: on VMX/SVM the interrupt that made the exit is
/// handled with perf's guest state set, which empties both stack walks (kvm_exit for it has
/// fired already, so the thread looks in the kernel); kvm_pvm runs guests in hardware user
/// mode, where the walks find nothing of the host's. In the VMM, the reason is the userspace
/// exit it handles (`IO`, `MMIO`) where there is one, the same on every host.
fn describe(k: &SampleKey, no_frames: bool) -> (&'static str, String) {
    let exit = (k.reason != NO_REASON).then(|| exit_reason_name(k.isa, k.reason));
    let uexit = (k.uexit_reason != NO_REASON).then(|| userspace_exit_name(k.uexit_reason));
    match SampleState::from_u32(k.state) {
        Some(SampleState::Guest | SampleState::InRun | SampleState::Exit) if no_frames => {
            ("guest", "-".into())
        }
        Some(SampleState::Guest) => ("guest", "-".into()),
        Some(SampleState::InRun) => ("kvm_run", "-".into()),
        Some(SampleState::Exit) if exit_class(k.isa, k.reason) == ExitClass::Halt => {
            ("halted", exit.unwrap_or_else(|| "-".into()))
        }
        Some(SampleState::Exit) => ("in-kernel", exit.unwrap_or_else(|| "-".into())),
        Some(SampleState::Vmm) => ("vmm", uexit.or(exit).unwrap_or_else(|| "-".into())),
        None => ("unknown", "-".into()),
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::stacks::SampleState;

    use super::*;
    use crate::model::stacks::{HostStack, StackBatch};

    fn key(
        tid: u32,
        state: SampleState,
        isa: u32,
        reason: u32,
        uexit: u32,
        stack: u32,
    ) -> SampleKey {
        SampleKey {
            tgid: 10,
            tid,
            vcpu_id: 0,
            state: state as u32,
            isa,
            reason,
            uexit_reason: uexit,
            stack,
        }
    }

    #[test]
    fn groups_by_state_and_reason_with_top_paths() {
        let stack = |leaf: &str| HostStack {
            kernel: vec!["kvm_vcpu_ioctl".into(), leaf.into()],
            user: vec!["main".into()],
        };
        let mut agg = Aggregate::default();
        agg.stacks.apply(&StackBatch {
            new_stacks: vec![
                stack("svm_handle_exit"),
                stack("kvm_vcpu_halt"),
                stack("io_path"),
                HostStack::default(),
            ],
            samples: vec![
                // SVM io (0x7b) in the kernel: two paths.
                (key(11, SampleState::Exit, 2, 0x7b, NO_REASON, 2), 30),
                (key(11, SampleState::Exit, 2, 0x7b, NO_REASON, 0), 10),
                (key(12, SampleState::Exit, 2, 0x7b, NO_REASON, 2), 20),
                // SVM hlt (0x78): halted.
                (key(11, SampleState::Exit, 2, 0x78, NO_REASON, 1), 25),
                // VMM handling KVM_EXIT_IO (2) with no exit tracing.
                (key(12, SampleState::Vmm, NO_REASON, NO_REASON, 2, 0), 10),
                // Inside KVM_RUN, exits not traced: no host frame at all is the guest.
                (
                    key(12, SampleState::InRun, NO_REASON, NO_REASON, NO_REASON, 3),
                    5,
                ),
            ],
            lost: 1,
        });
        let hs = build(&agg, &|p| format!("vm{p}"), &|_, t| VcpuLabel::Tid(t)).unwrap();
        assert_eq!((hs.samples, hs.lost, hs.all.len()), (100, 1, 6));
        assert_eq!(hs.frames_lost, 0);
        let g: Vec<(&str, &str, u64)> = hs
            .groups
            .iter()
            .map(|g| (g.state, g.reason.as_str(), g.samples))
            .collect();
        assert_eq!(
            g,
            [
                ("in-kernel", "io", 60),
                ("halted", "hlt", 25),
                ("vmm", "IO", 10),
                ("guest", "-", 5)
            ]
        );
        let io = &hs.groups[0];
        assert_eq!(io.share_pct, 60.0);
        assert_eq!(io.top.len(), 2);
        assert_eq!(
            (io.top[0].samples, io.top[0].frames.last().unwrap().as_str()),
            (50, "io_path")
        );
        assert_eq!(io.top[0].frames[0], "main");
    }

    #[test]
    fn no_samples_no_section() {
        assert!(
            build(&Aggregate::default(), &|p| p.to_string(), &|_, t| {
                VcpuLabel::Tid(t)
            })
            .is_none()
        );
    }
}
