//! What a [`DetailKey`]'s `(a, b)` hold, in one place: the eBPF programs pack a tracepoint's fields
//! with the `pack_*` functions, and the collector unpacks them with [`DetailKey::decode`] into a
//! typed [`Detail`]. Nothing else reads `a` or `b`.

use crate::{DetailKey, DetailKind, UEXIT_ERRNO_FLAG};

/// kvm_pio: (port, rw (1 write) | size << 8).
#[inline(always)]
pub const fn pack_pio(port: u32, rw: u32, size: u32) -> (u32, u64) {
    (port, (rw & 1) as u64 | ((size as u64) << 8))
}

/// kvm_mmio: (type | len << 8, gpa).
#[inline(always)]
pub const fn pack_mmio(ty: u32, len: u32, gpa: u64) -> (u32, u64) {
    ((ty & 0xff) | (len << 8), gpa)
}

/// kvm_msr: (index, write | faulted << 1).
#[inline(always)]
pub const fn pack_msr(index: u32, write: u32, faulted: bool) -> (u32, u64) {
    (index, (write & 1) as u64 | ((faulted as u64) << 1))
}

/// kvm_cpuid: (function, 0).
#[inline(always)]
pub const fn pack_cpuid(function: u32) -> (u32, u64) {
    (function, 0)
}

/// kvm_userspace_exit: (reason, 0), or (reason | [`UEXIT_ERRNO_FLAG`], errno) when KVM_RUN
/// returned an error (errno < 0; EINTR is a signal restart).
#[inline(always)]
pub const fn pack_userspace_exit(reason: u32, errno: i32) -> (u32, u64) {
    if errno < 0 {
        (reason | UEXIT_ERRNO_FLAG, errno.unsigned_abs() as u64)
    } else {
        (reason, 0)
    }
}

/// A port access's direction, as kvm_pio's `rw` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortDir {
    In,
    Out,
}

impl PortDir {
    pub const fn as_str(self) -> &'static str {
        match self {
            PortDir::In => "in",
            PortDir::Out => "out",
        }
    }
}

/// An MSR access's direction, as kvm_msr's `write` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MsrDir {
    Read,
    Write,
}

impl MsrDir {
    pub const fn as_str(self) -> &'static str {
        match self {
            MsrDir::Read => "read",
            MsrDir::Write => "write",
        }
    }
}

/// kvm_mmio's `type` (KVM_TRACE_MMIO_*); a value this build does not know is kept, not guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MmioAccess {
    UnsatisfiedRead,
    Read,
    Write,
    Unknown(u8),
}

impl MmioAccess {
    pub const fn of(ty: u8) -> MmioAccess {
        match ty {
            0 => MmioAccess::UnsatisfiedRead,
            1 => MmioAccess::Read,
            2 => MmioAccess::Write,
            other => MmioAccess::Unknown(other),
        }
    }

    /// "unsatisfied-read", "read", "write", or "unknown" for a value the kernel added later.
    pub const fn as_str(self) -> &'static str {
        match self {
            MmioAccess::UnsatisfiedRead => "unsatisfied-read",
            MmioAccess::Read => "read",
            MmioAccess::Write => "write",
            MmioAccess::Unknown(_) => "unknown",
        }
    }
}

/// How KVM_RUN returned to the VMM. `reason` of a restart or error is whatever
/// `kvm_run->exit_reason` held then (stale); it is kept only so the key round-trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserspaceExit {
    /// A KVM_EXIT_* reason (`kvm_run->exit_reason`).
    Reason(u32),
    /// KVM_RUN was interrupted by a signal (-EINTR): the VMM restarts it.
    Restart { reason: u32 },
    /// KVM_RUN failed with this errno.
    Error { reason: u32, errno: u32 },
}

impl UserspaceExit {
    /// The exit a round-trip key's code stands for, when it is a KVM_EXIT_* reason (the code of
    /// a restart or error does not say which of the two it was).
    pub const fn of_round_trip_code(code: u32) -> Option<UserspaceExit> {
        if code & UEXIT_ERRNO_FLAG == 0 {
            Some(UserspaceExit::Reason(code))
        } else {
            None
        }
    }

