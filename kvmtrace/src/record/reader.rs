//! Reads a recording back: the header, the VMs, every complete interval, and whether the file
//! ended properly or was cut short (a killed recorder, a full disk). Never panics on bad input,
//! and never allocates more than [`super::limits`] allows: the file and its decompressed stream
//! are read record by record, each record's size is checked before it is read, and each
//! decoded item is charged to a budget before it is allocated. Text that a report may show is
//! escaped ([`crate::untrusted`]): a recording can come from anyone. Every format version from
//! [`OLDEST_VERSION`] to [`VERSION`] is read into today's types (the file's version selects how
//! its intervals decode); others are refused.

use std::{
    cell::Cell,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::Path,
    rc::Rc,
};

use super::{
    Deep, End, FormatError, Header, KIND_DEEP, KIND_END, KIND_INTERVAL, KIND_STACKS, KIND_VM,
    MAGIC, OLDEST_VERSION, VERSION,
    codec::Decoder,
    limits::{Budget, MAX_HEADER, MAX_INTERVAL_RECORD, MAX_JSON_RECORD, ZSTD_WINDOW_LOG_MAX},
};
use crate::{
    error::Error,
    model::{Interval, identity::Vm, stacks::StackBatch},
};

#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The format version the file was written in (see the table in [`super`]).
    pub version: u32,
    pub header: Header,
    pub vms: Vec<Vm>,
    pub intervals: Vec<Interval>,
    /// None when the file was cut short (no END record).
    pub end: Option<End>,
}

impl Recording {
    pub fn cut_short(&self) -> bool {
        self.end.is_none()
    }
}

pub fn read_file(path: &Path) -> Result<Recording, Error> {
    let io_err = |e| Error::Io {
        what: format!("reading the recording {}", path.display()),
        source: e,
    };
    // Not fs::read: the file is streamed, never held whole (it may also be a pipe).
    let file = File::open(path).map_err(io_err)?;
    read_from(BufReader::new(file)).map_err(|e| match e {
        Failure::Io(e) => io_err(e),
        Failure::Format(e) => Error::Recording {
            path: path.display().to_string(),
            source: e,
        },
    })
}

pub fn read_bytes(bytes: &[u8]) -> Result<Recording, FormatError> {
    read_from(bytes).map_err(|e| match e {
        Failure::Format(e) => e,
        // A slice does not fail to read.
        Failure::Io(e) => FormatError::Corrupted(e.to_string()),
    })
}

/// Reading the file failed, or what it holds is not a readable recording.
enum Failure {
    Io(io::Error),
    Format(FormatError),
}

impl From<FormatError> for Failure {
    fn from(e: FormatError) -> Self {
        Failure::Format(e)
    }
}

/// The recording in `input`.
fn read_from(input: impl BufRead) -> Result<Recording, Failure> {
    let consumed = Rc::new(Cell::new(0));
    let mut input = Counted {
        inner: input,
        consumed: consumed.clone(),
    };
    let mut fixed = [0u8; 20];
    let got = fill(&mut input, &mut fixed).map_err(Failure::Io)?;
    if got == 0 {
        return Err(FormatError::Empty.into());
    }
    if got < MAGIC.len() || &fixed[..MAGIC.len()] != MAGIC {
        return Err(FormatError::NotARecording.into());
    }
    let word = |at: usize| -> Result<u32, FormatError> {
        if got < at + 4 {
            return Err(FormatError::BadHeader("file ends inside the header".into()));
        }
        Ok(u32::from_le_bytes([
            fixed[at],
            fixed[at + 1],
            fixed[at + 2],
            fixed[at + 3],
        ]))
    };
    let version = word(8)?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version }.into());
    }
    let header_len = word(12)?;
    let header_crc = word(16)?;
    if header_len > MAX_HEADER {
        return Err(FormatError::TooLarge {
            what: format!("a header of {header_len} bytes (at most {MAX_HEADER})"),
        }
        .into());
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    if fill(&mut input, &mut header_bytes).map_err(Failure::Io)? < header_bytes.len() {
        return Err(FormatError::BadHeader("file ends inside the header".into()).into());
    }
    if !checksum_ok(&header_bytes, header_crc) {
        return Err(FormatError::Corrupted("header checksum mismatch".into()).into());
    }
    let mut header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| FormatError::BadHeader(e.to_string()))?;
    header.escape_text();
    drop(header_bytes);

    let mut rec = Recording {
        version,
        header,
        ..Default::default()
    };
    // The budget counts only what follows the header.
    consumed.set(0);
    read_records(
        input,
        Decoder::new(version),
        Budget::new(consumed),
        &mut rec,
    )?;
    Ok(rec)
}

