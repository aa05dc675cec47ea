//! The loop behind `kvmtrace top`: trace, drain each interval, turn it into a [`Frame`], and show
//! it; keys and signals in between. The terminal is restored on every way out (q, Ctrl-C,
//! SIGTERM, SIGINT, an error, a panic: ratatui's init installs the panic hook).

use std::{collections::BTreeMap, io, time::Duration};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::{
    STORM_WINDOW, batch, draw,
    frame::{self, Frame, History},
    ui::{Key, Ui},
};
use crate::{
    analyze::storm_watch::StormWatch,
    error::Error,
    host::Host,
    model::identity::{Vm, label_of_thread},
    model::{Aggregate, InFlight, Interval, ThreadCpu, series::Window},
    report::{self, Context},
    source::live::{TraceOptions, Tracer, check_root},
};

/// What the loop waits for besides the interval.
enum Input {
    Key(Key),
    Resize,
}

pub async fn top(args: super::Options) -> Result<(), Error> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    check_root()?;
    let host = Host::default();
    let filtered = !(args.names.is_empty() && args.pids.is_empty());
    let mut directory: BTreeMap<u32, Vm> = host
        .select(&args.names, &args.pids)?
        .into_iter()
        .map(|vm| (vm.pid, vm))
        .collect();
    let mut tracer = Tracer::start(&TraceOptions {
        pids: filtered.then(|| directory.keys().copied().collect()),
        tracefs: args.tracefs.clone(),
        // The live view shows no tracer cost: no statistics, which would cost every BPF
        // program on the host.
        bpf_stats: crate::source::live::cost::StatsMode::Off,
        ..TraceOptions::default()
    })?;
    tracer.open(|| crate::host::identities::running_vcpu_threads(&host, &directory))?;
    let mut source = Source {
        host,
        filtered,
        storm: args.storms,
        kvm_module: crate::host::kernel::kvm_module(),
        attached: tracer.attached.iter().map(|s| s.to_string()).collect(),
        missing: tracer.missing.iter().map(|s| s.to_string()).collect(),
        recent: Window::default(),
        storms: StormWatch::new(args.storms),
        threads: BTreeMap::new(),
        counters: [0; kvmtrace_common::Counter::COUNT as usize],
        last_at: Duration::ZERO,
        history: History::default(),
    };
    let mut ui = Ui::new(args.interval);
    let mut shown = Frame::default();
    let mut frames = 0u64;
    let done = |frames: u64| args.iterations.is_some_and(|n| frames >= n);

    let (tx, mut keys) = mpsc::unbounded_channel();
    let mut terminal = if args.batch {
        None
    } else {
        let terminal = ratatui::init();
        std::thread::spawn(move || read_keys(tx));
        Some(terminal)
    };
    let result: Result<(), Error> = async {
        let mut ticker = new_ticker(ui.interval).await;
        loop {
            if let Some(t) = terminal.as_mut() {
                t.draw(|s| draw::draw(s, &shown, &ui))?;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    let iv = tracer.drain()?;
                    let next = source.frame(&mut directory, &iv);
                    if !ui.paused {
                        shown = next;
                        ui.settle(&shown);
                        frames += 1;
                        if terminal.is_none() {
                            batch::write(&mut io::stdout().lock(), &shown, args.rows)?;
                        }
                    }
                    if done(frames) {
                        break;
                    }
                }
                Some(input) = keys.recv() => {
                    if let Input::Key(k) = input {
                        let before = ui.interval;
                        ui.key(k, &shown);
                        if ui.quit {
                            break;
                        }
                        if ui.interval != before {
                            ticker = new_ticker(ui.interval).await;
                        }
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    if terminal.is_some() {
        ratatui::restore();
    }
    tracer.close()?;
    drop(tracer);
    result
}

async fn new_ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await; // the first tick is immediate
    t
}

/// Reads the terminal's key and resize events on a thread of its own (crossterm blocks), until
/// the loop stops listening.
fn read_keys(tx: mpsc::UnboundedSender<Input>) {
    while let Ok(ev) = event::read() {
        let input = match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                Input::Key(match k.code {
                    KeyCode::Char('c') if ctrl => Key::CtrlC,
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    KeyCode::Left => Key::Left,
                    KeyCode::Right => Key::Right,
                    _ => continue,
                })
            }
            Event::Resize(..) => Input::Resize,
            _ => continue,
        };
        if tx.send(input).is_err() {
            return;
        }
    }
}

