//! Host stack sampling (`record --stacks`): a cpu-clock perf event on every CPU runs
//! `kvmtrace_stack_sample`, which counts the samples that hit traced vCPU threads under a
//! [`StackKey`]: the thread, what it was doing ([`SampleState`], the exit reason it was handling)
//! and its kernel and user stack ids in the epoch's STACK_TRACES map.

/// What a vCPU thread was doing when a sample hit it, from its [`crate::ThreadState`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleState {
    /// Inside KVM_RUN with no exit open: running the guest (the sample interrupt itself is the
    /// exit that lets the host see it).
    Guest = 1,
    /// Inside KVM_RUN, between kvm_exit and kvm_entry: the kernel handling the exit reason (a
    /// halt-polling vCPU is here too, under the HLT reason).
    Exit = 2,
    /// Inside KVM_RUN where exits are not traced (kvm_exit does not fire, as on kvm_pvm): the
    /// guest or the kernel's handling, not told apart.
    InRun = 3,
    /// Outside KVM_RUN: the VMM (its user space and its syscalls), handling the userspace exit
    /// in [`StackKey::uexit_reason`] when one is open.
    Vmm = 4,
}

impl SampleState {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Guest),
            2 => Some(Self::Exit),
            3 => Some(Self::InRun),
            4 => Some(Self::Vmm),
            _ => None,
        }
    }
}

/// [`StackKey::reason`] / [`StackKey::uexit_reason`] when there is none.
pub const NO_REASON: u32 = u32::MAX;

/// The key of the sample counts. A stack id below 0 is the kernel's error for that stack:
/// -EFAULT when there is none (a sample in user space has no kernel stack), -EEXIST when its
/// STACK_TRACES slot holds another stack of the same interval (the sample is kept, its frames
/// are not).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    pub tid: u32,
    pub vcpu_id: u32,
    /// A [`SampleState`].
    pub state: u32,
    /// The open exit's isa and reason (states Exit and Vmm), else [`NO_REASON`].
    pub isa: u32,
    pub reason: u32,
    /// The open userspace exit's reason (state Vmm), else [`NO_REASON`].
    pub uexit_reason: u32,
    pub kernel_stack: i32,
    pub user_stack: i32,
    pub pad: u32,
}

/// Frames kept per stack in STACK_TRACES (the kernel's PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_DEPTH: usize = 127;
