//! The nested rig: an L1 Linux (Debian's 6.1 kernel) under QEMU with software emulation and an
//! SVM CPU model, booted from an initramfs whose `/init` runs a test and reports on the serial
//! console. kvm_amd in L1 emits the real kvm:kvm_exit/kvm_entry this host's KVM (kvm_pvm) never
//! does, and L1 has nothing that was built here: no Rust, no LLVM, no libc unless a test puts one
//! in. The kernel, busybox and any other packages come from `apt-get download` and are cached
//! under target/nested/, so a warm run is initramfs + boot + test.
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

use crate::{
    requirements::require,
    sh::{cmd, output, run},
};

/// Modules kvm_amd needs on Debian's 6.1, in load order (each init script loads them).
const MODULES: [&str; 4] = [
    "virt/lib/irqbypass",
    "drivers/crypto/ccp/ccp",
    "arch/x86/kvm/kvm",
    "arch/x86/kvm/kvm-amd",
];

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

pub fn work_dir() -> PathBuf {
    crate::sh::root().join("target/nested")
}

/// L1's kernel: the image and its unpacked modules directory (lib/modules/RELEASE).
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// Checks the rig's host tools and returns Debian's current 6.1 kernel (the linux-image-amd64
/// dependency), downloaded and unpacked once.
pub fn kernel() -> anyhow::Result<Kernel> {
    require(&[
        "qemu-system-x86_64",
        "cpio",
        "gzip",
        "find",
        "sh",
        "depmod",
        "dpkg-deb",
        "apt-get",
        "apt-cache",
    ])?;
    let work = work_dir();
    std::fs::create_dir_all(&work)?;
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
        let deb = download(&pkg)?;
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
    Ok(Kernel {
        vmlinuz: kroot.join("boot").join(format!("vmlinuz-{release}")),
        modules,
    })
}

fn busybox() -> anyhow::Result<PathBuf> {
    let work = work_dir();
    let bb = work.join("bbroot/bin/busybox");
    if !bb.exists() {
        let deb = download("busybox-static")?;
        run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(work.join("bbroot")))?;
    }
    Ok(bb)
}

/// `apt-get download PKG` into target/nested/debs (cached); returns the .deb.
pub fn download(pkg: &str) -> anyhow::Result<PathBuf> {
    let debs = work_dir().join("debs");
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

/// An initramfs tree being filled: busybox, the kvm_amd modules and an `/init`, plus whatever
/// the test adds.
pub struct Initramfs {
    dir: PathBuf,
}

impl Initramfs {
    /// A fresh tree in target/nested/NAME with `init` (a file in the repository) as /init.
    pub fn new(name: &str, kernel: &Kernel, init: &str) -> anyhow::Result<Initramfs> {
        let dir = work_dir().join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        for sub in ["bin", "sbin", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let tree = Initramfs { dir };
        tree.copy(&busybox()?, "bin/busybox")?;
        tree.copy(&crate::sh::root().join(init), "init")?;
        let release = kernel
            .modules
            .file_name()
            .context("modules dir")?
            .to_string_lossy()
            .into_owned();
        for m in MODULES {
            tree.copy(
                &kernel.modules.join("kernel").join(format!("{m}.ko")),
                &format!("lib/modules/{release}/kernel/{m}.ko"),
            )?;
        }
        Ok(tree)
    }

    /// Copies `from` to `to` (relative to the initramfs root).
    pub fn copy(&self, from: &Path, to: &str) -> anyhow::Result<()> {
        let dest = self.dir.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    }

    /// Unpacks the files of a downloaded Debian package into the root (a package L1 needs to
    /// run a test, not the package under test).
    pub fn unpack(&self, deb: &Path) -> anyhow::Result<()> {
        run(cmd("dpkg-deb").arg("-x").arg(deb).arg(&self.dir))
    }

    /// Removes `rel` (a directory) from the tree, to keep the image small.
    pub fn prune(&self, rel: &str) -> anyhow::Result<()> {
        let path = self.dir.join(rel);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        Ok(())
    }

    /// Packs the tree into target/nested/NAME.cpio.gz.
    pub fn pack(self) -> anyhow::Result<PathBuf> {
        let image = self.dir.with_extension("cpio.gz");
        let script = format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            self.dir.display(),
            image.display()
        );
        run(cmd("sh").args(["-c", &script]))?;
        Ok(image)
    }
}

/// Boots L1 and returns its serial log (also saved to target/nested/LOG_NAME). The console is
/// echoed with an `L1| ` prefix.
pub fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    opts: &Options,
    log_name: &str,
) -> anyhow::Result<String> {
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
    .arg(&kernel.vmlinuz)
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
        "l1: booting L1 (QEMU TCG, -cpu max with SVM, {} CPUs), timeout {:?}",
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
    std::fs::write(work_dir().join(log_name), &log)?;
    if timed_out {
        bail!(
            "L1 did not finish within {:?} (serial log: target/nested/{log_name})",
            opts.timeout
        );
    }
    eprintln!("l1: QEMU exited ({status})");
    Ok(log)
}
