//! The ABI between kvmtrace's eBPF programs and its collector: map and program names, map keys and
//! values, the load-time configuration and the latency histogram's bucket layout.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of `bool` and implicit padding, so the kernel
//! and user views agree byte for byte. Enums that cross the boundary have explicit, never-renumbered
//! discriminants.
#![no_std]

pub mod detail;
pub mod hist;
pub mod slow;
pub mod stacks;
#[cfg(feature = "user")]
mod user;

pub use detail::{Detail, MmioAccess, MsrDir, PortDir, UserspaceExit};
pub use hist::{HIST_BUCKETS, HIST_ROW, bucket_index, bucket_low, bucket_width};

/// Map names (the `#[map]` statics in kvmtrace-ebpf carry exactly these names).
pub mod maps {
    /// tgid -> 1 for the VMs being traced; consulted only when `Config::filter_tgids` is 1 and
    /// more VMs are traced than `Config::tgids` holds.
    pub const TRACED_TGIDS: &str = "TRACED_TGIDS";
    /// tid -> its slot in THREAD_SLOTS (u32): the registry of traced threads.
    pub const THREADS: &str = "THREADS";
    /// Array of [`crate::ThreadState`] ([`crate::THREAD_SLOTS_LEN`], memory-mappable; slot 0
    /// unused): each vCPU thread's open exit, open userspace round trip and CPU accounting.
    pub const THREAD_SLOTS: &str = "THREAD_SLOTS";
    /// Stack of the free shared slots of THREAD_SLOTS (u32), filled by the collector at start.
    pub const FREE_SLOTS: &str = "FREE_SLOTS";
    /// Ring buffer of [`crate::NewThread`], one record per thread as it claims a slot: the
    /// collector names new VMs and threads from /proc at once.
    pub const NEW_THREADS: &str = "NEW_THREADS";
    /// Home slot number (u32, `tid & (Config::home_slots - 1)`) -> the tid holding it: a thread
    /// claims its home slot by inserting itself here (BPF_NOEXIST decides between two threads
    /// with the same home); see [`crate::Config::home_slots`].
    pub const HOME_OWNERS: &str = "HOME_OWNERS";
    /// The latency keys' pool (see [`Pool`]): [`crate::LatencyKey`] -> its index (u32).
    pub const LATENCY_INDEX: &str = "LATENCY_INDEX";
    /// Index -> [`crate::LatencyKey`] (memory-mappable): which key an index holds.
    pub const LATENCY_KEYS: &str = "LATENCY_KEYS";
    /// Index -> [`crate::LatencyStats`] (memory-mappable), one array per epoch parity (index
    /// `seq & 1`): the programs write the open epoch's; the collector, after switching to the
    /// next epoch, reads the closed one's entries in place and zeroes them.
    pub const LATENCY: [&str; 2] = ["LATENCY_EVEN", "LATENCY_ODD"];
    /// Stack of the free indexes of the latency pool (u32), filled by the collector at start.
    pub const LATENCY_FREE: &str = "LATENCY_FREE";
    /// The detail keys' pool, as the latency one: [`crate::DetailKey`] -> index (u32).
    /// Each thread may add at most `Config::detail_keys_per_thread` new keys per epoch; its
    /// other events are only counted in [`crate::ThreadState::detail_events`] ("other keys").
    pub const DETAIL_INDEX: &str = "DETAIL_INDEX";
    /// Index -> [`crate::DetailKey`] (memory-mappable).
    pub const DETAIL_KEYS: &str = "DETAIL_KEYS";
    /// Index -> event count (u64, memory-mappable), one array per epoch parity like LATENCY.
    pub const DETAILS: [&str; 2] = ["DETAILS_EVEN", "DETAILS_ODD"];
    /// Stack of the free indexes of the detail pool (u32).
    pub const DETAIL_FREE: &str = "DETAIL_FREE";
    /// Per-CPU u32 per [`crate::Pool`]: one more than the highest index this CPU has taken, so
    /// the collector reads only the pool's used part.
    pub const POOL_HIGH: &str = "POOL_HIGH";
    /// One u32: the epoch sequence number. 0 = closed (every program returns at once: nothing is
    /// counted before everything is attached and the threads' states are established, nor after
    /// stop); otherwise its parity selects the LATENCY and DETAILS arrays the programs write.
    /// The programs' global `EPOCH`, alone in its section: the loader makes the section a
    /// one-element array map named after it.
    pub const CONTROL: &str = ".data.control";
    /// tid -> its slot (u16, 0: none), for tids below 2^20: the programs' fast path to a
    /// thread's state (see kvmtrace-ebpf's state.rs).
    pub const TID_SLOTS: &str = "TID_SLOTS";
    /// Per-CPU array of u64 indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// [`crate::stacks::StackKey`] -> samples (u64), one map per epoch parity like LATENCY.
    pub const STACK_COUNTS: [&str; 2] = ["STACK_COUNTS_EVEN", "STACK_COUNTS_ODD"];
    /// Stack hash -> [`crate::stacks::StackFrames`], one map per epoch parity like
    /// STACK_COUNTS: the collector reads the closed epoch's stacks and empties its map, so the
    /// map holds one interval's distinct stacks, not a whole recording's.
    pub const STACK_FRAMES: [&str; 2] = ["STACK_FRAMES_EVEN", "STACK_FRAMES_ODD"];
    /// Per-CPU [`crate::stacks::StackFrames`]: the sampler's scratch for walking a stack.
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    /// [`crate::RipKey`] -> exits (u64), one map per epoch parity like LATENCY
    /// (`record --guest-rips`).
    pub const GUEST_RIPS: [&str; 2] = ["GUEST_RIPS_EVEN", "GUEST_RIPS_ODD"];
    /// Per-CPU u64: exits whose RIP found GUEST_RIPS full (counted per reason, not per RIP).
    pub const RIPS_LOST: &str = "RIPS_LOST";
    /// Ring buffer of [`crate::slow::SlowExit`] records (`record --than`).
    pub const SLOW_EXITS: &str = "SLOW_EXITS";
    /// tid -> [`crate::slow::FlightRing`] (LRU: a thread gone is forgotten), `record --flight`.
    pub const FLIGHT: &str = "FLIGHT";
    /// Per-CPU u64: slow exits not captured (SLOW_EXITS full).
    pub const SLOW_LOST: &str = "SLOW_LOST";
    /// Per-CPU u64: samples of traced threads not counted (STACK_COUNTS full).
    pub const STACK_LOST: &str = "STACK_LOST";
}

