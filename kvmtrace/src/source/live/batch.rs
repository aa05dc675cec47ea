//! Batched reads and deletes of a BPF hash map: BPF_MAP_LOOKUP_BATCH and BPF_MAP_DELETE_BATCH
//! (kernel 5.6), a few syscalls per map and interval instead of three per key (next key, lookup,
//! delete). aya 0.14 has no batch operations, so this is the syscall itself; callers fall back to
//! the per-key path when the kernel says no.

use std::{io, os::fd::AsRawFd as _, os::fd::BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per call: a busy map takes a few calls, and the buffers stay near 1 MiB (a latency
/// value is 2 KiB).
const CHUNK: usize = 4096;

fn chunk_for<V>() -> usize {
    ((1 << 20) / std::mem::size_of::<V>().max(1)).clamp(64, CHUNK)
}

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

/// Every (key, value) of the hash map `fd`. K and V must be the map's key and value types
/// (plain data, any byte pattern valid).
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let chunk = chunk_for::<V>();
    let mut keys: Vec<K> = Vec::with_capacity(chunk);
    let mut values: Vec<V> = Vec::with_capacity(chunk);
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
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        // SAFETY: the kernel wrote `n` (<= chunk) keys and values; both types are plain data.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match r {
            Ok(()) => {}
            // The end of the map (with the last entries, if any, already read).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`. Fails on the first key that is absent (ENOENT), after
/// deleting those before it.
pub fn delete<K: aya::Pod>(fd: BorrowedFd, keys: &[K]) -> io::Result<()> {
    for chunk in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_DELETE_BATCH, &mut attr)?;
    }
    Ok(())
}
