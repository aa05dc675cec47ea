//! The library's errors. Each names the offending input and, where there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading BPF programs and reading tracefs need root (or CAP_BPF + CAP_PERFMON).
    #[error(
        "kvmtrace needs root to load BPF programs (running as uid {uid}); try: sudo kvmtrace ..."
    )]
    NotRoot { uid: u32 },

    /// No usable tracefs.
    #[error(
        "no tracefs at {tried}{}; mount it with: mount -t tracefs nodev /sys/kernel/tracing",
        mount_error.as_ref().map(|e| format!(" (mounting it failed: {e})")).unwrap_or_default()
    )]
    NoTracefs {
        tried: String,
        mount_error: Option<String>,
    },

    /// tracefs has no kvm events: the kvm module is not loaded.
    #[error(
        "tracefs at {tracefs} has no kvm tracepoints (events/kvm); is the kvm module loaded? (lsmod | grep kvm)"
    )]
    NoKvmEvents { tracefs: PathBuf },

    /// A format file that does not parse.
    #[error("cannot parse tracepoint format {path}: {why}")]
    BadFormat { path: String, why: String },

    /// A field the programs read has another layout on this kernel.
    #[error(
        "tracepoint kvm:{event} field `{field}` is {why}; this kernel's layout is not supported"
    )]
    FieldLayout {
        event: &'static str,
        field: &'static str,
        why: String,
    },

    /// `-d NAME` matched no VM.
    #[error("no VM named `{name}` on this host; {}", list_vms(found))]
    UnknownVm { name: String, found: Vec<String> },

    /// `-d NAME` matched several VMs.
    #[error("the name `{name}` matches {} VMs: {}; pick one with -p PID", found.len(), found.join(", "))]
    AmbiguousVm { name: String, found: Vec<String> },

    /// `-p PID` is not a KVM process.
    #[error("process {pid} {}; `kvmtrace list` shows the VMs on this host", if *exists { "is not a VM (it has no KVM VM file descriptor)" } else { "does not exist" })]
    NotAVm { pid: u32, exists: bool },

    /// The embedded eBPF object is a placeholder (built with AYA_BUILD_SKIP=1).
    #[error(
        "this kvmtrace binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild without it"
    )]
    NoBpfObject,

    /// Loading, attaching or reading BPF (the cause follows in the error chain).
    #[error("{what}")]
    Bpf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A recording that cannot be read.
    #[error("cannot read the recording {path}")]
    Recording {
        path: String,
        #[source]
        source: crate::record::FormatError,
    },

    /// An output path (`-o`) that is a symbolic link, directory, device or FIFO: kvmtrace runs
    /// as root and replaces outputs as a whole, so it writes only regular files.
    #[error(
        "cannot write {what}: it is {kind}, not a regular file; kvmtrace writes only regular files and does not follow or replace links"
    )]
    NotARegularFile {
        path: PathBuf,
        /// `the recording PATH`
        what: String,
        /// `a symbolic link`, `a directory`, ...
        kind: &'static str,
    },

    /// `serve --listen ADDR` cannot bind (in use, or not an address of this host).
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Command-line values that contradict each other (`--from` after `--to`).
    #[error("{0}")]
    Usage(String),

    /// Writing to the terminal or standard output.
    #[error("{0}")]
    Output(#[from] std::io::Error),

    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn list_vms(found: &[String]) -> String {
    if found.is_empty() {
        "no VMs are running (`kvmtrace list` shows them)".into()
    } else {
        format!("VMs found: {}", found.join(", "))
    }
}

impl Error {
    pub fn bpf(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Bpf {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
