//! Analyses over the recorded data: exit storms and their diagnosis. Pure functions over
//! [`crate::series::Series`], unit-tested with synthetic series.

pub mod diagnose;
pub mod storms;