/// The global holding [`Config`], set with `override_global` before load.
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// Program names, equal to the eBPF function names; also what `bpftool prog` shows.
pub mod programs {
    pub const KVM_EXIT: &str = "kvmtrace_exit";
    pub const KVM_ENTRY: &str = "kvmtrace_entry";
    pub const KVM_USERSPACE_EXIT: &str = "kvmtrace_uexit";
    pub const KVM_FPU: &str = "kvmtrace_fpu";
    pub const KVM_PIO: &str = "kvmtrace_pio";
    pub const KVM_MMIO: &str = "kvmtrace_mmio";
    pub const KVM_MSR: &str = "kvmtrace_msr";
    pub const KVM_CPUID: &str = "kvmtrace_cpuid";
    pub const SCHED_SWITCH: &str = "kvmtrace_switch";
    /// Every program with its tracepoint (category, event), in attach order.
    pub const ALL: [(&str, &str, &str); 9] = [
        (KVM_EXIT, "kvm", "kvm_exit"),
        (KVM_ENTRY, "kvm", "kvm_entry"),
        (KVM_USERSPACE_EXIT, "kvm", "kvm_userspace_exit"),
        (KVM_FPU, "kvm", "kvm_fpu"),
        (KVM_PIO, "kvm", "kvm_pio"),
        (KVM_MMIO, "kvm", "kvm_mmio"),
        (KVM_MSR, "kvm", "kvm_msr"),
        (KVM_CPUID, "kvm", "kvm_cpuid"),
        (SCHED_SWITCH, "sched", "sched_switch"),
    ];
    /// The raw tracepoint variant of a program, where it has one: (classic, raw). The collector
    /// attaches the raw one where the kernel allows (no trace record built per event), else
    /// the classic one.
    pub const RAW: [(&str, &str); 7] = [
        (KVM_USERSPACE_EXIT, "kvmtrace_uexit_raw"),
        (KVM_FPU, "kvmtrace_fpu_raw"),
        (KVM_PIO, "kvmtrace_pio_raw"),
        (KVM_MMIO, "kvmtrace_mmio_raw"),
        (KVM_MSR, "kvmtrace_msr_raw"),
        (KVM_CPUID, "kvmtrace_cpuid_raw"),
        (SCHED_SWITCH, SCHED_SWITCH_RAW),
    ];
    /// The raw sched_switch program: it needs [`super::Config::task_pid`] (the kernel's BTF)
    /// and the tracepoint's fourth argument, prev_state (Linux 5.18+).
    pub const SCHED_SWITCH_RAW: &str = "kvmtrace_switch_raw";
    /// The bench's empty programs (never attached by the collector) are named after these:
    /// `kvmtrace_floor_<stem>` and `kvmtrace_floor_<stem>_raw` on the tracepoint of
    /// `kvmtrace_<stem>` (see kvmtrace-ebpf's probes/floor.rs).
    pub const FLOOR_PREFIX: &str = "kvmtrace_floor_";

    /// What the floor programs of program `prog` (`kvmtrace_<stem>` or `kvmtrace_<stem>_raw`)
    /// are named after: `<stem>`.
    pub fn stem(prog: &str) -> &str {
        let stem = prog.strip_prefix("kvmtrace_").unwrap_or(prog);
        stem.strip_suffix("_raw").unwrap_or(stem)
    }
    /// The perf_event program of `record --stacks` (attached only then).
    pub const STACK_SAMPLE: &str = "kvmtrace_stack_sample";
}

