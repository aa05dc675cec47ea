//! `kvmtrace top`: the live view. The same collector as `record` drains the kernel maps every
//! interval; each interval becomes a report (per vCPU, rates of that interval only), regrouped
//! into the drill-down tree of [`frame`], which [`draw`] shows in the terminal (ratatui) or
//! [`batch`] prints as text. Storms come from the last [`STORM_WINDOW`] intervals.

pub mod batch;
pub mod draw;
pub mod frame;
mod live;
pub mod ui;

pub use live::top;

/// What `top` shows, and how.
pub struct Options {
    /// VMs shown by name and pid; none: every VM.
    pub names: Vec<String>,
    pub pids: Vec<u32>,
    pub interval: std::time::Duration,
    /// Plain text frames on stdout instead of the terminal UI.
    pub batch: bool,
    /// Stop after this many frames.
    pub iterations: Option<u64>,
    /// Rows per table in batch frames.
    pub rows: usize,
    pub storms: crate::analyze::storms::Config,
    pub tracefs: Option<std::path::PathBuf>,
}

/// Intervals kept for storm detection (and nothing else: top's memory does not grow).
pub const STORM_WINDOW: usize = 30;

#[cfg(test)]
mod tests;
