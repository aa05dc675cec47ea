//! New vCPU threads as the kernel first sees them: a thread's first event after attach sends its
//! tgid, tid and comm through NEW_THREADS, so the collector reads the VM's and the thread's names
//! from /proc at once. Otherwise they are read at the next drain, and a VM that lived less than an
//! interval is gone by then (it was reported as "pid N", its vCPUs as "tid N").

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use kvmtrace_common::{NewThread, maps};
use tokio::io::unix::AsyncFd;

use crate::{error::Error, host::identities::SeenThread, untrusted};

pub struct NewThreads {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl NewThreads {
    /// Takes NEW_THREADS out of `ebpf`; must run inside the tokio runtime (it registers the
    /// ring's file descriptor there).
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<NewThreads, Error> {
        let map = ebpf.take_map(maps::NEW_THREADS).ok_or_else(|| {
            Error::bpf(
                maps::NEW_THREADS,
                std::io::Error::other("map not in object"),
            )
        })?;
        let ring = RingBuf::try_from(map)
            .map_err(|e| Error::bpf(format!("opening {}", maps::NEW_THREADS), e))?;
        // SAFETY: the ring owns its map's file descriptor, which stays open, and is the one
        // its as_raw_fd returns, until the ring is dropped with the AsyncFd.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| {
            Error::bpf(
                format!("polling {}", maps::NEW_THREADS),
                std::io::Error::from(e),
            )
        })?;
        Ok(NewThreads { ring })
    }

    /// Waits until the kernel has sent some, then returns every thread there is. Cancel safe:
    /// records are taken only after the wait.
    pub async fn next(&mut self) -> Result<Vec<SeenThread>, Error> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|e| Error::bpf(format!("polling {}", maps::NEW_THREADS), e))?;
            // Cleared before reading, not after: a record that comes after the last read wakes
            // the next wait (cleared after, it would wait for the record after it).
            guard.clear_ready();
            let ring = guard.get_inner_mut();
            let mut found = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() == size_of::<NewThread>() {
                    // SAFETY: the kernel wrote a whole NewThread (checked length), plain data;
                    // read_unaligned makes no assumption about the record's alignment.
                    let new: NewThread = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    found.push(seen(&new));
                }
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
}

/// A record as the identities take it: its comm up to the first NUL, escaped (another
/// process's name), None when the kernel could not read it.
fn seen(new: &NewThread) -> SeenThread {
    let len = new
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(new.comm.len());
    SeenThread {
        tgid: new.tgid,
        tid: new.tid,
        comm: (len > 0).then(|| untrusted::from_bytes(&new.comm[..len])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_thread_escaped() {
        let mut comm = [0u8; 16];
        comm[..9].copy_from_slice(b"CPU 0/KVM");
        let new = NewThread {
            tgid: 10,
            tid: 11,
            comm,
        };
        assert_eq!(
            seen(&new),
            SeenThread {
                tgid: 10,
                tid: 11,
                comm: Some("CPU 0/KVM".into())
            }
        );
        // A terminal escape in a name it does not control reaches no terminal.
        let odd = NewThread {
            comm: *b"a\x1b[2Jbcdefghijkl",
            ..new
        };
        let name = seen(&odd).comm.unwrap();
        assert!(
            name.starts_with('a') && !name.contains('\u{1b}'),
            "{name:?}"
        );
        let unnamed = NewThread {
            comm: [0; 16],
            ..new
        };
        assert_eq!(seen(&unnamed).comm, None);
    }
}