/// The keyed pools: a key's statistics live at a fixed index of memory-mappable arrays (one per
/// epoch parity) for as long as the key is in use, so the collector reads an epoch in place, with
/// no syscall and no copy per key; a hash map gives each key its index, a stack holds the free
/// ones. A program takes an index for a new key (the key is written to the KEYS array first);
/// the collector gives back the indexes of keys idle for a whole epoch.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Latency = 0,
    Details = 1,
}

/// How many selected VMs the configuration holds inline.
pub const INLINE_TGIDS: usize = 8;

/// Offset value meaning "this kernel's tracepoint has no such field".
pub const FIELD_ABSENT: u32 = u32::MAX;
/// vcpu_id value meaning "not known" (no kvm_exit seen for this thread yet).
pub const VCPU_UNKNOWN: u32 = u32::MAX;

/// Load-time configuration: the VM filter and every tracepoint field offset, read from the
/// tracepoint `format` files at run time (kernels differ). An offset of [`FIELD_ABSENT`] means the
/// field does not exist on this kernel and reads as 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The collector's own tgid, always ignored.
    pub self_tgid: u32,
    /// 1: trace only the selected VMs; 0: every VM on the host.
    pub filter_tgids: u32,
    /// The selected VMs when there are at most [`INLINE_TGIDS`] (compared inline: cheaper than a
    /// map lookup); unused slots are 0. With more, the TRACED_TGIDS map holds them all.
    pub tgids: [u32; INLINE_TGIDS],
    /// How many of `tgids` are used; 0 with filter_tgids = 1 means "look in TRACED_TGIDS".
    pub n_tgids: u32,
    pub exit_reason: u32,
    pub exit_isa: u32,
    pub exit_vcpu_id: u32,
    pub entry_vcpu_id: u32,
    pub pio_rw: u32,
    pub pio_port: u32,
    pub pio_size: u32,
    pub mmio_type: u32,
    pub mmio_len: u32,
    pub mmio_gpa: u32,
    pub msr_write: u32,
    pub msr_ecx: u32,
    pub msr_exception: u32,
    pub cpuid_function: u32,
    pub uexit_reason: u32,
    pub uexit_errno: u32,
    pub fpu_load: u32,
    pub sched_prev_pid: u32,
    /// `long prev_state` (8 bytes).
    pub sched_prev_state: u32,
    pub sched_next_pid: u32,
    /// Distinct DETAILS keys one thread may add per epoch; beyond it, events are counted only in
    /// the thread's per-kind totals (the report's "other keys" row). One guest touching thousands
    /// of ports cannot use up the map for the others.
    pub detail_keys_per_thread: u32,
    /// kvm_exit's guest RIP and exit information (VMX exit qualification and interruption info
    /// / SVM exitinfo1 and exitinfo2), read only when slow exits are captured.
    pub exit_rip: u32,
    pub exit_info1: u32,
    pub exit_info2: u32,
    /// `record --guest-rips`: 1 counts kvm_exit's guest RIP per (thread, exit reason) in
    /// GUEST_RIPS.
    pub guest_rips: u32,
    /// `record --flight N`: each thread's last exits and round trips are kept in FLIGHT and sent
    /// after each slow one, and when a storm starts; 0: off.
    pub flight: u32,
    /// Exits/s of one thread that make a storm (`--storm-rate`), for the flight recorder.
    pub storm_rate: u32,
    /// 1: each thread keeps its last detail event in [`ThreadState::last_detail`] (for slow
    /// exits, the flight recorder and guest RIPs): one flag for the detail programs to test.
    pub keep_last_detail: u32,
    /// THREAD_SLOTS holds [`THREAD_SLOTS_LEN`] shared slots (handed out through FREE_SLOTS;
    /// slot 0 unused) and then `home_slots` home slots ([`HOME_SLOTS`]; fewer, a power of two,
    /// or 0 for none, only in tests): thread `tid`'s home is slot `THREAD_SLOTS_LEN + (tid &
    /// (home_slots - 1))`. A thread in its home slot is found with one array load, without
    /// TID_SLOTS: after a trip through the VMM's user space every page an event touches is
    /// cold, and that dependent load cost ~40 ns there (kvm_pio on kvm_pvm, AMD EPYC). A thread
    /// whose home another thread holds takes a shared slot.
    pub home_slots: u32,
    /// Offset of `pid` in `struct task_struct` (from the kernel's BTF), for the raw
    /// sched_switch program, whose arguments are the two tasks; [`FIELD_ABSENT`] where the
    /// kernel has no BTF (the classic program is attached then).
    pub task_pid: u32,
    pub pad: u32,
    /// `record --than`: exits (exit->entry) and VMM round trips that take at least this long
    /// are streamed to SLOW_EXITS, one record each; 0: off.
    pub slow_ns: u64,
}

