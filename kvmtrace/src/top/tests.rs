//! `kvmtrace top` on plain values: the tree built from one interval, the keys, the screen (a
//! ratatui test backend, compared line by line) and the batch text.

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{Counter, DetailKey, DetailKind, LatencyKey, VCPU_UNKNOWN, bucket_index};
use ratatui::{Terminal, backend::TestBackend};

use super::{
    batch, draw,
    frame::{self, Frame, History},
    ui::{Key, Sort, Ui},
};
use crate::{
    analyze::storms::Config as StormConfig,
    model::identity::{Thread, Vm},
    model::{Aggregate, InFlight, Interval, LatencyDelta},
    report::{self, Context, Report},
};

/// VM web01 (pid 100) in one second: vCPU 0 (tid 101) makes 2 000 SVM io exits of 5 us, each a
/// write to port 0x70 that goes to the VMM (10 us round trips); vCPU 1 (tid 102) reads MSR 0x1b
/// 300 times with no kvm_exit for it.
fn one_second() -> Frame {
    frame::build(&one_second_report(), &mut History::default(), 1.0)
}

fn one_second_report() -> Report {
    let vms: BTreeMap<u32, Vm> = [(
        100,
        Vm {
            pid: 100,
            name: "web01".into(),
            aliases: Default::default(),
            threads: vec![
                Thread {
                    tid: 101,
                    comm: "CPU 0/KVM".into(),
                },
                Thread {
                    tid: 102,
                    comm: "CPU 1/KVM".into(),
                },
            ],
        },
    )]
    .into();
    let delta = |count: u64, ns: u64| LatencyDelta {
        count,
        total_ns: count * ns,
        min_ns: ns,
        max_ns: ns,
        buckets: vec![(bucket_index(ns) as u16, count as u32)],
    };
    let lat = |tid, vcpu_id, isa, reason, kind| LatencyKey {
        tgid: 100,
        tid,
        vcpu_id,
        isa,
        reason,
        kind,
    };
    let detail = |tid, kind: DetailKind, a, b| DetailKey {
        tgid: 100,
        tid,
        kind: kind as u32,
        a,
        b,
    };
    let mut agg = Aggregate::default();
    agg.apply(&Interval {
        at: Duration::from_secs(1),
        latency: vec![
            (lat(101, 0, 2, 0x7b, 0), delta(2000, 5_000)),
            (lat(101, VCPU_UNKNOWN, 0, 2, 1), delta(2000, 10_000)),
        ],
        details: vec![
            (detail(101, DetailKind::Pio, 0x70, 1 | (1 << 8)), 2000),
            (detail(101, DetailKind::UserspaceExit, 2, 0), 2000),
            (detail(102, DetailKind::Msr, 0x1b, 0), 300),
        ],
        counters: [0; Counter::COUNT as usize],
        threads: Vec::new(),
        stacks: Default::default(),
        slow: Default::default(),
        guest_rips: Default::default(),
    });
    let storm = StormConfig::default();
    let in_flight = InFlight::default();
    let ctx = Context {
        storm: &storm,
        vms: &vms,
        per_vcpu: true,
        kvm_module: Some("kvm_amd".into()),
        attached: Vec::new(),
        missing: Vec::new(),
        in_flight: &in_flight,
        max_rows: None,
    };
    report::build(&agg, &ctx)
}

#[test]
fn the_tree_groups_keys_under_their_exit_reason() {
    let f = one_second();
    assert_eq!(f.vms.len(), 1);
    let vm = &f.vms[0];
    assert_eq!(
        (vm.id.as_str(), vm.name.as_str(), vm.per_sec),
        ("100", "web01", 2000.0)
    );
    assert_eq!(vm.vmm_per_sec, Some(2000.0));
    let names: Vec<&str> = vm.children.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["vCPU 0 (tid 101)", "vCPU 1 (tid 102)"]);
    let vcpu0 = &vm.children[0];
    let groups: Vec<(&str, f64)> = vcpu0
        .children
        .iter()
        .map(|g| (g.name.as_str(), g.per_sec))
        .collect();
    // The port is under the io reason, not in a kvm_pio row of its own.
    assert_eq!(
        groups,
        [
            ("SVM io", 2000.0),
            ("VMM exits (kvm_userspace_exit)", 2000.0)
        ]
    );
    let io = &vcpu0.children[0];
    assert_eq!(io.children.len(), 1);
    assert_eq!(io.children[0].name, "port 0x0070 (RTC index) out 1B");
    assert_eq!(io.children[0].per_sec, 2000.0);
    // 2 000 exits x 5 us in one second: 1 % of a CPU.
    assert!(
        (io.time_pct.unwrap() - 1.0).abs() < 1e-9,
        "{:?}",
        io.time_pct
    );
    // No kvm_exit for MSRs on vCPU 1: the kvm_msr events get their own row.
    let vcpu1 = &vm.children[1];
    assert_eq!(vcpu1.per_sec, 0.0);
    assert_eq!(vcpu1.children.len(), 1);
    assert_eq!(vcpu1.children[0].name, "MSR (kvm_msr)");
    assert_eq!(
        vcpu1.children[0].children[0].name,
        "MSR 0x1b (IA32_APIC_BASE) read"
    );
    assert_eq!(vcpu1.children[0].per_sec, 300.0);
}

