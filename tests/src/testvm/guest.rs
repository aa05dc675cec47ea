//! The guest: a few loops that each make one kind of exit `r15` times, then report "done" with an
//! `out` to [`PORT_DONE`], and the memory image they run in (64-bit long mode, identity-free
//! paging at a lower-half virtual address, a GDT and an IDT whose #PF handler skips the faulting
//! load so that page faults can be made in a loop).
//!
//! `hlt_timer` (needs the in-kernel irqchip) enables the x2APIC and halts r15 times, each time
//! after arming its timer (vector 0x20, LVT value r13: one-shot, or periodic with
//! `periodic=1`) for r14 ticks (ns). One-shot: exactly one interrupt, and one EOI, per halt; but
//! a tick lost (seen in the nested TCG rig) leaves the guest halted for good. Periodic: a lost
//! tick is made up one period later, so one HLT exit per halt always; but a tick may land
//! between a wake-up and the next `cli`, an interrupt (and EOI) more than halts.
//!
//! Registers the VMM sets per batch: r15 = iterations (>= 1), r14 = port / MSR / CPUID function,
//! r13 = wrmsr value, rsi = MMIO virtual address, rdi = a not-present virtual address.

use super::{backend::Backend, plan::Action};

/// `out` to this port ends a batch.
pub const PORT_DONE: u16 = 0xf0;
/// `out` to this port reports an unexpected exception vector (a guest bug).
pub const PORT_BAD_VECTOR: u16 = 0xf1;
/// The warm-up before `ready` runs each port step's code against this port instead of the
/// step's own: a tracer that picks the VM up while it warms up (`serve -d NAME` following a
/// restarted VM) must not count writes to the port under test.
pub const PORT_WARM_UP: u16 = 0xf2;

/// Guest-physical base of RAM and its size.
pub const RAM_GPA: u64 = 0x10_0000;
pub const RAM_SIZE: usize = 1 << 20;
/// Guest-virtual base where RAM is mapped. Lower half: all that kvm_pvm gives a guest.
pub const RAM_VA: u64 = 1 << 46;

const OFF_PML4: usize = 0x0000;
const OFF_PDPT: usize = 0x1000;
const OFF_PD: usize = 0x2000;
const OFF_PT: usize = 0x3000;
const OFF_GDT: usize = 0x4000;
const OFF_IDT: usize = 0x5000;
const OFF_CODE: usize = 0x6000;
const CODE_MAX: usize = 0x2000;
const OFF_VCPU: usize = 0x10000;
/// Each vCPU gets a stack page and a VIF page.
const VCPU_STRIDE: usize = 0x2000;
pub const MAX_VCPUS: usize = 32;
/// Pages of RAM mapped at RAM_VA.
const MAPPED_PAGES: usize = (OFF_VCPU + MAX_VCPUS * VCPU_STRIDE) / 0x1000;
/// Page-table slots for the MMIO page and the not-present page.
const PT_MMIO: usize = 0x100;
const PT_NOT_PRESENT: usize = 0x101;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 2;
/// kvm_pvm requires the User bit at every level, or the vCPU loops on #PF inside the host.
const PTE_USER: u64 = 4;

/// The LAPIC timer's vector in `hlt_timer` (with `--irqchip`).
const TIMER_VECTOR: usize = 0x20;

pub const GDT_CS: u16 = 0x10;
pub const GDT_DS: u16 = 0x18;

