//! `cargo xtask nested`: real kvm:kvm_exit/kvm_entry in CI. This host's KVM (kvm_pvm) never emits
//! them, so this boots an L1 Linux (Debian's 6.1 kernel) under QEMU with software emulation and an
//! SVM CPU model, loads kvm_amd in it, and runs the `nested_l1` integration tests there with static
//! builds of kvmtrace and the test guest. The kernel and busybox come from `apt-get download` and
//! are cached under target/nested/, so a warm run is build check + boot + tests.
//! QEMU exits on an L1 panic (panic=-1, -no-reboot; softlockup_panic turns an L1 hang into a
//! panic) and is killed on timeout or if xtask dies. TCG runs single-threaded: with multi-threaded
//! TCG, the two-vCPU test hung L1 (both CPUs in soft lockup) about once in ten runs; with
//! thread=single, 9 of 9 runs passed and the suite is no slower.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc::channel,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sh::{cargo, cmd, output, root, run};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Modules kvm_amd needs on Debian's 6.1, in load order.
const MODULES: [&str; 4] = [
    "virt/lib/irqbypass",
    "drivers/crypto/ccp/ccp",
    "arch/x86/kvm/kvm",
    "arch/x86/kvm/kvm-amd",
];
const RESULT_MARK: &str = "KVMTRACE-NESTED-RESULT rc=";

pub struct Options {
    pub timeout: Duration,
    pub smp: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(600),
            smp: 2,
        }
    }
}

fn work_dir() -> PathBuf {
    root().join("target/nested")
}

/// Returns how many tests passed inside L1.
pub fn run_nested(opts: &Options) -> anyhow::Result<u64> {
    let started = Instant::now();
    for tool in ["qemu-system-x86_64", "cpio", "depmod", "dpkg-deb"] {
        if output(cmd("sh").args(["-c", &format!("command -v {tool}")])).is_none() {
            bail!(
                "{tool} is missing: run `cargo xtask setup` (installs qemu-system-x86, cpio, kmod)"
            );
        }
    }
    let work = work_dir();
    std::fs::create_dir_all(&work)?;
    let (vmlinuz, modules) = kernel(&work)?;
    let busybox = busybox(&work)?;
    let bins = static_binaries(&work)?;
    let initramfs = initramfs(&work, &modules, &busybox, &bins)?;
    let prepared = started.elapsed();
    let log = boot(&vmlinuz, &initramfs, opts)?;
    eprintln!(
        "nested: prepared in {:.1} s, L1 boot + tests in {:.1} s",
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
    verdict(&log)
}

/// Debian's current 6.1 kernel (the linux-image-amd64 dependency), downloaded and unpacked once.
fn kernel(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let kroot = work.join("kroot");
    if !kroot.join("boot").is_dir() {
        let deps = output(cmd("apt-cache").args(["depends", "linux-image-amd64"]))
            .context("apt-cache depends linux-image-amd64")?;
        let pkg = deps
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Depends: ")
                    .filter(|p| p.starts_with("linux-image-6"))
            })
            .context(
                "no linux-image-6.* in `apt-cache depends linux-image-amd64` (run apt-get update)",
            )?
            .to_string();
        let deb = download(work, &pkg)?;
        run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&kroot))?;
    }
    let release = std::fs::read_dir(kroot.join("lib/modules"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no lib/modules")?;
    let modules = kroot.join("lib/modules").join(&release);
    if !modules.join("modules.dep").exists() {
        run(cmd("depmod").arg("-b").arg(&kroot).arg(&release))?;
    }
    Ok((
        kroot.join("boot").join(format!("vmlinuz-{release}")),
        modules,
    ))
}

fn busybox(work: &Path) -> anyhow::Result<PathBuf> {
    let bb = work.join("bbroot/bin/busybox");
    if !bb.exists() {
        let deb = download(work, "busybox-static")?;
        run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(work.join("bbroot")))?;
    }
    Ok(bb)
}

/// `apt-get download PKG` into work/debs (cached); returns the .deb.
fn download(work: &Path, pkg: &str) -> anyhow::Result<PathBuf> {
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    run(cmd("apt-get").arg("download").arg(pkg).current_dir(&debs)).with_context(|| {
        format!("downloading {pkg} (is the network to Debian's mirror up? apt-get update?)")
    })?;
    find().with_context(|| format!("apt-get download {pkg} left no .deb"))
}

struct Binaries {
    kvmtrace: PathBuf,
    testvm: PathBuf,
    tests: PathBuf,
}