/// The field offsets of every kernel kvmtrace is tested on (Debian's 5.10, 6.1, 6.12 and 6.18):
/// where the running kernel's offset is this one, a program loads the field straight from the
/// trace record (the verifier knows CONFIG's values, so only that branch remains), else through
/// bpf_probe_read_kernel, a helper call per field.
pub const USUAL_OFFSETS: Config = Config {
    exit_reason: 8,
    exit_isa: 24,
    exit_vcpu_id: 56,
    entry_vcpu_id: 8,
    pio_rw: 8,
    pio_port: 12,
    pio_size: 16,
    mmio_type: 8,
    mmio_len: 12,
    mmio_gpa: 16,
    msr_write: 8,
    msr_ecx: 12,
    msr_exception: 24,
    cpuid_function: 8,
    uexit_reason: 8,
    uexit_errno: 12,
    fpu_load: 8,
    sched_prev_pid: 24,
    sched_prev_state: 32,
    sched_next_pid: 56,
    exit_rip: 16,
    exit_info1: 32,
    exit_info2: 40,
    ..Config::UNSET
};

impl Config {
    /// Every field absent, nothing filtered: the value compiled into the object.
    pub const UNSET: Config = Config {
        self_tgid: 0,
        filter_tgids: 0,
        tgids: [0; INLINE_TGIDS],
        n_tgids: 0,
        exit_reason: FIELD_ABSENT,
        exit_isa: FIELD_ABSENT,
        exit_vcpu_id: FIELD_ABSENT,
        entry_vcpu_id: FIELD_ABSENT,
        pio_rw: FIELD_ABSENT,
        pio_port: FIELD_ABSENT,
        pio_size: FIELD_ABSENT,
        mmio_type: FIELD_ABSENT,
        mmio_len: FIELD_ABSENT,
        mmio_gpa: FIELD_ABSENT,
        msr_write: FIELD_ABSENT,
        msr_ecx: FIELD_ABSENT,
        msr_exception: FIELD_ABSENT,
        cpuid_function: FIELD_ABSENT,
        uexit_reason: FIELD_ABSENT,
        uexit_errno: FIELD_ABSENT,
        fpu_load: FIELD_ABSENT,
        sched_prev_pid: FIELD_ABSENT,
        sched_prev_state: FIELD_ABSENT,
        sched_next_pid: FIELD_ABSENT,
        detail_keys_per_thread: 512,
        exit_rip: FIELD_ABSENT,
        exit_info1: FIELD_ABSENT,
        exit_info2: FIELD_ABSENT,
        guest_rips: 0,
        flight: 0,
        storm_rate: 10_000,
        keep_last_detail: 0,
        home_slots: 0,
        task_pid: FIELD_ABSENT,
        pad: 0,
        slow_ns: 0,
    };
}

/// THREAD_SLOTS' shared slots (slot 0 unused), handed out through FREE_SLOTS.
pub const THREAD_SLOTS_LEN: u32 = 8192;
/// THREAD_SLOTS' home slots, after the shared ones (see [`Config::home_slots`]): as many
/// vCPU threads as there are, in the best case, traced at once.
pub const HOME_SLOTS: u32 = 8192;

// The collector maps THREAD_SLOTS: its elements must be exactly ThreadState-sized (the kernel
// rounds an array's value size up to 8 bytes), and TID_SLOTS holds slots as u16.
const _: () = assert!(core::mem::size_of::<ThreadState>().is_multiple_of(8));
// Seven whole cache lines, as its layout says.
const _: () = assert!(core::mem::size_of::<ThreadState>() == 7 * 64);
const _: () = assert!(THREAD_SLOTS_LEN + HOME_SLOTS <= u16::MAX as u32 + 1);
const _: () = assert!(HOME_SLOTS.is_power_of_two());

/// Thread `tid`'s home slot number (its slot is `THREAD_SLOTS_LEN +` that) with `count` home
/// slots, a power of two: the one rule the kernel's claims and the collector's seeds share.
#[inline(always)]
pub const fn home_number(tid: u32, count: u32) -> u32 {
    tid & (count - 1)
}

