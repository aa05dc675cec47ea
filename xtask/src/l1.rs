//! The nested rig: an L1 Linux (a Debian kernel: 5.10, 6.1 or 6.12) under QEMU with software
//! emulation and an SVM CPU model, booted from an initramfs whose `/init` runs a test and reports on the serial
//! console. kvm_amd in L1 emits the real kvm:kvm_exit/kvm_entry this host's KVM (kvm_pvm) never
//! does, and L1 has nothing that was built here: no Rust, no LLVM, no libc unless a test puts one
//! in. The kernels, busybox and any other packages come from `apt-get download` and are cached
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

/// The module L1's tests need; its dependencies come from the kernel's own modules.dep.
const KVM_MODULE: &str = "kvm-amd";

/// A Debian kernel line the rig boots as L1: the kernels users run, oldest to newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLine {
    /// Debian 11 (bullseye), as RHEL 9's 5.14 and Ubuntu 22.04's 5.15 are close to it.
    V5_10,
    /// Debian 12 (bookworm).
    V6_1,
    /// Debian 13 (trixie), as Ubuntu 24.04's 6.8.
    V6_12,
}

impl KernelLine {
    pub const ALL: [KernelLine; 3] = [KernelLine::V5_10, KernelLine::V6_1, KernelLine::V6_12];

    /// "5.10", "6.1", "6.12": what `--kernel` takes and the fixtures' directory names.
    pub fn label(self) -> &'static str {
        match self {
            KernelLine::V5_10 => "5.10",
            KernelLine::V6_1 => "6.1",
            KernelLine::V6_12 => "6.12",
        }
    }

    /// The Debian suite whose linux-image-amd64 is this line.
    fn suite(self) -> &'static str {
        match self {
            KernelLine::V5_10 => "bullseye",
            KernelLine::V6_1 => "bookworm",
            KernelLine::V6_12 => "trixie",
        }
    }

    /// `5.10`, `6.1`, `6.12` or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<KernelLine>, String> {
        if s == "all" {
            return Ok(KernelLine::ALL.to_vec());
        }
        KernelLine::ALL
            .into_iter()
            .find(|k| k.label() == s)
            .map(|k| vec![k])
            .ok_or_else(|| format!("unknown kernel {s:?}: use 5.10, 6.1, 6.12 or all"))
    }
}

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

/// L1's kernel: the image, its unpacked modules directory (lib/modules/RELEASE), and the
/// modules kvm_amd needs in load order (paths relative to the modules directory).
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
    pub kvm_modules: Vec<String>,
}

/// Checks the rig's host tools and returns Debian's current kernel of `line` (the
/// linux-image-amd64 dependency in its suite), downloaded and unpacked once under
/// target/nested/kernel-LINE. The suite's package lists live in target/nested/apt/SUITE, apart
/// from the host's: nothing from another suite is installed on the host, or even known to its apt.
pub fn kernel(line: KernelLine) -> anyhow::Result<Kernel> {
    require(&[
        "qemu-system-x86_64",
        "cpio",
        "gzip",
        "xz",
        "find",
        "sh",
        "depmod",
        "dpkg-deb",
        "apt-get",
        "apt-cache",
    ])?;
    let kroot = work_dir().join(format!("kernel-{}", line.label()));
    if !kroot.join("boot").is_dir() {
        let apt = SuiteApt::new(line.suite())?;
        let deps = output(
            apt.command("apt-cache")
                .args(["depends", "linux-image-amd64"]),
        )
        .with_context(|| format!("apt-cache depends linux-image-amd64 in {}", line.suite()))?;
        let pkg = deps
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Depends: ")
                    .filter(|p| p.starts_with("linux-image-") && *p != "linux-image-amd64")
            })
            .with_context(|| {
                format!(
                    "no linux-image-* in {}'s linux-image-amd64 dependencies",
                    line.suite()
                )
            })?
            .to_string();
        let deb = apt.download(&pkg)?;
        let partial = work_dir().join(format!("kernel-{}.partial", line.label()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        std::fs::rename(&partial, &kroot)?;
    }
    // Since trixie, modules live under usr/lib/modules; depmod -b looks in lib/modules.
    if !kroot.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", kroot.join("lib"))?;
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
    let dep = std::fs::read_to_string(modules.join("modules.dep"))?;
    let kvm_modules = load_order(&dep, KVM_MODULE)
        .with_context(|| format!("no {KVM_MODULE} in {release}'s modules.dep"))?;
    Ok(Kernel {
        vmlinuz: kroot.join("boot").join(format!("vmlinuz-{release}")),
        modules,
        kvm_modules,
    })
}

/// The modules to insmod for `name`, dependencies first, from a modules.dep whose lines read
/// `kernel/x/name.ko[.xz]: dep1 dep2 ...` (modprobe loads the dependency list from its end).
fn load_order(modules_dep: &str, name: &str) -> Option<Vec<String>> {
    modules_dep.lines().find_map(|line| {
        let (module, deps) = line.split_once(':')?;
        let file = module.rsplit('/').next()?;
        let stem = file.split(".ko").next()?;
        (stem == name).then(|| {
            deps.split_whitespace()
                .rev()
                .chain(std::iter::once(module))
                .map(str::to_string)
                .collect()
        })
    })
}

