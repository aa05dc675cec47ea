//! What reading a recording may cost. A recording comes from anywhere (`report -i` on a file
//! someone sent), and zstd turns a few kilobytes into gigabytes: 1 GiB of zeros compresses to
//! about 40 KiB, and one valid interval repeated a million times to little more. So the reader
//! streams the file (it never holds the whole file or the whole decompressed stream), and every
//! allocation a record asks for is checked here first. A file over a limit is refused with
//! [`FormatError::TooLarge`], naming the limit, before the memory is taken.
//!
//! The limits sit well above what kvmtrace writes: a one-hour recording of 4 busy vCPUs (the
//! recording benchmark) is 2.0 MB and decodes to 31 MB of intervals.

use std::{cell::Cell, rc::Rc};

use super::FormatError;

/// The JSON header (host, kernel, tracepoint formats): a few tens of KiB when written.
pub const MAX_HEADER: u32 = 1 << 20;
/// One interval record (the largest kernel maps drained at once fit several times over).
pub const MAX_INTERVAL_RECORD: u32 = 64 << 20;
/// One VM or END record (JSON: a VM with a thousand threads is about 40 KiB; END lists exits
/// still open per latency key). Their decoded size is charged to the [`Budget`] too.
pub const MAX_JSON_RECORD: u32 = 16 << 20;
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
/// ... plus this many bytes per byte of file. Real recordings decode to about 15 bytes per byte
/// of file (the benchmark's busy hour: 2.0 MB of file, 31 MB decoded; flushed records compress
/// little); a bomb needs thousands.
pub const MEMORY_PER_FILE_BYTE: usize = 64;

/// The memory a file's records may still allocate: [`MEMORY_FLOOR`] plus
/// [`MEMORY_PER_FILE_BYTE`] for each byte of file read so far (counted as it is read, so a pipe
/// or a file still being written is bounded the same way).
#[derive(Debug, Default)]
pub struct Budget {
    used: usize,
    /// Bytes of the file read so far.
    input: Rc<Cell<u64>>,
}

impl Budget {
    pub fn new(input: Rc<Cell<u64>>) -> Budget {
        Budget { used: 0, input }
    }

    fn limit(&self) -> usize {
        let per_byte = usize::try_from(self.input.get())
            .unwrap_or(usize::MAX)
            .saturating_mul(MEMORY_PER_FILE_BYTE);
        MEMORY_FLOOR.saturating_add(per_byte)
    }

    /// Takes `n` items of `size` bytes from the budget, or refuses.
    pub fn charge(&mut self, n: usize, size: usize) -> Result<(), FormatError> {
        let bytes = n.saturating_mul(size);
        let limit = self.limit();
        if bytes > limit.saturating_sub(self.used) {
            return Err(FormatError::TooLarge {
                what: format!(
                    "decoding it needs more than {} MiB of memory after {} bytes of file",
                    limit >> 20,
                    self.input.get()
                ),
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Bytes of the file read so far.
    pub fn input_bytes(&self) -> u64 {
        self.input.get()
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
    fn the_budget_grows_with_the_file_read_and_refuses_beyond() {
        let input = Rc::new(Cell::new(0));
        let mut b = Budget::new(input.clone());
        b.charge(1, MEMORY_FLOOR).unwrap();
        assert!(b.charge(1, 1).is_err());
        input.set(1 << 20);
        b.charge(1 << 20, 64).unwrap();
        assert_eq!(b.used(), MEMORY_FLOOR + (64 << 20));
        let err = b.charge(1, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the recording is over a limit of this reader (a damaged or hostile file): decoding it needs more than 128 MiB of memory after 1048576 bytes of file"
        );
        // Huge counts saturate instead of wrapping.
        assert!(Budget::default().charge(usize::MAX, 64).is_err());
        input.set(u64::MAX);
        assert!(b.charge(1, 1).is_ok());
    }
}
