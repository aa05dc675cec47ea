//! One vCPU: its set-up (CPUID, long mode, MSRs) and the loop that runs a plan step by step,
//! answering every exit that reaches user space and pacing steps that have a rate.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kvm_bindings::{CpuId, Msrs, kvm_msr_entry, kvm_regs, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::{
    backend::{Backend, MSR_PVM_VIF},
    guest,
    plan::{Action, Amount, Step},
};

const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_APIC_BASE: u32 = 0x1b;
/// Exits per batch when a step runs for a time at full speed: small enough to stop on time.
const TIMED_BATCH: u64 = 4096;

/// What one step did, as seen from user space.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    pub name: String,
    /// Guest iterations (= exits of the step's kind).
    pub exits: u64,
    /// Batches run (each ends with one `out` to the done port).
    pub batches: u64,
    pub elapsed: Duration,
}

pub struct Vcpu {
    pub index: usize,
    fd: VcpuFd,
    backend: Backend,
    /// The current step's VMM time per port write.
    vmm_work: Duration,
}

impl Vcpu {
    pub fn create(
        vm: &VmFd,
        index: usize,
        cpuid: &CpuId,
        backend: Backend,
        ram: &mut [u8],
        irqchip: bool,
    ) -> anyhow::Result<Vcpu> {
        let fd = vm
            .create_vcpu(index as u64)
            .with_context(|| format!("KVM_CREATE_VCPU {index}"))?;
        fd.set_cpuid2(cpuid).context("KVM_SET_CPUID2")?;
        let mut sregs = fd.get_sregs().context("KVM_GET_SREGS")?;
        sregs.cr0 = 0x8005_0033; // PG AM WP NE ET MP PE
        sregs.cr3 = guest::pml4_gpa();
        sregs.cr4 = 0x20; // PAE only: kvm_pvm refuses PCIDE
        sregs.efer = 0xd01; // NXE LMA LME SCE
        sregs.cs = segment(guest::GDT_CS, 0xb, true);
        sregs.ds = segment(guest::GDT_DS, 0x3, false);
        sregs.es = sregs.ds;
        sregs.fs = sregs.ds;
        sregs.gs = sregs.ds;
        sregs.ss = sregs.ds;
        sregs.ldt = kvm_segment::default();
        sregs.tr = kvm_segment {
            present: 1,
            type_: 11,
            limit: 0x67,
            ..Default::default()
        };
        sregs.gdt.base = guest::gdt_va();
        sregs.gdt.limit = 0x37;
        sregs.idt.base = guest::idt_va();
        sregs.idt.limit = 0xfff;
        fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;
        let mut msrs = vec![(MSR_SFMASK, 0)];
        if irqchip {
            // The in-kernel LAPIC, in x2APIC mode (EN | EXTD, BSP on vCPU 0).
            let bsp = if index == 0 { 1 << 8 } else { 0 };
            msrs.push((MSR_APIC_BASE, 0xfee0_0000 | 1 << 11 | 1 << 10 | bsp));
        }
        if backend == Backend::Pvm {
            ram[guest::vif_offset(index)] = 1; // virtual IF on
            msrs.push((MSR_PVM_VIF, guest::vif_gpa(index) | 1));
        }
        set_msrs(&fd, &msrs)?;
        Ok(Vcpu {
            index,
            fd,
            backend,
            vmm_work: Duration::ZERO,
        })
    }