    /// The code the kernel side keys this exit's VMM round trips by (`LatencyKey::reason` of
    /// a `VmmRoundTrip`): the reason, with [`UEXIT_ERRNO_FLAG`] for restarts and errors.
    pub const fn round_trip_code(self) -> u32 {
        match self {
            UserspaceExit::Reason(r) => r,
            UserspaceExit::Restart { reason } | UserspaceExit::Error { reason, .. } => {
                reason | UEXIT_ERRNO_FLAG
            }
        }
    }
}

/// A detail key's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detail {
    Port {
        port: u16,
        dir: PortDir,
        size: u8,
    },
    Mmio {
        gpa: u64,
        access: MmioAccess,
        len: u32,
    },
    Msr {
        index: u32,
        dir: MsrDir,
        faulted: bool,
    },
    Cpuid {
        function: u32,
    },
    UserspaceExit(UserspaceExit),
    /// The events of this kind with no key of their own (beyond a vCPU's key budget, or the
    /// map was full): the "other keys" row.
    Other(DetailKind),
}

impl Detail {
    pub const fn kind(&self) -> DetailKind {
        match self {
            Detail::Port { .. } => DetailKind::Pio,
            Detail::Mmio { .. } => DetailKind::Mmio,
            Detail::Msr { .. } => DetailKind::Msr,
            Detail::Cpuid { .. } => DetailKind::Cpuid,
            Detail::UserspaceExit(_) => DetailKind::UserspaceExit,
            Detail::Other(kind) => *kind,
        }
    }
}

/// EINTR on Linux (every architecture KVM runs on).
const EINTR: u64 = 4;

impl DetailKey {
    /// What the key means; None for a kind this build does not know (a damaged recording).
    pub const fn decode(&self) -> Option<Detail> {
        let Some(kind) = DetailKind::from_u32(self.kind) else {
            return None;
        };
        if self.is_other() {
            return Some(Detail::Other(kind));
        }
        let (a, b) = (self.a, self.b);
        Some(match kind {
            DetailKind::Pio => Detail::Port {
                port: a as u16,
                dir: if b & 1 == 1 {
                    PortDir::Out
                } else {
                    PortDir::In
                },
                size: (b >> 8) as u8,
            },
            DetailKind::Mmio => Detail::Mmio {
                gpa: b,
                access: MmioAccess::of(a as u8),
                len: a >> 8,
            },
            DetailKind::Msr => Detail::Msr {
                index: a,
                dir: if b & 1 == 1 {
                    MsrDir::Write
                } else {
                    MsrDir::Read
                },
                faulted: b & 2 != 0,
            },
            DetailKind::Cpuid => Detail::Cpuid { function: a },
            DetailKind::UserspaceExit => Detail::UserspaceExit(if a & UEXIT_ERRNO_FLAG == 0 {
                UserspaceExit::Reason(a)
            } else if b == EINTR {
                UserspaceExit::Restart {
                    reason: a & !UEXIT_ERRNO_FLAG,
                }
            } else {
                UserspaceExit::Error {
                    reason: a & !UEXIT_ERRNO_FLAG,
                    errno: b as u32,
                }
            }),
        })
    }

