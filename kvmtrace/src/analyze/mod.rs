//! Analyses over the model: exit storms and their diagnosis, and CPU attribution. Pure
//! functions, unit-tested with synthetic data. (Comparing two recordings works on finished
//! reports: [`crate::report::diff`].)

pub mod cpu;
pub mod diagnose;
pub mod storm_watch;
pub mod storms;
