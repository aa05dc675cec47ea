//! The test VMM: a plan of steps per vCPU ([`plan`]), the guest image ([`guest`]), the host's KVM
//! flavour ([`backend`]) and the vCPU run loop ([`vcpu`]).

pub mod backend;
pub mod guest;
pub mod plan;
pub mod vcpu;
