//! `kvmtrace report -i FILE`.

use std::path::Path;

use super::{
    config,
    output::{finish_output, output},
};
use crate::{
    cli::ReportArgs,
    render::{self, Format, Weight},
    report::{
        self,
        filter::{self, SortKey},
    },
    source::recording,
    untrusted,
};

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let settings = config::ReportSettings::of(args)?;
    let loaded = recording::load(&args.input, settings.window)?;
    // Flamegraph frames are VM;vCPU N;REASON;detail, so those formats are always per vCPU.
    let per_vcpu = args.per_vcpu
        || !args.vcpus.is_empty()
        || matches!(args.format, Format::Folded | Format::Flamegraph);
    // Tables for scripts and stacks get every key; text and JSON the top ones and "other keys".
    let max_rows = (!args.all_keys && matches!(args.format, Format::Text | Format::Json))
        .then_some(report::DEFAULT_MAX_ROWS);
    let mut report = recording::build_report(&loaded, per_vcpu, &args.storms.config(), max_rows);
    if args.weight == Weight::Samples && report.host_stacks.is_none() {
        return Err(crate::error::Error::Usage(format!(
            "{} has no host stack samples for --weight samples: record with `kvmtrace record --stacks`",
            untrusted::escape(&args.input.display().to_string())
        ))
        .into());
    }
    crate::guest_symbols::name_rips(
        &mut report,
        &args.guest_symbols,
        &untrusted::escape(&args.input.display().to_string()),
    )?;
    filter::filter(&mut report, &settings.filter);
    if args.sort != SortKey::Count {
        filter::sort(&mut report, args.sort);
    }
    let title = format!("kvmtrace: {}", untrusted::escape(&file_name(&args.input)));
    let mut out = output(args.output.as_deref())?;
    finish_output(render::render(
        &report,
        args.format,
        args.weight,
        &title,
        &mut out,
    ))?;
    out.finish()
}

/// A recording's file name, for flamegraph titles.
fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
