//! The .deb where nothing was built: boots the nested rig's L1 ([`crate::l1`], Debian's 6.1 with
//! kvm_amd) with Debian's own dpkg in its initramfs, and there (tests/nested/init-deb) runs
//! `dpkg -i` on the package and records a test guest with the installed /usr/bin/kvmtrace. L1 has
//! busybox, dpkg and the libraries dpkg needs, and nothing of Rust, LLVM, clang or kernel headers.
//! Passes only if dpkg installed the binary, man pages and completions, and the report counts
//! exactly the guest's port writes, with real SVM exits behind them.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, bail, ensure};

use crate::{
    l1::{self, Initramfs, Options},
    static_build,
};

/// Debian's dpkg (bookworm) and what it runs on: GNU tar (dpkg-deb extracts with it; busybox tar
/// lacks its options), ldconfig (dpkg refuses to run without it in PATH), and the shared
/// libraries of all three. Unpacked into the initramfs, not installed: this L1 has no dpkg yet.
const DPKG_AND_DEPENDENCIES: [&str; 12] = [
    "dpkg",
    "tar",
    "libc-bin",
    "libc6",
    "libacl1",
    "libbz2-1.0",
    "liblzma5",
    "libmd0",
    "libpcre2-8-0",
    "libselinux1",
    "libzstd1",
    "zlib1g",
];
/// Parts of those packages L1 never reads (locales, charset converters, docs): 20 MB less to pack
/// and boot.
const PRUNED: [&str; 5] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "usr/lib/x86_64-linux-gnu/gconv",
];
const RESULT_MARK: &str = "KVMTRACE-DEB-RESULT rc=";
/// The port the guest in tests/nested/init-deb writes (its plan: `pio_out,port=0x70,count=5000`).
const GUEST_PORT: u64 = 0x70;

pub fn install_and_record(deb: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let kernel = l1::kernel(l1::KernelLine::V6_1)?;
    let bins = static_build::binaries()?;
    let tree = Initramfs::new("initramfs-deb", &kernel, "tests/nested/init-deb")?;
    for pkg in DPKG_AND_DEPENDENCIES {
        tree.unpack(&l1::download(pkg)?)?;
    }
    for dir in PRUNED {
        tree.prune(dir)?;
    }
    tree.copy(deb, "kvmtrace.deb")?;
    tree.copy(&bins.testvm, "kvmtrace-testvm")?;
    let initramfs = tree.pack()?;
    let prepared = started.elapsed();
    let log = l1::boot(&kernel, &initramfs, opts, "serial-deb.log")?;
    eprintln!(
        "deb-l1: prepared in {:.1} s, L1 boot + dpkg -i + record in {:.1} s",
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
    verdict(&log)
}

/// The lines of `log` between `begin` and `end` marker lines.
fn section<'a>(log: &'a str, name: &str) -> anyhow::Result<Vec<&'a str>> {
    let (begin, end) = (format!("{name}-BEGIN"), format!("{name}-END"));
    let mut lines = log.lines().skip_while(|l| *l != begin);
    ensure!(
        lines.next().is_some(),
        "no {begin} in L1's output (see target/nested/serial-deb.log)"
    );
    Ok(lines.take_while(|l| *l != end).collect())
}

