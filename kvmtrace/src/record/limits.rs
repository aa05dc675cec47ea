//! What reading a recording may cost. A recording comes from anywhere (`report -i` on a file
//! someone sent), and zstd turns a few kilobytes into gigabytes: 1 GiB of zeros compresses to
//! about 40 KiB, and one valid interval repeated a million times to little more. So the reader
//! streams the file (it never holds the whole file or the whole decompressed stream), and every
//! allocation a record asks for is checked here first. A file over a limit is refused with
//! [`FormatError::TooLarge`], naming the limit, before the memory is taken.
//!
//! The limits sit far above what kvmtrace writes: a one-hour recording of 4 busy vCPUs is about
//! 1.6 MB and decodes to about 5 MB of intervals.

use super::FormatError;

/// The JSON header (host, kernel, tracepoint formats): a few tens of KiB when written.
pub const MAX_HEADER: u32 = 1 << 20;
/// One interval record (the largest kernel maps drained at once fit several times over).
pub const MAX_INTERVAL_RECORD: u32 = 64 << 20;
/// One VM or END record (JSON; a VM with a thousand threads is about 40 KiB).
pub const MAX_JSON_RECORD: u32 = 1 << 20;
/// zstd window (log2): the writer's level 3 uses 2 MiB at most; a frame asking for more than
/// 8 MiB is refused instead of allocated.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Distinct latency keys (VM x thread x exit reason) in one recording: 16 times the kernel
/// map's default capacity. Each costs a histogram when reported.
pub const MAX_LATENCY_KEYS: usize = 1 << 16;
/// Distinct detail keys (VM x thread x port / MMIO address / MSR / CPUID function): 16 times
/// the kernel map's default capacity.
pub const MAX_DETAIL_KEYS: usize = 1 << 18;
/// Decoded intervals, key dictionaries and VM records may take this much memory whatever the
/// file's size ...
pub const MEMORY_FLOOR: usize = 64 << 20;
/// ... plus this many bytes per byte of file. Real recordings decode to a few bytes per byte
/// of file (flushed records compress little); only a bomb needs hundreds.
pub const MEMORY_PER_FILE_BYTE: usize = 32;

/// The memory a file's records may still allocate.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    file_len: u64,
}

impl Budget {
    pub fn for_file(file_len: u64) -> Budget {
        let per_byte = usize::try_from(file_len)
            .unwrap_or(usize::MAX)
            .saturating_mul(MEMORY_PER_FILE_BYTE);
        Budget {
            limit: MEMORY_FLOOR.saturating_add(per_byte),
            used: 0,
            file_len,
        }
    }

    /// Takes `n` items of `size` bytes from the budget, or refuses.
    pub fn charge(&mut self, n: usize, size: usize) -> Result<(), FormatError> {
        let bytes = n.saturating_mul(size);
        if bytes > self.limit - self.used {
            return Err(FormatError::TooLarge {
                what: format!(
                    "decoding it needs more than {} MiB of memory for {} bytes of file",
                    self.limit >> 20,
                    self.file_len
                ),
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_with_the_file_and_refuses_beyond() {
        let mut b = Budget::for_file(1 << 20);
        assert_eq!(b.limit, MEMORY_FLOOR + (32 << 20));
        b.charge(1, MEMORY_FLOOR).unwrap();
        b.charge(1 << 20, 32).unwrap();
        assert_eq!(b.used(), b.limit);
        let err = b.charge(1, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the recording is over a limit of this reader (a damaged or hostile file): decoding it needs more than 96 MiB of memory for 1048576 bytes of file"
        );
        // Huge counts saturate instead of wrapping.
        assert!(Budget::for_file(0).charge(usize::MAX, 64).is_err());
        assert!(Budget::for_file(u64::MAX).charge(1, 1).is_ok());
    }
}
