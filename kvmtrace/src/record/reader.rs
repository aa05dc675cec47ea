//! Reads a recording back: the header, the VMs, every complete interval, and whether the file
//! ended properly or was cut short (a killed recorder). Never panics on bad input.

use std::{io::Read as _, path::Path};

use super::{
    End, FormatError, Header, KIND_END, KIND_INTERVAL, KIND_VM, MAGIC, MAX_RECORD, VERSION,
    codec::Decoder,
};
use crate::{error::Error, model::Interval, vm::Vm};

#[derive(Clone, Debug, Default)]
pub struct Recording {
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
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        what: format!("reading the recording {}", path.display()),
        source: e,
    })?;
    read_bytes(&bytes).map_err(|e| Error::Recording {
        path: path.display().to_string(),
        source: e,
    })
}

pub fn read_bytes(bytes: &[u8]) -> Result<Recording, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty);
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::NotARecording);
    }
    let word = |at: usize| -> Result<u32, FormatError> {
        let b = bytes
            .get(at..at + 4)
            .ok_or_else(|| FormatError::BadHeader("file ends inside the header".into()))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let version = word(8)?;
    if version > VERSION || version == 0 {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let header_len = word(12)? as usize;
    let header_crc = word(16)?;
    let header_bytes = bytes
        .get(20..20usize.saturating_add(header_len))
        .ok_or_else(|| FormatError::BadHeader("file ends inside the header".into()))?;
    if !checksum_ok(header_bytes, header_crc) {
        return Err(FormatError::Corrupted("header checksum mismatch".into()));
    }
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| FormatError::BadHeader(e.to_string()))?;

    let compressed = &bytes[20 + header_len..];
    let mut stream = Vec::new();
    let mut decoder = zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| FormatError::Corrupted(e.to_string()))?;
    // A cut-short file ends inside a zstd frame: keep what decoded, and let the record framing
    // below find the last complete record. A decoding error is corruption.
    if let Err(e) = decoder.read_to_end(&mut stream)
        && e.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(FormatError::Corrupted(format!("compressed data: {e}")));
    }

    if stream.is_empty() && compressed.len() > 64 {
        // A recorder writes its first records within an interval; this much compressed data
        // that yields nothing is damage, not a file cut short.
        return Err(FormatError::Corrupted(
            "the compressed records do not decode".into(),
        ));
    }
    let mut rec = Recording {
        header,
        ..Default::default()
    };
    let mut codec = Decoder::default();
    let mut pos = 0;
    while pos < stream.len() {
        if rec.end.is_some() {
            return Err(FormatError::Corrupted("data after the END record".into()));
        }
        let Some(head) = stream.get(pos..pos + 9) else {
            break; // cut short inside a record header
        };
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        if len > MAX_RECORD {
            return Err(FormatError::Corrupted(format!("record of {len} bytes")));
        }
        let Some(payload) = stream.get(pos + 9..pos + 9 + len as usize) else {
            break; // cut short inside a record
        };
        if !checksum_ok(payload, crc) {
            return Err(FormatError::Corrupted(format!(
                "checksum mismatch in the record at byte {pos} of the stream"
            )));
        }
        match kind {
            KIND_VM => rec.vms.push(
                serde_json::from_slice(payload)
                    .map_err(|e| FormatError::Corrupted(format!("VM record: {e}")))?,
            ),
            KIND_INTERVAL => rec.intervals.push(codec.decode(payload)?),
            KIND_END => {
                rec.end = Some(
                    serde_json::from_slice(payload)
                        .map_err(|e| FormatError::Corrupted(format!("END record: {e}")))?,
                )
            }
            other => {
                return Err(FormatError::Corrupted(format!(
                    "unknown record kind {other}"
                )));
            }
        }
        pos += 9 + len as usize;
    }
    Ok(rec)
}

/// Checksums guard against damage; under the fuzzer (cfg(fuzzing)) they are skipped so that
/// mutated inputs reach the parsers behind them instead of all stopping here.
fn checksum_ok(bytes: &[u8], expected: u32) -> bool {
    cfg!(fuzzing) || crc32fast::hash(bytes) == expected
}
