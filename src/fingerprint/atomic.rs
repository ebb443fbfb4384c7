//! Whole-file replacement for state files: write a temp file beside the target, then rename
//! it over the target. A reader sees either the old file or the complete new one, never a
//! mix, whatever happens to the writing process; a crash leaves at worst a stray temp file,
//! which readers never open (its name says what it is).
//!
//! No fsync: every file written here (state records, the stat cache) ends in a checksum its
//! reader verifies, and one that is lost or torn by a power failure reads as absent, which
//! means "build" — never a wrong skip. Durability would cost two fsyncs per record (~20 ms of
//! a no-change CI run's ~200 ms, measured on the benchmark's 14 re-tags), for nothing a
//! checksum does not already give.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every temp file name contains this, so a later run can recognize and delete leftovers.
pub(crate) const TEMP_MARKER: &str = ".tmp-";

/// Replaces `path` with what `write` produces. On any error the temp file is removed and
/// `path` is untouched. Only for files whose readers verify a checksum (see the module doc).
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        {
            let mut w = BufWriter::with_capacity(64 * 1024, &file);
            write(&mut w)?;
            w.flush()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens an existing state file for reading, refusing anything but a regular file: a FIFO
/// (or a device) left in `.bk-build/` would otherwise block the open or the first read forever.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on regular files).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    ensure_regular(&file, path)?;
    Ok(file)
}

/// Fails unless `file` (opened from `path`) is a regular file.
pub(crate) fn ensure_regular(file: &File, path: &Path) -> io::Result<()> {
    if file.metadata()?.is_file() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a regular file (bk-build only keeps regular files there; remove it)",
            path.display()
        ),
    ))
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no usable file name", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}{TEMP_MARKER}{}-{n}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, |w| w.write_all(b"one")).unwrap();
        write_atomic(&p, |w| w.write_all(b"two")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, |w| w.write_all(b"good")).unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("simulated crash"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "simulated crash");
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
