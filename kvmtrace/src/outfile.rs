//! Files kvmtrace writes (`record -o`, `report -o`, `diff -o`): never through a symbolic link,
//! and an existing file is replaced only once the new content is there.
//!
//! kvmtrace runs as root. Opening the output path directly truncated an existing recording before
//! anything was known to be worth writing (a mistyped `-d` left it at 0 bytes), and followed a
//! symbolic link to wherever it pointed (`-o link` overwrote the link's target). Instead, the
//! content goes to a new file beside the target, created with O_EXCL (never an existing file or
//! link; its creation also proves the directory is writable), and [`OutFile::commit`] renames it
//! over the target. A rename replaces the directory entry, never what a link points to. The
//! target must be absent or a regular file: a symbolic link, directory, device or FIFO is
//! refused, when the OutFile is created and again at the rename. An OutFile dropped before its
//! commit removes its temporary file.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::{
        ffi::{OsStrExt as _, OsStringExt as _},
        fs::{FileTypeExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::error::Error;

/// A new file that will replace `target` on [`OutFile::commit`].
pub struct OutFile {
    file: File,
    target: PathBuf,
    /// What the file is, for messages: `the recording /tmp/x.kvmtrace`.
    label: String,
    temp: TempPath,
}

impl OutFile {
    /// Checks `target` and creates the temporary file beside it. `what` names the file in
    /// errors ("the recording"), or is empty.
    pub fn create(target: &Path, what: &str) -> Result<OutFile, Error> {
        let label = if what.is_empty() {
            target.display().to_string()
        } else {
            format!("{what} {}", target.display())
        };
        check_target(target, &label)?;
        let name = target.file_name().ok_or_else(|| Error::Io {
            what: format!("cannot write {label}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        })?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Unique among concurrent kvmtraces (pid) and stale leftovers of killed ones (retry).
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last_err = None;
        for attempt in 0..64u32 {
            let mut temp = b".".to_vec();
            // Leave room for the suffix within NAME_MAX (255).
            temp.extend_from_slice(&name.as_bytes()[..name.len().min(180)]);
            temp.extend_from_slice(
                format!(
                    ".kvmtrace-{}-{:x}.tmp",
                    std::process::id(),
                    seed.wrapping_add(attempt)
                )
                .as_bytes(),
            );
            let temp = dir.join(OsString::from_vec(temp));
            match OpenOptions::new()
                .write(true)
                .create_new(true) // O_CREAT | O_EXCL: never an existing file, never a link
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(OutFile {
                        file,
                        target: target.to_path_buf(),
                        label,
                        temp: TempPath(Some(temp)),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("cannot write {label}"),
                        source: e,
                    });
                }
            }
        }
        Err(Error::Io {
            what: format!("cannot write {label}"),
            source: last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
        })
    }

    /// The path the content will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// `the recording PATH`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Puts the new file in place of the target (checked again: it may have changed since
    /// [`OutFile::create`]). Returns the file, still open for writing at its end.
    pub fn commit(self) -> Result<File, Error> {
        let OutFile {
            file,
            target,
            label,
            mut temp,
        } = self;
        check_target(&target, &label)?;
        let Some(path) = temp.0.as_deref() else {
            return Ok(file);
        };
        fs::rename(path, &target).map_err(|e| Error::Io {
            what: format!("cannot write {label}"),
            source: e,
        })?;
        temp.0 = None; // it is the target now
        Ok(file)
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The temporary file until it is committed: removed when dropped.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// The target may be absent or a regular file; anything else is refused with its kind.
fn check_target(target: &Path, label: &str) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                what: format!("cannot write {label}"),
                source: e,
            });
        }
    };
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Err(Error::NotARegularFile {
        path: target.to_path_buf(),
        what: label.to_string(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_an_existing_file_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r.kvmtrace");
        fs::write(&target, b"old").unwrap();
        let mut out = OutFile::create(&target, "the recording").unwrap();
        out.write_all(b"new").unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            b"old",
            "untouched before commit"
        );
        assert_eq!(leftovers(dir.path()).len(), 1);
        let mut file = out.commit().unwrap();
        file.write_all(b"er").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn dropping_before_commit_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r.kvmtrace");
        fs::write(&target, b"old").unwrap();
        let mut out = OutFile::create(&target, "").unwrap();
        out.write_all(b"partial").unwrap();
        drop(out);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert!(leftovers(dir.path()).is_empty());
        // Nothing existed: nothing is created.
        let fresh = dir.path().join("fresh");
        drop(OutFile::create(&fresh, "").unwrap());
        assert!(!fresh.exists());
    }

    #[test]
    fn links_directories_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"keep").unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        for (path, kind) in [
            (link.as_path(), "a symbolic link"),
            (dangling.as_path(), "a symbolic link"),
            (dir.path(), "a directory"),
            (Path::new("/dev/null"), "a device"),
        ] {
            let err = OutFile::create(path, "the recording").err().unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot write the recording {}: it is {kind}, not a regular file; kvmtrace writes only regular files and does not follow or replace links",
                    path.display()
                )
            );
        }
        assert_eq!(fs::read(&real).unwrap(), b"keep");
        assert!(!dir.path().join("nowhere").exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_link_that_appears_before_commit_is_refused_and_its_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"keep").unwrap();
        let target = dir.path().join("out");
        let mut out = OutFile::create(&target, "").unwrap();
        out.write_all(b"x").unwrap();
        symlink(&real, &target).unwrap();
        assert!(out.commit().is_err());
        assert_eq!(fs::read(&real).unwrap(), b"keep");
        assert!(
            fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn an_unwritable_directory_fails_at_create() {
        let err = OutFile::create(Path::new("/nonexistent-dir/x.kvmtrace"), "the recording")
            .err()
            .unwrap();
        assert_eq!(
            format!("{err}"),
            "cannot write the recording /nonexistent-dir/x.kvmtrace"
        );
    }
}
