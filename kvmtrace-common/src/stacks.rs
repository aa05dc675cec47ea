//! Host stack sampling (`record --stacks`): a cpu-clock perf event on every CPU runs
//! `kvmtrace_stack_sample`, which counts the samples that hit traced vCPU threads under a
//! [`StackKey`]: the thread, what it was doing ([`SampleState`], the exit reason it was handling)
//! and the hashes of its kernel and user stacks, whose frames are in the epoch's STACK_FRAMES map.

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

/// [`StackKey::kernel_stack`] / [`StackKey::user_stack`] when the sample has no such stack (a
/// sample in user space has no kernel stack).
pub const NO_STACK: u64 = 0;
/// ... when the stack's frames could not be kept (STACK_FRAMES full, or the kernel could not
/// walk it): the sample is counted, its frames are "[stack lost]".
pub const LOST_STACK: u64 = 1;

/// The key of the sample counts. A stack is named by a 64-bit hash of its frames (never
/// [`NO_STACK`] or [`LOST_STACK`]); STACK_FRAMES maps the hash to the frames. The program
/// hashes the stacks itself rather than use a BPF_MAP_TYPE_STACK_TRACE: that map has one slot
/// per hash bucket and drops a new stack whose bucket another holds, which a VMM busy in a loop
/// (a new leaf address per sample) hit for 3 % of its samples.
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
    pub pad: u32,
    pub kernel_stack: u64,
    pub user_stack: u64,
}

/// Frames kept per stack (the kernel's PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_DEPTH: usize = 127;

/// A stack's instruction pointers, leaf first: the value of STACK_FRAMES, and the per-CPU
/// scratch the sampler walks a stack into.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackFrames {
    /// How many of `ips` are the stack's.
    pub len: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl StackFrames {
    /// The stack's name in [`StackKey`]: a 64-bit hash of its frames (distinct stacks of one
    /// interval collide with odds of about n²/2⁶⁵). Shared by the sampler and the tests.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0x6a09_e667_f3bc_c908 ^ self.len;
        let mut i = 0;
        while i < MAX_STACK_DEPTH {
            if i as u64 >= self.len {
                break;
            }
            h = (h ^ self.ips[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
            i += 1;
        }
        if h <= LOST_STACK { h + 2 } else { h }
    }
}
