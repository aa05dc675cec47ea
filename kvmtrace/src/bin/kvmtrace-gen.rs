//! `kvmtrace-gen OUT_DIR`: writes kvmtrace's shell completions (OUT_DIR/completions/: bash, zsh,
//! fish) and man pages (OUT_DIR/man/: kvmtrace.1 and kvmtrace-SUBCOMMAND.1 for each subcommand)
//! from the real clap definition, so they cannot drift from the binary. `cargo xtask dist` runs it;
//! it is not installed by the .deb.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

const BIN: &str = "kvmtrace";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmtrace-gen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: kvmtrace-gen OUT_DIR");
    };
    let out = PathBuf::from(out);
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    // Named as each shell looks them up: bash-completion by command name (the .deb renames
    // kvmtrace.bash to kvmtrace), zsh by `_kvmtrace` in $fpath, fish by `kvmtrace.fish`.
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(
            shell,
            &mut kvmtrace::cli::Cli::command(),
            BIN,
            &completions,
        )
        .with_context(|| format!("writing the {shell} completion"))?;
        println!("{}", path.display());
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(kvmtrace::cli::Cli::command(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    println!("{}", man.display());
    Ok(())
}
