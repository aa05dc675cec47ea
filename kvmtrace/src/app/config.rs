//! The command line turned into validated settings: values that contradict each other are
//! refused here, with what to do instead, before any work starts.

use crate::{
    cli::{RecordArgs, ReportArgs},
    error::Error,
    report::filter::Filter,
    source::{live::TraceOptions, recording::Window},
};

/// The tracer `record` starts: `pids` None traces every VM.
pub fn trace_options(args: &RecordArgs, pids: Option<Vec<u32>>) -> TraceOptions {
    TraceOptions {
        pids,
        tracefs: args.tracefs.clone(),
        max_latency_keys: args.max_keys,
        max_detail_keys: args.max_detail_keys,
        detail_keys_per_thread: args.max_keys_per_vcpu,
        follow: false,
        stacks_hz: args.stacks,
        guest_rips: args.guest_rips || !args.guest_symbols.is_empty(),
        flight: args.flight.unwrap_or(0),
        storm_rate: args.storms.storm_rate.clamp(1.0, u32::MAX as f64) as u32,
        slow_ns: args.than.map(|d| d.as_nanos().min(u64::MAX as u128) as u64),
        bpf_stats: args.bpf_stats,
        ..TraceOptions::default()
    }
}

/// What `report` reads and keeps.
pub struct ReportSettings {
    pub window: Window,
    pub filter: Filter,
}

impl ReportSettings {
    pub fn of(args: &ReportArgs) -> Result<ReportSettings, Error> {
        if let (Some(from), Some(to)) = (args.from, args.to)
            && from >= to
        {
            return Err(Error::Usage(format!(
                "--from {} is not before --to {}: the window would be empty; give --from an earlier time than --to",
                humantime::format_duration(from),
                humantime::format_duration(to)
            )));
        }
        Ok(ReportSettings {
            window: Window {
                from: args.from,
                to: args.to,
            },
            filter: Filter {
                vms: args.vms.clone(),
                vcpus: args.vcpus.clone(),
                reasons: args.reasons.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn settings(args: &[&str]) -> Result<ReportSettings, Error> {
        let cli = Cli::try_parse_from([&["kvmtrace", "report", "-i", "x.kvmtrace"], args].concat())
            .unwrap();
        let Command::Report(report) = cli.command else {
            unreachable!()
        };
        ReportSettings::of(&report)
    }

    #[test]
    fn a_window_must_not_be_empty() {
        let err = settings(&["--from", "10s", "--to", "5s"]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "--from 10s is not before --to 5s: the window would be empty; give --from an earlier time than --to"
        );
        assert!(settings(&["--from", "5s", "--to", "5s"]).is_err());
        let ok = settings(&["--from", "5s", "--to", "10s", "--vcpu", "tid 7"]).unwrap();
        assert_eq!(ok.filter.vcpus, [crate::model::identity::VcpuLabel::Tid(7)]);
    }
}