/// Per-thread pairing state. A timestamp of 0 means "nothing open".
///
/// Laid out in cache lines (448 bytes, seven lines; THREAD_SLOTS's values are page-aligned, so
/// every slot starts on a line): after a trip through the VMM's user space every line an event
/// touches is cold (7-40 ns each on the host measured, the most for a new page). Line 0 holds
/// the identity and everything kvm_fpu, kvm_userspace_exit and kvm_exit/kvm_entry time with; a
/// detail event of epoch parity p reads line 0 and its parity's pending keys (line 2 or 4), and
/// its parity's totals (line 1 or 3) only when a key is pushed out; a kvm_fpu load that ends a
/// round trip, lines 0 and 1.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    // Line 0.
    /// The thread's process (the VM), so that open exits can be attributed at stop.
    pub tgid: u32,
    /// The thread whose slot this is (0: a free slot).
    pub tid: u32,
    /// THREAD_* bits.
    pub flags: u32,
    /// Last vcpu_id seen on kvm_exit/kvm_entry for this thread, or [`VCPU_UNKNOWN`].
    pub vcpu_id: u32,
    /// ktime of the open kvm_userspace_exit, 0 when none is open.
    pub uexit_ts: u64,
    /// ktime of the current KVM_RUN's kvm_fpu load; 0 outside KVM_RUN.
    pub run_ts: u64,
    /// Wall time inside completed KVM_RUN calls.
    pub run_ns: u64,
    /// ktime of the open kvm_exit, 0 when the thread is in the guest (or never exited).
    pub exit_ts: u64,
    /// VMM round-trip time inside the open exit: subtracted from its exit->entry span, so
    /// [`LatencyKind::Exit`] is in-kernel handling only and [`LatencyKind::ExitVmm`] the rest.
    pub exit_vmm_ns: u64,
    pub uexit_reason: u32,
    pub exit_reason: u32,
    // Line 1.
    /// The latency pool index of the thread's last VMM round-trip key: a thread repeating
    /// itself finds it here, not in LATENCY_INDEX.
    pub round_trip_index: CachedIndex,
    /// Detail events per epoch parity and [`DetailKind`] (index `kind - 1`), cumulative, of
    /// the keys pushed out of `pending`: with the events still pending when an epoch closes, the
    /// exact totals per (thread, kind) however many keys were dropped. Parity 0's five fill
    /// line 1; parity 1's begin line 3.
    pub detail_events_even: [u64; DETAIL_KINDS],
    // Line 2: parity 0's pending keys; line 4: parity 1's.
    /// The thread's last two detail keys per epoch parity, most recent first, with the events
    /// not yet added to DETAILS: a guest repeating a key (a storm) costs no DETAILS lookup. A
    /// key's count goes to DETAILS when another key pushes it out; the collector reads what is
    /// left after the epoch closed (entries whose `seq` is that epoch's).
    pub pending_even: [PendingDetail; PENDING_KEYS],
    // Line 3.
    pub detail_events_odd: [u64; DETAIL_KINDS],
    /// The thread's last detail event (port, MMIO address, MSR) since its last kvm_exit; kind
    /// 0: none. (Where kvm_exit does not fire, a round trip uses it only when its kind is the
    /// userspace exit's: a KVM_EXIT_IO always follows its kvm_pio, a KVM_EXIT_MMIO its kvm_mmio.)
    pub last_detail: ExitDetail,
    /// The epoch sequence number `keys_used` counts in.
    pub keys_seq: u32,
    /// DETAILS keys this thread added in epoch `keys_seq`.
    pub keys_used: u32,
    // Line 4.
    pub pending_odd: [PendingDetail; PENDING_KEYS],
    // Line 5.
    /// The latency pool index of the thread's last exit key (kvm_entry).
    pub exit_index: CachedIndex,
    pub exit_isa: u32,
    pub pad: u32,
    // CPU accounting (cumulative ns since `first_ts`), from kvm_fpu and sched_switch.
    /// ktime of the thread's first event after attach.
    pub first_ts: u64,
    /// ktime the thread was switched out; 0 while it is on a CPU.
    pub off_ts: u64,
    /// Off-CPU time inside KVM_RUN: blocked (halted vCPU, waiting) and runnable but not running.
    pub off_run_blocked_ns: u64,
    // Line 6.
    pub off_run_runnable_ns: u64,
    /// Off-CPU time outside KVM_RUN (in the VMM's user space).
    pub off_user_blocked_ns: u64,
    pub off_user_runnable_ns: u64,
    // Kept only when slow exits are captured (`record --than`):
    /// The open exit's guest RIP and exit information.
    pub exit_rip: u64,
    pub exit_info1: u64,
    pub exit_info2: u64,
    /// The thread's off-CPU time inside KVM_RUN at the open exit, and outside it at the open
    /// userspace exit.
    pub exit_off_ns: u64,
    pub uexit_off_ns: u64,
}

/// A detail event's key: [`DetailKind`] (0: none) and its two values, as in [`DetailKey`]: what
/// an exit was about (its port, MMIO address, MSR, CPUID function).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitDetail {
    pub kind: u32,
    pub a: u32,
    pub b: u64,
}

/// Where in the guest exits come from (`record --guest-rips`): kvm_exit's guest RIP, per
/// thread, exit reason and the exit's detail event, counted when the exit ends (kvm_entry), as
/// exits are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RipKey {
    pub tgid: u32,
    pub tid: u32,
    pub isa: u32,
    pub reason: u32,
    pub rip: u64,
    pub detail: ExitDetail,
}

/// Keys per thread and epoch parity kept in [`ThreadState::pending`]: two, so a guest alternating
/// between an index and a data port (the RTC's 0x70/0x71) stays on the fast path.
pub const PENDING_KEYS: usize = 2;

/// A record of [`maps::NEW_THREADS`]: a thread as it claims a slot, with its name then (the
/// collector's fallback when the thread is gone before it reads /proc).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewThread {
    pub tgid: u32,
    pub tid: u32,
    /// The thread's comm, NUL-padded.
    pub comm: [u8; 16],
}

/// A detail key with events not yet in DETAILS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingDetail {
    /// The epoch the count belongs to; 0: empty.
    pub seq: u32,
    pub kind: u32,
    pub a: u32,
    pub pad: u32,
    pub b: u64,
    pub count: u64,
}

impl ThreadState {
    /// Whether this is thread (tgid, tid)'s state (a slot's tid and tgid tell whose it is).
    #[inline(always)]
    pub fn is(&self, tgid: u32, tid: u32) -> bool {
        self.tid == tid && self.tgid == tgid
    }

