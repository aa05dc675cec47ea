//! Host stack samples (`record --stacks`): each stack is symbolized once, when first sampled,
//! and numbered in the order stacks first appear; samples refer to it by that number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The frame of a stack whose addresses the kernel could not keep.
pub const LOST_FRAME: &str = "[stack lost]";
/// The frame of an address no symbol covers.
pub const UNKNOWN_FRAME: &str = "[unknown]";

/// One host stack: the kernel's frames, then the VMM's user-space frames, each outermost
/// (root) first. Unknown addresses are `[unknown]`; a stack the kernel could not keep is
/// `[stack lost]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostStack {
    pub kernel: Vec<String>,
    pub user: Vec<String>,
}

impl HostStack {
    /// Every frame, root first: the VMM's (outermost) frames, then the kernel's.
    pub fn frames(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.user.iter().chain(&self.kernel).map(String::as_str)
    }
}

/// What samples are counted under: the thread, what it was doing
/// ([`kvmtrace_common::stacks::SampleState`] and the exit reasons, as in the kernel's key) and
/// the stack's number.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SampleKey {
    pub tgid: u32,
    pub tid: u32,
    pub vcpu_id: u32,
    pub state: u32,
    pub isa: u32,
    pub reason: u32,
    pub uexit_reason: u32,
    pub stack: u32,
}

/// One interval's samples: the stacks first seen in it (numbered on from the previous
/// intervals') and the counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StackBatch {
    pub new_stacks: Vec<HostStack>,
    pub samples: Vec<(SampleKey, u64)>,
    /// Samples of traced threads the kernel could not count (its sample map was full).
    pub lost: u64,
}

impl StackBatch {
    pub fn is_empty(&self) -> bool {
        self.new_stacks.is_empty() && self.samples.is_empty() && self.lost == 0
    }
}

/// Every stack and sample of a recording so far.
#[derive(Clone, Debug, Default)]
pub struct StackProfile {
    pub stacks: Vec<HostStack>,
    pub samples: BTreeMap<SampleKey, u64>,
    pub lost: u64,
}

impl StackProfile {
    /// Adds the stacks `batch` declares (its samples are numbered against them).
    pub fn declare(&mut self, batch: &StackBatch) {
        self.stacks.extend(batch.new_stacks.iter().cloned());
    }

    /// Declares `batch`'s stacks and counts its samples.
    pub fn apply(&mut self, batch: &StackBatch) {
        self.declare(batch);
        for (k, n) in &batch.samples {
            *self.samples.entry(*k).or_default() += n;
        }
        self.lost += batch.lost;
    }

    pub fn total(&self) -> u64 {
        self.samples.values().sum()
    }
}