core::arch::global_asm!(
    r#"
    .pushsection .rodata.kvmtrace_guest,"a"
    .code64
    .globl kvmtrace_guest_start, kvmtrace_guest_end
    .globl kvmtrace_g_pio_out, kvmtrace_g_pio_span, kvmtrace_g_pio_in, kvmtrace_g_mmio_w, kvmtrace_g_mmio_r
    .globl kvmtrace_g_hlt, kvmtrace_g_cpuid, kvmtrace_g_pvcpuid, kvmtrace_g_rdmsr, kvmtrace_g_wrmsr
    .globl kvmtrace_g_pf, kvmtrace_g_pf_handler, kvmtrace_g_bad_vector
    .globl kvmtrace_g_hlt_timer, kvmtrace_g_timer_handler, kvmtrace_g_spurious_handler
    .globl kvmtrace_g_done
kvmtrace_guest_start:
kvmtrace_g_pio_out:
    mov %r14d, %edx
2:  out %al, %dx
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_pio_span:
    xor %ecx, %ecx
2:  lea (%r14, %rcx), %edx
    out %al, %dx
    inc %ecx
    cmp %r13d, %ecx
    jb 3f
    xor %ecx, %ecx
3:  dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_pio_in:
    mov %r14d, %edx
2:  in %dx, %al
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_mmio_w:
2:  movl %eax, (%rsi)
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_mmio_r:
2:  movl (%rsi), %eax
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_hlt:
2:  hlt
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_cpuid:
2:  mov %r14d, %eax
    xor %ecx, %ecx
    cpuid
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_pvcpuid:
2:  mov %r14d, %eax
    xor %ecx, %ecx
    int $0x1a
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_rdmsr:
2:  mov %r14d, %ecx
    rdmsr
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_wrmsr:
2:  mov %r14d, %ecx
    mov %r13d, %eax
    xor %edx, %edx
    wrmsr
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_pf:
2:  movl (%rdi), %eax
    dec %r15
    jnz 2b
    jmp .Lkvmtrace_done
kvmtrace_g_hlt_timer:
    mov $0x80f, %ecx
    mov $0x1ff, %eax
    xor %edx, %edx
    wrmsr
    mov $0x83e, %ecx
    mov $0xb, %eax
    wrmsr
    mov $0x832, %ecx
    mov %r13d, %eax
    wrmsr
2:  mov $0x838, %ecx
    mov %r14d, %eax
    xor %edx, %edx
    wrmsr
    sti
    hlt
    cli
    dec %r15
    jnz 2b
    mov $0x832, %ecx
    mov $0x10000, %eax
    xor %edx, %edx
    wrmsr
    jmp .Lkvmtrace_done
kvmtrace_g_timer_handler:
    push %rax
    push %rcx
    push %rdx
    mov $0x80b, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    pop %rdx
    pop %rcx
    pop %rax
    iretq
kvmtrace_g_spurious_handler:
    iretq
kvmtrace_g_pf_handler:
    add $8, %rsp
    addq $2, (%rsp)
    iretq
kvmtrace_g_bad_vector:
    mov $0xf1, %edx
    out %al, %dx
    jmp kvmtrace_g_bad_vector
kvmtrace_g_done:
.Lkvmtrace_done:
    out %al, $0xf0
    jmp .Lkvmtrace_done
kvmtrace_guest_end:
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static kvmtrace_guest_start: u8;
    static kvmtrace_guest_end: u8;
    static kvmtrace_g_pio_out: u8;
    static kvmtrace_g_pio_span: u8;
    static kvmtrace_g_pio_in: u8;
    static kvmtrace_g_mmio_w: u8;
    static kvmtrace_g_mmio_r: u8;
    static kvmtrace_g_hlt: u8;
    static kvmtrace_g_cpuid: u8;
    static kvmtrace_g_pvcpuid: u8;
    static kvmtrace_g_rdmsr: u8;
    static kvmtrace_g_wrmsr: u8;
    static kvmtrace_g_pf: u8;
    static kvmtrace_g_pf_handler: u8;
    static kvmtrace_g_hlt_timer: u8;
    static kvmtrace_g_timer_handler: u8;
    static kvmtrace_g_spurious_handler: u8;
    static kvmtrace_g_bad_vector: u8;
    static kvmtrace_g_done: u8;
}

