//! Issue 8.8, untrusted text: VM names, thread names and arguments belong to whoever started the
//! VM (any user with /dev/kvm). A guest named `ESC ] 0 ; pwned BEL ESC [ 2 J vm01` retitled and
//! cleared the terminal through `kvmtrace list`. Every format shows such names escaped, and bytes
//! that are not UTF-8 never panic.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::json;

use crate::harness::{
    Guest, Recorder, count_of, kvmtrace_bin, parse_json, record_guest, record_guest_output,
    record_guest_with, require_kvm_and_root, testvm_bin, vm_of,
};

/// `ESC ] 0 ; pwned BEL` sets the terminal's title, `ESC [ 2 J` clears the screen.
const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2Jvm01";
/// How kvmtrace shows it.
const SHOWN: &str = "\\x1b]0;pwned\\x07\\x1b[2Jvm01";

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("kvmtrace-it").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kvmtrace(args: &[&OsStr]) -> Output {
    Command::new(kvmtrace_bin())
        .args(args)
        .output()
        .expect("running kvmtrace")
}

fn ok(args: &[&OsStr]) -> Vec<u8> {
    let out = kvmtrace(args);
    assert!(
        out.status.success(),
        "kvmtrace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_terminal_safe(&format!("stderr of {args:?}"), &out.stderr);
    out.stdout
}

/// No byte a terminal would act on: ESC, BEL, NUL, DEL, and C1 CSI (U+009B).
fn assert_terminal_safe(what: &str, bytes: &[u8]) {
    for bad in [0x1b, 0x07, 0x00, 0x7f] {
        assert!(
            !bytes.contains(&bad),
            "{what} holds the raw byte {bad:#04x}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(
        !bytes.windows(2).any(|w| w == [0xc2, 0x9b]),
        "{what} holds a raw C1 CSI"
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

#[test]
fn a_hostile_vm_name_is_escaped_in_every_format() {
    require_kvm_and_root();
    let dir = fresh_dir("names-hostile");
    let file = dir.join("hostile.kvmtrace");
    let plan = ["--run", "pio_out,port=0x70,count=700"];
    let mut guest = Guest::start(HOSTILE, &plan);

    // list, and list --json: the name escaped by kvmtrace, not by JSON.
    let list = ok(&["list".as_ref()]);
    assert_terminal_safe("list", &list);
    let row = format!("{:>8}  {:<24}  {:>5}  ", guest.pid, SHOWN, 1);
    assert!(
        text(&list)
            .lines()
            .any(|l| l.starts_with(&row) && l.ends_with(" (CPU 0/KVM)")),
        "{row:?} in {}",
        text(&list)
    );
    let list_json = ok(&["list".as_ref(), "--json".as_ref()]);
    assert_terminal_safe("list --json", &list_json);
    let vms = parse_json(&list_json);
    let vm = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["pid"] == guest.pid)
        .unwrap();
    assert_eq!(vm["name"], SHOWN);
    assert_eq!(vm["aliases"], json!([SHOWN]));

    // The live text report (selected by the raw name) and the recording it wrote.
    let live = record_guest_output(&mut guest, &["-o", file.to_str().unwrap()]);
    assert_terminal_safe("record stdout", &live.stdout);
    assert_terminal_safe("record stderr", &live.stderr);
    assert!(
        text(&live.stdout).contains(&format!("\nVM {SHOWN} (pid {}): ", guest.pid)),
        "{}",
        text(&live.stdout)
    );
    drop(guest);

    // The same name in a live --json report.
    let mut guest = Guest::start(HOSTILE, &plan);
    let (report, _) = record_guest(&mut guest, &[]);
    let vm = vm_of(&report, guest.pid);
    assert_eq!(vm["name"], SHOWN);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 700);
    assert_terminal_safe("record --json", report.to_string().as_bytes());

    // Every offline format of the recording, and diff.
    let f = os(&file);
    let report = |args: &[&str]| {
        let mut all: Vec<&OsStr> = vec!["report".as_ref(), "-i".as_ref(), f];
        all.extend(args.iter().map(|a| OsStr::new(*a)));
        let out = ok(&all);
        assert_terminal_safe(&format!("report {args:?}"), &out);
        text(&out)
    };
    assert!(report(&[]).contains(&format!("\nVM {SHOWN} (pid ")));
    let json = parse_json(report(&["--format", "json"]).as_bytes());
    assert_eq!(json["vms"][0]["name"], SHOWN);
    let csv = report(&["--format", "csv"]);
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("port,{SHOWN},"))),
        "{csv}"
    );
    // Folded frames also turn `;` (their separator) into `,`.
    let folded_vm = SHOWN.replace(';', ",");
    let folded = report(&["--format", "folded", "--weight", "count"]);
    assert!(
        folded
            .lines()
            .any(|l| l == format!("{folded_vm};vCPU 0;VMM IO;port 0x0070 RTC index out 700")),
        "{folded}"
    );
    let svg = dir.join("hostile.svg");
    report(&["--format", "flamegraph", "-o", svg.to_str().unwrap()]);
    let svg = std::fs::read(&svg).unwrap();
    assert_terminal_safe("flamegraph", &svg);
    assert!(text(&svg).contains(&folded_vm));
    let d = ok(&["diff".as_ref(), f, f]);
    assert_terminal_safe("diff", &d);
    assert!(text(&d).contains(&format!("\n  {SHOWN} ")), "{}", text(&d));
    let d = ok(&["diff".as_ref(), f, f, "--format".as_ref(), "json".as_ref()]);
    assert_terminal_safe("diff --format json", &d);
    assert_eq!(parse_json(&d)["rows"][0]["vm"], SHOWN);
}