#[test]
fn history_follows_each_row_and_forgets_rows_long_gone() {
    let report = one_second_report();
    let mut h = History::default();
    frame::build(&report, &mut h, 1.0);
    let f = frame::build(&report, &mut h, 2.0);
    // VM rows: exits and VMM exits.
    assert_eq!(f.vms[0].history, [4000, 4000]);
    assert_eq!(f.vms[0].children[1].children[0].history, [300, 300]);
    // Gone for three frames, back: the gap reads as zeros.
    let mut empty = report.clone();
    empty.vms.clear();
    for at in 3..6 {
        frame::build(&empty, &mut h, at as f64);
    }
    let f = frame::build(&report, &mut h, 6.0);
    assert_eq!(f.vms[0].history, [4000, 4000, 0, 0, 0, 4000]);
    // Gone for a whole history's length: forgotten, it starts afresh.
    for at in 0..frame::HISTORY_POINTS {
        frame::build(&empty, &mut h, at as f64);
    }
    let f = frame::build(&report, &mut h, 100.0);
    assert_eq!(f.vms[0].history, [4000]);
}

fn keys(ui: &mut Ui, f: &Frame, keys: &[Key]) {
    for k in keys {
        ui.key(*k, f);
    }
}

#[test]
fn keys_drill_down_and_back_up() {
    let f = one_second();
    let mut ui = Ui::new(Duration::from_secs(1));
    ui.settle(&f);
    assert_eq!(ui.selected.as_deref(), Some("100"));
    keys(&mut ui, &f, &[Key::Enter]);
    assert_eq!(ui.path, ["100"]);
    assert_eq!(ui.selected.as_deref(), Some("101"), "busiest vCPU first");
    keys(&mut ui, &f, &[Key::Enter, Key::Enter]);
    assert_eq!(ui.path, ["100", "101", "SVM io"]);
    assert_eq!(ui.rows(&f)[0].name, "port 0x0070 (RTC index) out 1B");
    // The deepest level: Enter stays.
    keys(&mut ui, &f, &[Key::Enter]);
    assert_eq!(ui.path.len(), 3);
    keys(&mut ui, &f, &[Key::Esc, Key::Left]);
    assert_eq!(ui.path, ["100"]);
    assert_eq!(
        ui.selected.as_deref(),
        Some("101"),
        "back on the row drilled into"
    );
    keys(&mut ui, &f, &[Key::Down, Key::Enter]);
    assert_eq!(ui.path, ["100", "102"]);
    keys(&mut ui, &f, &[Key::Char('q')]);
    assert!(ui.quit);
}

#[test]
fn sort_filter_pause_interval_and_help() {
    let f = one_second();
    let mut ui = Ui::new(Duration::from_secs(1));
    ui.settle(&f);
    keys(&mut ui, &f, &[Key::Enter, Key::Char('s')]);
    assert_eq!(ui.sort, Sort::Time);
    keys(
        &mut ui,
        &f,
        &[Key::Char('s'), Key::Char('s'), Key::Char('s')],
    );
    assert_eq!(ui.sort, Sort::Rate);
    keys(
        &mut ui,
        &f,
        &[Key::Char('/'), Key::Char('1'), Key::Char(')'), Key::Enter],
    );
    assert_eq!(ui.filter, "1)");
    let rows: Vec<&str> = ui.rows(&f).iter().map(|n| n.name.as_str()).collect();
    assert_eq!(rows, ["vCPU 0 (tid 101)"]);
    assert_eq!(ui.selected.as_deref(), Some("101"));
    keys(&mut ui, &f, &[Key::Esc]);
    assert_eq!(
        (ui.filter.as_str(), ui.path.len()),
        ("", 1),
        "Esc clears the filter first"
    );
    keys(&mut ui, &f, &[Key::Char('p')]);
    assert!(ui.paused);
    keys(
        &mut ui,
        &f,
        &[
            Key::Char(' '),
            Key::Char('-'),
            Key::Char('-'),
            Key::Char('-'),
        ],
    );
    assert!(!ui.paused);
    assert_eq!(
        ui.interval,
        Duration::from_millis(250),
        "halved down to the floor"
    );
    for _ in 0..10 {
        ui.key(Key::Char('+'), &f);
    }
    assert_eq!(ui.interval, Duration::from_secs(60));
    keys(&mut ui, &f, &[Key::Char('?')]);
    assert!(ui.help);
    keys(&mut ui, &f, &[Key::Char('x')]);
    assert!(!ui.help && !ui.quit);
    keys(&mut ui, &f, &[Key::Char('?'), Key::CtrlC]);
    assert!(ui.quit);
}

