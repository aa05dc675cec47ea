//! Starting guests and recorders, with timeouts everywhere and nothing left running on failure.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::mpsc::{Receiver, channel},
    time::Duration,
};

use serde_json::Value;

pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks what every test here needs; panics with the reason otherwise.
pub fn require_kvm_and_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (BPF and /dev/kvm)"
    );
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm"
    );
}

/// The kvmtrace binary: $KVMTRACE_BIN, else next to this test's target directory.
pub fn kvmtrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KVMTRACE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("kvmtrace");
    assert!(
        bin.exists(),
        "{} not built (cargo build -p kvmtrace, or set KVMTRACE_BIN)",
        bin.display()
    );
    bin
}

/// The test guest: $KVMTRACE_TESTVM_BIN (set inside the nested L1), else the one cargo built.
pub fn testvm_bin() -> PathBuf {
    std::env::var_os("KVMTRACE_TESTVM_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_kvmtrace-testvm").into(),
        PathBuf::from,
    )
}

/// A fresh path `name` in the tests' temporary directory (any file left there is removed).
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("kvmtrace-it");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Lines of a child's stream, readable with a timeout.
pub fn line_reader(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line that matches `pred`; returns it and the lines before it.
pub fn wait_line(
    rx: &Receiver<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(line) if pred(&line) => return (line, seen),
            Ok(line) => seen.push(line),
            Err(e) => panic!("waiting for {what}: {e}; saw {seen:#?}"),
        }
    }
}

/// A kvmtrace-testvm process, set up and waiting to start.
pub struct Guest {
    pub name: String,
    pub pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
}

impl Guest {
    /// Starts a guest named `name`; `args` are its --vcpus/--run arguments.
    pub fn start(name: &str, args: &[&str]) -> Guest {
        Guest::start_raw(
            &testvm_bin(),
            format!("guest={name},debug-threads=on").as_ref(),
            name,
            args,
        )
    }

