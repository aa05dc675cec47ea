//! Issue 8.7, files as root: `record -d <typo> -o existing` left the existing recording at 0
//! bytes; `-o link` overwrote the link's target. Now an existing file is untouched until tracing
//! starts (then replaced atomically), links are refused, a full disk cuts the recording short
//! with a warning while the live report is still printed, and hostile files (zstd bombs,
//! millions of keys) fail cleanly in bounded memory.

use std::{
    ffi::OsStr,
    fs,
    io::{Read as _, Write as _},
    os::unix::{
        fs::{MetadataExt as _, symlink},
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::mpsc::channel,
};

use serde_json::json;

use crate::harness::{
    Guest, Recorder, STEP_TIMEOUT, count_of, kvmtrace_bin, kvmtrace_ok, parse_json,
    record_guest_output, require_kvm_and_root, vm_of,
};

/// Peak RSS (and data segment) allowed to `report -i` / `diff` on a hostile file.
const MAX_RSS_KIB: u64 = 200 * 1024;

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("kvmtrace-it").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn kvmtrace(args: &[&str]) -> Output {
    Command::new(kvmtrace_bin())
        .args(args)
        .output()
        .expect("running kvmtrace")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Temporary files kvmtrace left in `dir` (`.NAME.kvmtrace-PID-N.tmp`).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

fn assert_fails(out: &Output, stderr_is: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr, format!("kvmtrace: error: {stderr_is}\n"));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_mistyped_vm_leaves_an_existing_recording_intact() {
    require_kvm_and_root();
    let dir = fresh_dir("files-typo");
    let existing = dir.join("existing.kvmtrace");
    let mut guest = Guest::start("it-files-typo", &["--run", "pio_out,port=0x70,count=500"]);
    record_guest_output(&mut guest, &["-o", s(&existing)]);
    let before = fs::read(&existing).unwrap();
    let meta = fs::metadata(&existing).unwrap();

    let out = kvmtrace(&[
        "record",
        "-d",
        "no-such-vm",
        "-o",
        s(&existing),
        "--duration",
        "1s",
    ]);
    // (Other VMs on the host may be listed too.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("kvmtrace: error: no VM named `no-such-vm` on this host; VMs found: ")
            && stderr.contains(&format!("it-files-typo (pid {})", guest.pid)),
        "{stderr}"
    );
    assert_eq!(fs::read(&existing).unwrap(), before, "the bytes");
    let after = fs::metadata(&existing).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        "not even opened for writing"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let r = parse_json(&kvmtrace_ok(&[
        "report",
        "-i",
        s(&existing),
        "--format",
        "json",
    ]));
    assert_eq!(
        count_of(vm_of(&r, guest.pid), "ports", &[("port", json!(0x70))]),
        500
    );

    // Once tracing really starts, the file is replaced as a whole: a reader that had the old
    // one open still reads it, and the path is a new recording from the first interval on.
    let mut old_reader = fs::File::open(&existing).unwrap();
    let recorder = Recorder::start(&[
        "-d",
        "it-files-typo",
        "--interval",
        "100ms",
        "-o",
        s(&existing),
    ]);
    let replaced = fs::metadata(&existing).unwrap();
    assert_ne!(
        replaced.ino(),
        meta.ino(),
        "replaced when recording started"
    );
    assert_eq!(&fs::read(&existing).unwrap()[..8], b"KVMTRACE");
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success());
    let mut old = Vec::new();
    old_reader.read_to_end(&mut old).unwrap();
    assert_eq!(old, before, "the old file itself was never written");
    let r = parse_json(&kvmtrace_ok(&[
        "report",
        "-i",
        s(&existing),
        "--format",
        "json",
    ]));
    assert_eq!(r["notes"], json!([]), "a complete recording");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_link_as_output_is_refused_and_its_target_kept() {
    require_kvm_and_root();
    let dir = fresh_dir("files-link");
    let target = dir.join("target.txt");
    fs::write(&target, b"precious\n").unwrap();
    let link = dir.join("link.kvmtrace");
    symlink(&target, &link).unwrap();
    // A dangling link: where an attacker would like root to create a file.
    let planted = dir.join("planted-by-root");
    let dangling = dir.join("dangling.kvmtrace");
    symlink(&planted, &dangling).unwrap();
    let mut guest = Guest::start("it-files-link", &["--run", "pio_out,port=0x70,count=200"]);
    let refusal = |what: &str, path: &Path| {
        format!(
            "cannot write {what}{}: it is a symbolic link, not a regular file; kvmtrace writes only regular files and does not follow or replace links",
            path.display()
        )
    };
    for path in [&link, &dangling] {
        let out = kvmtrace(&[
            "record",
            "-d",
            "it-files-link",
            "-o",
            s(path),
            "--duration",
            "1s",
        ]);
        assert_fails(&out, &refusal("the recording ", path)); // before any tracing: no banner
    }

    let good = dir.join("good.kvmtrace");
    record_guest_output(&mut guest, &["-o", s(&good)]);
    for path in [&link, &dangling] {
        let out = kvmtrace(&["report", "-i", s(&good), "-o", s(path)]);
        assert_fails(&out, &refusal("", path));
        let out = kvmtrace(&["diff", s(&good), s(&good), "-o", s(path)]);
        assert_fails(&out, &refusal("", path));
    }
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
    assert_eq!(fs::read_link(&link).unwrap(), target);
    assert_eq!(fs::read_link(&dangling).unwrap(), planted);
    assert!(!planted.exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // A regular file given to report -o is replaced once the report is complete.
    let svg = dir.join("graph.svg");
    fs::write(&svg, b"old").unwrap();
    kvmtrace_ok(&[
        "report",
        "-i",
        s(&good),
        "--format",
        "flamegraph",
        "-o",
        s(&svg),
    ]);
    assert!(fs::read_to_string(&svg).unwrap().contains("</svg>"));
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs {dir:?}");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_cuts_the_recording_short_and_the_report_is_still_printed() {
    require_kvm_and_root();
    let dir = fresh_dir("files-full");
    let _tmpfs = Tmpfs::mount(&dir, "64k");
    let file = dir.join("r.kvmtrace");
    let mut guest = Guest::start(
        "it-files-full",
        &["--run", "pio_out,port=0x70,count=100,rate=2000", "--loop"],
    );
    let recorder = Recorder::start(&["-d", "it-files-full", "--interval", "100ms", "-o", s(&file)]);
    guest.go();
    std::thread::sleep(std::time::Duration::from_millis(700)); // a few intervals reach the file
    // Fill the rest of the disk.
    let mut filler = fs::File::create(dir.join("filler")).unwrap();
    let chunk = [0u8; 4096];
    let full = loop {
        if let Err(e) = filler.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    let prefix = format!(
        "kvmtrace: writing {} failed: No space left on device (os error 28); the recording is cut short at ",
        file.display()
    );
    let warning = recorder.wait_stderr("the write failure", |l| l.contains("failed"));
    let cut_at = warning
        .strip_prefix(&prefix)
        .and_then(|w| w.strip_suffix(" s (the report still covers the whole run)"))
        .unwrap_or_else(|| panic!("{warning}"))
        .to_string();
    // Recording goes on for a while: nothing more is written, nothing more is said.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = recorder.stop(libc::SIGINT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("failed"), "warned once: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("kvmtrace: "),
        "the live report: {stdout}"
    );
    assert!(
        stdout.contains(&format!("\nVM it-files-full (pid {}): ", guest.pid)),
        "{stdout}"
    );

    // The file reads, as cut short where the warning said.
    let r = parse_json(&kvmtrace_ok(&[
        "report",
        "-i",
        s(&file),
        "--format",
        "json",
    ]));
    let cut_short: Vec<&serde_json::Value> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n.as_str()
                .unwrap()
                .starts_with("the recording was cut short")
        })
        .collect();
    assert_eq!(
        cut_short,
        [&json!(format!(
            "the recording was cut short (the recorder was killed, or could not write, before it finished the file); this covers it up to its last complete interval, at {cut_at} s."
        ))]
    );
    let ports = count_of(vm_of(&r, guest.pid), "ports", &[("port", json!(0x70))]);
    assert!(ports > 0, "{ports}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

/// Runs `kvmtrace ARGS` with its data segment limited to [`MAX_RSS_KIB`] (RLIMIT_DATA: heap and
/// private mappings; an allocation beyond it aborts kvmtrace), and returns its output and peak
/// RSS in KiB (from wait4). A new process starts with its parent's peak RSS (Linux carries it
/// over fork and exec), so this process's own is trimmed and reset first: the number is the
/// larger of this test's RSS and kvmtrace's peak, an upper bound.
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives its resource usage"
)]
fn kvmtrace_rss(args: &[&OsStr]) -> (Output, u64) {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    fs::write("/proc/self/clear_refs", "5").expect("resetting this process's peak RSS");
    let mut cmd = Command::new(kvmtrace_bin());
    // SAFETY: the closure runs between fork and exec and only calls setrlimit, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MAX_RSS_KIB * 1024,
                rlim_max: MAX_RSS_KIB * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kvmtrace");
    let pid = child.id() as i32;
    let collect = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let (done, watchdog) = channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(STEP_TIMEOUT).is_err() {
            // SAFETY: the child is not reaped before wait4 returns, so its pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: rusage is plain data, all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers for status and usage.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = done.send(());
    assert_eq!(r, pid, "wait4");
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (out, usage.ru_maxrss as u64)
}

/// A recording's parts: the header bytes (magic to JSON) and its records (kind, whole record).
fn split_recording(bytes: &[u8]) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let header_end = 20 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let stream = zstd::decode_all(&bytes[header_end..]).unwrap();
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let len = u32::from_le_bytes(stream[pos + 1..pos + 5].try_into().unwrap()) as usize;
        records.push((stream[pos], stream[pos..pos + 9 + len].to_vec()));
        pos += 9 + len;
    }
    (bytes[..header_end].to_vec(), records)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// (value, bytes) of the varint at the start of `b`.