    /// Runs `step` to completion; None for a step that only idles.
    pub fn run_step(&mut self, step: &Step) -> anyhow::Result<StepReport> {
        let started = Instant::now();
        self.vmm_work = Duration::from_micros(step.vmm_us);
        let mut report = StepReport {
            name: step_name(step),
            ..Default::default()
        };
        if step.action == Action::Idle {
            if let Amount::For(d) = step.amount {
                std::thread::sleep(d);
            }
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        let total = match (step.amount, step.rate) {
            (Amount::Count(n), _) => Some(n),
            (Amount::For(d), Some(rate)) => Some((rate as f64 * d.as_secs_f64()).round() as u64),
            (Amount::For(_), None) => None,
        };
        let deadline = match step.amount {
            Amount::For(d) => Some(started + d),
            Amount::Count(_) => None,
        };
        // With a rate, run in ~10 ms chunks (one done-port exit each) and sleep until each is due.
        let chunk = match step.rate {
            Some(rate) => (rate / 100).max(1),
            None => total.unwrap_or(TIMED_BATCH).min(1 << 40),
        };
        loop {
            let left = total.map_or(chunk, |t| t - report.exits);
            if left == 0 || deadline.is_some_and(|d| total.is_none() && Instant::now() >= d) {
                break;
            }
            let n = left.min(chunk);
            self.batch(step.action, n)?;
            report.exits += n;
            report.batches += 1;
            if let Some(rate) = step.rate {
                let due = started + Duration::from_secs_f64(report.exits as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Makes the guest do `n` iterations of `action` and runs it until it reports done.
    pub fn batch(&mut self, action: Action, n: u64) -> anyhow::Result<()> {
        let (arg, value, mmio_gpa) = match action {
            Action::PioOut { port } | Action::PioIn { port } => (port as u64, 0, 0),
            Action::PioSpan { port, span } => (port as u64, span as u64, 0),
            Action::MmioWrite { gpa } | Action::MmioRead { gpa } => (0, 0, gpa),
            Action::Cpuid { function } => (function as u64, 0, 0),
            Action::Rdmsr { msr } => (msr as u64, 0, 0),
            Action::Wrmsr { msr, value } => (msr as u64, value as u64, 0),
            // The LAPIC timer counts ns (KVM's APIC bus runs at 1 GHz) with divide-by-1.
            Action::HltTimer {
                period_us,
                periodic,
            } => (
                period_us as u64 * 1000,
                // LVT timer: vector 0x20, bit 17 periodic.
                0x20 | (periodic as u64) << 17,
                0,
            ),
            Action::Hlt | Action::PageFault | Action::Idle => (0, 0, 0),
        };
        let regs = kvm_regs {
            rip: guest::entry_va(action, self.backend),
            rsp: guest::stack_top_va(self.index),
            rflags: 0x202,
            r15: n,
            r14: arg,
            r13: value,
            rsi: guest::mmio_va(mmio_gpa),
            rdi: guest::not_present_va(),
            ..Default::default()
        };
        self.fd.set_regs(&regs).context("KVM_SET_REGS")?;
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(guest::PORT_DONE, _)) => return Ok(()),
                Ok(VcpuExit::IoOut(guest::PORT_BAD_VECTOR, _)) => {
                    bail!(
                        "vCPU {}: the guest took an unexpected exception",
                        self.index
                    )
                }
                Ok(VcpuExit::IoIn(_, data)) => data.fill(0),
                Ok(VcpuExit::MmioRead(_, data)) => data.fill(0),
                Ok(VcpuExit::IoOut(..)) if !self.vmm_work.is_zero() => {
                    emulate_slow_io(self.vmm_work)
                }
                Ok(VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) | VcpuExit::Hlt) => {}
                Ok(other) => bail!("vCPU {}: unexpected exit {other:?}", self.index),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => bail!("vCPU {}: KVM_RUN: {e}", self.index),
            }
        }
    }
}

/// The VMM's handling of one port write, slow on purpose (`vmm_us`): `record --stacks` tests look
/// for this function in the VMM's frames. Never inlined, so that it is a frame of its own; it
/// spins in its own body (no calls: a sample in a callee's prologue would skip this frame) and
/// reads the clock only every few µs.
#[inline(never)]
fn emulate_slow_io(work: Duration) {
    let until = Instant::now() + work;
    while Instant::now() < until {
        let mut i = 0u32;
        while i < 10_000 {
            i += 1;
            // SAFETY: an empty asm block; it only keeps the loop from being optimized away.
            unsafe { std::arch::asm!("", options(nomem, nostack, preserves_flags)) };
        }
    }
}

fn segment(selector: u16, type_: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        selector,
        limit: 0xfffff,
        type_,
        present: 1,
        s: 1,
        l: code64 as u8,
        db: (!code64) as u8,
        g: 1,
        ..Default::default()
    }
}

fn set_msrs(fd: &VcpuFd, entries: &[(u32, u64)]) -> anyhow::Result<()> {
    let list: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&list).context("building the MSR list")?;
    let written = fd.set_msrs(&msrs).context("KVM_SET_MSRS")?;
    if written != list.len() {
        let failed = entries[written].0;
        bail!("KVM_SET_MSRS refused MSR {failed:#x}");
    }
    Ok(())
}

pub fn step_name(step: &Step) -> String {
    match step.action {
        Action::PioOut { port } => format!("pio_out port={port:#x}"),
        Action::PioIn { port } => format!("pio_in port={port:#x}"),
        Action::PioSpan { port, span } => format!("pio_span port={port:#x} span={span}"),
        Action::MmioWrite { gpa } => format!("mmio_w gpa={gpa:#x}"),
        Action::MmioRead { gpa } => format!("mmio_r gpa={gpa:#x}"),
        Action::Hlt => "hlt".into(),
        Action::HltTimer { period_us, .. } => format!("hlt_timer us={period_us}"),
        Action::Cpuid { function } => format!("cpuid fn={function:#x}"),
        Action::Rdmsr { msr } => format!("rdmsr msr={msr:#x}"),
        Action::Wrmsr { msr, .. } => format!("wrmsr msr={msr:#x}"),
        Action::PageFault => "pf".into(),
        Action::Idle => "idle".into(),
    }
}
