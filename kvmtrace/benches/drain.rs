//! The collector at scale (`cargo bench -p kvmtrace --bench drain`, root: it loads the BPF
//! programs): the maps hold what 1 000 vCPU threads with 10 exit reasons and 40 ports each leave
//! in one interval, 50 000 keys, filled from user space; one drain reads and zeroes them. The
//! threads are real (parked threads of this process), so each drain also checks that they are
//! alive, as it does for a VM's. Reports the drain's wall time (which includes waiting out an
//! RCU grace period) and the CPU time it took, against the 20 ms bar.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use kvmtrace::source::live::{TraceOptions, Tracer};

const VCPUS: u32 = 1_000;
const REASONS: u32 = 10;
const PORTS: u32 = 40;
const ROUNDS: usize = 7;
const BAR: Duration = Duration::from_millis(20);

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is Linux's.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `n` parked threads of this process, as stand-ins for vCPU threads: their tids.
fn parked_threads(n: u32) -> Vec<u32> {
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let tx = tx.clone();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning a thread");
    }
    rx.iter().take(n as usize).collect()
}

fn main() {
    let keys = VCPUS * (REASONS + PORTS);
    let tids = parked_threads(VCPUS);
    let mut tracer = Tracer::start(&TraceOptions {
        // Only this process's VMs (none): the maps hold just what is filled in.
        pids: Some(vec![std::process::id()]),
        max_latency_keys: VCPUS * REASONS,
        max_detail_keys: VCPUS * PORTS,
        ..TraceOptions::default()
    })
    .expect("starting the tracer (root?)");
    tracer.open(Vec::new).expect("opening");
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..ROUNDS {
        tracer
            .fill_for_bench(std::process::id(), &tids, REASONS, PORTS)
            .expect("filling the maps");
        // Closes the epoch that holds them, waits out the programs, reads and zeroes them.
        let (t, c) = (Instant::now(), thread_cpu());
        let iv = tracer.drain().expect("draining");
        times.push(t.elapsed());
        cpu.push(thread_cpu() - c);
        assert_eq!(iv.latency.len() as u32, VCPUS * REASONS);
        assert_eq!(iv.details.len() as u32, VCPUS * PORTS);
        assert_eq!(iv.threads.len() as u32, VCPUS);
    }
    times.sort();
    cpu.sort();
    let median = times[ROUNDS / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "drain of {keys} keys ({VCPUS} vCPU threads x {REASONS} exit reasons + {PORTS} ports): median {:.2} ms wall (best {:.2}), {:.2} ms CPU (bar {} ms)",
        ms(median),
        ms(times[0]),
        ms(cpu[ROUNDS / 2]),
        BAR.as_millis()
    );
    if median >= BAR {
        println!("drain bench: over the bar of {BAR:?}");
    }
}