    /// The key of `detail` for a (VM, thread): the inverse of [`DetailKey::decode`].
    pub const fn encode(tgid: u32, tid: u32, detail: &Detail) -> DetailKey {
        let (kind, (a, b)) = match *detail {
            Detail::Port { port, dir, size } => (
                DetailKind::Pio,
                pack_pio(port as u32, matches!(dir, PortDir::Out) as u32, size as u32),
            ),
            Detail::Mmio { gpa, access, len } => {
                let ty = match access {
                    MmioAccess::UnsatisfiedRead => 0,
                    MmioAccess::Read => 1,
                    MmioAccess::Write => 2,
                    MmioAccess::Unknown(t) => t as u32,
                };
                (DetailKind::Mmio, pack_mmio(ty, len, gpa))
            }
            Detail::Msr {
                index,
                dir,
                faulted,
            } => (
                DetailKind::Msr,
                pack_msr(index, matches!(dir, MsrDir::Write) as u32, faulted),
            ),
            Detail::Cpuid { function } => (DetailKind::Cpuid, pack_cpuid(function)),
            Detail::UserspaceExit(u) => (
                DetailKind::UserspaceExit,
                match u {
                    UserspaceExit::Reason(r) => pack_userspace_exit(r, 0),
                    UserspaceExit::Restart { reason } => {
                        pack_userspace_exit(reason, -(EINTR as i32))
                    }
                    UserspaceExit::Error { reason, errno } => {
                        pack_userspace_exit(reason, -(errno as i32))
                    }
                },
            ),
            Detail::Other(kind) => return DetailKey::other(tgid, tid, kind),
        };
        DetailKey {
            tgid,
            tid,
            kind: kind as u32,
            a,
            b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: DetailKind, (a, b): (u32, u64)) -> DetailKey {
        DetailKey {
            tgid: 1,
            tid: 2,
            kind: kind as u32,
            a,
            b,
        }
    }

    #[test]
    fn every_kind_decodes_what_the_programs_pack() {
        let cases = [
            (
                key(DetailKind::Pio, pack_pio(0x70, 1, 1)),
                Detail::Port {
                    port: 0x70,
                    dir: PortDir::Out,
                    size: 1,
                },
            ),
            (
                key(DetailKind::Pio, pack_pio(0xcfc, 0, 4)),
                Detail::Port {
                    port: 0xcfc,
                    dir: PortDir::In,
                    size: 4,
                },
            ),
            (
                key(DetailKind::Mmio, pack_mmio(2, 4, 0xfebf_1000)),
                Detail::Mmio {
                    gpa: 0xfebf_1000,
                    access: MmioAccess::Write,
                    len: 4,
                },
            ),
            (
                key(DetailKind::Mmio, pack_mmio(0, 8, 0xd000_0000)),
                Detail::Mmio {
                    gpa: 0xd000_0000,
                    access: MmioAccess::UnsatisfiedRead,
                    len: 8,
                },
            ),
            (
                key(DetailKind::Mmio, pack_mmio(3, 2, 0x1000)),
                Detail::Mmio {
                    gpa: 0x1000,
                    access: MmioAccess::Unknown(3),
                    len: 2,
                },
            ),
            (
                key(DetailKind::Msr, pack_msr(0x6e0, 1, false)),
                Detail::Msr {
                    index: 0x6e0,
                    dir: MsrDir::Write,
                    faulted: false,
                },
            ),
            (
                key(DetailKind::Msr, pack_msr(0xc000_0102, 0, true)),
                Detail::Msr {
                    index: 0xc000_0102,
                    dir: MsrDir::Read,
                    faulted: true,
                },
            ),
            (
                key(DetailKind::Cpuid, pack_cpuid(0x4000_0000)),
                Detail::Cpuid {
                    function: 0x4000_0000,
                },
            ),
            (
                key(DetailKind::UserspaceExit, pack_userspace_exit(2, 0)),
                Detail::UserspaceExit(UserspaceExit::Reason(2)),
            ),
            (
                key(DetailKind::UserspaceExit, pack_userspace_exit(2, -4)),
                Detail::UserspaceExit(UserspaceExit::Restart { reason: 2 }),
            ),
            (
                key(DetailKind::UserspaceExit, pack_userspace_exit(0, -14)),
                Detail::UserspaceExit(UserspaceExit::Error {
                    reason: 0,
                    errno: 14,
                }),
            ),
            (
                DetailKey::other(1, 2, DetailKind::Msr),
                Detail::Other(DetailKind::Msr),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(k.decode(), Some(want), "{k:?}");
            assert_eq!(DetailKey::encode(1, 2, &want).decode(), Some(want));
        }
        assert_eq!(
            key(DetailKind::Pio, (0x70, 1)).decode().unwrap().kind(),
            DetailKind::Pio
        );
        assert_eq!(
            UserspaceExit::Restart { reason: 2 }.round_trip_code(),
            2 | UEXIT_ERRNO_FLAG
        );
        let bad = DetailKey {
            kind: 9,
            ..key(DetailKind::Pio, (0, 0))
        };
        assert_eq!(bad.decode(), None);
    }
}
