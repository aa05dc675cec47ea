//! SVG flamegraphs (inferno): the frames of web01's folded lines with their exact weights, and
//! the differential one of `diff` with its colors. Each frame is `<g><title>NAME (N UNIT, P%)
//! </title><rect ... fill=".." fg:x="start" fg:w="width"/>`: frames are read back into their
//! stacks from the rectangles' depths (y) and sample ranges (fg:x, fg:w).
//!
//! inferno leaves out frames narrower than 0.01 % of the total (`min_width`): the tests say which.

use std::collections::BTreeMap;

use super::{fixture, output};
use crate::render::{Weight, flamegraph, folded};

#[derive(Debug, PartialEq)]
struct Frame {
    title: String,
    weight: u64,
    fill: String,
}

/// Every frame of an SVG by stack ("all" for the root, then "web01", "web01;vCPU 0", ...).
fn frames(svg: &str) -> BTreeMap<String, Frame> {
    let body = &svg[svg.find("<svg id=\"frames\"").expect("a frames container")..];
    // (y, x, frame)
    let mut raw: Vec<(u64, u64, Frame)> = Vec::new();
    for g in body.split("<g><title>").skip(1) {
        let (title, rest) = g.split_once("</title>").unwrap();
        let rect = &rest[..rest.find("/>").unwrap()];
        let attr = |name: &str| {
            let start = rect.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            rect[start..].split('"').next().unwrap().to_string()
        };
        let title = title.replace("&amp;", "&").replace("&apos;", "'");
        let weight: u64 = attr("fg:w").parse().unwrap();
        // The title's count, with thousands separators, is the rectangle's width.
        let count = title[title.rfind(" (").unwrap() + 2..]
            .split(' ')
            .next()
            .unwrap();
        assert_eq!(count.replace(',', ""), weight.to_string(), "{title}");
        let (y, x) = (attr("y").parse().unwrap(), attr("fg:x").parse().unwrap());
        let fill = attr("fill");
        raw.push((
            y,
            x,
            Frame {
                title,
                weight,
                fill,
            },
        ));
    }
    // Deeper frames are higher up (smaller y); a frame's parent is the frame one level down whose
    // samples contain its own.
    raw.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut levels: Vec<u64> = raw.iter().map(|f| f.0).collect();
    levels.dedup();
    let mut placed: Vec<(usize, u64, u64, String)> = Vec::new();
    let mut out = BTreeMap::new();
    for (y, x, frame) in raw {
        let depth = levels.iter().position(|l| *l == y).unwrap();
        let name = frame.title[..frame.title.rfind(" (").unwrap()].to_string();
        let path = if depth == 0 {
            name
        } else {
            let parent = placed
                .iter()
                .find(|p| p.0 + 1 == depth && p.1 <= x && x + frame.weight <= p.1 + p.2)
                .expect("a parent frame");
            match depth {
                1 => name,
                _ => format!("{};{name}", parent.3),
            }
        };
        placed.push((depth, x, frame.weight, path.clone()));
        assert!(out.insert(path, frame).is_none());
    }
    out
}

fn weights(frames: &BTreeMap<String, Frame>) -> Vec<(&str, u64)> {
    frames
        .iter()
        // web01's npf keys: see folded::npf_frames_weigh_only_what_mmio_explains.
        .filter(|(path, _)| !path.contains(";npf;"))
        .map(|(path, f)| (path.as_str(), f.weight))
        .collect()
}

fn svg(report: &crate::report::Report, weight: Weight) -> String {
    let lines = folded::lines(report, weight);
    output(|out| flamegraph::render(&lines, "web01", weight, out))
}