    /// Epoch parity `parity`'s detail events per kind (index `kind - 1`), cumulative.
    #[inline(always)]
    pub fn detail_events(&self, parity: u32) -> &[u64; DETAIL_KINDS] {
        if parity & 1 == 0 {
            &self.detail_events_even
        } else {
            &self.detail_events_odd
        }
    }

    #[inline(always)]
    pub fn detail_events_mut(&mut self, parity: u32) -> &mut [u64; DETAIL_KINDS] {
        if parity & 1 == 0 {
            &mut self.detail_events_even
        } else {
            &mut self.detail_events_odd
        }
    }

    /// Epoch parity `parity`'s pending keys.
    #[inline(always)]
    pub fn pending(&self, parity: u32) -> &[PendingDetail; PENDING_KEYS] {
        if parity & 1 == 0 {
            &self.pending_even
        } else {
            &self.pending_odd
        }
    }

    #[inline(always)]
    pub fn pending_mut(&mut self, parity: u32) -> &mut [PendingDetail; PENDING_KEYS] {
        if parity & 1 == 0 {
            &mut self.pending_even
        } else {
            &mut self.pending_odd
        }
    }

    /// The events of kind `kind` still pending from epoch `seq` (not yet in the per-kind total).
    pub fn pending_events(&self, seq: u32, kind: DetailKind) -> u64 {
        self.pending(seq)
            .iter()
            .filter(|p| p.seq == seq && p.kind == kind as u32)
            .map(|p| p.count)
            .sum()
    }

    /// Off-CPU time so far inside KVM_RUN.
    #[inline(always)]
    pub fn off_run_ns(&self) -> u64 {
        self.off_run_blocked_ns + self.off_run_runnable_ns
    }

    /// Off-CPU time so far outside KVM_RUN.
    #[inline(always)]
    pub fn off_user_ns(&self) -> u64 {
        self.off_user_blocked_ns + self.off_user_runnable_ns
    }

    /// Adds `ns` of off-CPU time to the category the THREAD_OFF_* flags of the thread's last
    /// switch-out say: inside or outside KVM_RUN, blocked or runnable.
    #[inline(always)]
    pub fn add_off_cpu(&mut self, ns: u64) {
        match (
            self.flags & THREAD_OFF_IN_RUN != 0,
            self.flags & THREAD_OFF_RUNNABLE != 0,
        ) {
            (true, true) => self.off_run_runnable_ns += ns,
            (true, false) => self.off_run_blocked_ns += ns,
            (false, true) => self.off_user_runnable_ns += ns,
            (false, false) => self.off_user_blocked_ns += ns,
        }
    }
}

/// How many [`DetailKind`]s there are.
pub const DETAIL_KINDS: usize = 5;

/// The index of (epoch parity, kind) in a flat array of both parities' per-kind totals (as the
/// collector keeps the last totals it read).
pub const fn detail_slot(parity: u32, kind: DetailKind) -> usize {
    (parity as usize & 1) * DETAIL_KINDS + kind as usize - 1
}

/// [`ThreadState::flags`]: the thread has had a kvm_entry since attach.
pub const THREAD_SEEN_ENTRY: u32 = 1;
/// [`ThreadState::flags`]: switched out while inside KVM_RUN.
pub const THREAD_OFF_IN_RUN: u32 = 2;
/// [`ThreadState::flags`]: switched out while runnable (preempted), not blocked.
pub const THREAD_OFF_RUNNABLE: u32 = 4;
/// [`ThreadState::flags`]: whether the thread is inside KVM_RUN is not known yet (it was
/// running when tracing started, or this is its first event). It is taken to be inside
/// (`run_ts` set) until its first kvm_userspace_exit or kvm_fpu load: the exit confirms it; a
/// load shows it was outside, and the time so far moves to the VMM side.
pub const THREAD_UNRESOLVED: u32 = 8;
/// [`ThreadState::flags`]: seeded as running ('R' in /proc, which is on a CPU or waiting for
/// one) and not switched since. A switch to it before any switch away from it says it was
/// waiting for a CPU all along since the seed: that time is off-CPU, runnable.
pub const THREAD_MAYBE_WAITING: u32 = 16;

/// What a [`LatencyKey`] measures.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LatencyKind {
    /// kvm_exit -> the same thread's next kvm_entry, keyed by (isa, exit_reason).
    Exit = 0,
    /// kvm_userspace_exit -> the same thread's next kvm_fpu load or kvm_entry (whichever comes
    /// first), keyed by the userspace exit reason: the VMM's handling time.
    VmmRoundTrip = 1,
    /// The VMM round trips inside one exit (kvm_exit -> kvm_entry), keyed by the exit's (isa,
    /// reason): what the VMM adds to that reason, beside its in-kernel time ([`Self::Exit`]).
    ExitVmm = 2,
}

impl LatencyKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Exit),
            1 => Some(Self::VmmRoundTrip),
            2 => Some(Self::ExitVmm),
            _ => None,
        }
    }
}