fn read_varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0;
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    panic!("unterminated varint");
}

/// CRC-32 (IEEE), as the recording's records carry it; written out here so the test does not
/// trust kvmtrace's own.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// A record of `kind` around `payload`.
fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![kind];
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc32(payload).to_le_bytes());
    r.extend_from_slice(payload);
    r
}

/// An interval record's payload that declares `n` new keys of one dictionary (latency: 6
/// fields, detail: 5) and stops there: the reader must refuse it at the count.
fn declaring_keys(latency: bool, n: u64) -> Vec<u8> {
    let mut p = Vec::new();
    varint(&mut p, 1_000_000); // at
    if !latency {
        varint(&mut p, 0); // no new latency keys
    }
    varint(&mut p, n);
    for i in 0..n {
        let fields: &[u64] = if latency {
            &[7, 8, 0, 2, i, 0]
        } else {
            &[7, 8, 1, i, 0]
        };
        for &f in fields {
            varint(&mut p, f);
        }
    }
    p
}

/// A file: `header` then a zstd frame of `stream` (written as it is produced).
fn write_bomb(path: &Path, header: &[u8], stream: impl Iterator<Item = Vec<u8>>) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(header).unwrap();
    let mut z = zstd::stream::write::Encoder::new(f, 3).unwrap();
    for chunk in stream {
        z.write_all(&chunk).unwrap();
    }
    z.finish().unwrap();
    fs::metadata(path).unwrap().len()
}