/// The guest's routines in System.map format (`ADDRESS T NAME` lines, by address): what a user
/// copies out of a real guest for `kvmtrace report --guest-symbols VM=FILE`.
pub fn system_map() -> String {
    let routines = [
        ("kvmtrace_g_pio_out", &raw const kvmtrace_g_pio_out),
        ("kvmtrace_g_pio_span", &raw const kvmtrace_g_pio_span),
        ("kvmtrace_g_pio_in", &raw const kvmtrace_g_pio_in),
        ("kvmtrace_g_mmio_w", &raw const kvmtrace_g_mmio_w),
        ("kvmtrace_g_mmio_r", &raw const kvmtrace_g_mmio_r),
        ("kvmtrace_g_hlt", &raw const kvmtrace_g_hlt),
        ("kvmtrace_g_cpuid", &raw const kvmtrace_g_cpuid),
        ("kvmtrace_g_pvcpuid", &raw const kvmtrace_g_pvcpuid),
        ("kvmtrace_g_rdmsr", &raw const kvmtrace_g_rdmsr),
        ("kvmtrace_g_wrmsr", &raw const kvmtrace_g_wrmsr),
        ("kvmtrace_g_pf", &raw const kvmtrace_g_pf),
        ("kvmtrace_g_hlt_timer", &raw const kvmtrace_g_hlt_timer),
        (
            "kvmtrace_g_timer_handler",
            &raw const kvmtrace_g_timer_handler,
        ),
        (
            "kvmtrace_g_spurious_handler",
            &raw const kvmtrace_g_spurious_handler,
        ),
        ("kvmtrace_g_pf_handler", &raw const kvmtrace_g_pf_handler),
        ("kvmtrace_g_bad_vector", &raw const kvmtrace_g_bad_vector),
        ("kvmtrace_g_done", &raw const kvmtrace_g_done),
    ];
    let mut lines: Vec<(u64, &str)> = routines
        .iter()
        .map(|&(name, sym)| (code_va(sym), name))
        .collect();
    lines.sort();
    lines
        .iter()
        .map(|(va, name)| format!("{va:016x} T {name}\n"))
        .collect()
}

/// Guest-virtual address of a routine.
fn code_va(sym: *const u8) -> u64 {
    let start = &raw const kvmtrace_guest_start;
    RAM_VA + OFF_CODE as u64 + (sym as u64 - start as u64)
}

fn guest_code() -> &'static [u8] {
    let start = &raw const kvmtrace_guest_start;
    let end = &raw const kvmtrace_guest_end;
    // SAFETY: both symbols delimit one contiguous read-only section emitted by global_asm above.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Where a batch of `action` starts.
pub fn entry_va(action: Action, backend: Backend) -> u64 {
    code_va(match action {
        Action::PioOut { .. } => &raw const kvmtrace_g_pio_out,
        Action::PioIn { .. } => &raw const kvmtrace_g_pio_in,
        Action::PioSpan { .. } => &raw const kvmtrace_g_pio_span,
        Action::MmioWrite { .. } => &raw const kvmtrace_g_mmio_w,
        Action::MmioRead { .. } => &raw const kvmtrace_g_mmio_r,
        Action::Hlt | Action::Idle => &raw const kvmtrace_g_hlt,
        Action::Cpuid { .. } if backend == Backend::Pvm => &raw const kvmtrace_g_pvcpuid,
        Action::Cpuid { .. } => &raw const kvmtrace_g_cpuid,
        Action::Rdmsr { .. } => &raw const kvmtrace_g_rdmsr,
        Action::Wrmsr { .. } => &raw const kvmtrace_g_wrmsr,
        Action::PageFault => &raw const kvmtrace_g_pf,
        Action::HltTimer { .. } => &raw const kvmtrace_g_hlt_timer,
    })
}

/// Guest-virtual address of the page mapped to the MMIO GPA (plus the GPA's page offset).
pub fn mmio_va(gpa: u64) -> u64 {
    RAM_VA + (PT_MMIO as u64) * 0x1000 + (gpa & 0xfff)
}

