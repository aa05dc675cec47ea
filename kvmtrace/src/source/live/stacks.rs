//! `record --stacks`: a cpu-clock perf event per CPU runs the sampling program; at each drain
//! the closed epoch's samples and stacks are read and deleted, and stacks not seen before are
//! symbolized: kernel frames from /proc/kallsyms (modules included), the VMM's frames from its
//! binaries' ELF symbols (frame-pointer unwinding, done by the kernel). The frames of an epoch's
//! stacks are in its STACK_FRAMES map under their hash (the map is emptied at each drain, so it
//! holds one interval's stacks, however long the recording); symbols are cached by the stack's
//! addresses.

use std::collections::HashMap;

use aya::{
    Ebpf,
    programs::perf_event::{
        PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
    },
    util::online_cpus,
};
use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};
use kvmtrace_common::{
    maps, programs,
    stacks::{MAX_STACK_DEPTH, NO_STACK, StackFrames, StackKey},
};

use super::{batch::BatchBuffers, per_cpu_growth, program, take_map};
use crate::{
    error::Error,
    model::stacks::{HostStack, LOST_FRAME, SampleKey, StackBatch, UNKNOWN_FRAME},
};

/// Distinct stacks per interval the kernel keeps (~1 KiB each, per epoch parity). A new stack
/// past these is counted with its frames "[stack lost]".
pub const STACK_FRAMES_ENTRIES: u32 = 8192;
/// Distinct (thread, state, stack) keys per interval.
pub const STACK_COUNTS_ENTRIES: u32 = 8192;
/// Symbolized stacks kept for reuse; past this the cache starts over (a recording of hours with
/// ever-new stacks must not grow without bound).
const SYMBOL_CACHE_MAX: usize = 65536;

pub struct StackSampler {
    symbolizer: Symbolizer,
    /// Kernel frames by addresses (leaf first, as the kernel gives them).
    kernel: HashMap<Vec<u64>, Vec<String>>,
    /// User frames by (process, addresses).
    user: HashMap<(u32, Vec<u64>), Vec<String>>,
    /// The number of each stack sent so far.
    numbers: HashMap<HostStack, u32>,
    buffers: BatchBuffers<StackKey, u64>,
    frame_buffers: BatchBuffers<u64, StackFrames>,
    lost_so_far: u64,
}

impl StackSampler {
    /// Loads the sampling program and attaches it to a cpu-clock event at `hz` on every CPU.
    pub fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<StackSampler, Error> {
        let prog: &mut PerfEvent = program(ebpf, programs::STACK_SAMPLE)?;
        prog.load()
            .map_err(|e| Error::bpf("loading the stack sampling program", e))?;
        let cpus = online_cpus().map_err(|(what, e)| Error::bpf(what, e))?;
        for cpu in cpus {
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .map_err(|e| Error::bpf(format!("attaching the cpu-clock sampler on CPU {cpu}"), e))?;
        }
        Ok(StackSampler {
            symbolizer: Symbolizer::new(),
            kernel: HashMap::new(),
            user: HashMap::new(),
            numbers: HashMap::new(),
            buffers: BatchBuffers::default(),
            frame_buffers: BatchBuffers::default(),
            lost_so_far: 0,
        })
    }