/// Turns drained intervals into frames: the VM directory, the last intervals for storms, the
/// previous cumulative values for per-interval CPU and counters, and the sparkline history.
struct Source {
    host: Host,
    filtered: bool,
    storm: crate::analyze::storms::Config,
    kvm_module: Option<String>,
    attached: Vec<String>,
    missing: Vec<String>,
    /// The last [`STORM_WINDOW`] intervals (kept: applying them all again at each frame cost
    /// 50 % of `top`'s CPU with 10 000 keys), and their storms.
    recent: Window,
    storms: StormWatch,
    /// By (pid, tid), as the aggregate's.
    threads: BTreeMap<(u32, u32), ThreadCpu>,
    counters: [u64; kvmtrace_common::Counter::COUNT as usize],
    last_at: Duration,
    history: History,
}

impl Source {
    fn frame(&mut self, directory: &mut BTreeMap<u32, Vm>, iv: &Interval) -> Frame {
        self.refresh(directory, iv);
        let width = iv.at.saturating_sub(self.last_at);
        self.last_at = iv.at;
        // This interval alone: rates and CPU of the last `width`.
        let mut window = Aggregate {
            without_series: true,
            ..Aggregate::default()
        };
        window.apply(iv);
        window.elapsed = width;
        for t in window.threads.values_mut() {
            if let Some(before) = self.threads.get(&(t.tgid, t.tid)) {
                *t = t.since(before);
            }
        }
        for (c, before) in window.counters.iter_mut().zip(self.counters) {
            *c = c.saturating_sub(before);
        }
        self.counters = iv.counters;
        self.threads = iv.threads.iter().map(|t| ((t.tgid, t.tid), *t)).collect();
        // The last intervals: storms that are going on now.
        self.recent.push(iv, STORM_WINDOW);
        let in_flight = InFlight::default();
        let ctx = Context {
            storm: &self.storm,
            vms: directory,
            per_vcpu: true,
            kvm_module: self.kvm_module.clone(),
            attached: self.attached.clone(),
            missing: self.missing.clone(),
            in_flight: &in_flight,
            max_rows: Some(report::DEFAULT_MAX_ROWS),
        };
        let mut report = report::build(&window, &ctx);
        // vCPUs by this interval's labels, else by their threads' names.
        let label = |pid: u32, tid: u32| {
            report::vcpu_label(&report.vms, pid, tid)
                .unwrap_or_else(|| label_of_thread(directory.get(&pid), tid))
        };
        if let Some((column, width)) = self.recent.newest() {
            self.storms.update(column, width, &self.recent, &label);
        }
        report.storms = self.storms.ongoing().cloned().collect();
        frame::build(&report, &mut self.history, iv.at.as_secs_f64())
    }

    /// VMs that started are added (all-VMs mode), VMs that stopped are dropped (with their
    /// storms: a new process may get the pid).
    fn refresh(&mut self, directory: &mut BTreeMap<u32, Vm>, iv: &Interval) {
        if !self.filtered {
            for vm in self.host.vms() {
                directory.entry(vm.pid).or_insert(vm);
            }
        }
        crate::host::identities::learn_identities(&self.host, directory, iv);
        directory.retain(|pid, _| {
            let running = self.host.proc_root.join(pid.to_string()).exists();
            if !running {
                self.storms.forget(*pid);
            }
            running
        });
    }
}
