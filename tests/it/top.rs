//! `kvmtrace top` on real guests: the batch frames count every port write exactly and show the
//! storm; the terminal UI, driven in tmux as a person would (keys in, screen out), drills down
//! to the guest's port, and leaves the terminal as it found it on q, Ctrl-C and SIGTERM.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{
    Guest, kvmtrace_bin, line_reader, loaded_kvmtrace_programs, programs_left,
    require_kvm_and_root, wait_line,
};

/// Port 0x70 writes of a guest that starts only once top runs: 20 000 at 10 000/s (this host's
/// vCPU makes at most ~16 000 port exits/s), a storm at --storm-rate 5000 for 2 s.
const WRITES: u64 = 20_000;
const PORT_ROW: &str = "port 0x0070 (RTC index) out 1B";

/// The events in parentheses after the rate on a batch row: `NAME   RATE/s   (COUNT)  ...`.
fn count_on(line: &str) -> u64 {
    let after = &line[line.find("/s").unwrap() + 2..];
    let (open, close) = (after.find('(').unwrap(), after.find(')').unwrap());
    after[open + 1..close].parse().unwrap()
}

#[test]
fn batch_frames_count_every_port_write_and_show_the_storm() {
    require_kvm_and_root();
    let mut guest = Guest::start(
        "it-top-batch",
        &[
            "--run",
            &format!("pio_out,port=0x70,count={WRITES},rate=10000"),
        ],
    );
    let mut top = Command::new(kvmtrace_bin())
        .args([
            "top",
            "--batch",
            "-n",
            "6",
            "--storm-rate",
            "5000",
            "-d",
            &guest.name,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = line_reader(top.stdout.take().unwrap());
    // The first frame: tracing runs, the guest may start.
    let (first, _) = wait_line(&lines, "top's first frame", |l| {
        l.starts_with("kvmtrace top - ")
    });
    assert!(first.contains(", 1 VM(s)"), "{first}");
    guest.go();
    let done: u64 = guest
        .wait_finished()
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("exits=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(done, WRITES, "the guest's own count");
    let status = top.wait().unwrap();
    assert!(status.success(), "{status}");
    let text: Vec<String> = lines.try_iter().collect();
    let frames = 1 + text
        .iter()
        .filter(|l| l.starts_with("kvmtrace top - "))
        .count();
    assert_eq!(frames, 6, "{text:#?}");
    // Every write is in exactly one frame's port row.
    let counted: u64 = text
        .iter()
        .filter(|l| l.trim_start().starts_with(PORT_ROW))
        .map(|l| count_on(l))
        .sum();
    assert_eq!(counted, WRITES, "{text:#?}");
    assert!(
        text.iter().any(|l| l
            .trim()
            .starts_with("storm: vCPU 0: port 0x0070 (RTC index) out ")),
        "a frame shows the storm: {text:#?}"
    );
}

/// A tmux session running a shell, 160 x 40, on a tmux server of its own (`-S`), killed on
/// drop: a test's next session never meets the previous one's server as it exits (tmux then
/// fails with "server exited unexpectedly").
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(name: &str) -> Tmux {
        let t = Tmux {
            socket: std::env::temp_dir()
                .join(format!("kvmtrace-tmux-{name}-{}", std::process::id())),
        };
        let ok = t
            .tmux()
            .args(["new-session", "-d", "-x", "160", "-y", "40", "sh"])
            .env("TERM", "xterm-256color")
            .status()
            .expect("running tmux");
        assert!(ok.success(), "tmux new-session");
        t
    }

    /// tmux, on this server.
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let ok = self.tmux().arg("send-keys").args(keys).status().unwrap();
        assert!(ok.success(), "tmux send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        let out = self.tmux().args(["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (15 s at most) until the screen satisfies `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The TUI's title line: only on top's screen.
const TITLE: &str = "(? help, q quit)";

/// Runs `kvmtrace top -d GUEST` in a tmux shell that afterwards prints the terminal's modes and
/// top's exit status; returns the session once top shows the guest.
fn top_in_tmux(name: &str, guest: &Guest) -> Tmux {
    let t = Tmux::start(name);
    let cmd = format!(
        "{} top -d {}; echo EXIT\"\"ED=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo; echo MODES\"\"DONE",
        kvmtrace_bin().display(),
        guest.name
    );
    t.keys(&[&cmd, "Enter"]);
    t.wait("top to show the guest", |s| {
        s.contains(TITLE) && s.contains(&guest.name)
    });
    t
}

/// After top exits: status 0, off the alternate screen, and the line discipline back to
/// canonical mode with echo (raw mode undone).
fn assert_restored(t: &Tmux) {
    // Split in the command line, whole only in the shell's output.
    let s = t.wait("top to exit", |s| s.contains("EXITED="));
    assert!(s.contains("EXITED=0"), "{s}");
    assert!(!s.contains(TITLE), "the alternate screen is gone: {s}");
    // tmux may show stty's lines before all have arrived: wait for the marker after them.
    let s = t.wait("stty's modes", |s| s.contains("MODESDONE"));
    let modes: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("canon") || l.ends_with("echo"))
        .collect();
    assert!(
        modes.contains(&"icanon") && modes.contains(&"echo"),
        "{modes:?}\n{s}"
    );
    assert!(
        !modes.contains(&"-icanon") && !modes.contains(&"-echo"),
        "{modes:?}\n{s}"
    );
}

fn port_guest(name: &str) -> Guest {
    let mut g = Guest::start(
        name,
        &["--loop", "--run", "pio_out,port=0x70,ms=500,rate=2000"],
    );
    g.go();
    g
}

#[test]
fn the_terminal_ui_drills_down_to_the_port_and_quits_cleanly() {
    require_kvm_and_root();
    let guest = port_guest("it-top-tui");
    let before: Vec<u64> = loaded_kvmtrace_programs().iter().map(|p| p.id).collect();
    let t = top_in_tmux("tui", &guest);
    // VM list -> the guest's vCPUs.
    t.keys(&["Enter"]);
    let s = t.wait("the vCPU list", |s| {
        s.contains("> vCPU") || s.contains("vCPU 0 (tid")
    });
    assert!(
        s.contains(&format!("VMs > {} (pid {})", guest.name, guest.pid)),
        "{s}"
    );
    // vCPU 0 -> its reasons; keep the I/O row (kvm_pio here, the I/O exit reason elsewhere).
    t.keys(&["Enter"]);
    t.wait("the reasons", |s| s.contains("REASON"));
    t.keys(&["/", "io", "Enter"]);
    t.wait("the filter", |s| s.contains("filter: io"));
    // -> the keys: the guest's port.
    t.keys(&["Enter"]);
    let s = t.wait("the port", |s| s.contains("KEY") && s.contains(PORT_ROW));
    assert!(s.contains("> vCPU 0 (tid"), "{s}");
    // Help, closed by any key; back up with Esc.
    t.keys(&["?"]);
    t.wait("the help", |s| s.contains("kvmtrace top: keys"));
    t.keys(&["x"]);
    t.wait("the help to close", |s| !s.contains("kvmtrace top: keys"));
    t.keys(&["Escape"]);
    t.wait("the reasons again", |s| s.contains("REASON"));
    t.keys(&["q"]);
    assert_restored(&t);
    // Those loaded since `before` that are still there once the kernel has had time to free them.
    let ours: Vec<u64> = loaded_kvmtrace_programs()
        .iter()
        .map(|p| p.id)
        .filter(|id| !before.contains(id))
        .collect();
    let left = programs_left(&ours);
    assert!(left.is_empty(), "programs left after top quit: {left:?}");
}

#[test]
fn ctrl_c_and_sigterm_restore_the_terminal() {
    require_kvm_and_root();
    let guest = port_guest("it-top-signals");
    let t = top_in_tmux("ctrlc", &guest);
    t.keys(&["C-c"]);
    assert_restored(&t);
    drop(t);
    let t = top_in_tmux("sigterm", &guest);
    let pid = top_pid(&guest.name);
    // SAFETY: kill has no memory arguments.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_restored(&t);
}

/// The pid of the `kvmtrace top -d NAME` process.
fn top_pid(name: &str) -> i32 {
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"top"[..]) && args.contains(&name.as_bytes()) {
            return pid;
        }
    }
    panic!("no kvmtrace top -d {name} process");
}