/// A process's own name (comm) is the VM's name when nothing else names it: it is escaped too.
/// The comm comes from the name of the file executed, here a link to the test VMM.
#[test]
fn a_hostile_thread_name_is_escaped() {
    require_kvm_and_root();
    let dir = fresh_dir("names-comm");
    let comm = "\u{1b}]2;x\u{7}top"; // 9 bytes: all of it fits the 15 of a comm
    let exe = dir.join(comm);
    std::os::unix::fs::symlink(testvm_bin(), &exe).unwrap();
    // `-name x=y` names nothing for QEMU's syntax (only `guest=` or a bare name does).
    let mut guest = Guest::start_raw(
        &exe,
        "x=y".as_ref(),
        "(by pid)",
        &["--run", "pio_out,port=0x70,count=300"],
    );
    let shown = "\\x1b]2;x\\x07top";
    let list = ok(&["list".as_ref()]);
    assert_terminal_safe("list", &list);
    assert!(
        text(&list).contains(&format!("  {shown}  ")),
        "{}",
        text(&list)
    );
    let pid = guest.pid.to_string();
    let out = record_guest_with(&mut guest, &["-p", &pid, "--json", "--interval", "200ms"]);
    assert_terminal_safe("record -p stderr", &out.stderr);
    let report = parse_json(&out.stdout);
    let vm = vm_of(&report, guest.pid);
    assert_eq!(vm["name"], shown);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 300);
}

/// Names and arguments that are not UTF-8: replaced (U+FFFD) where shown, never a panic.
#[test]
fn bytes_that_are_not_utf8_never_panic() {
    require_kvm_and_root();
    let dir = fresh_dir("names-bytes");
    let shown = "it-\u{fffd}\u{fffd}-bytes";
    let mut guest = Guest::start_raw(
        &testvm_bin(),
        OsStr::from_bytes(b"guest=it-\xff\xfe-bytes,debug-threads=on"),
        shown,
        &["--run", "pio_out,port=0x70,count=400"],
    );
    let vms = parse_json(&ok(&["list".as_ref(), "--json".as_ref()]));
    let vm = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["pid"] == guest.pid)
        .unwrap();
    assert_eq!(vm["name"], shown);

    // kvmtrace's own arguments: a -d that is not UTF-8 is a usage error, not a panic.
    let out = kvmtrace(&[
        "record".as_ref(),
        "-d".as_ref(),
        OsStr::from_bytes(b"it-\xff\xfe-bytes"),
        "--duration".as_ref(),
        "1s".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid UTF-8"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The name as shown selects the VM; an output path that is not UTF-8 works.
    let file = dir.join(OsStr::from_bytes(b"rec-\xff.kvmtrace"));
    let recorder = Recorder::start_os(&[
        "-d".as_ref(),
        shown.as_ref(),
        "--json".as_ref(),
        "--interval".as_ref(),
        "200ms".as_ref(),
        "-o".as_ref(),
        os(&file),
    ]);
    guest.go();
    guest.wait_finished();
    let out = recorder.stop(libc::SIGINT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let live = parse_json(&out.stdout);
    assert_eq!(vm_of(&live, guest.pid)["name"], shown);
    assert!(
        file.exists(),
        "the recording under its real (non-UTF-8) name"
    );

    let svg = dir.join(OsStr::from_bytes(b"graph-\xfe.svg"));
    ok(&[
        "report".as_ref(),
        "-i".as_ref(),
        os(&file),
        "--format".as_ref(),
        "flamegraph".as_ref(),
        "-o".as_ref(),
        os(&svg),
    ]);
    let svg = text(&std::fs::read(&svg).unwrap());
    assert!(svg.contains("kvmtrace: rec-\u{fffd}.kvmtrace"), "the title");
    let offline = parse_json(&ok(&[
        "report".as_ref(),
        "-i".as_ref(),
        os(&file),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_eq!(offline["vms"][0]["name"], shown);
    assert_eq!(
        count_of(&offline["vms"][0], "ports", &[("port", json!(0x70))]),
        400
    );

    // A missing input that is not UTF-8: a clear error.
    let missing = dir.join(OsStr::from_bytes(b"missing-\xff.kvmtrace"));
    let out = kvmtrace(&["report".as_ref(), "-i".as_ref(), os(&missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "kvmtrace: error: reading the recording {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
