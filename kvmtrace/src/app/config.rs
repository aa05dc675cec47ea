//! The command line turned into validated settings: values that contradict each other are
//! refused here, with what to do instead, before any work starts.

use crate::{cli::ReportArgs, error::Error, report::filter::Filter, source::recording::Window};

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
