//! Writes a recording as it happens: every record is compressed and flushed to the file at once.

use std::{
    fs::File,
    io::{self, Write as _},
    path::Path,
};

use super::{End, Header, KIND_END, KIND_INTERVAL, KIND_VM, MAGIC, VERSION, codec::Encoder};
use crate::{error::Error, model::Interval, vm::Vm};

pub struct Writer {
    zstd: zstd::stream::write::Encoder<'static, File>,
    codec: Encoder,
    path: String,
    /// Bytes of uncompressed records, for the size report.
    pub raw_bytes: u64,
}

impl Writer {
    /// Creates the file now, so an unwritable path fails before any tracing starts.
    pub fn create(path: &Path) -> Result<File, Error> {
        File::create(path).map_err(|e| Error::Io {
            what: format!("cannot write the recording {}", path.display()),
            source: e,
        })
    }

    /// Writes the header into `file` (from [`Writer::create`]) and starts the record stream.
    pub fn start(mut file: File, path: &Path, header: &Header) -> Result<Writer, Error> {
        let io_err = |e| Error::Io {
            what: format!("writing {}", path.display()),
            source: e,
        };
        let json = serde_json::to_vec(header).map_err(|e| io_err(io::Error::other(e)))?;
        file.write_all(MAGIC).map_err(io_err)?;
        file.write_all(&VERSION.to_le_bytes()).map_err(io_err)?;
        file.write_all(&(json.len() as u32).to_le_bytes())
            .map_err(io_err)?;
        file.write_all(&crc32fast::hash(&json).to_le_bytes())
            .map_err(io_err)?;
        file.write_all(&json).map_err(io_err)?;
        let zstd = zstd::stream::write::Encoder::new(file, 3).map_err(io_err)?;
        Ok(Writer {
            zstd,
            codec: Encoder::default(),
            path: path.display().to_string(),
            raw_bytes: 0,
        })
    }

    pub fn vm(&mut self, vm: &Vm) -> Result<(), Error> {
        let json = serde_json::to_vec(vm).map_err(|e| self.err(io::Error::other(e)))?;
        self.record(KIND_VM, &json)
    }

    pub fn interval(&mut self, iv: &Interval) -> Result<(), Error> {
        let payload = self.codec.encode(iv);
        self.record(KIND_INTERVAL, &payload)
    }

    /// Writes the END record and closes the stream: the file is complete.
    pub fn finish(mut self, end: &End) -> Result<(), Error> {
        let json = serde_json::to_vec(end).map_err(|e| self.err(io::Error::other(e)))?;
        self.record(KIND_END, &json)?;
        let path = self.path.clone();
        let file = self.zstd.finish().map_err(|e| Error::Io {
            what: format!("closing {path}"),
            source: e,
        })?;
        file.sync_all().map_err(|e| Error::Io {
            what: format!("syncing {path}"),
            source: e,
        })
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> Result<(), Error> {
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
        r.map_err(|e| self.err(e))
    }

    fn err(&self, e: io::Error) -> Error {
        Error::Io {
            what: format!("writing {}", self.path),
            source: e,
        }
    }
}