/// Static (glibc crt-static) builds: L1's initramfs has no libc.
fn static_binaries(work: &Path) -> anyhow::Result<Binaries> {
    let target_dir = work.join("cargo");
    let common = |c: &mut std::process::Command| {
        c.env("RUSTFLAGS", "-C target-feature=+crt-static")
            .arg("--release")
            .args(["--target", TARGET])
            .arg("--target-dir")
            .arg(&target_dir);
    };
    let mut build = cargo();
    build.args(["build", "-p", "kvmtrace", "-p", "kvmtrace-tests", "--bins"]);
    common(&mut build);
    run(&mut build)?;
    let mut test = cargo();
    test.args([
        "test",
        "-p",
        "kvmtrace-tests",
        "--test",
        "it",
        "--no-run",
        "--message-format=json",
    ]);
    common(&mut test);
    let json = output(&mut test).context("building the integration tests")?;
    let tests = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "it")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("no `it` test executable in cargo's output")?;
    let bin = target_dir.join(TARGET).join("release");
    Ok(Binaries {
        kvmtrace: bin.join("kvmtrace"),
        testvm: bin.join("kvmtrace-testvm"),
        tests,
    })
}

fn initramfs(
    work: &Path,
    modules: &Path,
    busybox: &Path,
    bins: &Binaries,
) -> anyhow::Result<PathBuf> {
    let dir = work.join("initramfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    for sub in ["bin", "sbin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        let dest = dir.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    copy(busybox, "bin/busybox")?;
    copy(&root().join("tests/nested/init"), "init")?;
    copy(&bins.kvmtrace, "kvmtrace")?;
    copy(&bins.testvm, "kvmtrace-testvm")?;
    copy(&bins.tests, "it")?;
    let release = modules
        .file_name()
        .context("modules dir")?
        .to_string_lossy()
        .into_owned();
    for m in MODULES {
        copy(
            &modules.join("kernel").join(format!("{m}.ko")),
            &format!("lib/modules/{release}/kernel/{m}.ko"),
        )?;
    }
    let image = work.join("initramfs.cpio.gz");
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        dir.display(),
        image.display()
    );
    run(cmd("sh").args(["-c", &script]))?;
    Ok(image)
}

/// Boots L1 and returns its serial log. The console is echoed with an `L1| ` prefix.
fn boot(vmlinuz: &Path, initramfs: &Path, opts: &Options) -> anyhow::Result<String> {
    let mut qemu = cmd("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-m",
        "2G",
        "-machine",
        "pc",
    ])
    .args(["-smp", &opts.smp.to_string()])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-net",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .args([
        "-append",
        "console=ttyS0 panic=-1 softlockup_panic=1 loglevel=3 mitigations=off",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    // SAFETY: prctl in the child between fork and exec only sets its parent-death signal.
    unsafe {
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    eprintln!(
        "nested: booting L1 (QEMU TCG, -cpu max with SVM, {} CPUs), timeout {:?}",
        opts.smp, opts.timeout
    );
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + opts.timeout;
    let mut log = String::new();
    let mut err = std::io::stderr().lock();
    let timed_out = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                let _ = writeln!(err, "L1| {line}");
                log.push_str(line);
                log.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break true,
            Err(_) => {}
        }
    };
    // QEMU closed the console: give it a moment to exit by itself. Then, whatever happened,
    // never leave it behind.
    let grace = Instant::now() + Duration::from_secs(5);
    while !timed_out && Instant::now() < grace && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = child.wait()?;
    std::fs::write(work_dir().join("serial.log"), &log)?;
    if timed_out {
        bail!(
            "L1 did not finish within {:?} (serial log: target/nested/serial.log)",
            opts.timeout
        );
    }
    eprintln!("nested: QEMU exited ({status})");
    Ok(log)
}

/// Passes only if L1 reported its test run, the run exited 0, and it ran the expected tests;
/// returns how many passed.
fn verdict(log: &str) -> anyhow::Result<u64> {
    let rc = log
        .lines()
        .find_map(|l| l.split(RESULT_MARK).nth(1))
        .context(
            "L1 never reported a result (kernel panic or crash? see target/nested/serial.log)",
        )?;
    let summary = log
        .lines()
        .find(|l| l.starts_with("test result:"))
        .context("no libtest summary in L1's output")?;
    let passed = crate::sh::passed_in(summary);
    println!("nested L1: {summary}");
    if !rc.starts_with("0 ") || !summary.contains(" 0 failed") {
        bail!("the nested L1 tests failed: {summary} ({RESULT_MARK}{rc})");
    }
    if passed == 0 {
        bail!("the nested L1 run passed no test: {summary}");
    }
    Ok(passed)
}
