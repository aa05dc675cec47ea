//! kvmtrace's test guest: a small VMM that starts a KVM guest and makes exact numbers of VM exits
//! of chosen kinds, on one or more vCPU threads, under a QEMU-style `-name guest=NAME` so that
//! `kvmtrace record -d NAME` finds it the way it finds QEMU.
//!
//! It runs on ordinary VMX/SVM hosts and on kvm_pvm (a paravirtual KVM without VMX/SVM), where the
//! guest needs a few extra steps to run in hardware rather than emulated (see `testvm::backend`).

pub mod testvm;
