//! The tracer's own series: the kernel side's event and loss counters, its maps' occupancy and
//! capacity, what its BPF programs cost (the kernel's run-time statistics), the exporter's CPU
//! time, and its drains.

use std::{sync::atomic::Ordering, time::Duration};

use kvmtrace_common::Counter;

use super::{Exporter, families::counter_label};
use crate::{
    model::cost::TracerCost,
    model::{Interval, MapEntries},
};

impl Exporter {
    /// Every kernel counter's series, at 0 before the first interval.
    pub(super) fn zero_kernel_counters(&self) {
        for c in Counter::ALL {
            self.kernel_counter(c).inc_by(0);
        }
    }

    fn kernel_counter(&self, c: Counter) -> prometheus_client::metrics::counter::Counter {
        let (loss, name) = counter_label(c);
        let family = if loss {
            &self.f.tracer_losses
        } else {
            &self.f.tracer_events
        };
        family
            .get_or_create(&[(if loss { "loss" } else { "event" }, name)])
            .clone()
    }

    /// Adds the growth of the kernel's (cumulative) counters.
    pub(super) fn kernel_counters(&mut self, iv: &Interval) {
        for c in Counter::ALL {
            let now = iv.counters[c as usize];
            let delta = now.saturating_sub(self.counters[c as usize]);
            self.counters[c as usize] = now;
            self.kernel_counter(c).inc_by(delta);
        }
    }

    /// The kernel maps' capacities, once.
    pub fn set_capacity(&self, cap: MapEntries) {
        for (map, n) in [
            ("threads", cap.threads),
            ("latency", cap.latency),
            ("details", cap.details),
        ] {
            self.f
                .map_capacity
                .get_or_create(&[("map", map)])
                .set(n as i64);
        }
    }

    /// Entries in the kernel maps as of this interval.
    pub(super) fn map_entries(&self, iv: &Interval) {
        let detail_keys = iv.details.iter().filter(|(k, _)| !k.is_other()).count();
        for (map, n) in [
            ("threads", iv.threads.len()),
            ("latency", iv.latency.len()),
            ("details", detail_keys),
        ] {
            self.f
                .map_entries
                .get_or_create(&[("map", map)])
                .set(n as i64);
        }
    }

    /// The tracer's cost so far: the runs and run time of each program while the statistics
    /// were on (none when the kernel keeps none), how long they were on, the runs the kernel
    /// skipped, and this process's CPU time. The counters are set to those values, never lowered.
    pub fn set_cost(&self, cost: &TracerCost) {
        for p in &cost.programs {
            let l = [("program", p.program.clone())];
            self.f
                .bpf_runs
                .get_or_create(&l)
                .inner()
                .fetch_max(p.runs, Ordering::Relaxed);
            set_seconds(
                &self.f.bpf_run_seconds.get_or_create(&l),
                Duration::from_nanos(p.run_ns),
            );
        }
        for s in &cost.skipped {
            self.f
                .bpf_skipped_runs
                .get_or_create(&[("program", s.program.clone())])
                .inner()
                .fetch_max(s.runs, Ordering::Relaxed);
        }
        if cost.unavailable.is_none() {
            set_seconds(
                &self.f.bpf_stats_seconds,
                Duration::try_from_secs_f64(cost.measured_secs()).unwrap_or_default(),
            );
        }
        set_seconds(
            &self.f.collector_cpu,
            Duration::from_nanos(cost.collector_cpu_ns),
        );
    }

    /// The drain's own cost.
    pub fn drained(&self, took: Duration) {
        self.f.drains.inc();
        self.f.drain_seconds.inc_by(took.as_secs_f64());
    }
}

/// Sets a seconds counter to a cumulative value (if that is more than it shows).
fn set_seconds(counter: &super::families::Seconds, value: Duration) {
    let secs = value.as_secs_f64();
    if secs > counter.get() {
        counter.inner().store(secs.to_bits(), Ordering::Relaxed);
    }
}
