//! Analyses over the model: exit storms and their diagnosis, CPU attribution, and the difference
//! between two recordings. Pure functions, unit-tested with synthetic data.

pub mod cpu;
pub mod diagnose;
pub mod diff;
pub mod storms;
