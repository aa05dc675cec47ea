//! Recordings: `record -o`, `report -i` in every format, SIGKILL safety, flamegraphs and `diff`.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::harness::{
    Guest, Recorder, count_of, kvmtrace_ok, parse_json, record_guest, record_guest_output,
    require_kvm_and_root, temp, vm_of,
};

const TWO_VCPU_PLAN: [&str; 6] = [
    "--vcpus",
    "2",
    "--run",
    "0:pio_out,port=0x70,count=3000;mmio_w,count=1000",
    "--run",
    "1:wrmsr,msr=0x6e0,count=2000;cpuid,count=500",
];

fn report(file: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["report", "-i", file.to_str().unwrap()];
    all.extend_from_slice(args);
    kvmtrace_ok(&all)
}

/// Parses an SVG (inferno's has a DOCTYPE), which must be well-formed XML.
fn parse_svg(svg: &str) -> roxmltree::Document<'_> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(svg, opts).expect("the flamegraph is well-formed XML")
}

/// (title, weight) of every frame of an inferno SVG, which must be well-formed XML.
fn svg_frames(svg: &str) -> Vec<(String, u64)> {
    let doc = parse_svg(svg);
    doc.descendants()
        .filter(|n| n.has_tag_name("g"))
        .filter_map(|g| {
            let title = g
                .children()
                .find(|c| c.has_tag_name("title"))?
                .text()?
                .to_string();
            let rect = g.children().find(|c| c.has_tag_name("rect"))?;
            let w = rect
                .attribute(("http://github.com/jonhoo/inferno", "w"))?
                .parse()
                .ok()?;
            Some((title, w))
        })
        .collect()
}

fn frame<'a>(frames: &'a [(String, u64)], prefix: &str) -> &'a (String, u64) {
    let hits: Vec<_> = frames
        .iter()
        .filter(|(t, _)| t.starts_with(prefix))
        .collect();
    assert_eq!(hits.len(), 1, "one frame `{prefix}` in {frames:#?}");
    hits[0]
}

