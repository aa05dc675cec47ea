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

/// Intervals kept for storm detection (and nothing else: top's memory does not grow).
pub const STORM_WINDOW: usize = 30;

#[cfg(test)]
mod tests;