/// A reader that counts the bytes taken from it, for the [`Budget`].
struct Counted<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.consumed.set(self.consumed.get() + n as u64);
        self.inner.consume(n);
    }
}

/// The zstd stream of records after the header, record by record.
fn read_records(
    input: impl BufRead,
    mut codec: Decoder,
    mut budget: Budget,
    rec: &mut Recording,
) -> Result<(), FormatError> {
    let corrupted = |e: io::Error| FormatError::Corrupted(format!("compressed data: {e}"));
    let mut stream = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupted)?;
    stream
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(corrupted)?;
    let mut payload = Vec::new();
    let mut pos: u64 = 0;
    let mut stacks_declared = 0;
    let mut previous_kind = None;
    loop {
        let mut head = [0u8; 9];
        // A cut-short file ends inside a zstd frame or a record: keep what decoded. Any other
        // decoding error is corruption.
        let got = fill(&mut stream, &mut head).map_err(corrupted)?;
        if got == 0 {
            if pos == 0 && budget.input_bytes() > 64 {
                // A recorder writes its first records within an interval; this much compressed
                // data that yields nothing is damage, not a file cut short.
                return Err(FormatError::Corrupted(
                    "the compressed records do not decode".into(),
                ));
            }
            return Ok(());
        }
        if rec.end.is_some() {
            return Err(FormatError::Corrupted("data after the END record".into()));
        }
        if got < head.len() {
            return Ok(()); // cut short inside a record header
        }
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        let max = match kind {
            KIND_INTERVAL => MAX_INTERVAL_RECORD,
            KIND_STACKS if rec.version >= 3 => MAX_JSON_RECORD,
            KIND_DEEP if rec.version >= 4 => MAX_JSON_RECORD,
            KIND_VM | KIND_END => MAX_JSON_RECORD,
            other => {
                return Err(FormatError::Corrupted(format!(
                    "unknown record kind {other}"
                )));
            }
        };
        if len > max {
            return Err(FormatError::TooLarge {
                what: format!(
                    "a record of {len} bytes at byte {pos} of the stream (at most {max})"
                ),
            });
        }
        if !read_payload(&mut stream, len as usize, &mut payload).map_err(corrupted)? {
            return Ok(()); // cut short inside a record
        }
        if !checksum_ok(&payload, crc) {
            return Err(FormatError::Corrupted(format!(
                "checksum mismatch in the record at byte {pos} of the stream"
            )));
        }
        match kind {
            KIND_VM => {
                // Deserialized text takes at most a few times its JSON size.
                budget.charge(payload.len(), 4)?;
                let mut vm: Vm = serde_json::from_slice(&payload)
                    .map_err(|e| FormatError::Corrupted(format!("VM record: {e}")))?;
                vm.escape_text();
                rec.vms.push(vm);
            }
            KIND_INTERVAL => {
                // The interval itself, and the slack of a growing Vec.
                budget.charge(2, size_of::<Interval>())?;
                rec.intervals.push(codec.decode(&payload, &mut budget)?);
            }
            KIND_STACKS => {
                if !matches!(previous_kind, Some(KIND_INTERVAL | KIND_STACKS)) {
                    return Err(FormatError::Corrupted(
                        "a STACKS record that does not follow an interval".into(),
                    ));
                }
                // The text, then (once parsed) a String per frame: frames of ~20 characters
                // take about twice their JSON; charging the worst case before parsing (8 times
                // for empty frames) would refuse real recordings, whose frames compress well.
                budget.charge(payload.len(), 2)?;
                read_stacks(&payload, rec, &mut stacks_declared, &mut budget)?;
            }
            KIND_DEEP => {
                if !matches!(previous_kind, Some(KIND_INTERVAL | KIND_STACKS)) {
                    return Err(FormatError::Corrupted(
                        "a DEEP record that does not follow an interval".into(),
                    ));
                }
                // Numbers only: the parsed records take about what their JSON does.
                budget.charge(payload.len(), 2)?;
                let deep: Deep = serde_json::from_slice(&payload)
                    .map_err(|e| FormatError::Corrupted(format!("DEEP record: {e}")))?;
                let Some(iv) = rec.intervals.last_mut() else {
                    return Err(FormatError::Corrupted(
                        "a DEEP record before any interval".into(),
                    ));
                };
                iv.slow = deep.slow;
                iv.guest_rips = deep.guest_rips;
            }
            _ => {
                budget.charge(payload.len(), 4)?;
                rec.end = Some(
                    serde_json::from_slice(&payload)
                        .map_err(|e| FormatError::Corrupted(format!("END record: {e}")))?,
                );
            }
        }
        previous_kind = Some(kind);
        pos += 9 + u64::from(len);
    }
}