fn verdict(log: &str) -> anyhow::Result<()> {
    let rc = log
        .lines()
        .find_map(|l| l.split(RESULT_MARK).nth(1))
        .context("L1 never reported a result (see target/nested/serial-deb.log)")?;
    if rc != "0" {
        bail!("the .deb test in L1 failed: {RESULT_MARK}{rc} (see target/nested/serial-deb.log)");
    }
    let files = section(log, "KVMTRACE-DEB-FILES")?;
    for path in [
        "/usr/bin/kvmtrace",
        "/usr/share/man/man1/kvmtrace-record.1.gz",
        "/usr/share/bash-completion/completions/kvmtrace",
        "/usr/share/zsh/vendor-completions/_kvmtrace",
        "/usr/share/fish/vendor_completions.d/kvmtrace.fish",
    ] {
        ensure!(
            files.contains(&path),
            "dpkg -L kvmtrace lacks {path}: {files:#?}"
        );
    }
    let report = section(log, "KVMTRACE-DEB-REPORT")?.join("\n");
    let report: serde_json::Value = serde_json::from_str(&report)
        .with_context(|| format!("the L1 report is not JSON: {report}"))?;
    let vms = report["vms"]
        .as_array()
        .context("no vms in the L1 report")?;
    ensure!(
        vms.len() == 1 && vms[0]["name"] == "deb-vm",
        "expected the one VM deb-vm: {vms:#?}"
    );
    let vm = &vms[0];
    // The guest's own count: `result vcpu=0 ... step="pio_out port=0x70" exits=5000 ...`.
    let guest_writes: u64 = log
        .lines()
        .filter(|l| l.starts_with("result ") && l.contains("step=\"pio_out port=0x70\""))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("exits=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    ensure!(guest_writes > 0, "no guest result line in L1's output");
    let port_writes: u64 = vm["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["port"] == GUEST_PORT && r["direction"] == "out")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    ensure!(
        port_writes == guest_writes,
        "the guest wrote port {GUEST_PORT:#x} {guest_writes} times, kvmtrace counted {port_writes}: {:#}",
        vm["ports"]
    );
    let io_exits: u64 = vm["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["isa"] == "SVM" && r["reason"] == "io")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    ensure!(
        io_exits >= guest_writes,
        "expected at least {guest_writes} real SVM io exits (kvm_exit), got {io_exits}: {:#}",
        vm["exits"]
    );
    println!(
        "deb-l1: dpkg -i installed {} paths; the installed kvmtrace counted {port_writes} port \
         {GUEST_PORT:#x} writes of the guest's {guest_writes} and {io_exits} SVM io exits",
        files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::verdict;

    /// An L1 log as tests/nested/init-deb prints it, cut to what the verdict reads.
    fn log(port_count: u64, rc: u32) -> String {
        let files = [
            "/usr/bin/kvmtrace",
            "/usr/share/man/man1/kvmtrace-record.1.gz",
            "/usr/share/bash-completion/completions/kvmtrace",
            "/usr/share/zsh/vendor-completions/_kvmtrace",
            "/usr/share/fish/vendor_completions.d/kvmtrace.fish",
        ]
        .join("\n");
        format!(
            "KVMTRACE-DEB-FILES-BEGIN\n{files}\nKVMTRACE-DEB-FILES-END\n\
             result vcpu=0 tid=126 step=\"pio_out port=0x70\" exits=5000 batches=1 secs=1.2 rate=4075\n\
             KVMTRACE-DEB-REPORT-BEGIN\n\
             {{\"vms\": [{{\"name\": \"deb-vm\",\n\
             \"ports\": [{{\"port\": 112, \"direction\": \"out\", \"count\": {port_count}}}],\n\
             \"exits\": [{{\"isa\": \"SVM\", \"reason\": \"io\", \"count\": 5001}}]}}]}}\n\
             KVMTRACE-DEB-REPORT-END\nKVMTRACE-DEB-RESULT rc={rc}\n"
        )
    }

    #[test]
    fn passes_when_kvmtrace_counts_what_the_guest_did() {
        verdict(&log(5000, 0)).unwrap();
    }

    #[test]
    fn fails_on_a_wrong_count_or_a_failed_step() {
        let err = verdict(&log(4999, 0)).unwrap_err().to_string();
        assert!(
            err.contains("wrote port 0x70 5000 times, kvmtrace counted 4999"),
            "{err}"
        );
        let err = verdict(&log(5000, 1)).unwrap_err().to_string();
        assert!(err.contains("KVMTRACE-DEB-RESULT rc=1"), "{err}");
    }
}
