//! `cargo xtask demo`: the main job on a built-in VM. Starts the test guest as `demo-vm` with an
//! RTC port-I/O storm on vCPU 0 and a mix on vCPU 1, records it with
//! `kvmtrace record -d demo-vm --duration 5s --per-vcpu -o target/demo.kvmtrace`, prints the
//! report, stops the guest, and draws the recording's flamegraph (target/demo-flamegraph.svg).

use std::{process::Stdio, time::Duration};

use anyhow::Context as _;

use crate::{
    setup,
    sh::{cargo, cmd, run, target_bin},
};

pub const DEMO_VM: &str = "demo-vm";

/// vCPU 0: a storm of RTC index writes (what an old guest clock source does), with some MMIO and
/// CPUID; vCPU 1: TSC-deadline timer writes at 5 000/s, HLTs, serial reads.
pub const DEMO_PLAN: [&str; 4] = [
    "--run",
    "0:pio_out,port=0x70,ms=2000;mmio_w,gpa=0xfebf1000,count=3000;cpuid,fn=0x1,count=10000",
    "--run",
    "1:wrmsr,msr=0x6e0,ms=1000,rate=5000;hlt,count=300;pio_in,port=0x3fd,count=500",
];

pub fn run_demo(seconds: u64) -> anyhow::Result<()> {
    setup::run_setup()?;
    run(cargo().args(["build", "--release", "--bins"]))?;
    let mut guest = cmd(target_bin("release", "kvmtrace-testvm")
        .to_str()
        .context("path")?)
    .args([
        "-name",
        &format!("guest={DEMO_VM}"),
        "--vcpus",
        "2",
        "--loop",
        "--timeout",
        &(seconds + 60).to_string(),
    ])
    .args(DEMO_PLAN)
    .stdout(Stdio::null())
    .spawn()
    .context("starting the demo guest")?;
    std::thread::sleep(Duration::from_millis(500));
    let recording = crate::sh::root().join("target/demo.kvmtrace");
    let kvmtrace = target_bin("release", "kvmtrace");
    let recorded = run(cmd(kvmtrace.to_str().context("path")?)
        .args([
            "record",
            "-d",
            DEMO_VM,
            "--duration",
            &format!("{seconds}s"),
            "--per-vcpu",
            "-o",
        ])
        .arg(&recording));
    let _ = guest.kill();
    let _ = guest.wait();
    recorded?;
    let svg = crate::sh::root().join("target/demo-flamegraph.svg");
    run(cmd(kvmtrace.to_str().context("path")?)
        .args([
            "report",
            "--format",
            "flamegraph",
            "--weight",
            "count",
            "-i",
        ])
        .arg(&recording)
        .arg("-o")
        .arg(&svg))?;
    eprintln!(
        "\nThe recording is {}; its flamegraph {}.\nTry: {} report -i {} --format csv",
        recording.display(),
        svg.display(),
        kvmtrace.display(),
        recording.display()
    );
    Ok(())
}