/// A latency key's index in the latency pool, kept by the key's own thread in its
/// [`ThreadState`] (so the key's tgid and tid are the state's), with the epoch it was last used
/// in. The collector retires a key only when a whole epoch found it idle, and hands its index
/// out again one drain later, so an index used in epoch E is still the key's while the open
/// epoch is E or E + 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedIndex {
    pub vcpu_id: u32,
    pub isa: u32,
    pub reason: u32,
    pub kind: u32,
    pub index: u32,
    /// 0: nothing cached.
    pub seq: u32,
}

impl CachedIndex {
    /// The index of `key` (a key of this thread) if it is cached and still good in epoch `seq`.
    #[inline(always)]
    pub fn get(&self, key: &LatencyKey, seq: u32) -> Option<u32> {
        (self.seq != 0
            && self.seq.wrapping_add(1) >= seq
            && self.seq <= seq
            && self.vcpu_id == key.vcpu_id
            && self.isa == key.isa
            && self.reason == key.reason
            && self.kind == key.kind)
            .then_some(self.index)
    }

    /// `key` has index `index`, used in epoch `seq`.
    #[inline(always)]
    pub fn set(&mut self, key: &LatencyKey, index: u32, seq: u32) {
        *self = CachedIndex {
            vcpu_id: key.vcpu_id,
            isa: key.isa,
            reason: key.reason,
            kind: key.kind,
            index,
            seq,
        };
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatencyKey {
    pub tgid: u32,
    pub tid: u32,
    pub vcpu_id: u32,
    /// kvm_exit's `isa` (1 VMX, 2 SVM); 0 for [`LatencyKind::VmmRoundTrip`].
    pub isa: u32,
    pub reason: u32,
    /// A [`LatencyKind`] discriminant.
    pub kind: u32,
}

impl LatencyKey {
    /// What the key measures; None for a value this build does not know (a damaged recording).
    pub const fn kind(&self) -> Option<LatencyKind> {
        LatencyKind::from_u32(self.kind)
    }

    /// The fields in declaration order (for compact encodings).
    pub const fn to_fields(&self) -> [u32; 6] {
        [
            self.tgid,
            self.tid,
            self.vcpu_id,
            self.isa,
            self.reason,
            self.kind,
        ]
    }

    pub const fn from_fields(f: [u32; 6]) -> LatencyKey {
        LatencyKey {
            tgid: f[0],
            tid: f[1],
            vcpu_id: f[2],
            isa: f[3],
            reason: f[4],
            kind: f[5],
        }
    }
}

/// Latency statistics of one key over one epoch, at the key's index of the epoch's LATENCY
/// array: all zero until the epoch's first sample; the collector zeroes it again after reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyStats {
    pub count: u64,
    pub total_ns: u64,
    /// Smallest sample of the epoch (0 while `count` is 0).
    pub min_ns: u64,
    pub max_ns: u64,
    /// Bit r set: a bucket of row r (buckets `r * HIST_ROW .. (r + 1) * HIST_ROW`) has samples.
    /// The collector reads and zeroes only those rows: a key's samples fill a few of the 33.
    pub rows: u64,
    pub buckets: [u32; HIST_BUCKETS],
}

impl LatencyStats {
    pub const EMPTY: LatencyStats = LatencyStats {
        count: 0,
        total_ns: 0,
        min_ns: 0,
        max_ns: 0,
        rows: 0,
        buckets: [0; HIST_BUCKETS],
    };

    /// Adds one sample of `ns` in bucket `bucket` (< [`HIST_BUCKETS`]).
    #[inline(always)]
    pub fn add(&mut self, ns: u64, bucket: usize) {
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.count += 1;
        self.total_ns += ns;
        self.max_ns = self.max_ns.max(ns);
        self.rows |= 1 << (bucket / HIST_ROW);
        if let Some(slot) = self.buckets.get_mut(bucket) {
            *slot = slot.wrapping_add(1);
        }
    }
}

// The pools are memory-mapped: their elements must be exactly their types' size (the kernel
// rounds an array's value size up to 8 bytes).
const _: () = assert!(core::mem::size_of::<LatencyStats>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<LatencyKey>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<DetailKey>().is_multiple_of(8));
const _: () = assert!(HIST_BUCKETS / HIST_ROW <= 64);

/// Which detail tracepoint a [`DetailKey`] counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DetailKind {
    /// kvm_pio (how (a, b) hold each kind's fields: [`detail`]).
    Pio = 1,
    Mmio = 2,
    Msr = 3,
    Cpuid = 4,
    UserspaceExit = 5,
}

impl DetailKind {
    pub const ALL: [DetailKind; DETAIL_KINDS] = [
        DetailKind::Pio,
        DetailKind::Mmio,
        DetailKind::Msr,
        DetailKind::Cpuid,
        DetailKind::UserspaceExit,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Pio),
            2 => Some(Self::Mmio),
            3 => Some(Self::Msr),
            4 => Some(Self::Cpuid),
            5 => Some(Self::UserspaceExit),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DetailKey {
    pub tgid: u32,
    pub tid: u32,
    /// A [`DetailKind`] discriminant.
    pub kind: u32,
    pub a: u32,
    pub b: u64,
}

impl DetailKey {
    /// The "other keys" row of a (VM, thread, kind): its events that have no key of their own
    /// (beyond the per-thread key budget, or the map was full). Made by the collector from the
    /// thread's exact per-kind totals; never written by the kernel.
    pub const fn other(tgid: u32, tid: u32, kind: DetailKind) -> DetailKey {
        DetailKey {
            tgid,
            tid,
            kind: kind as u32,
            a: u32::MAX,
            b: u64::MAX,
        }
    }