/// apt-get and apt-cache on one Debian suite's package lists, kept under
/// target/nested/apt/SUITE and updated once.
struct SuiteApt {
    dir: PathBuf,
}

impl SuiteApt {
    fn new(suite: &str) -> anyhow::Result<SuiteApt> {
        let dir = work_dir().join("apt").join(suite);
        std::fs::create_dir_all(dir.join("lists/partial"))?;
        std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
        std::fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        let apt = SuiteApt { dir };
        let has_lists = std::fs::read_dir(apt.dir.join("lists"))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if !has_lists {
            run(apt.command("apt-get").arg("update")).with_context(|| {
                format!("apt-get update for {suite} (is the network to Debian's mirror up?)")
            })?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let d = self.dir.display();
        let mut c = cmd(program);
        for opt in [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::Cache={d}/cache"),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "Acquire::Languages=none".to_string(),
        ] {
            c.args(["-o", &opt]);
        }
        if !self.dir.join("status").exists() {
            let _ = std::fs::write(self.dir.join("status"), "");
        }
        c
    }

    fn download(&self, pkg: &str) -> anyhow::Result<PathBuf> {
        let debs = self.dir.join("debs");
        download_into(&debs, pkg, self.command("apt-get").arg("download").arg(pkg))
    }
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

/// `apt-get download PKG` (the host's own suite) into target/nested/debs (cached); returns the
/// .deb.
pub fn download(pkg: &str) -> anyhow::Result<PathBuf> {
    download_into(
        &work_dir().join("debs"),
        pkg,
        cmd("apt-get").arg("download").arg(pkg),
    )
}

/// Runs `download` (an `apt-get download PKG`) in `debs` unless a PKG_*.deb is there already.
fn download_into(
    debs: &Path,
    pkg: &str,
    download: &mut std::process::Command,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(debs)?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(debs)
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
    run(download.current_dir(debs)).with_context(|| {
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
        // Modules as /init loads them: uncompressed (busybox insmod reads plain .ko), listed in
        // load order in /modules.load.
        let mut load = String::new();
        for m in &kernel.kvm_modules {
            let plain = m.strip_suffix(".xz").unwrap_or(m);
            let dest = tree.dir.join(format!("lib/modules/{release}/{plain}"));
            std::fs::create_dir_all(dest.parent().context("module path")?)?;
            if plain == m {
                std::fs::copy(kernel.modules.join(m), &dest)
                    .with_context(|| format!("copying {m}"))?;
            } else {
                let xz = std::fs::File::open(kernel.modules.join(m))?;
                let out = std::fs::File::create(&dest)?;
                run(cmd("xz").args(["-dc"]).stdin(xz).stdout(out))
                    .with_context(|| format!("unpacking {m}"))?;
            }
            load.push_str(plain);
            load.push('\n');
        }
        std::fs::write(tree.dir.join("modules.load"), load)?;
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
        let mut image = self.dir.clone().into_os_string();
        image.push(".cpio.gz");
        let image = PathBuf::from(image);
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
    let mut quiet = false;
    let timed_out = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                // The tracepoint formats L1 prints go to the log only (kvm_exit's is 6 KB).
                if line.starts_with("KVMTRACE-FORMAT-BEGIN") {
                    quiet = true;
                }
                if !quiet {
                    let _ = writeln!(err, "L1| {line}");
                }
                if line == "KVMTRACE-FORMAT-END" {
                    quiet = false;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_dependencies_first() {
        // Lines as depmod writes them for Debian's 5.10 (rng-core is a module there) and 6.12.
        let dep_5_10 = "kernel/virt/lib/irqbypass.ko:\n\
            kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
            kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko \
            kernel/drivers/crypto/ccp/ccp.ko kernel/drivers/char/hw_random/rng-core.ko \
            kernel/virt/lib/irqbypass.ko\n";
        assert_eq!(
            load_order(dep_5_10, "kvm-amd").unwrap(),
            [
                "kernel/virt/lib/irqbypass.ko",
                "kernel/drivers/char/hw_random/rng-core.ko",
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
            ]
        );
        let dep_6_12 = "kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz\n";
        assert_eq!(
            load_order(dep_6_12, "kvm-amd").unwrap(),
            [
                "kernel/arch/x86/kvm/kvm.ko.xz",
                "kernel/arch/x86/kvm/kvm-amd.ko.xz"
            ]
        );
        assert!(load_order(dep_6_12, "kvm").is_none());
        assert_eq!(KernelLine::parse_list("all").unwrap(), KernelLine::ALL);
        assert!(
            KernelLine::parse_list("5.4")
                .unwrap_err()
                .contains("5.10, 6.1, 6.12")
        );
    }
}
