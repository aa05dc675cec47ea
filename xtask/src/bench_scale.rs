//! The collector's CPU at scale, for `cargo xtask bench`: many vCPU threads of real test guests
//! (each vCPU writing a span of ports and halting on a timer, over and over), traced by `kvmtrace
//! record` or by `kvmtrace serve` (scraped every second, as by Prometheus) for a minute; its CPU
//! from /proc/PID/stat and schedstat.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bench::{process_cpu_ns, process_run_ns, scrape, start_serve},
    sh::{cmd, target_bin},
};

/// Which collector traces the guests.
#[derive(Clone, Copy)]
pub enum Collector {
    Record,
    Serve,
}

/// What the collector cost while tracing `threads` vCPU threads for `secs`.
pub struct ScaleCpu {
    pub threads: usize,
    pub secs: f64,
    /// % of one CPU: utime + stime (10 ms ticks) and schedstat (exact).
    pub pct: f64,
    pub sched_pct: f64,
}

/// Kills every guest when dropped, whatever happened.
struct Guests(Vec<Child>);

impl Drop for Guests {
    fn drop(&mut self) {
        for g in &mut self.0 {
            let _ = g.kill();
            let _ = g.wait();
        }
    }
}

/// Starts `guests` test guests of `vcpus` vCPUs each, traces them all with `collector` for `secs`
/// after a settling second, and returns the collector's CPU.
pub fn collector_at_scale(
    collector: Collector,
    guests: usize,
    vcpus: usize,
    secs: u64,
) -> anyhow::Result<ScaleCpu> {
    let testvm = target_bin("release", "kvmtrace-testvm");
    let mut running = Guests(Vec::new());
    for i in 0..guests {
        let child = cmd(testvm.to_str().context("path")?)
            .args([
                "-name",
                &format!("guest=kvmtrace-scale-{i}"),
                "--vcpus",
                &vcpus.to_string(),
                "--loop",
                "--timeout",
                &(secs + 120).to_string(),
                // Per vCPU and second: 50 writes over 50 ports (50 detail keys), 50 timer halts.
                "--run",
                "pio_span,port=0x200,span=50,count=50;hlt,ms=1000,rate=50",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a scale guest")?;
        running.0.push(child);
    }
    // Running before the collector attaches, as VMs are.
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = running.0.iter().map(Child::id).collect();
    let file = std::env::temp_dir().join(format!("kvmtrace-scale-{}.kvmtrace", std::process::id()));
    let (mut child, addr) = match collector {
        Collector::Record => {
            let mut rec = cmd(target_bin("release", "kvmtrace").to_str().context("path")?);
            rec.args(["record", "--duration", "1h", "-o"]).arg(&file);
            for p in &pids {
                rec.args(["-p", &p.to_string()]);
            }
            let child = rec
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting kvmtrace record")?;
            (child, None)
        }
        Collector::Serve => {
            let (child, addr) = start_serve(&pids)?;
            (child, Some(addr))
        }
    };
    let pid = child.id();
    let result = (|| -> anyhow::Result<ScaleCpu> {
        std::thread::sleep(Duration::from_secs(3));
        let (t0, cpu0, run0) = (Instant::now(), process_cpu_ns(pid)?, process_run_ns(pid)?);
        for _ in 0..secs {
            std::thread::sleep(Duration::from_secs(1));
            if let Some(addr) = &addr {
                scrape(addr)?;
            }
        }
        let (cpu1, run1) = (process_cpu_ns(pid)?, process_run_ns(pid)?);
        let elapsed = t0.elapsed().as_secs_f64();
        Ok(ScaleCpu {
            threads: guests * vcpus,
            secs: elapsed,
            pct: 100.0 * (cpu1 - cpu0) as f64 / 1e9 / elapsed,
            sched_pct: 100.0 * (run1 - run0) as f64 / 1e9 / elapsed,
        })
    })();
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);
    result
}