    pub const fn is_other(&self) -> bool {
        Self::is_other_key(self.a, self.b)
    }

    /// Whether a key's (a, b) are those of an "other keys" row.
    pub const fn is_other_key(a: u32, b: u64) -> bool {
        a == u32::MAX && b == u64::MAX
    }
}

/// Indexes into the per-CPU COUNTERS array: events seen and every way information can be lost.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// kvm_exit events of traced VMs.
    ExitsSeen = 0,
    /// kvm_entry events of traced VMs.
    EntriesSeen = 1,
    /// Detail events (pio, mmio, msr, cpuid, userspace_exit) of traced VMs.
    DetailsSeen = 2,
    /// kvm_exit while the thread already had an open exit (the earlier one is dropped).
    UnpairedExits = 3,
    /// kvm_entry after an entry with no kvm_exit in between.
    UnpairedEntries = 4,
    /// First kvm_entry of a thread after attach: nothing to pair with, by construction.
    FirstEntries = 5,
    /// LATENCY had no room for a new key: a sample was dropped.
    LatencyMapFull = 6,
    /// DETAILS had no room for a new key: the event is counted only in its thread's totals
    /// (the "other keys" row).
    DetailMapFull = 7,
    /// Every thread slot was taken: a new thread's exits cannot be paired.
    ThreadMapFull = 8,
    /// kvm_userspace_exit while one was already open: KVM_RUN returned to user space again with no
    /// kvm_fpu load or kvm_entry in between (seen on kvm_pvm); the earlier round trip has no end
    /// marker and is not timed. Its exit is still counted.
    UnpairedUserspaceExits = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::ExitsSeen,
        Counter::EntriesSeen,
        Counter::DetailsSeen,
        Counter::UnpairedExits,
        Counter::UnpairedEntries,
        Counter::FirstEntries,
        Counter::LatencyMapFull,
        Counter::DetailMapFull,
        Counter::ThreadMapFull,
        Counter::UnpairedUserspaceExits,
    ];
}

/// Marker bit in a [`DetailKind::UserspaceExit`]'s `a` for exits that returned an error (errno < 0;
/// -4 is a signal restart) rather than a KVM_EXIT_* reason.
pub const UEXIT_ERRNO_FLAG: u32 = 1 << 31;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_events_are_the_epochs_own_of_one_kind() {
        let pending = |seq, kind: DetailKind, count| PendingDetail {
            seq,
            kind: kind as u32,
            a: 0x70,
            pad: 0,
            b: 1,
            count,
        };
        let st = ThreadState {
            // Epoch 5 (parity 1): 7 port and 3 MMIO events pending; parity 0 holds epoch 4's.
            pending_odd: [
                pending(5, DetailKind::Pio, 7),
                pending(5, DetailKind::Mmio, 3),
            ],
            pending_even: [pending(4, DetailKind::Pio, 11), PendingDetail::default()],
            ..Default::default()
        };
        assert_eq!(st.pending_events(5, DetailKind::Pio), 7);
        assert_eq!(st.pending_events(5, DetailKind::Mmio), 3);
        assert_eq!(st.pending_events(5, DetailKind::Msr), 0);
        assert_eq!(st.pending_events(4, DetailKind::Pio), 11);
        // Epoch 3 shares parity 1 with epoch 5: its entries are not epoch 3's.
        assert_eq!(st.pending_events(3, DetailKind::Pio), 0);
    }

    #[test]
    fn a_cached_index_is_good_in_its_epoch_and_the_next_only() {
        let key = |reason| LatencyKey {
            tgid: 7,
            tid: 8,
            vcpu_id: 1,
            isa: 2,
            reason,
            kind: LatencyKind::Exit as u32,
        };
        let mut cache = CachedIndex::default();
        assert_eq!(cache.get(&key(30), 1), None, "nothing cached");
        cache.set(&key(30), 42, 5);
        assert_eq!(cache.get(&key(30), 5), Some(42));
        assert_eq!(cache.get(&key(30), 6), Some(42));
        assert_eq!(cache.get(&key(30), 7), None, "retired after an idle epoch");
        assert_eq!(cache.get(&key(30), 4), None, "an epoch before it");
        assert_eq!(cache.get(&key(31), 5), None, "another reason");
        let mut vmm = key(30);
        vmm.kind = LatencyKind::ExitVmm as u32;
        assert_eq!(cache.get(&vmm, 5), None, "another kind");
        cache.set(&key(30), 9, u32::MAX);
        assert_eq!(cache.get(&key(30), 2), None, "the epoch wrapped");
    }
}
