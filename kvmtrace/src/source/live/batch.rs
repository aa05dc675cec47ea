//! Batched reads of a BPF hash map: BPF_MAP_LOOKUP_BATCH, and BPF_MAP_LOOKUP_AND_DELETE_BATCH
//! for an epoch's map that no program writes any more (kernel 5.6): a few syscalls per map and
//! interval, one pass over the map, instead of three syscalls per key (next key, lookup, delete).
//! aya 0.14 has no batch operations, so this is the syscall itself; callers fall back to the
//! per-key path when the kernel says no ([`unsupported`]).

use std::{io, os::fd::AsRawFd as _, os::fd::BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// Entries per call at most: a busy map takes a few calls.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for the batch commands, its buffers outlive the
    // call and are as large as `count` says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Did the kernel refuse the batch command itself (older than 5.6, or a map type without
/// batch support), as opposed to failing half-way?
pub fn unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOTSUP | ENOTSUPP | libc::ENOSYS)
    )
}

/// Buffers for batch reads of one map, kept for the tracer's lifetime: the first drain faults
/// their pages in, later ones copy into warm memory (fresh buffers each interval cost a page
/// fault per 4 KiB, about a third of a 50 000-key drain). At most about 1 MiB each.
pub struct BatchBuffers<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: aya::Pod, V: aya::Pod> Default for BatchBuffers<K, V> {
    fn default() -> Self {
        let n = ((1 << 20) / std::mem::size_of::<V>().max(1)).clamp(64, CHUNK);
        BatchBuffers {
            keys: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        }
    }
}

impl<K: aya::Pod, V: aya::Pod> BatchBuffers<K, V> {
    /// Calls `each` with every (key, value) of the hash map `fd`; with `delete`, the kernel
    /// deletes each entry as it reads it (only for a map no program writes any more: an entry
    /// created behind the walk would be missed). K and V must be the map's key and value types.
    pub fn for_each(
        &mut self,
        fd: BorrowedFd,
        delete: bool,
        mut each: impl FnMut(&K, &V),
    ) -> io::Result<()> {
        let cmd = if delete {
            BPF_MAP_LOOKUP_AND_DELETE_BATCH
        } else {
            BPF_MAP_LOOKUP_BATCH
        };
        let chunk = self.keys.capacity().min(self.values.capacity());
        // Hash maps' batch token is a bucket index.
        let (mut token_in, mut token_out) = (0u32, 0u32);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &token_in as *const u32 as u64
                },
                out_batch: &mut token_out as *mut u32 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let done = match bpf(cmd, &mut attr) {
                Ok(()) => false,
                // The end of the map (with the last entries, if any, in this batch).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                // Refused or failed: `count` need not say anything (the kernel may not have
                // touched it).
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(chunk);
            // SAFETY: the kernel wrote `n` (<= chunk) keys and values; both types are plain
            // data, any byte pattern valid.
            unsafe {
                self.keys.set_len(n);
                self.values.set_len(n);
            }
            for (k, v) in self.keys.iter().zip(&self.values) {
                each(k, v);
            }
            self.keys.clear();
            self.values.clear();
            if done {
                return Ok(());
            }
            token_in = token_out;
            first = false;
        }
    }
}
