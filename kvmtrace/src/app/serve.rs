//! `kvmtrace serve`.

use crate::{cli::ServeArgs, serve};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    Ok(serve::serve(serve::Options {
        listen: args.listen,
        storms: args.storms.config(),
        names: args.names,
        pids: args.pids,
        interval: args.interval,
        per_vcpu: args.per_vcpu,
        grace: args.grace,
        max_series: args.max_series,
        top_keys: args.top_keys,
        tracefs: args.tracefs,
        max_keys: args.max_keys,
        max_detail_keys: args.max_detail_keys,
        max_keys_per_vcpu: args.max_keys_per_vcpu,
        bpf_stats: args.bpf_stats,
    })
    .await?)
}