/// By count: each frame weighs its folded lines below it: vCPU 0 = 46 000 io + 2 000 msr; vCPU 1
/// = 1 200 + 1 002 + 450 + 400 + 70 = 3 122; all = 51 122. MSR 0x3a (4 exits) is under the
/// 0.01 % (5.1 exits) inferno draws.
#[test]
fn web01_frames_weigh_their_exits() {
    let f = frames(&svg(&fixture::web01(true), Weight::Count));
    let expected = [
        ("all", 51_122),
        ("web01", 51_122),
        ("web01;vCPU 0", 48_000),
        ("web01;vCPU 0;io", 46_000),
        ("web01;vCPU 0;io;port 0x0070 RTC index out", 42_000),
        (
            "web01;vCPU 0;io;port 0x0070 RTC index out;guest 0xffffffff81033f40",
            1000,
        ),
        (
            "web01;vCPU 0;io;port 0x0070 RTC index out;guest rtc_cmos_read+0x1d",
            41_000,
        ),
        ("web01;vCPU 0;io;port 0x0071 RTC data in", 4000),
        (
            "web01;vCPU 0;io;port 0x0071 RTC data in;guest 0xffffffff81033f2a",
            4000,
        ),
        ("web01;vCPU 0;msr", 2000),
        ("web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write", 2000),
        ("web01;vCPU 1", 3122),
        ("web01;vCPU 1;cpuid", 1200),
        ("web01;vCPU 1;cpuid;cpuid 0x1", 600),
        ("web01;vCPU 1;cpuid;cpuid 0x40000000", 400),
        ("web01;vCPU 1;cpuid;cpuid 0xd", 200),
        ("web01;vCPU 1;hlt", 1002),
        ("web01;vCPU 1;hlt;guest 0xffffffff81a011c2", 1002),
        ("web01;vCPU 1;io", 450),
        ("web01;vCPU 1;io;other ports", 18),
        ("web01;vCPU 1;io;port 0x0040 PIT (i8254) in", 24),
        ("web01;vCPU 1;io;port 0x0061 PC speaker / NMI status in", 16),
        ("web01;vCPU 1;io;port 0x03f8 COM1 serial out", 56),
        ("web01;vCPU 1;io;port 0x03fd COM1 serial in", 48),
        ("web01;vCPU 1;io;port 0x0510 QEMU fw_cfg out", 40),
        ("web01;vCPU 1;io;port 0x0511 QEMU fw_cfg in", 32),
        ("web01;vCPU 1;io;port 0x0608 ACPI PM timer in", 64),
        ("web01;vCPU 1;io;port 0x0cf8 PCI config address out", 72),
        ("web01;vCPU 1;io;port 0x0cfc PCI config data in", 80),
        (
            "web01;vCPU 1;io;port 0x0cfc PCI config data in;guest rtc_cmos_read+0x1d",
            80,
        ),
        ("web01;vCPU 1;msr", 70),
        ("web01;vCPU 1;msr;msr 0x1b IA32_APIC_BASE read", 60),
        ("web01;vCPU 1;msr;other MSRs", 6),
        ("web01;vCPU 1;npf", 400),
    ];
    assert_eq!(weights(&f), expected);
    // The port 0x70 frame's share: 42 000 of 51 122 = 82.16 %.
    assert_eq!(
        f["web01;vCPU 0;io;port 0x0070 RTC index out"].title,
        "port 0x0070 RTC index out (42,000 exits, 82.16%)"
    );
    assert_eq!(f["all"].title, "all (51,122 exits, 100%)");
}

/// By time, halts (1 001 ms of 1 058.615 ms) dwarf the rest: below 105 862 ns (0.01 %) a frame is
/// not drawn, which leaves out 7 of vCPU 1's 9 port frames, its "other ports" (27 000 ns), CPUID
/// 0xd (100 000 ns), and MSR 0x3a and "other MSRs" (8 000 and 12 000 ns).
#[test]
fn web01_frames_weigh_their_time() {
    let f = frames(&svg(&fixture::web01(true), Weight::Time));
    let expected = [
        ("all", 1_058_615_000),
        ("web01", 1_058_615_000),
        ("web01;vCPU 0", 55_000_000),
        ("web01;vCPU 0;io", 51_000_000),
        ("web01;vCPU 0;io;port 0x0070 RTC index out", 46_565_217),
        (
            "web01;vCPU 0;io;port 0x0070 RTC index out;guest 0xffffffff81033f40",
            1_108_695,
        ),
        (
            "web01;vCPU 0;io;port 0x0070 RTC index out;guest rtc_cmos_read+0x1d",
            45_456_521,
        ),
        ("web01;vCPU 0;io;port 0x0071 RTC data in", 4_434_782),
        (
            "web01;vCPU 0;io;port 0x0071 RTC data in;guest 0xffffffff81033f2a",
            4_434_782,
        ),
        ("web01;vCPU 0;msr", 4_000_000),
        (
            "web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write",
            4_000_000,
        ),
        ("web01;vCPU 1", 1_003_615_000),
        ("web01;vCPU 1;cpuid", 600_000),
        ("web01;vCPU 1;cpuid;cpuid 0x1", 300_000),
        ("web01;vCPU 1;cpuid;cpuid 0x40000000", 200_000),
        ("web01;vCPU 1;hlt", 1_001_000_000),
        ("web01;vCPU 1;hlt;guest 0xffffffff81a011c2", 1_001_000_000),
        ("web01;vCPU 1;io", 675_000),
        (
            "web01;vCPU 1;io;port 0x0cf8 PCI config address out",
            108_000,
        ),
        ("web01;vCPU 1;io;port 0x0cfc PCI config data in", 120_000),
        (
            "web01;vCPU 1;io;port 0x0cfc PCI config data in;guest rtc_cmos_read+0x1d",
            120_000,
        ),
        ("web01;vCPU 1;msr", 140_000),
        ("web01;vCPU 1;msr;msr 0x1b IA32_APIC_BASE read", 120_000),
        ("web01;vCPU 1;npf", 1_200_000),
    ];
    assert_eq!(weights(&f), expected);
    // 46 565 217 of 1 058 615 000 ns = 4.40 %.
    assert_eq!(
        f["web01;vCPU 0;io;port 0x0070 RTC index out"].title,
        "port 0x0070 RTC index out (46,565,217 ns, 4.40%)"
    );
}

