//! What a vCPU thread is doing at the instant tracing starts, read from /proc: a tracer that
//! attaches to a VM running for days must not assume its threads are outside KVM_RUN until
//! their first event. `/proc/PID/task/TID/syscall` shows a blocked thread's system call (a vCPU
//! halted in the kernel sits in `ioctl(fd, KVM_RUN)`), or `running` for a thread on a CPU or
//! runnable; the kernel settles that last case at the thread's first kvm_fpu event.

use std::path::Path;

/// The KVM_RUN ioctl request: `_IO(KVMIO = 0xae, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `ioctl` on x86_64.
const SYS_IOCTL: u64 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtStart {
    /// Blocked inside KVM_RUN (a halted vCPU waiting for an interrupt).
    BlockedInRun,
    /// Blocked in some other system call (the VMM side of a vCPU thread).
    BlockedOutside,
    /// On a CPU or runnable: inside KVM_RUN or not is settled by its first event.
    Running,
}

/// `task->flags` of kernel threads and of kernel workers living in a user process (KVM's
/// `kvm-nx-lpage-recovery` is one: its `syscall` file shows the registers of the vCPU thread that
/// created it, in KVM_RUN, though it never runs a guest).
const PF_USER_WORKER: u64 = 0x4000;
const PF_KTHREAD: u64 = 0x20_0000;

/// The state of thread `tid` of process `pid` now, or None when it is gone, unreadable or a
/// kernel worker.
pub fn probe(proc_root: &Path, pid: u32, tid: u32) -> Option<AtStart> {
    let dir = super::vm::thread_dir(proc_root, pid, tid);
    // Read as bytes: a thread name (inside `stat`) need not be UTF-8.
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let flags = task_flags(&read("stat")?)?;
    if flags & (PF_USER_WORKER | PF_KTHREAD) != 0 {
        return None;
    }
    Some(parse_syscall(&read("syscall")?))
}

/// Field 9 (flags) of a `stat` line; the command name in field 2 may hold spaces and parens.
fn task_flags(stat: &str) -> Option<u64> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()
}

/// Parses a `syscall` file: `running`, `-1 SP PC` (blocked outside a system call), or
/// `NR ARG1 ... ARG6 SP PC` with the numbers in hex except NR.
pub fn parse_syscall(text: &str) -> AtStart {
    let mut fields = text.split_whitespace();
    let nr = fields.next().unwrap_or("running");
    if nr == "running" {
        return AtStart::Running;
    }
    let request = fields
        .nth(1)
        .and_then(|r| u64::from_str_radix(r.trim_start_matches("0x"), 16).ok());
    match (nr.parse::<u64>(), request) {
        (Ok(SYS_IOCTL), Some(KVM_RUN)) => AtStart::BlockedInRun,
        _ => AtStart::BlockedOutside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_states() {
        assert_eq!(parse_syscall("running\n"), AtStart::Running);
        assert_eq!(
            parse_syscall("16 0xc 0xae80 0x0 0x0 0x0 0x0 0x7ffd3a1c 0x7f12c0e4\n"),
            AtStart::BlockedInRun
        );
        // Another ioctl on the same fd (KVM_GET_REGS) is not KVM_RUN.
        assert_eq!(
            parse_syscall("16 0xc 0x8090ae81 0x7ffd 0x0 0x0 0x0 0x7ffd3a1c 0x7f12c0e4\n"),
            AtStart::BlockedOutside
        );
        assert_eq!(
            parse_syscall("202 0x7f0 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f12\n"),
            AtStart::BlockedOutside
        );
        assert_eq!(parse_syscall("-1 0x7ffd 0x7f12\n"), AtStart::BlockedOutside);
    }

    #[test]
    fn reads_task_flags_past_odd_names() {
        let stat = "21140 (kvm-nx) lpage) S 1 21135 21135 0 -1 4210752 0 0 0 0 0 0";
        assert_eq!(task_flags(stat), Some(4_210_752));
        assert_ne!(task_flags(stat).unwrap() & PF_USER_WORKER, 0);
    }
}
