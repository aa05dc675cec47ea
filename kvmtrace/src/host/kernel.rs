//! What the host kernel is: its KVM module and its name, for report and recording headers.

use std::path::Path;

/// The host's KVM module, for the report header.
pub fn kvm_module() -> Option<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .map(str::to_string)
}

/// The host's name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