pub fn not_present_va() -> u64 {
    RAM_VA + (PT_NOT_PRESENT as u64) * 0x1000
}

pub fn stack_top_va(vcpu: usize) -> u64 {
    RAM_VA + (OFF_VCPU + vcpu * VCPU_STRIDE + 0x1000) as u64
}

pub fn vif_gpa(vcpu: usize) -> u64 {
    RAM_GPA + (OFF_VCPU + vcpu * VCPU_STRIDE + 0x1000) as u64
}

pub fn vif_offset(vcpu: usize) -> usize {
    OFF_VCPU + vcpu * VCPU_STRIDE + 0x1000
}

pub fn pml4_gpa() -> u64 {
    RAM_GPA + OFF_PML4 as u64
}

pub fn gdt_va() -> u64 {
    RAM_VA + OFF_GDT as u64
}

pub fn idt_va() -> u64 {
    RAM_VA + OFF_IDT as u64
}

/// Writes page tables, GDT, IDT and code into `ram` (RAM_SIZE bytes at RAM_GPA). The MMIO page
/// maps `mmio_gpa`, which must have no memslot.
pub fn build_image(ram: &mut [u8], mmio_gpa: u64) -> anyhow::Result<()> {
    anyhow::ensure!(ram.len() == RAM_SIZE, "RAM must be {RAM_SIZE} bytes");
    let code = guest_code();
    anyhow::ensure!(code.len() <= CODE_MAX, "guest code is {} bytes", code.len());
    let mut put = |off: usize, v: u64| ram[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let table = PTE_PRESENT | PTE_WRITE | PTE_USER;
    let idx = |va: u64, shift: u32| ((va >> shift) & 0x1ff) as usize;
    put(
        OFF_PML4 + 8 * idx(RAM_VA, 39),
        (RAM_GPA + OFF_PDPT as u64) | table,
    );
    put(
        OFF_PDPT + 8 * idx(RAM_VA, 30),
        (RAM_GPA + OFF_PD as u64) | table,
    );
    put(
        OFF_PD + 8 * idx(RAM_VA, 21),
        (RAM_GPA + OFF_PT as u64) | table,
    );
    for page in 0..MAPPED_PAGES {
        put(OFF_PT + 8 * page, (RAM_GPA + 0x1000 * page as u64) | table);
    }
    put(OFF_PT + 8 * PT_MMIO, (mmio_gpa & !0xfff) | table);
    put(OFF_PT + 8 * PT_NOT_PRESENT, 0);

    // GDT: 0x10 64-bit code, 0x18 data (kvm_pvm emulates segmentation from it when it delivers
    // exceptions through the IDT).
    put(OFF_GDT + 0x10, 0x00af_9b00_0000_ffff);
    put(OFF_GDT + 0x18, 0x00cf_9300_0000_ffff);

    // IDT: 64-bit interrupt gates; #PF skips the faulting 2-byte load, the LAPIC timer (0x20)
    // sends EOI, the spurious vector (0xff) returns; anything else is a bug.
    let pf = code_va(&raw const kvmtrace_g_pf_handler);
    let bad = code_va(&raw const kvmtrace_g_bad_vector);
    let timer = code_va(&raw const kvmtrace_g_timer_handler);
    let spurious = code_va(&raw const kvmtrace_g_spurious_handler);
    for vector in 0..256 {
        let handler = match vector {
            14 => pf,
            TIMER_VECTOR => timer,
            0xff => spurious,
            _ => bad,
        };
        let low = (handler & 0xffff)
            | ((GDT_CS as u64) << 16)
            | (0x8e << 40)
            | (((handler >> 16) & 0xffff) << 48);
        put(OFF_IDT + 16 * vector, low);
        put(OFF_IDT + 16 * vector + 8, handler >> 32);
    }
    ram[OFF_CODE..OFF_CODE + code.len()].copy_from_slice(code);
    Ok(())
}
