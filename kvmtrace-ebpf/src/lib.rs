#![no_std]
// The template's shape: the programs live in the `kvmtrace` bin; this empty lib lets the crate be a
// build-dependency of the collector, so cargo rebuilds the object when these sources change.
