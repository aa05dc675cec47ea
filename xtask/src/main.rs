//! kvmtrace's developer tasks. One module per subcommand.
mod codegen;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "kvmtrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the exit-reason tables from tracepoint format files.
    Codegen {
        #[arg(long, default_value = "kvmtrace/tests/data/formats/6.18")]
        formats: PathBuf,
    },
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Codegen { formats } => codegen::run(&root, &formats),
    }
}