    /// Reads and deletes epoch `parity`'s samples and stacks; symbolizes the stacks new among
    /// them.
    pub fn take(&mut self, ebpf: &mut Ebpf, parity: u32) -> Result<StackBatch, Error> {
        let mut raw = Vec::new();
        take_map(
            ebpf,
            maps::STACK_COUNTS[parity as usize],
            &mut self.buffers,
            |k: &StackKey, &n: &u64| raw.push((*k, n)),
        )?;
        let mut addresses = HashMap::new();
        take_map(
            ebpf,
            maps::STACK_FRAMES[parity as usize],
            &mut self.frame_buffers,
            |&hash: &u64, f: &StackFrames| {
                let len = (f.len as usize).min(MAX_STACK_DEPTH);
                addresses.insert(hash, f.ips[..len].to_vec());
            },
        )?;
        if self.kernel.len() + self.user.len() > SYMBOL_CACHE_MAX {
            self.kernel.clear();
            self.user.clear();
        }
        let mut batch = StackBatch::default();
        for (k, n) in raw {
            let stack = HostStack {
                kernel: self.kernel_frames(&addresses, k.kernel_stack),
                user: self.user_frames(&addresses, k.tgid, k.user_stack),
            };
            let next = self.numbers.len() as u32;
            let number = *self.numbers.entry(stack).or_insert_with_key(|s| {
                batch.new_stacks.push(s.clone());
                next
            });
            let key = SampleKey {
                tgid: k.tgid,
                tid: k.tid,
                vcpu_id: k.vcpu_id,
                state: k.state,
                isa: k.isa,
                reason: k.reason,
                uexit_reason: k.uexit_reason,
                stack: number,
            };
            batch.samples.push((key, n));
        }
        batch.lost = per_cpu_growth(ebpf, maps::STACK_LOST, &mut self.lost_so_far)?;
        Ok(batch)
    }

    fn kernel_frames(&mut self, addresses: &HashMap<u64, Vec<u64>>, hash: u64) -> Vec<String> {
        let Some(addrs) = stack(addresses, hash) else {
            return missing(hash);
        };
        if let Some(f) = self.kernel.get(addrs) {
            return f.clone();
        }
        let src = Source::Kernel(Kernel {
            // kallsyms only: searching the disk for a vmlinux is slow and rarely pays.
            vmlinux: blazesym::MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        let frames = self.symbolize(&src, addrs);
        self.kernel.insert(addrs.to_vec(), frames.clone());
        frames
    }

    fn user_frames(
        &mut self,
        addresses: &HashMap<u64, Vec<u64>>,
        tgid: u32,
        hash: u64,
    ) -> Vec<String> {
        let Some(addrs) = stack(addresses, hash) else {
            return missing(hash);
        };
        let key = (tgid, addrs.to_vec());
        if let Some(f) = self.user.get(&key) {
            return f.clone();
        }
        let mut process = Process::new(Pid::from(tgid));
        process.debug_syms = false;
        process.perf_map = false;
        let frames = self.symbolize(&Source::Process(process), addrs);
        self.user.insert(key, frames.clone());
        frames
    }

    /// Names for `addrs` (leaf first, as the kernel stores them), root first.
    fn symbolize(&self, src: &Source, addrs: &[u64]) -> Vec<String> {
        let syms = self
            .symbolizer
            .symbolize(src, Input::AbsAddr(addrs))
            .unwrap_or_default();
        let mut frames: Vec<String> = (0..addrs.len())
            .map(|i| match syms.get(i) {
                Some(Symbolized::Sym(s)) => crate::untrusted::escape(&s.name),
                _ => UNKNOWN_FRAME.to_string(),
            })
            .collect();
        frames.reverse();
        frames
    }
}

/// The addresses of stack `hash` (without the zeros some kernels pad a walk with); None when it
/// names none.
fn stack(addresses: &HashMap<u64, Vec<u64>>, hash: u64) -> Option<&[u64]> {
    let addrs = addresses.get(&hash)?;
    let len = addrs.iter().rposition(|&ip| ip != 0).map_or(0, |i| i + 1);
    (len > 0).then(|| &addrs[..len])
}

/// The frames of a stack that names none: no stack at all (a sample in user space has no kernel
/// stack, a kernel thread no user stack), else a lost one (`LOST_STACK`, or a hash whose
/// frames a drain took while the sample was still being counted).
fn missing(hash: u64) -> Vec<String> {
    if hash == NO_STACK {
        Vec::new()
    } else {
        vec![LOST_FRAME.to_string()]
    }
}