#[test]
fn an_empty_profile_is_a_valid_svg_that_says_so() {
    let out = output(|out| flamegraph::render(&[], "empty", Weight::Count, out));
    assert!(out.contains(">no data</text>"), "{out}");
    let f = frames(&out);
    assert_eq!(f.keys().collect::<Vec<_>>(), ["all", "no_data"]);
    assert_eq!(f["no_data"].weight, 1);
}

fn differential() -> BTreeMap<String, Frame> {
    let (before, after) = (fixture::before(true), fixture::after(true));
    let b = folded::lines(&before, Weight::Time);
    let a = folded::lines(&after, Weight::Time);
    let svg = output(|out| {
        flamegraph::render_differential(
            (&b, before.duration_secs),
            (&a, after.duration_secs),
            "d",
            Weight::Time,
            out,
        )
    });
    frames(&svg)
}

/// Widths from `after` (4 s); `before` (2 s) is scaled to 4 s first, so rates are compared. Each
/// line's last frame is colored by after - scaled before: red for more, blue for less, scaled by
/// the largest change (hlt: 1.2 s - 2 x 0.2 s = 0.8 s): c = 100 + 150 x (0.8 s - |change|) /
/// 0.8 s, rounded down. Frames above a line's last one are neutral (250, 250, 250).
/// - hlt +0.8 s: rgb(255,100,100); port 0x70 2 x 40 ms -> 4.8 ms: c = 100 + 135.9 = 235, blue;
/// - cpuid 0x1, new, +160 us: c = 249, red; MSR 0x6e0 at the same rate: neutral.
#[test]
fn grown_frames_are_red_and_shrunk_frames_blue() {
    let f = differential();
    let neutral = "rgb(250,250,250)";
    let got: Vec<(&str, u64, &str)> = f
        .iter()
        .map(|(path, f)| (path.as_str(), f.weight, f.fill.as_str()))
        .collect();
    let msr = "web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write";
    let expected = [
        ("all", 1_208_960_000, neutral),
        ("web01", 1_208_960_000, neutral),
        ("web01;vCPU 0", 1_208_960_000, neutral),
        ("web01;vCPU 0;cpuid", 160_000, neutral),
        ("web01;vCPU 0;cpuid;cpuid 0x1", 160_000, "rgb(255,249,249)"),
        ("web01;vCPU 0;hlt", 1_200_000_000, "rgb(255,100,100)"),
        ("web01;vCPU 0;io", 4_800_000, neutral),
        (
            "web01;vCPU 0;io;port 0x0070 RTC index out",
            4_800_000,
            "rgb(235,235,255)",
        ),
        ("web01;vCPU 0;msr", 4_000_000, neutral),
        // The same rate in both: neutral (the_same_rate_is_neither_red_nor_blue).
        (msr, 4_000_000, neutral),
    ];
    assert_eq!(got, expected);
    // 1.2 s of 1.20896 s = 99.26 %, +0.8 s = +66.17 %; the port: -75.2 ms = -6.22 %.
    assert_eq!(
        f["web01;vCPU 0;hlt"].title,
        "hlt (1,200,000,000 ns, 99.26%; +66.17%)"
    );
    assert_eq!(
        f["web01;vCPU 0;io;port 0x0070 RTC index out"].title,
        "port 0x0070 RTC index out (4,800,000 ns, 0.40%; -6.22%)"
    );
}

/// MSR 0x6e0 is written 500 times a second at 2 us in both recordings, the after one twice as
/// long (4 s, 2 s): totals 2 ms -> 4 ms, the same rate. The differential compares rates, as the
/// diff table does (it compared totals and painted it red, "+0.17%").
#[test]
fn the_same_rate_is_neither_red_nor_blue() {
    let f = differential();
    let msr = &f["web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write"];
    assert_eq!(msr.fill, "rgb(250,250,250)", "{}", msr.title);
}
