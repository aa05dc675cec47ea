//! One file per subcommand: each turns its arguments into settings ([`config`]), wires the
//! layers below together and prints. The only place that knows the command line.

mod config;
mod diff;
mod list;
mod output;
mod record;
mod report;
mod serve;
mod top;

use crate::cli::{Cli, Command};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Record(args) => runtime()?.block_on(record::record(args)),
        Command::List(args) => list::list(&args),
        Command::Report(args) => report::report(&args),
        Command::Diff(args) => diff::diff(&args),
        Command::Serve(args) => runtime()?.block_on(serve::serve(args)),
        Command::Top(args) => runtime()?.block_on(top::top(args)),
    }
}