/// Whether an error's cause is the one expected.
type CauseCheck<'a> = Box<dyn Fn(&str) -> bool + 'a>;

#[test]
fn hostile_recordings_fail_cleanly_in_bounded_memory() {
    require_kvm_and_root();
    let dir = fresh_dir("files-hostile");
    let good = dir.join("good.kvmtrace");
    let mut guest = Guest::start(
        "it-files-hostile",
        &["--run", "pio_out,port=0x70,count=2000;mmio_w,count=500"],
    );
    // Intervals after the guest is done declare no new key.
    let recorder = Recorder::start(&[
        "-d",
        "it-files-hostile",
        "--interval",
        "100ms",
        "-o",
        s(&good),
    ]);
    guest.go();
    guest.wait_finished();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(recorder.stop(libc::SIGINT).status.success());
    let (header, records) = split_recording(&fs::read(&good).unwrap());
    for (_, r) in &records {
        assert_eq!(
            crc32(&r[9..]),
            u32::from_le_bytes(r[5..9].try_into().unwrap())
        );
    }
    let intervals: Vec<&Vec<u8>> = records
        .iter()
        .filter(|(k, _)| *k == 2)
        .map(|(_, r)| r)
        .collect();
    // An interval that declares no new key (after the guest finished): valid again and again.
    let quiet = intervals
        .iter()
        .rev()
        .find(|r| {
            let p = &r[9..];
            let (_, at) = read_varint(p);
            p[at] == 0 && p[at + 1] == 0
        })
        .expect("an interval without new keys");

    let zeros = dir.join("zeros.kvmtrace");
    let zeros_len = write_bomb(&zeros, &header, (0..1024).map(|_| vec![0u8; 1 << 20]));
    let repeated = dir.join("repeated.kvmtrace");
    let repeated_len = write_bomb(
        &repeated,
        &header,
        std::iter::once(intervals[0].clone())
            .chain((0..1_000_000 / 1000).map(|_| quiet.repeat(1000))),
    );
    let latency_keys = dir.join("latency-keys.kvmtrace");
    write_bomb(
        &latency_keys,
        &header,
        std::iter::once(record(2, &declaring_keys(true, 3_000_000))),
    );
    let detail_keys = dir.join("detail-keys.kvmtrace");
    write_bomb(
        &detail_keys,
        &header,
        std::iter::once(record(2, &declaring_keys(false, 3_000_000))),
    );
    eprintln!(
        "zstd bombs: 1 GiB of zeros in {zeros_len} bytes; {} MB of repeated intervals in {repeated_len} bytes",
        quiet.len() // a million times
    );

    let limit = "the recording is over a limit of this reader (a damaged or hostile file)";
    // The repeated intervals are refused once they need more than the budget: 64 MiB, plus 64
    // bytes per byte of file read so far.
    let budget_refusal = |cause: &str| -> bool {
        let Some(rest) = cause.strip_prefix(&format!("{limit}: decoding it needs more than "))
        else {
            return false;
        };
        let Some((mib, rest)) = rest.split_once(" MiB of memory after ") else {
            return false;
        };
        let Some(read) = rest.strip_suffix(" bytes of file") else {
            return false;
        };
        let (mib, read): (u64, u64) = (mib.parse().unwrap(), read.parse().unwrap());
        read <= repeated_len - header.len() as u64 && mib == ((64 << 20) + 64 * read) >> 20
    };
    let exactly = |expected: String| move |cause: &str| cause == expected;
    let cases: [(&PathBuf, CauseCheck); 4] = [
        (
            &zeros,
            Box::new(exactly("corrupted: unknown record kind 0".into())),
        ),
        (&repeated, Box::new(budget_refusal)),
        (
            &latency_keys,
            Box::new(exactly(format!(
                "{limit}: more than 65536 distinct latency keys (0 declared so far, 3000000 more in one interval)"
            ))),
        ),
        (
            &detail_keys,
            Box::new(exactly(format!(
                "{limit}: more than 262144 distinct detail keys (0 declared so far, 3000000 more in one interval)"
            ))),
        ),
    ];
    for (bomb, cause_ok) in &cases {
        let b = bomb.as_os_str();
        let g = good.as_os_str();
        for args in [
            vec!["report".as_ref(), "-i".as_ref(), b],
            vec!["diff".as_ref(), g, b],
            vec!["diff".as_ref(), b, g, "--format".as_ref(), "json".as_ref()],
        ] {
            let (out, rss) = kvmtrace_rss(&args);
            eprintln!("kvmtrace {args:?}: peak RSS {} MiB", rss / 1024);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(out.stdout.is_empty());
            let cause = stderr
                .strip_prefix(&format!(
                    "kvmtrace: error: cannot read the recording {}: ",
                    bomb.display()
                ))
                .and_then(|c| c.strip_suffix('\n'))
                .unwrap_or_else(|| panic!("{stderr}"));
            assert!(cause_ok(cause), "{cause}");
            assert!(
                rss < MAX_RSS_KIB,
                "kvmtrace {args:?} peaked at {} MiB",
                rss / 1024
            );
        }
    }

    // Through a pipe (no file size to go by): a recording reads, a bomb is refused the same.
    for (file, ok) in [(&good, true), (&repeated, false)] {
        let mut child = Command::new(kvmtrace_bin())
            .args(["report", "-i", "/dev/stdin", "--format", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let bytes = fs::read(file).unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes); // a refusal may close the pipe early
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{stderr}");
        if ok {
            let r = parse_json(&out.stdout);
            assert_eq!(
                count_of(vm_of(&r, guest.pid), "ports", &[("port", json!(0x70))]),
                2000
            );
        } else {
            let cause = stderr
                .strip_prefix("kvmtrace: error: cannot read the recording /dev/stdin: ")
                .and_then(|c| c.strip_suffix('\n'))
                .unwrap_or_else(|| panic!("{stderr}"));
            assert!(budget_refusal(cause), "{cause}");
        }
    }
}