    /// Starts `program` (the test VMM, or a link to it: the link's name becomes the process's
    /// comm) with `-name NAME_ARG` given as is, any bytes. `name` is what `-d` should find it by.
    pub fn start_raw(
        program: &std::path::Path,
        name_arg: &std::ffi::OsStr,
        name: &str,
        args: &[&str],
    ) -> Guest {
        let mut child = Command::new(program)
            .arg("-name")
            .arg(name_arg)
            .args(["--start-on-stdin", "--timeout", "120"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting kvmtrace-testvm");
        let stdin = child.stdin.take();
        let stdout = line_reader(child.stdout.take().unwrap());
        let mut guest = Guest {
            name: name.into(),
            pid: child.id(),
            child,
            stdin,
            stdout,
        };
        let (line, _) = wait_line(&guest.stdout, "the guest to be ready", |l| {
            l.starts_with("ready pid=")
        });
        assert_eq!(line, format!("ready pid={}", guest.pid));
        guest.pid = guest.child.id();
        guest
    }

    /// Lets the vCPUs run their plan.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("guest already released");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until every vCPU has finished its plan; returns the `result` lines.
    pub fn wait_finished(&mut self) -> Vec<String> {
        let (_, lines) = wait_line(&self.stdout, "the guest to finish", |l| l == "finished");
        lines
            .into_iter()
            .filter(|l| l.starts_with("result "))
            .collect()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kvmtrace record`.
pub struct Recorder {
    child: Option<Child>,
    stderr: Receiver<String>,
}

impl Recorder {
    /// Starts `kvmtrace record ARGS` and waits until it is recording.
    pub fn start(args: &[&str]) -> Recorder {
        Recorder::start_os(&args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>())
    }

    /// [`Recorder::start`] with arguments that need not be UTF-8.
    pub fn start_os(args: &[&std::ffi::OsStr]) -> Recorder {
        Recorder::start_with_env(args, &[])
    }

    /// [`Recorder::start_os`] with extra environment variables.
    pub fn start_with_env(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Recorder {
        let mut child = Command::new(kvmtrace_bin())
            .arg("record")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kvmtrace");
        let stderr = line_reader(child.stderr.take().unwrap());
        let (banner, _) = wait_line(&stderr, "kvmtrace to start recording", |l| {
            l.starts_with("kvmtrace: recording") || l.contains("error")
        });
        assert!(
            banner.starts_with("kvmtrace: recording"),
            "kvmtrace failed: {banner}"
        );
        Recorder {
            child: Some(child),
            stderr,
        }
    }

    /// Waits for a stderr line after the banner that matches `pred`, and returns it.
    pub fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stderr, what, pred).0
    }

    /// Sends `signal` and collects the output (stderr already consumed up to the banner).
    pub fn stop(mut self, signal: i32) -> Output {
        let child = self.child.take().unwrap();
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait(child)
    }

    /// Waits for the recorder to end by itself (--duration).
    pub fn wait_exit(mut self) -> Output {
        let child = self.child.take().unwrap();
        self.wait(child)
    }

    fn wait(&self, child: Child) -> Output {
        let pid = child.id();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("kvmtrace did not exit within {STEP_TIMEOUT:?}");
            }
        };
        let mut out = out;
        out.stderr = self
            .stderr
            .try_iter()
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes();
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a guest plan while `kvmtrace record -d NAME --interval 200ms EXTRA` records it, stops
/// the recorder with SIGINT and returns its output.
pub fn record_guest_output(guest: &mut Guest, extra: &[&str]) -> Output {
    let name = guest.name.clone();
    let mut args = vec!["-d", name.as_str(), "--interval", "200ms"];
    args.extend_from_slice(extra);
    record_guest_with(guest, &args)
}

/// Runs a guest plan while `kvmtrace record ARGS` records it, stops the recorder with SIGINT
/// once the guest is done, and returns its (successful) output.
pub fn record_guest_with(guest: &mut Guest, args: &[&str]) -> Output {
    let recorder = Recorder::start(args);
    guest.go();
    guest.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "kvmtrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like [`record_guest_output`] with `--json`; returns the parsed report and the guest's results.
pub fn record_guest(guest: &mut Guest, extra: &[&str]) -> (Value, Vec<String>) {
    let mut args = vec!["-d", guest.name.as_str(), "--json", "--interval", "200ms"];
    args.extend_from_slice(extra);
    let recorder = Recorder::start(&args);
    guest.go();
    let results = guest.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "kvmtrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (parse_json(&out.stdout), results)
}

/// Lets `guest` run for `running_for`, then records it (already running) for `duration` with
/// `--json`, and returns the report: how users attach to VMs that have run for a while.
pub fn record_running(guest: &mut Guest, running_for: Duration, duration: &str) -> Value {
    guest.go();
    std::thread::sleep(running_for);
    let name = guest.name.clone();
    record_to_end(&[
        "-d",
        &name,
        "--duration",
        duration,
        "--interval",
        "500ms",
        "--json",
    ])
}

/// Runs `kvmtrace record ARGS` until it ends by itself (ARGS has `--duration` and `--json`),
/// asserts that it succeeded, and returns its report.
pub fn record_to_end(args: &[&str]) -> Value {
    let out = Recorder::start(args).wait_exit();
    assert!(
        out.status.success(),
        "kvmtrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_json(&out.stdout)
}

/// A CPU row's kernel figure agrees with procfs's: within 35 %, or within two clock ticks for
/// small totals (where procfs has only utime + stime, in ticks, each rounded down).
///
/// 35 %, not 5 %: measured on this machine, a vCPU halting on a 2 ms timer (~3-5 % of a CPU) is
/// off both ways, and the gap is not kvmtrace's. On 2026-11-26 (Intel Xeon host) schedstat read
/// 8-9 % more than kvmtrace's sched_switch/kvm_fpu accounting (4.42 vs 4.84 %, 4.51 vs 4.93 %,
/// 4.63 vs 5.10 %); in a CI run on 2026-11-27 kvmtrace read 12 % more (6.05 vs 5.41 %). On
/// 2026-11-27 on an AMD EPYC host schedstat read 20-26 % more (2.72 vs 3.37 %, 2.48 vs 3.22 %,
/// 3.21 vs 3.99 %, 2.12 vs 2.85 %), and a bpftrace script summing the same vCPU thread's time
/// between its own sched_switch events, with kvmtrace not loaded, read 22 % less than schedstat
/// over the same 5 s (128 ms against about 164 ms): sched_switch-based accounting itself misses
/// that time on this host (about 14 µs per halt), so the gap says nothing about kvmtrace. Busy
/// vCPUs agree within 1 %.
///
/// Where this host is itself a VM, the time its hypervisor stole while a vCPU thread ran is on
/// CPU for kvmtrace (wall clock between context switches) and not for procfs (the scheduler's
/// task clock): the report's `host_steal_pct` (of all CPUs) bounds that, all of it landing on one
/// thread at worst, and widens the tolerance by it.
pub fn assert_cpu_matches_procfs(report: &Value, row: &Value) {
    let (cpu, procfs) = (
        row["cpu_pct"].as_f64().unwrap(),
        row["procfs_cpu_pct"].as_f64().unwrap(),
    );
    let wall = row["wall_secs"].as_f64().unwrap();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    let steal = report["host_steal_pct"].as_f64().unwrap_or(0.0) * cpus;
    let tolerance = (0.35 * procfs).max(2.0 * 100.0 / ticks_per_sec / wall)
        + if cpu > procfs { steal } else { 0.0 };
    assert!(
        (cpu - procfs).abs() <= tolerance,
        "vCPU {}: kernel {cpu:.2}% vs procfs {procfs:.2}% (tolerance {tolerance:.2}, host steal {steal:.2} % of a CPU): {row:#}",
        row["vcpu"]
    );
}

/// CPU time this host's own hypervisor stole from all its CPUs (the `steal` of /proc/stat) since
/// [`HostSteal::start`]: read by the test itself, not by kvmtrace.
pub struct HostSteal(u64);

impl HostSteal {
    /// How far [`HostSteal::stolen_ns`] can fall short of the truth: /proc/stat counts in
    /// USER_HZ ticks (10 ms, rounded down at both ends), and the kernel accounts steal at its
    /// own ticks (up to one per CPU not yet accounted at the end; 4 ms at HZ=250, 10 ms at 100).
    pub const SLACK_NS: u64 = 10_000_000 + 2 * 10_000_000;

    pub fn start() -> HostSteal {
        HostSteal(Self::ticks())
    }

    pub fn stolen_ns(&self) -> u64 {
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Self::ticks().saturating_sub(self.0) * 1_000_000_000 / per_sec
    }

    fn ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        // cpu  user nice system idle iowait irq softirq steal ...
        stat.lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(8))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

pub fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// `kvmtrace ARGS`, which must succeed; returns stdout.
/// `kvmtrace ARGS`, run to completion.
pub fn kvmtrace(args: &[&str]) -> Output {
    Command::new(kvmtrace_bin())
        .args(args)
        .output()
        .expect("running kvmtrace")
}

pub fn kvmtrace_ok(args: &[&str]) -> Vec<u8> {
    let out = kvmtrace(args);
    assert!(
        out.status.success(),
        "kvmtrace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The report's VM with `pid`.
pub fn vm_of(report: &Value, pid: u32) -> &Value {
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["pid"] == pid)
        .unwrap_or_else(|| panic!("no VM {pid} in {report:#}"))
}

/// Rows of `table` (ports, mmio, msrs, cpuid, userspace_exits) matching all `(field, value)`s.
pub fn rows<'a>(vm: &'a Value, table: &str, filter: &[(&str, Value)]) -> Vec<&'a Value> {
    vm[table]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| filter.iter().all(|(k, v)| &r[*k] == v))
        .collect()
}

/// The single row matching `filter`, and its count.
pub fn count_of(vm: &Value, table: &str, filter: &[(&str, Value)]) -> u64 {
    let hits = rows(vm, table, filter);
    assert_eq!(
        hits.len(),
        1,
        "expected one {table} row for {filter:?}, got {hits:#?}"
    );
    hits[0]["count"].as_u64().unwrap()
}

/// One loaded BPF program, from `bpftool -j prog show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prog {
    pub id: u64,
    pub name: String,
}

/// The name kvmtrace's program for a tracepoint has under the attach mode of this test run:
/// the raw tracepoint variant (`kvmtrace_pio_raw`) by default, the classic one with
/// `KVMTRACE_ATTACH=classic` (the suite runs both ways).
pub fn program_name(classic: &str) -> String {
    let classic_only = std::env::var("KVMTRACE_ATTACH").as_deref() == Ok("classic");
    kvmtrace_common::programs::RAW
        .iter()
        .find(|(c, _)| *c == classic)
        .filter(|_| !classic_only)
        .map_or(classic, |(_, raw)| raw)
        .to_string()
}

/// Those of the programs `ids` still loaded, after waiting up to 2 s for them to go: the kernel
/// frees a raw tracepoint program one RCU grace period after its link closed, a moment after
/// the process that held it is gone.
pub fn programs_left(ids: &[u64]) -> Vec<Prog> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<Prog> = loaded_kvmtrace_programs()
            .into_iter()
            .filter(|p| ids.contains(&p.id))
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kvmtrace's BPF programs currently loaded (names kvmtrace_*), by any process.
pub fn loaded_kvmtrace_programs() -> Vec<Prog> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("kvmtrace_").then(|| Prog {
                id: p["id"].as_u64().unwrap_or(0),
                name: name.to_string(),
            })
        })
        .collect()
}