#[test]
fn offline_json_equals_live_json_and_other_formats_agree() {
    require_kvm_and_root();
    let file = temp("live-vs-offline.kvmtrace");
    let mut guest = Guest::start("it-rec", &TWO_VCPU_PLAN);
    let (live, _) = record_guest(&mut guest, &["-o", file.to_str().unwrap()]);
    let offline = parse_json(&report(&file, &["--format", "json"]));
    assert_eq!(
        offline, live,
        "report -i shows exactly what the live report showed"
    );
    let vm = vm_of(&offline, guest.pid);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 3000);

    // CSV: the same counts.
    let csv = report(&file, &["--format", "csv"]);
    let mut rows = csv::Reader::from_reader(&csv[..]);
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    let find = |table: &str, key: &str| {
        rows.iter()
            .find(|r| &r[0] == table && &r[4] == key)
            .unwrap_or_else(|| panic!("{table} {key} in {rows:?}"))[6]
            .to_string()
    };
    assert_eq!(find("port", "0x70"), "3000");
    assert_eq!(find("mmio", "0xd0000000"), "1000");
    assert_eq!(find("msr", "0x6e0"), "2000");
    assert_eq!(find("cpuid", "0x0"), "500");

    // Folded stacks and the flamegraph: per vCPU, weighted by count.
    let folded =
        String::from_utf8(report(&file, &["--format", "folded", "--weight", "count"])).unwrap();
    let vm_frame = "it-rec";
    assert!(
        folded
            .lines()
            .any(|l| l == format!("{vm_frame};vCPU 0;VMM IO;port 0x0070 RTC index out 3000")),
        "{folded}"
    );
    assert!(
        folded
            .lines()
            .any(|l| l == format!("{vm_frame};vCPU 0;VMM MMIO;gpa 0xd0000000 write 1000")),
        "{folded}"
    );
    assert!(
        folded
            .lines()
            .any(|l| l == format!("{vm_frame};vCPU 1;msr;msr 0x6e0 IA32_TSC_DEADLINE write 2000")),
        "{folded}"
    );
    assert!(
        folded
            .lines()
            .any(|l| l == format!("{vm_frame};vCPU 1;cpuid;cpuid 0x0 500")),
        "{folded}"
    );
    let svg_path = temp("rec.svg");
    report(
        &file,
        &[
            "--format",
            "flamegraph",
            "--weight",
            "count",
            "-o",
            svg_path.to_str().unwrap(),
        ],
    );
    let frames = svg_frames(&std::fs::read_to_string(&svg_path).unwrap());
    assert_eq!(frame(&frames, "port 0x0070 RTC index out").1, 3000);
    assert_eq!(frame(&frames, "msr 0x6e0 IA32_TSC_DEADLINE write").1, 2000);
    assert_eq!(
        frame(&frames, "vCPU 1 ").1,
        2000 + 500 + 2,
        "vCPU 1: msr + cpuid + 2 done exits"
    );

    // Filters: one vCPU, one reason.
    let only = parse_json(&report(&file, &["--format", "json", "--vcpu", "1"]));
    let vm = vm_of(&only, guest.pid);
    assert!(
        vm["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["vcpu"] == "1")
    );
    assert!(vm["mmio"].as_array().unwrap().is_empty());
    let io = parse_json(&report(&file, &["--format", "json", "--reason", "io"]));
    let reasons: Vec<&Value> = vm_of(&io, guest.pid)["userspace_exits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["reason"])
        .collect();
    assert_eq!(reasons, [&json!("IO")]);
}

#[test]
fn offline_text_equals_live_text() {
    require_kvm_and_root();
    let file = temp("text.kvmtrace");
    let mut guest = Guest::start("it-rec-text", &TWO_VCPU_PLAN);
    let live = record_guest_output(&mut guest, &["--per-vcpu", "-o", file.to_str().unwrap()]);
    let offline = report(&file, &["--per-vcpu"]);
    assert_eq!(
        String::from_utf8_lossy(&offline),
        String::from_utf8_lossy(&live.stdout)
    );
}

#[test]
fn sigkill_leaves_a_readable_file() {
    require_kvm_and_root();
    let file = temp("killed.kvmtrace");
    let mut guest = Guest::start(
        "it-killed",
        &["--run", "pio_out,port=0x70,count=3000;mmio_w,count=700"],
    );
    let recorder = Recorder::start(&[
        "-d",
        "it-killed",
        "--interval",
        "100ms",
        "-o",
        file.to_str().unwrap(),
    ]);
    guest.go();
    guest.wait_finished();
    std::thread::sleep(Duration::from_millis(600)); // a few intervals after the last exit
    let out = recorder.stop(libc::SIGKILL);
    assert!(!out.status.success());
    let r = parse_json(&report(&file, &["--format", "json"]));
    let vm = vm_of(&r, guest.pid);
    assert_eq!(count_of(vm, "ports", &[("port", json!(0x70))]), 3000);
    assert_eq!(count_of(vm, "mmio", &[]), 700);
    let notes = r["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("the recording was cut short")),
        "{notes:?}"
    );
}

#[test]
fn unwritable_output_fails_before_tracing() {
    require_kvm_and_root();
    let guest = Guest::start("it-unwritable", &["--run", "pio_out,count=1"]);
    let out = std::process::Command::new(crate::harness::kvmtrace_bin())
        .args([
            "record",
            "-d",
            &guest.name,
            "-o",
            "/nonexistent-dir/x.kvmtrace",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot write the recording /nonexistent-dir/x.kvmtrace"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("recording it-unwritable"),
        "no tracing started: {stderr}"
    );
}

#[test]
fn bad_recordings_are_clear_errors() {
    let empty = temp("empty.kvmtrace");
    std::fs::write(&empty, b"").unwrap();
    let junk = temp("junk.kvmtrace");
    std::fs::write(&junk, b"this is not a recording").unwrap();
    for (file, needle) in [
        (&empty, "the file is empty"),
        (&junk, "not a kvmtrace recording"),
    ] {
        let out = std::process::Command::new(crate::harness::kvmtrace_bin())
            .args(["report", "-i", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

#[test]
fn diff_shows_known_deltas_and_a_differential_flamegraph() {
    require_kvm_and_root();
    let before = temp("before.kvmtrace");
    let after = temp("after.kvmtrace");
    // The same VM, before and after a change (a new process each time, as after a restart).
    for (file, name, plan) in [
        (
            &before,
            "it-diff",
            "pio_out,port=0x70,count=2000;cpuid,count=1000",
        ),
        (
            &after,
            "it-diff",
            "pio_out,port=0x70,count=500;cpuid,count=3000",
        ),
    ] {
        let mut guest = Guest::start(name, &["--run", plan]);
        record_guest_output(&mut guest, &["-o", file.to_str().unwrap()]);
    }
    let d = parse_json(&kvmtrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let row = |table: &str, key_prefix: &str| -> (u64, u64) {
        let hits: Vec<&Value> = d["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["table"] == table && r["key"].as_str().unwrap().starts_with(key_prefix))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "VMs are matched by name: one row for {table} {key_prefix}"
        );
        (
            hits[0]["before"]["count"].as_u64().unwrap(),
            hits[0]["after"]["count"].as_u64().unwrap(),
        )
    };
    assert_eq!(row("port", "0x0070"), (2000, 500));
    assert_eq!(row("cpuid", "0x0"), (1000, 3000));
    let text = String::from_utf8(kvmtrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(text.contains("0x0070 RTC index out"), "{text}");

    let svg = temp("diff.svg");
    kvmtrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "--format",
        "flamegraph",
        "--weight",
        "count",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    let doc = parse_svg(&svg);
    let fill = |prefix: &str| -> (u8, u8, u8) {
        let g = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("g")
                    && n.children().any(|c| {
                        c.has_tag_name("title") && c.text().is_some_and(|t| t.starts_with(prefix))
                    })
            })
            .unwrap_or_else(|| panic!("no frame {prefix}"));
        let f = g
            .children()
            .find(|c| c.has_tag_name("rect"))
            .unwrap()
            .attribute("fill")
            .unwrap();
        let v: Vec<u8> = f
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    };
    // Grown frames are red (full red, less blue), shrunk ones blue.
    let (r, _, b) = fill("cpuid 0x0");
    assert!(r == 255 && b < 255, "cpuid grew: rgb({r},_,{b})");
    let (r, _, b) = fill("port 0x0070 RTC index out");
    assert!(b == 255 && r < 255, "port 0x70 shrank: rgb({r},_,{b})");
}
