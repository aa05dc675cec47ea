//! What `record` prints while it runs, on stderr: the progress line on a terminal and a line
//! when a storm starts or ends.

use std::{collections::BTreeMap, io};

use crate::{
    analyze::{
        storm_watch::StormWatch,
        storms::{self, Storm},
    },
    model::{Aggregate, Interval, identity::Vm, series::column},
};

/// The live progress line on a terminal (elapsed, exits/s, lost events); nothing when piped.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Exits and detail events so far, added up an interval at a time (not re-summed over
    /// every key of the aggregate at each interval).
    exits: u64,
    details: u64,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        use std::io::IsTerminal as _;
        let bar = (!quiet && io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        Progress {
            bar,
            exits: 0,
            details: 0,
        }
    }

    pub fn update(&mut self, agg: &Aggregate, iv: &Interval) {
        let Some(bar) = &self.bar else { return };
        self.exits += iv.latency.iter().map(|(_, d)| d.count).sum::<u64>();
        self.details += iv.details.iter().map(|(_, n)| n).sum::<u64>();
        let secs = agg.elapsed.as_secs_f64().max(1e-9);
        let c = |k: kvmtrace_common::Counter| iv.counters[k as usize];
        let lost = c(kvmtrace_common::Counter::LatencyMapFull)
            + c(kvmtrace_common::Counter::DetailMapFull)
            + c(kvmtrace_common::Counter::UnpairedExits)
            + c(kvmtrace_common::Counter::UnpairedEntries);
        bar.set_message(format!(
            "{:.0} exits/s, {:.0} detail events/s, {lost} lost",
            self.exits as f64 / secs,
            self.details as f64 / secs
        ));
        bar.tick();
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// A line on stderr that does not fight with the progress line.
    pub fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("kvmtrace: {line}"),
        }
    }
}

/// Everything `record` prints while it runs: the progress line, and storm lines when watching
/// (`storms` set).
pub struct LiveLines {
    progress: Progress,
    storms: Option<StormWatch>,
}

impl LiveLines {
    pub fn new(quiet: bool, storms: Option<storms::Config>) -> LiveLines {
        LiveLines {
            progress: Progress::new(quiet),
            storms: storms.map(StormWatch::new),
        }
    }

    /// After each interval was added to `agg`.
    pub fn update(&mut self, agg: &Aggregate, iv: &Interval, vms: &BTreeMap<u32, Vm>) {
        self.progress.update(agg, iv);
        self.storm_lines(agg, iv, vms);
    }

    /// After the last interval: the storms that ended with it, and the progress line cleared.
    pub fn finish(&mut self, agg: &Aggregate, iv: &Interval, vms: &BTreeMap<u32, Vm>) {
        self.storm_lines(agg, iv, vms);
        self.progress.finish();
    }

    /// A line for each storm that started or ended in the last interval.
    fn storm_lines(&mut self, agg: &Aggregate, iv: &Interval, vms: &BTreeMap<u32, Vm>) {
        let Some(watch) = &mut self.storms else {
            return;
        };
        let label = |pid, tid| crate::model::identity::label_of_thread(vms.get(&pid), tid);
        let series = &agg.series;
        let Some(newest) = series.ends.len().checked_sub(1) else {
            return;
        };
        let changes = watch.update(&column(iv), series.width(newest), series, &label);
        let name = |s: &Storm| {
            let vm = vms
                .get(&s.pid)
                .map_or_else(|| format!("pid {}", s.pid), |v| v.name.clone());
            let vcpu = match s.vcpu {
                storms::StormVcpu::One(label) => label.named(),
                storms::StormVcpu::All => "all vCPUs".into(),
            };
            format!("{vm} {vcpu}: {}", s.what)
        };
        for s in &changes.started {
            self.progress.println(format!(
                "storm started at {:.1} s: {} at {:.0}/s{}",
                s.start_secs,
                name(s),
                s.peak_rate,
                s.diagnosis
                    .as_ref()
                    .map(|d| format!(" ({})", d.title))
                    .unwrap_or_default()
            ));
        }
        for s in &changes.ended {
            self.progress.println(format!(
                "storm ended at {:.1} s: {} after {:.1} s, mean {:.0}/s, {} exits",
                s.end_secs,
                name(s),
                s.end_secs - s.start_secs,
                s.mean_rate,
                s.count
            ));
        }
    }
}

/// "recording vm01 (pid 42) to FILE; for 10s, Ctrl-C to stop early".
pub fn starting_line(
    directory: &BTreeMap<u32, Vm>,
    filtered: bool,
    output: Option<&std::path::Path>,
    duration: Option<std::time::Duration>,
) -> String {
    let what = if filtered {
        directory
            .values()
            .map(|vm| format!("{} (pid {})", vm.name, vm.pid))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("all VMs on this host ({} running now)", directory.len())
    };
    format!(
        "recording {what}{}; {}",
        output
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default(),
        match duration {
            Some(d) => format!(
                "for {}, Ctrl-C to stop early",
                humantime::format_duration(d)
            ),
            None => "Ctrl-C to stop".into(),
        }
    )
}
