//! kvmtrace-testvm: a KVM guest that makes exact numbers of exits of chosen kinds.
//!
//! ```text
//! kvmtrace-testvm -name guest=NAME [-uuid UUID] [--vcpus N] [--run [V:]STEPS]... [--loop]
//!                 [--start-on-stdin] [--timeout SECS] [--irqchip] [--system-map FILE]
//! ```
//! `--system-map FILE` writes the guest code's symbols (System.map format) to FILE.
//! STEPS is `KIND[,key=value]...;...` (see `testvm::plan`). `--run STEPS` applies to every vCPU
//! without its own `--run V:STEPS`. `--start-on-stdin` sets everything up (vCPU threads named
//! `CPU N/KVM` as in QEMU, warm-up done), prints `ready pid=PID`, waits for a line on stdin, runs,
//! prints one `result` line per step, then waits for stdin to close before exiting, so a tracer
//! can still read the process's identity. The process kills itself after `--timeout` (default
//! 600 s): a guest must never outlive its test.

use std::{
    io::{BufRead as _, Write as _},
    sync::{Arc, Barrier},
};

use anyhow::{Context as _, anyhow, bail};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use kvmtrace_tests::testvm::{
    backend::Backend,
    guest::{self, MAX_VCPUS, RAM_GPA, RAM_SIZE},
    plan::{self, Action, Step},
    vcpu::{Vcpu, step_name},
};

struct Options {
    name: String,
    vcpus: usize,
    default_plan: Vec<Step>,
    plans: Vec<(usize, Vec<Step>)>,
    repeat: bool,
    start_on_stdin: bool,
    timeout_secs: u32,
    irqchip: bool,
}

