//! The one kernel structure offset a program needs that no tracepoint format gives: `pid` in
//! `struct task_struct`, from the kernel's BTF, for the raw sched_switch program (its
//! arguments are the two tasks, not their pids).

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The byte offset of `task_struct.pid` in the BTF at `path`; None where there is no BTF or
/// it does not say (the classic sched_switch program is attached then). Reads the file whole
/// (~6 MB): one read instead of the parser's many small ones.
pub fn task_pid_offset(path: &Path) -> Option<u32> {
    let bytes = std::fs::read(path).ok()?;
    let types = TypeInformation::new(&InMemory(bytes)).ok()?;
    match types.offset_of(types.id_of("task_struct")?, "pid").ok()? {
        (_, Offset::ByteOffset(offset)) => Some(offset),
        // A bitfield: not the plain int the program reads.
        (_, Offset::BitOffsetAndSize(..)) => None,
    }
}

struct InMemory(Vec<u8>);

impl Readable for InMemory {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::InvalidOffset,
                "read past the end of the BTF",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_btf_no_offset() {
        assert_eq!(task_pid_offset(Path::new("/nonexistent/vmlinux")), None);
        let junk = std::env::temp_dir().join(format!("kvmtrace-btf-junk-{}", std::process::id()));
        std::fs::write(&junk, b"not BTF at all").unwrap();
        assert_eq!(task_pid_offset(&junk), None);
        std::fs::remove_file(&junk).unwrap();
    }
}
