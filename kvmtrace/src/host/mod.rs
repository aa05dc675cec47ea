//! The host: finding VMs and their threads in /proc and /run, and what state a running vCPU
//! thread is in when tracing starts.

pub mod identities;
pub mod kernel;
pub mod procfs_cpu;
pub mod steal;
pub mod thread_probe;
pub mod vm;

pub use vm::Host;