/// A STACKS record: samples of the interval just read, and stacks first seen in it (an
/// interval's may come in several records). `declared`: the stacks of the records before.
fn read_stacks(
    payload: &[u8],
    rec: &mut Recording,
    declared: &mut usize,
    budget: &mut Budget,
) -> Result<(), FormatError> {
    let mut batch: StackBatch = serde_json::from_slice(payload)
        .map_err(|e| FormatError::Corrupted(format!("STACKS record: {e}")))?;
    let frames: usize = batch.new_stacks.iter().map(|s| s.frames().count()).sum();
    budget.charge(frames, size_of::<String>())?;
    let Some(iv) = rec.intervals.last_mut() else {
        return Err(FormatError::Corrupted(
            "a STACKS record before any interval".into(),
        ));
    };
    *declared += batch.new_stacks.len();
    if batch
        .samples
        .iter()
        .any(|(k, _)| k.stack as usize >= *declared)
    {
        return Err(FormatError::Corrupted(
            "a stack sample refers to a stack not in the file".into(),
        ));
    }
    for stack in &mut batch.new_stacks {
        for frame in stack.kernel.iter_mut().chain(&mut stack.user) {
            crate::untrusted::escape_in_place(frame);
        }
    }
    iv.stacks.new_stacks.append(&mut batch.new_stacks);
    iv.stacks.samples.append(&mut batch.samples);
    iv.stacks.lost += batch.lost;
    Ok(())
}

/// Reads until `buf` is full or the input ends (a truncated zstd frame ends it too); returns the
/// bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a `len`-byte payload into `buf`; false if the input ends first. The buffer grows with
/// the bytes that really arrive, not with the length the record claims.
fn read_payload(input: &mut impl Read, len: usize, buf: &mut Vec<u8>) -> io::Result<bool> {
    const STEP: usize = 1 << 20;
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        let end = start + (len - start).min(STEP);
        buf.reserve_exact(end - start);
        buf.resize(end, 0);
        let got = fill(input, &mut buf[start..end])?;
        if got < end - start {
            buf.truncate(start + got);
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checksums guard against damage; under the fuzzer (cfg(fuzzing)) they are skipped so that
/// mutated inputs reach the parsers behind them instead of all stopping here.
fn checksum_ok(bytes: &[u8], expected: u32) -> bool {
    cfg!(fuzzing) || crc32fast::hash(bytes) == expected
}
