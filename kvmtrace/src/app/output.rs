//! Where `report` and `diff` write, and how writing ends.

use std::{
    io::{self, Write as _},
    path::Path,
};

use std::collections::BTreeMap;

use crate::{
    error::Error,
    host::{
        Host,
        identities::{SeenThread, learn_identities, learn_threads},
    },
    model::{Aggregate, Interval, identity::Vm},
    outfile::OutFile,
    record::{End, Writer},
};

/// Where `report` and `diff` write: stdout, or the file given with -o, which takes the place of
/// FILE only once everything is written ([`OutFile`]: no symbolic links followed, an existing
/// file kept if anything fails).
pub enum Output {
    Stdout(io::BufWriter<io::StdoutLock<'static>>),
    File(io::BufWriter<OutFile>),
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File(w) => w.write(buf).map_err(|e| file_error(w.get_ref(), e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File(w) => w.flush().map_err(|e| file_error(w.get_ref(), e)),
        }
    }
}

/// A write error that names the file.
fn file_error(f: &OutFile, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing {}: {e}", f.label()))
}

impl Output {
    /// Flushes, and puts the file in place.
    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Stdout(mut w) => finish_output(w.flush()),
            Output::File(w) => {
                let f = w.into_inner().map_err(|e| {
                    let (e, w) = e.into_parts();
                    file_error(w.get_ref(), e)
                })?;
                f.commit()?;
                Ok(())
            }
        }
    }
}

/// Stdout, or the file given with -o.
pub fn output(path: Option<&Path>) -> anyhow::Result<Output> {
    Ok(match path {
        Some(p) => Output::File(io::BufWriter::new(OutFile::create(p, "")?)),
        None => Output::Stdout(io::BufWriter::new(io::stdout().lock())),
    })
}

/// Broken pipes (`| head`) end output quietly.
pub fn finish_output(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Ends the recording file and says what was written.
pub fn finish_recording(w: Writer, end: &End, path: &std::path::Path) -> anyhow::Result<()> {
    let raw = w.raw_bytes;
    w.finish(end)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "kvmtrace: wrote {} ({size} bytes, {raw} before compression)",
        path.display()
    );
    Ok(())
}

/// Threads the kernel has just seen for the first time (`Tracer::new_threads`): their VMs'
/// and their own names, read now while a short-lived VM still exists, and written to the file.
pub fn learn_new_threads(
    host: &Host,
    directory: &mut BTreeMap<u32, Vm>,
    writer: &mut Option<Writer>,
    threads: &[SeenThread],
) -> Result<(), Error> {
    let changed = learn_threads(host, directory, threads);
    if let Some(w) = writer {
        for pid in changed {
            if let Some(vm) = directory.get(&pid) {
                w.vm(vm)?;
            }
        }
    }
    Ok(())
}

/// One drained interval: learn new VMs and threads, add to the aggregate, append to the file.
pub fn step(
    host: &Host,
    directory: &mut BTreeMap<u32, Vm>,
    agg: &mut Aggregate,
    writer: &mut Option<Writer>,
    iv: &Interval,
) -> Result<(), Error> {
    let changed = learn_identities(host, directory, iv);
    agg.apply(iv);
    if let Some(w) = writer {
        for pid in changed {
            if let Some(vm) = directory.get(&pid) {
                w.vm(vm)?;
            }
        }
        w.interval(iv)?;
    }
    Ok(())
}
