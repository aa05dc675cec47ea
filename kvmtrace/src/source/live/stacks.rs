//! `record --stacks`: a cpu-clock perf event per CPU runs the sampling program; at each drain
//! the closed epoch's samples are read and deleted, and stacks not seen before are symbolized:
//! kernel frames from /proc/kallsyms (modules included), the VMM's frames from its binaries'
//! ELF symbols (frame-pointer unwinding, done by the kernel). Each stack is symbolized once: a
//! STACK_TRACES id names one stack for as long as the tracer lives (nothing deletes from it).

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, StackTraceMap},
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
    stacks::{MAX_STACK_DEPTH, StackKey},
};

use super::{batch::BatchBuffers, map_ref, program, take_map};
use crate::{
    error::Error,
    model::stacks::{HostStack, LOST_FRAME, SampleKey, StackBatch, UNKNOWN_FRAME},
};

/// Distinct stacks the kernel keeps (~1 KiB each). A new stack whose hash slot is taken by
/// another is counted with its frames "[stack lost]".
pub const STACK_TRACES_ENTRIES: u32 = 16384;
/// Distinct (thread, state, stack) keys per interval.
pub const STACK_COUNTS_ENTRIES: u32 = 8192;

pub struct StackSampler {
    symbolizer: Symbolizer,
    kernel: HashMap<i32, Vec<String>>,
    /// User stacks by (process, id): one id can be the same addresses in two processes.
    user: HashMap<(u32, i32), Vec<String>>,
    /// The number of each stack sent so far.
    numbers: HashMap<HostStack, u32>,
    buffers: BatchBuffers<StackKey, u64>,
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
            lost_so_far: 0,
        })
    }

    /// Reads and deletes epoch `parity`'s samples; symbolizes the stacks new among them.
    pub fn take(&mut self, ebpf: &mut Ebpf, parity: u32) -> Result<StackBatch, Error> {
        let mut raw = Vec::new();
        take_map(
            ebpf,
            maps::STACK_COUNTS[parity as usize],
            &mut self.buffers,
            |k: &StackKey, &n: &u64| raw.push((*k, n)),
        )?;
        let traces: StackTraceMap<&MapData> = map_ref(ebpf, maps::STACK_TRACES)?;
        let mut batch = StackBatch::default();
        for (k, n) in raw {
            let stack = HostStack {
                kernel: self.kernel_frames(&traces, k.kernel_stack),
                user: self.user_frames(&traces, k.tgid, k.user_stack),
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
        let lost: PerCpuArray<&MapData, u64> = map_ref(ebpf, maps::STACK_LOST)?;
        let lost: u64 = lost
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading STACK_LOST", e))?
            .iter()
            .sum();
        batch.lost = lost - self.lost_so_far;
        self.lost_so_far = lost;
        Ok(batch)
    }

    fn kernel_frames(&mut self, traces: &StackTraceMap<&MapData>, id: i32) -> Vec<String> {
        if let Some(f) = self.kernel.get(&id) {
            return f.clone();
        }
        let frames = match addresses(traces, id) {
            Some(addrs) => {
                let src = Source::Kernel(Kernel {
                    // kallsyms only: searching the disk for a vmlinux is slow and rarely pays.
                    vmlinux: blazesym::MaybeDefault::None,
                    debug_syms: false,
                    ..Kernel::default()
                });
                self.symbolize(&src, &addrs)
            }
            None => missing(id),
        };
        self.kernel.insert(id, frames.clone());
        frames
    }

    fn user_frames(&mut self, traces: &StackTraceMap<&MapData>, tgid: u32, id: i32) -> Vec<String> {
        if let Some(f) = self.user.get(&(tgid, id)) {
            return f.clone();
        }
        let frames = match addresses(traces, id) {
            Some(addrs) => {
                let mut process = Process::new(Pid::from(tgid));
                process.debug_syms = false;
                process.perf_map = false;
                self.symbolize(&Source::Process(process), &addrs)
            }
            None => missing(id),
        };
        self.user.insert((tgid, id), frames.clone());
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

/// The instruction pointers of stack `id`, leaf first; None when there is no such stack.
fn addresses(traces: &StackTraceMap<&MapData>, id: i32) -> Option<Vec<u64>> {
    let id = u32::try_from(id).ok()?;
    let trace = traces.get(&id, 0).ok()?;
    let addrs: Vec<u64> = trace
        .frames()
        .iter()
        .take(MAX_STACK_DEPTH)
        .map(|f| f.ip)
        .filter(|&ip| ip != 0)
        .collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// The frames of a stack id that names none: no stack at all (-EFAULT: a sample in user space
/// has no kernel stack, a kernel thread no user stack), else a lost one.
fn missing(id: i32) -> Vec<String> {
    if id == -libc::EFAULT {
        Vec::new()
    } else {
        vec![LOST_FRAME.to_string()]
    }
}
