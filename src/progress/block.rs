//! One target's held-back log (plain output of multi-target runs): lines are kept until the
//! target finishes and then written as one contiguous block, like `make --output-sync`.
//!
//! Memory stays bounded: past [`SPOOL_MEMORY`] bytes the block moves to an unnamed temporary
//! file (deleted by the system when closed), so a target that prints gigabytes costs disk,
//! not memory. If that file cannot be made or written, nothing is dropped: the caller is told
//! and writes what was held straight away.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::SystemTime;

/// Bytes of one block kept in memory before it moves to a temporary file.
pub(crate) const SPOOL_MEMORY: usize = 1 << 20;

/// Bytes held for a block, in memory or in a temporary file.
#[derive(Debug)]
pub(crate) struct Spool {
    limit: usize,
    /// Where the temporary file goes (`None`: the system's temporary directory).
    dir: Option<PathBuf>,
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    pub fn new(limit: usize, dir: Option<PathBuf>) -> Spool {
        Spool {
            limit,
            dir,
            mem: Vec::new(),
            file: None,
            len: 0,
        }
    }

    /// Adds bytes. On an error (no temporary file could be made or written) the bytes are
    /// not held, and the caller must write out what is held ([`Spool::drain_into`]) and
    /// these bytes itself.
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.mem.len() + bytes.len() > self.limit {
            let mut f = match &self.dir {
                Some(d) => tempfile::tempfile_in(d)?,
                None => tempfile::tempfile()?,
            };
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes)?,
            None => self.mem.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether a temporary file holds the block.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Copies everything held to `out`, in order, and empties the spool. Only a write error
    /// is returned; a read error of the temporary file is written into the output as a line,
    /// so the gap is never silent.
    pub fn drain_into(&mut self, out: &mut dyn Write) -> io::Result<()> {
        self.len = 0;
        let Some(mut f) = self.file.take() else {
            return out.write_all(&std::mem::take(&mut self.mem));
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = f.seek(SeekFrom::Start(0)).map(|_| ());
        while read.is_ok() {
            match f.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => out.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => read = Err(e),
            }
        }
        if let Err(e) = read {
            writeln!(
                out,
                "(bk-build: the rest of this log could not be read back from its temporary file: {e})"
            )?;
        }
        Ok(())
    }
}

/// A target's block while it is being held.
#[derive(Debug)]
pub(crate) struct Block {
    /// When the target's first line arrived (the start of its CI section).
    pub started: SystemTime,
    pub spool: Spool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_blocks_stay_in_memory_and_come_out_in_order() {
        let mut s = Spool::new(100, None);
        s.push(b"one\n").unwrap();
        s.push(b"two\n").unwrap();
        assert!(!s.spilled());
        assert_eq!(s.len(), 8);
        let mut out = Vec::new();
        s.drain_into(&mut out).unwrap();
        assert_eq!(out, b"one\ntwo\n");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn large_blocks_move_to_a_file_and_lose_nothing() {
        let mut s = Spool::new(10, None);
        let mut want = Vec::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            s.push(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
        }
        assert!(s.spilled());
        assert_eq!(s.len(), want.len() as u64);
        let mut out = Vec::new();
        s.drain_into(&mut out).unwrap();
        assert_eq!(out, want);
        assert!(!s.spilled());
    }
}
