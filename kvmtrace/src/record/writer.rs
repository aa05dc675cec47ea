//! Writes a recording as it happens: every record is compressed and flushed to the file at once.
//!
//! The target is not touched until tracing really starts: [`Writer::create`] makes a new file
//! beside it (see [`crate::outfile`]: symbolic links are refused, an unwritable directory fails
//! before any tracing), and [`Writer::start`] writes the header into it and renames it over the
//! target. A failure in between (a mistyped `-d`) leaves an existing recording as it was.
//!
//! Once started, a failed write (a full disk, a quota) does not end the recording: the writer
//! says so once on stderr, writes nothing more, and the file stays readable as a recording cut
//! short at its last complete interval. The trace goes on and its live report is still printed.
//!
//! [`Writer::new`] writes the same format to any [`Write`] (tests, the round-trip fuzz target).

use std::{
    fs::File,
    io::{self, Write},
    path::Path,
    time::Duration,
};

use super::{
    Deep, End, Header, KIND_DEEP, KIND_END, KIND_INTERVAL, KIND_STACKS, KIND_VM, MAGIC, VERSION,
    codec::Encoder,
};
use crate::{
    error::Error,
    model::{Interval, identity::Vm, stacks::StackBatch},
    outfile::OutFile,
};

/// A recording being written to a file ([`Writer::create`], [`Writer::start`]) or to any
/// [`Write`] ([`Writer::new`]: a buffer, a pipe).
pub struct Writer<W: Write = File> {
    zstd: zstd::stream::write::Encoder<'static, W>,
    codec: Encoder,
    /// What messages call the output (a path).
    path: String,
    /// Bytes of uncompressed records, for the size report.
    pub raw_bytes: u64,
    /// A write failed: the file ends before this point and nothing more is written.
    cut_short: bool,
    /// End of the last interval that reached the file.
    written_until: Duration,
}

/// The fixed part and the JSON header, in front of the record stream.
fn write_header(out: &mut impl Write, header: &Header) -> io::Result<()> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&crc32fast::hash(&json).to_le_bytes())?;
    out.write_all(&json)
}

impl Writer {
    /// Prepares the recording at `path` without touching it: a new file beside it, so an
    /// unwritable path or a symbolic link fails before any tracing starts.
    pub fn create(path: &Path) -> Result<OutFile, Error> {
        OutFile::create(path, "the recording")
    }

    /// Writes the header into `file` (from [`Writer::create`]), puts it in place of `path` and
    /// starts the record stream.
    pub fn start(mut file: OutFile, path: &Path, header: &Header) -> Result<Writer, Error> {
        let io_err = |e| Error::Io {
            what: format!("writing {}", path.display()),
            source: e,
        };
        write_header(&mut file, header).map_err(io_err)?;
        let file = file.commit()?;
        Writer::stream(file, path.display().to_string()).map_err(io_err)
    }

    /// Writes the END record and closes the stream: the file is complete (unless a write
    /// failed, which was reported then; the file stays as it is).
    pub fn finish(self, end: &End) -> Result<(), Error> {
        let path = self.path.clone();
        if let Some(file) = self.finish_stream(end)?
            && let Err(e) = file.sync_all()
        {
            eprintln!("kvmtrace: closing {path} failed: {e}");
        }
        Ok(())
    }
}

impl<W: Write> Writer<W> {
    /// A recording written to `out`: the header now, then each record as it comes. `name` is
    /// what messages call `out`.
    pub fn new(mut out: W, name: &str, header: &Header) -> Result<Writer<W>, Error> {
        let io_err = |e| Error::Io {
            what: format!("writing {name}"),
            source: e,
        };
        write_header(&mut out, header).map_err(io_err)?;
        Writer::stream(out, name.to_string()).map_err(io_err)
    }

    fn stream(out: W, path: String) -> io::Result<Writer<W>> {
        Ok(Writer {
            zstd: zstd::stream::write::Encoder::new(out, 3)?,
            codec: Encoder::default(),
            path,
            raw_bytes: 0,
            cut_short: false,
            written_until: Duration::ZERO,
        })
    }

    pub fn vm(&mut self, vm: &Vm) -> Result<(), Error> {
        let json = serde_json::to_vec(vm).map_err(|e| self.err(io::Error::other(e)))?;
        self.record(KIND_VM, &json);
        Ok(())
    }

