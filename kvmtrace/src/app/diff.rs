//! `kvmtrace diff BEFORE AFTER`.

use std::io::{self, Write as _};

use super::output::{finish_output, output};
use crate::{
    analyze::storms::Config as StormConfig,
    cli::{DiffArgs, DiffFormat},
    render,
    report::diff,
    source::recording,
    untrusted,
};

pub fn diff(args: &DiffArgs) -> anyhow::Result<()> {
    let per_vcpu = args.format == DiffFormat::Flamegraph;
    let storm = StormConfig::default();
    let before = recording::build_report(
        &recording::load(&args.before, Default::default())?,
        per_vcpu,
        &storm,
        None,
    );
    let after = recording::build_report(
        &recording::load(&args.after, Default::default())?,
        per_vcpu,
        &storm,
        None,
    );
    let mut out = output(args.output.as_deref())?;
    let r = match args.format {
        DiffFormat::Text => render::diff::render_text(&diff::diff(&before, &after), &mut out),
        DiffFormat::Json => serde_json::to_writer_pretty(&mut out, &diff::diff(&before, &after))
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out)),
        DiffFormat::Flamegraph => {
            let title = untrusted::escape(&format!(
                "kvmtrace diff {} -> {}",
                args.before.display(),
                args.after.display()
            ));
            render::flamegraph::render_differential(
                (
                    &render::folded::lines(&before, args.weight),
                    before.duration_secs,
                ),
                (
                    &render::folded::lines(&after, args.weight),
                    after.duration_secs,
                ),
                &title,
                args.weight,
                &mut out,
            )
        }
    };
    finish_output(r)?;
    out.finish()
}
