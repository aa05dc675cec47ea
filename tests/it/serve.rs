//! `kvmtrace serve` (issue 12): a real Prometheus (Debian's package, on a free loopback port with
//! a generated config and a 1 s scrape interval) scrapes the exporter while a test guest runs,
//! and its HTTP API returns the exact counts the guest made; `promtool check metrics` finds the
//! exposition clean; a VM that ended keeps its series for the grace period, then loses them, and
//! `-d NAME` follows the name to its next process.

use std::{
    io::Write as _,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Guest, STEP_TIMEOUT, kvmtrace_bin, line_reader, loaded_kvmtrace_programs, require_kvm_and_root,
    wait_line,
};

/// A loopback address with a port nobody listens on now.
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Plain HTTP, never through a proxy from the environment.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET `url`: the status and body.
fn get(url: &str) -> Result<String, ureq::Error> {
    agent().get(url).call()?.body_mut().read_to_string()
}

/// Polls `f` every 200 ms until it returns Some, for at most `limit`.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ids of the BPF programs process `pid` holds (from its fds' fdinfo: bpftool here cannot
/// tell which process holds a program, and other kvmtrace processes may run beside the test).
fn prog_ids_of(pid: u32) -> Vec<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let mut ids: Vec<u64> = fds
        .filter_map(|fd| {
            let fd = fd.ok()?;
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A running `kvmtrace serve`.
struct Serve {
    child: Option<Child>,
    addr: String,
    _stderr: Receiver<String>,
    /// The ids of the BPF programs it holds.
    programs: Vec<u64>,
}

impl Serve {
    /// Starts `kvmtrace serve --listen ADDR ARGS` and waits until it serves.
    fn start(args: &[&str]) -> Serve {
        let addr = free_addr();
        let mut child = Command::new(kvmtrace_bin())
            .args(["serve", "--listen", &addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kvmtrace serve");
        let stderr = line_reader(child.stderr.take().unwrap());
        let (banner, _) = wait_line(&stderr, "kvmtrace serve to start", |l| {
            l.starts_with("kvmtrace: serving") || l.contains("error")
        });
        assert!(
            banner.starts_with("kvmtrace: serving"),
            "kvmtrace serve failed: {banner}"
        );
        let programs = prog_ids_of(child.id());
        let loaded: Vec<u64> = loaded_kvmtrace_programs().iter().map(|p| p.id).collect();
        assert_eq!(programs.len(), 9, "kvmtrace's programs while serving");
        assert!(
            programs.iter().all(|id| loaded.contains(id)),
            "{programs:?} in {loaded:?}"
        );
        Serve {
            child: Some(child),
            addr,
            _stderr: stderr,
            programs,
        }
    }

    fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.addr)).expect("GET /metrics")
    }

    /// Sends `signal`, waits for the exporter to end, and checks it left no program loaded.
    fn stop(mut self, signal: i32) -> Output {
        let child = self.child.take().unwrap();
        let pid = child.id();
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(pid as i32, signal) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("kvmtrace serve did not exit within {STEP_TIMEOUT:?}");
            }
        };
        let left: Vec<u64> = loaded_kvmtrace_programs()
            .iter()
            .map(|p| p.id)
            .filter(|id| self.programs.contains(id))
            .collect();
        assert_eq!(
            left, [0u64; 0],
            "programs left loaded after kvmtrace serve ended"
        );
        out
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample line `series` (exactly as exposed, labels included) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A Prometheus server of our own: a temporary directory with its config and database, on a
/// free loopback port, scraping `target` every second. Killed and removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("kvmtrace-it-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kvmtrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian package prometheus; cargo xtask setup)");
        let p = Prometheus {
            child,
            dir,
            url: format!("http://{addr}"),
        };
        poll("Prometheus to be ready", STEP_TIMEOUT, || {
            get(&format!("{}/-/ready", p.url)).ok()
        });
        p
    }

    /// The instant vector of `promql`: (labels, value) of each series.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let body = agent()
            .get(format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `promql`, once there is one.
    fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [] => None,
            [(_, v)] => Some(*v),
            many => panic!("{promql}: several series {many:#?}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 12: 20 000 port writes, scraped by a real Prometheus, are 20 000 in its database; the
/// exposition passes promtool; SIGTERM detaches everything and ends with status 0.
#[test]
fn prometheus_sees_exact_counts() {
    require_kvm_and_root();
    let mut guest = Guest::start("it-serve", &["--run", "pio_out,port=0x70,count=20000"]);
    // Every VM on the host, as a host's exporter runs; the guest runs before serve starts.
    let serve = Serve::start(&["--interval", "500ms"]);
    let prom = Prometheus::start(&serve.addr);
    poll("Prometheus to scrape the exporter", STEP_TIMEOUT, || {
        (prom.value(r#"up{job="kvmtrace"}"#) == Some(1.0)).then_some(())
    });
    guest.go();
    guest.wait_finished();

    let port =
        r#"kvmtrace_detail_events_total{vm="it-serve",kind="port",key="0x0070",access="out"}"#;
    let seen = poll("Prometheus to have all port writes", STEP_TIMEOUT, || {
        prom.value(port).filter(|&v| v >= 20_000.0)
    });
    assert_eq!(seen, 20_000.0, "{port}");
    let done_port =
        r#"kvmtrace_detail_events_total{vm="it-serve",kind="port",key="0x00f0",access="out"}"#;
    let io = r#"kvmtrace_userspace_exits_total{vm="it-serve",reason="IO"}"#;
    // Every IO exit went to the VMM and back except the last (the done port), whose vCPU thread
    // ended before re-entering: 20 000 timed round trips.
    let round_trips = r#"kvmtrace_vmm_round_trip_seconds_count{vm="it-serve",reason="IO"}"#;
    let all_trips =
        r#"kvmtrace_vmm_round_trip_seconds_bucket{vm="it-serve",reason="IO",le="+Inf"}"#;
    // Two more scrapes at least: the counts stay exact (nothing counted twice).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prom.value(port), Some(20_000.0), "{port}");
    assert_eq!(prom.value(done_port), Some(1.0), "{done_port}");
    assert_eq!(prom.value(io), Some(20_001.0), "{io}");
    assert_eq!(prom.value(round_trips), Some(20_000.0), "{round_trips}");
    assert_eq!(prom.value(all_trips), Some(20_000.0), "{all_trips}");
    assert_eq!(
        prom.value(r#"kvmtrace_vm_running{vm="it-serve"}"#),
        Some(1.0)
    );
    for loss in ["latency_map_full", "detail_map_full", "thread_map_full"] {
        let q = format!(r#"kvmtrace_tracer_losses_total{{loss="{loss}"}}"#);
        assert_eq!(prom.value(&q), Some(0.0), "{q}");
    }
    // The in-kernel exits: on hosts that fire kvm_exit (not kvm_pvm), the guest's IO exits.
    let exits =
        prom.value(r#"sum(kvmtrace_exits_total{vm="it-serve",reason=~"IO_INSTRUCTION|io"})"#);
    let kvm_exits = prom.value(r#"kvmtrace_tracer_events_total{event="kvm_exit"}"#);
    if kvm_exits.unwrap_or(0.0) > 0.0 {
        assert_eq!(exits, Some(20_001.0));
    }

    // The exposition as any client gets it (Prometheus text) is clean for promtool.
    let metrics = serve.metrics();
    assert_eq!(
        sample(
            &metrics,
            &format!(
                r#"kvmtrace_detail_events_total{{vm="it-serve",pid="{}",kind="port",key="0x0070",access="out"}}"#,
                guest.pid
            )
        ),
        Some(20_000.0),
        "{metrics}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(
        get(&format!("http://{}/healthz", serve.addr)).unwrap(),
        "ok"
    );

    let out = serve.stop(libc::SIGTERM);
    assert!(out.status.success(), "{:?}", out.status);
}

/// Issue 12: with `-d NAME`, only that VM is exported; once it ended it keeps its series (with
/// its final counts) for --grace, then they are gone; then `-d NAME` follows the name to the
/// VM's next process.
#[test]
fn gone_vms_leave_after_the_grace_period() {
    require_kvm_and_root();
    let name = "it-serve-gone";
    let mut guest = Guest::start(name, &["--run", "pio_out,port=0x70,count=1000"]);
    // Another VM, running all along: not followed.
    let mut other = Guest::start("it-serve-other", &["--run", "pio_out,port=0x80,count=1000"]);
    let serve = Serve::start(&["-d", name, "--interval", "200ms", "--grace", "2s"]);
    other.go();
    guest.go();
    guest.wait_finished();
    other.wait_finished();
    let pid = guest.pid;
    let port = |pid: u32| {
        format!(
            r#"kvmtrace_detail_events_total{{vm="{name}",pid="{pid}",kind="port",key="0x0070",access="out"}}"#
        )
    };
    let running = |pid: u32| format!(r#"kvmtrace_vm_running{{vm="{name}",pid="{pid}"}}"#);
    poll("the port writes in /metrics", STEP_TIMEOUT, || {
        sample(&serve.metrics(), &port(pid)).filter(|&v| v == 1000.0)
    });
    let m = serve.metrics();
    assert_eq!(sample(&m, &running(pid)), Some(1.0));
    assert!(
        !m.contains("it-serve-other"),
        "a VM not named is exported: {m}"
    );

    drop(guest); // killed
    let gone = Instant::now();
    // Within the grace period: still there, final count and all, marked not running.
    let m = poll("the VM to be noted gone", STEP_TIMEOUT, || {
        let m = serve.metrics();
        (sample(&m, &running(pid)) == Some(0.0)).then_some(m)
    });
    assert_eq!(sample(&m, &port(pid)), Some(1000.0), "{m}");
    let noted = gone.elapsed();
    // Still so a few intervals later.
    std::thread::sleep(Duration::from_secs(1));
    let m = serve.metrics();
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "too slow to check the grace period"
    );
    assert_eq!(sample(&m, &running(pid)), Some(0.0), "{m}");
    assert_eq!(sample(&m, &port(pid)), Some(1000.0), "{m}");
    let m = poll("the VM's series to go", STEP_TIMEOUT, || {
        let m = serve.metrics();
        (!m.contains(&format!("pid=\"{pid}\""))).then_some(m)
    });
    let removed = gone.elapsed();
    eprintln!("noted gone after {noted:?}, series removed after {removed:?}");
    assert!(
        removed >= Duration::from_secs(2) && removed < Duration::from_secs(5),
        "removed {removed:?} after the VM ended (grace 2s, interval 200ms)"
    );
    assert_eq!(sample(&m, "kvmtrace_series"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "kvmtrace_vms"), Some(0.0), "{m}");

    // The same name again, a new process: followed.
    let mut again = Guest::start(name, &["--run", "pio_out,port=0x70,count=500"]);
    // Give serve an interval to find it before the guest runs.
    poll("serve to follow the restarted VM", STEP_TIMEOUT, || {
        (sample(&serve.metrics(), &running(again.pid)) == Some(1.0)).then_some(())
    });
    again.go();
    again.wait_finished();
    poll("the restarted VM's port writes", STEP_TIMEOUT, || {
        sample(&serve.metrics(), &port(again.pid)).filter(|&v| v >= 500.0)
    });
    assert_eq!(sample(&serve.metrics(), &port(again.pid)), Some(500.0));

    let out = serve.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.status);
}
