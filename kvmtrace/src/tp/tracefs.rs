//! Finding (or mounting) tracefs and reading the kvm tracepoints' formats from it.

use std::path::{Path, PathBuf};

use super::format::{self, Format};
use crate::error::Error;

pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";

/// The tracefs mount to use. With `explicit`, only that directory; otherwise the standard
/// mount point, mounted there if absent (we are root anyway), then the debugfs location.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit {
        return if has_events(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::NoTracefs {
                tried: dir.display().to_string(),
                mount_error: None,
            })
        };
    }
    let standard = Path::new(DEFAULT_TRACEFS);
    if has_events(standard) {
        return Ok(standard.to_path_buf());
    }
    let legacy = Path::new("/sys/kernel/debug/tracing");
    if has_events(legacy) {
        return Ok(legacy.to_path_buf());
    }
    match mount_tracefs(standard) {
        Ok(()) if has_events(standard) => {
            log::info!("mounted tracefs at {DEFAULT_TRACEFS}");
            Ok(standard.to_path_buf())
        }
        Ok(()) => Err(Error::NoTracefs {
            tried: DEFAULT_TRACEFS.into(),
            mount_error: Some("mounted, but it has no events/ directory".into()),
        }),
        Err(e) => Err(Error::NoTracefs {
            tried: DEFAULT_TRACEFS.into(),
            mount_error: Some(e.to_string()),
        }),
    }
}

fn has_events(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

fn mount_tracefs(at: &Path) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let target = c(&at.display().to_string())?;
    let fstype = c("tracefs")?;
    let source = c("nodev")?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The format of `<category>:<name>` (parsed, and its text), or None when this kernel has no
/// such tracepoint.
pub fn event_format(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<Option<(Format, String)>, Error> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => format::parse(&text, &path.display().to_string()).map(|f| Some((f, text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            what: format!("reading {}", path.display()),
            source: e,
        }),
    }
}