    pub fn interval(&mut self, iv: &Interval) -> Result<(), Error> {
        if self.cut_short {
            return Ok(()); // the dictionary of keys sent would no longer match the file
        }
        let payload = self.codec.encode(iv);
        if !self.record(KIND_INTERVAL, &payload) {
            return Ok(());
        }
        for part in stack_records(&iv.stacks) {
            let json = serde_json::to_vec(&part).map_err(|e| self.err(io::Error::other(e)))?;
            if !self.record(KIND_STACKS, &json) {
                return Ok(());
            }
        }
        if !iv.slow.is_empty() || !iv.guest_rips.is_empty() {
            // At most the kernel's ring buffer of slow exits (~9 000, ~2 MiB of JSON) and its
            // map of RIPs (16 384, ~1.5 MiB) per interval.
            let deep = Deep {
                slow: iv.slow.clone(),
                guest_rips: iv.guest_rips.clone(),
            };
            let json = serde_json::to_vec(&deep).map_err(|e| self.err(io::Error::other(e)))?;
            if !self.record(KIND_DEEP, &json) {
                return Ok(());
            }
        }
        self.written_until = iv.at;
        Ok(())
    }

    /// The output so far: every record written is in it (flushed), so it reads as a recording
    /// cut short after the last one.
    pub fn output(&self) -> &W {
        self.zstd.get_ref()
    }

    /// Whether a write failed, so that the file is cut short.
    pub fn is_cut_short(&self) -> bool {
        self.cut_short
    }

    /// Writes the END record and closes the stream; gives the output back when all of it was
    /// written (a failed write was reported then, a failure to close is reported now).
    pub fn finish_stream(mut self, end: &End) -> Result<Option<W>, Error> {
        let json = serde_json::to_vec(end).map_err(|e| self.err(io::Error::other(e)))?;
        if !self.record(KIND_END, &json) {
            return Ok(None);
        }
        // END is in the output: what follows only completes the zstd frame, and the reader does
        // not need it.
        let path = self.path.clone();
        match self.zstd.finish() {
            Ok(out) => Ok(Some(out)),
            Err(e) => {
                eprintln!("kvmtrace: closing {path} failed: {e}");
                Ok(None)
            }
        }
    }

    /// Appends one record and flushes it; false if it did not reach the file.
    fn record(&mut self, kind: u8, payload: &[u8]) -> bool {
        if self.cut_short {
            return false;
        }
        let mut head = [0u8; 9];
        head[0] = kind;
        head[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[5..9].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.raw_bytes += (head.len() + payload.len()) as u64;
        let r = self
            .zstd
            .write_all(&head)
            .and_then(|()| self.zstd.write_all(payload))
            // Flush: the record reaches the file now, so a killed recorder loses nothing written.
            .and_then(|()| self.zstd.flush());
        match r {
            Ok(()) => true,
            Err(e) => {
                self.cut_short = true;
                eprintln!(
                    "kvmtrace: writing {} failed: {e}; the recording is cut short at {:.1} s (the report still covers the whole run)",
                    self.path,
                    self.written_until.as_secs_f64()
                );
                false
            }
        }
    }

    fn err(&self, e: io::Error) -> Error {
        Error::Io {
            what: format!("writing {}", self.path),
            source: e,
        }
    }
}

/// Frame text per STACKS record, well below the reader's limit for a JSON record: a first
/// interval can bring thousands of stacks of a hundred frames each.
const STACK_RECORD_TEXT: usize = 2 << 20;

/// `batch` as STACKS records: its new stacks in parts of at most [`STACK_RECORD_TEXT`] of
/// frame text, the samples (and the loss count) with the last part.
fn stack_records(batch: &StackBatch) -> Vec<StackBatch> {
    if batch.is_empty() {
        return Vec::new();
    }
    let mut parts = vec![StackBatch::default()];
    let mut text = 0;
    for stack in &batch.new_stacks {
        let size: usize = stack.frames().map(|f| f.len() + 3).sum();
        if text + size > STACK_RECORD_TEXT && text > 0 {
            parts.push(StackBatch::default());
            text = 0;
        }
        text += size;
        parts.last_mut().unwrap().new_stacks.push(stack.clone());
    }
    let last = parts.last_mut().unwrap();
    last.samples = batch.samples.clone();
    last.lost = batch.lost;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{read_bytes, tests::interval};

    #[test]
    fn a_failed_write_cuts_the_file_short_once_and_recording_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.kvmtrace");
        let header = crate::record::tests::header();
        let mut w = Writer::start(Writer::create(&path).unwrap(), &path, &header).unwrap();
        w.interval(&interval(1)).unwrap();
        w.interval(&interval(2)).unwrap();
        // From here on every write fails (EBADF on a read-only descriptor, as ENOSPC would;
        // tests/it/files.rs fills a real tmpfs).
        let ro = File::open(&path).unwrap();
        *w.zstd.get_mut() = ro;
        w.interval(&interval(3)).unwrap();
        assert!(w.is_cut_short());
        w.interval(&interval(4)).unwrap();
        w.finish(&End::default()).unwrap();
        let rec = read_bytes(&std::fs::read(&path).unwrap()).unwrap();
        assert!(rec.cut_short());
        assert_eq!(rec.intervals.len(), 2);
        assert_eq!(rec.intervals[1].at, interval(2).at);
    }
}
