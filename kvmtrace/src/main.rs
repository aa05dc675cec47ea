//! The kvmtrace binary: parse, run, map the outcome to an exit code.
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = kvmtrace::cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match kvmtrace::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
