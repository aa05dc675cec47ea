//! The header of a recording made by the live tracer.

use std::time::{Duration, SystemTime};

use super::Tracer;
use crate::{host::kernel::host_name, record::Header};

impl Tracer {
    /// What a recording made with this tracer says about itself.
    pub fn recording_header(&self, interval: Duration, kvm_module: Option<String>) -> Header {
        Header {
            kvmtrace_version: env!("CARGO_PKG_VERSION").into(),
            host: host_name(),
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            kvm_module,
            formats: self.formats.clone(),
            tracepoints_attached: self.attached.iter().map(|s| s.to_string()).collect(),
            tracepoints_missing: self.missing.iter().map(|s| s.to_string()).collect(),
            interval_ms: interval.as_millis() as u64,
            start_unix_secs: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            command_line: std::env::args_os()
                .map(|a| crate::untrusted::escape(&a.to_string_lossy()))
                .collect(),
            slow_threshold_ns: self.slow_threshold_ns(),
            guest_rips: self.counts_guest_rips(),
        }
    }
}