#[test]
fn a_vm_that_stops_takes_the_view_back_to_the_list() {
    let f = one_second();
    let mut ui = Ui::new(Duration::from_secs(1));
    keys(&mut ui, &f, &[Key::Enter, Key::Enter]);
    assert_eq!(ui.path.len(), 2);
    ui.settle(&Frame::default());
    assert!(ui.path.is_empty());
    assert_eq!(ui.selected, None);
}

fn screen(f: &Frame, ui: &Ui, width: u16, height: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|s| draw::draw(s, f, ui)).unwrap();
    let buf = t.backend().buffer();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

#[test]
fn the_screen_at_each_level() {
    let f = one_second();
    let mut ui = Ui::new(Duration::from_secs(1));
    ui.settle(&f);
    let s = screen(&f, &ui, 100, 10);
    assert_eq!(
        s[0],
        "kvmtrace top - 1.0 s, every 1s, sort: rate   (? help, q quit)"
    );
    assert_eq!(s[1], "VMs");
    assert_eq!(
        s[2],
        "NAME           PID      vCPUs EXITS/s   VMM/s     CPU%   GUEST% EXITS% VMM%   BLOCKED% STORMS"
    );
    assert_eq!(
        s[3],
        "web01          100      2     2000      2000      0.0    -      -      0.0    0.0"
    );
    keys(&mut ui, &f, &[Key::Enter, Key::Enter]);
    let s = screen(&f, &ui, 100, 10);
    assert_eq!(s[1], "VMs > web01 (pid 100) > vCPU 0 (tid 101)");
    assert_eq!(
        s[2],
        "REASON                                                         EVENTS/s   p50       p99       TIME%"
    );
    assert_eq!(
        s[3],
        "SVM io                                                         2000       5.0us     5.0us     1.0"
    );
    assert_eq!(
        s[4],
        "VMM exits (kvm_userspace_exit)                                 2000       -         -         -"
    );
    assert!(
        s[5].starts_with(" SVM io: events per second, last 1 intervals ──"),
        "{:?}",
        s[5]
    );
    assert_eq!(s[6..9], ["█", "█", "█"], "one point, the whole height");
    ui.key(Key::Char('?'), &f);
    let s = screen(&f, &ui, 100, 14);
    assert!(s.iter().any(|l| l.contains("kvmtrace top: keys")), "{s:#?}");
    assert!(
        s.iter().any(|l| l.contains("q, Ctrl-C      quit")),
        "{s:#?}"
    );
}

#[test]
fn batch_frames_show_the_whole_tree() {
    let f = one_second();
    let mut out = Vec::new();
    batch::write(&mut out, &f, 10).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected = "\
kvmtrace top - 1.0 s, interval 1.000 s, 1 VM(s)
VM web01 (pid 100): 2000 exits/s (2000), 2000 VMM exits/s, CPU 0.0 % (guest -, exits -, VMM 0.0, blocked 0.0)
  vCPU 0 (tid 101): 2000 exits/s (2000), 2000 VMM exits/s, CPU -
    SVM io                                             2000/s       (2000)  p50 5.0us p99 5.0us
      port 0x0070 (RTC index) out 1B                   2000/s       (2000)
    VMM exits (kvm_userspace_exit)                     2000/s       (2000)
      IO                                               2000/s       (2000)  p50 10.0us p99 10.0us
  vCPU 1 (tid 102): 0 exits/s (0), 0 VMM exits/s, CPU -
    MSR (kvm_msr)                                       300/s        (300)
      MSR 0x1b (IA32_APIC_BASE) read                    300/s        (300)

";
    assert_eq!(text, expected);
}
