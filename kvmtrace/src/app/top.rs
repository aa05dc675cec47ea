//! `kvmtrace top`.

use crate::{cli::TopArgs, top};

pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    Ok(top::top(top::Options {
        storms: args.storms.config(),
        names: args.names,
        pids: args.pids,
        interval: args.interval,
        batch: args.batch,
        iterations: args.iterations,
        rows: args.rows,
        tracefs: args.tracefs,
    })
    .await?)
}
