//! kvmtrace's developer tasks, one module per subcommand.
mod bench;
mod bench_loops;
mod bench_paired;
mod bench_scale;
mod bench_stacks;
mod codegen;
mod deb_l1;
mod demo;
mod dist;
mod dist_check;
mod fuzz;
mod l1;
mod nested;
mod requirements;
mod setup;
mod sh;
mod static_build;
mod test;

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
    /// Install what xtask/src/requirements.rs lists (idempotent; seconds when present).
    Setup,
    /// Every check CI runs: fmt, clippy, unit tests, integration tests with real guests (root).
    Test,
    /// Record the built-in demo VM and print the report.
    Demo {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Overhead of kvmtrace vs nothing, an empty program and bpftrace; syscall cost for others.
    Bench {
        /// Rounds of every configuration in rotating order (the exit-loop rates move by several
        /// percent between seconds on a small shared machine: five rounds of five seconds give
        /// steadier medians than three of three).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// One-second samples per configuration per round.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Only `--stacks` beside `kvmtrace record` (3 x ROUNDS pairs of SAMPLES seconds).
        #[arg(long)]
        stacks_only: bool,
        /// Only the collector at scale: the drain and live-storm-line benchmarks, and `kvmtrace
        /// record` and `kvmtrace serve` of 200 vCPU threads over 60 s each.
        #[arg(long, conflicts_with = "stacks_only")]
        scale_only: bool,
        /// Only the MSR and VMM exit loops timed per configuration and the per-event program
        /// cost with every program attached at once (ROUNDS rounds of SAMPLES seconds).
        #[arg(long, conflicts_with_all = ["stacks_only", "scale_only"])]
        cost_only: bool,
    },
    /// Boot the nested SVM L1 (QEMU TCG + kvm_amd) and run the tests that need real kvm_exit.
    Nested {
        /// Give up (and kill QEMU) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// CPUs of L1 (the two-vCPU test needs 2).
        #[arg(long, default_value_t = 2)]
        smp: u32,
        /// L1's Debian kernel line: 5.10 (bullseye), 6.1 (bookworm), 6.12 (trixie), or all.
        #[arg(long, default_value = "6.1", value_parser = l1::KernelLine::parse_list)]
        kernel: std::vec::Vec<l1::KernelLine>,
    },
    /// Build target/dist/: static kvmtrace, completions, man pages, .deb; check them.
    Dist {
        /// Then install the .deb with dpkg in the nested rig's L1 and record a guest there.
        #[arg(long)]
        l1: bool,
    },
    /// Fuzz the recording reader and the write-read round trip for a bounded time.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Regenerate the exit-reason tables from tracepoint format files.
    Codegen {
        #[arg(long, default_value = "kvmtrace/tests/data/formats/6.18")]
        formats: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run_setup(),
        Task::Test => test::run_tests(),
        Task::Demo { seconds } => demo::run_demo(seconds),
        Task::Bench {
            rounds,
            samples,
            stacks_only,
            scale_only,
            cost_only,
        } => bench::run_bench(
            rounds,
            samples,
            bench::Only {
                stacks: stacks_only,
                scale: scale_only,
                cost: cost_only,
            },
        ),
        Task::Nested {
            timeout,
            smp,
            kernel,
        } => nested::run_nested(
            &kernel,
            &nested::Options {
                timeout: std::time::Duration::from_secs(timeout),
                smp,
            },
        )
        .map(|_| ()),
        Task::Dist { l1 } => dist::run_dist(l1),
        Task::Fuzz { seconds } => fuzz::run_fuzz(seconds),
        Task::Codegen { formats } => codegen::run(&sh::root(), &formats),
    }
}