fn parse_args() -> anyhow::Result<Options> {
    // Arguments as bytes: kvmtrace's tests give the guest names that are not UTF-8.
    let mut args = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    let mut o = Options {
        name: String::new(),
        vcpus: 1,
        default_plan: Vec::new(),
        plans: Vec::new(),
        repeat: false,
        start_on_stdin: false,
        timeout_secs: 600,
        irqchip: false,
    };
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().ok_or_else(|| anyhow!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-name" => {
                // QEMU's syntax: `-name NAME` or `-name guest=NAME,debug-threads=on`.
                let v = value(&mut args, "-name")?;
                let first = v.split(',').next().unwrap_or_default();
                o.name = first.strip_prefix("guest=").unwrap_or(first).to_string();
            }
            // QEMU's `-uuid UUID`: only there for kvmtrace to read from /proc/PID/cmdline.
            "-uuid" => {
                value(&mut args, "-uuid")?;
            }
            "--vcpus" => o.vcpus = value(&mut args, "--vcpus")?.parse()?,
            "--run" => {
                let v = value(&mut args, "--run")?;
                match v
                    .split_once(':')
                    .filter(|(i, _)| i.parse::<usize>().is_ok())
                {
                    Some((i, steps)) => o.plans.push((i.parse()?, plan::parse_steps(steps)?)),
                    None => o.default_plan = plan::parse_steps(&v)?,
                }
            }
            "--loop" => o.repeat = true,
            "--irqchip" => o.irqchip = true,
            "--start-on-stdin" => o.start_on_stdin = true,
            "--timeout" => o.timeout_secs = value(&mut args, "--timeout")?.parse()?,
            // The guest code's symbols, for `kvmtrace report --guest-symbols NAME=FILE`.
            "--system-map" => {
                let file = value(&mut args, "--system-map")?;
                std::fs::write(&file, guest::system_map())
                    .with_context(|| format!("writing {file}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: kvmtrace-testvm -name guest=NAME [-uuid UUID] [--vcpus N] [--run [V:]STEPS]... [--loop] [--start-on-stdin] [--timeout SECS] [--irqchip] [--system-map FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    if o.name.is_empty() {
        bail!("-name guest=NAME is required");
    }
    if !(1..=MAX_VCPUS).contains(&o.vcpus) {
        bail!("--vcpus must be 1..={MAX_VCPUS}");
    }
    if let Some((i, _)) = o.plans.iter().find(|(i, _)| *i >= o.vcpus) {
        bail!("--run {i}:... names a vCPU beyond --vcpus {}", o.vcpus);
    }
    Ok(o)
}

fn plan_of(o: &Options, vcpu: usize) -> Vec<Step> {
    o.plans
        .iter()
        .rev()
        .find(|(i, _)| *i == vcpu)
        .map_or_else(|| o.default_plan.clone(), |(_, p)| p.clone())
}

/// The one MMIO page every step uses (the guest maps a single MMIO page).
fn mmio_gpa(plans: &[Vec<Step>]) -> anyhow::Result<u64> {
    let mut gpas = plans.iter().flatten().filter_map(|s| match s.action {
        Action::MmioWrite { gpa } | Action::MmioRead { gpa } => Some(gpa),
        _ => None,
    });
    let first = gpas.next().unwrap_or(plan::DEFAULT_MMIO_GPA);
    if let Some(other) = gpas.find(|g| g & !0xfff != first & !0xfff) {
        bail!("MMIO GPAs {first:#x} and {other:#x} are on different pages; use one page");
    }
    let ram = RAM_GPA..RAM_GPA + RAM_SIZE as u64;
    if ram.contains(&first) {
        bail!("MMIO GPA {first:#x} is inside guest RAM {ram:#x?}");
    }
    Ok(first)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kvmtrace-testvm: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let o = parse_args()?;
    // SAFETY: alarm() only schedules SIGALRM, whose default action ends the process.
    unsafe { libc::alarm(o.timeout_secs) };
    let backend = Backend::detect();
    let plans: Vec<Vec<Step>> = (0..o.vcpus).map(|i| plan_of(&o, i)).collect();

    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    if o.irqchip {
        // The in-kernel PIC/IOAPIC/LAPICs: HLT then blocks in the kernel until an interrupt.
        vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    }
    let ram = guest_ram()?;
    // SAFETY: `ram` is a private anonymous mapping of RAM_SIZE bytes that lives (leaked) until
    // the process exits, so the memslot never points at freed memory.
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: RAM_GPA,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram.as_ptr() as u64,
        })
    }
    .context("KVM_SET_USER_MEMORY_REGION")?;
    guest::build_image(ram, mmio_gpa(&plans)?)?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let mut vcpus = Vec::new();
    for i in 0..o.vcpus {
        vcpus.push(Vcpu::create(&vm, i, &cpuid, backend, ram, o.irqchip)?);
    }

    let ready = Arc::new(Barrier::new(o.vcpus + 1));
    let go = Arc::new(Barrier::new(o.vcpus + 1));
    let mut threads = Vec::new();
    for (mut vcpu, steps) in vcpus.into_iter().zip(plans) {
        let (ready, go, repeat) = (ready.clone(), go.clone(), o.repeat);
        let thread = std::thread::Builder::new()
            .name(format!("CPU {}/KVM", vcpu.index))
            .spawn(move || -> anyhow::Result<Vec<String>> {
                // Warm-up: the first native entry takes a shadow page fault on kvm_pvm, and the
                // first touch of each page may exit; do all that before anyone counts (port
                // steps on a port of their own, for tracers already watching).
                let mut warm = steps.iter().filter(|s| s.action != Action::Idle);
                let warm_result = warm.try_for_each(|s| vcpu.batch(warm_up(s.action), 2));
                ready.wait();
                go.wait();
                warm_result?;
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let mut lines = Vec::new();
                loop {
                    for step in &steps {
                        let r = vcpu.run_step(step)?;
                        let secs = r.elapsed.as_secs_f64();
                        let line = format!(
                            "result vcpu={} tid={tid} step=\"{}\" exits={} batches={} secs={secs:.3} rate={:.0}",
                            vcpu.index,
                            step_name(step),
                            r.exits,
                            r.batches,
                            if secs > 0.0 { r.exits as f64 / secs } else { 0.0 },
                        );
                        println!("{line}");
                        lines.push(line);
                    }
                    if !repeat {
                        return Ok(lines);
                    }
                }
            })?;
        threads.push(thread);
    }
    ready.wait();
    let stdin = std::io::stdin();
    if o.start_on_stdin {
        println!("ready pid={}", std::process::id());
        std::io::stdout().flush()?;
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
    }
    go.wait();
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(anyhow!("a vCPU thread panicked")),
        }
    }
    println!("finished");
    std::io::stdout().flush()?;
    if o.start_on_stdin {
        // Stay alive (and identifiable) until the driver closes stdin.
        for _ in stdin.lock().lines() {}
    }
    failed.map_or(Ok(()), Err)
}

/// Anonymous guest RAM, leaked: it must outlive every vCPU.
fn guest_ram() -> anyhow::Result<&'static mut [u8]> {
    // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap guest RAM");
    }
    // SAFETY: p is a valid, exclusive, zeroed mapping of RAM_SIZE bytes that is never unmapped.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), RAM_SIZE) })
}

/// `action` as the warm-up runs it: the same guest code, port steps on [`PORT_WARM_UP`].
fn warm_up(action: Action) -> Action {
    let port = kvmtrace_tests::testvm::guest::PORT_WARM_UP;
    match action {
        Action::PioOut { .. } => Action::PioOut { port },
        Action::PioIn { .. } => Action::PioIn { port },
        Action::PioSpan { .. } => Action::PioSpan { port, span: 1 },
        other => other,
    }
}
