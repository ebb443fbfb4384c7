//! The id → path table a file-sync sender keeps for the daemon's requests (and a receiver for
//! the files it requested).
//!
//! The daemon asks for file contents by STAT index, while and after the STATs stream, so the
//! sender must map every regular file's id back to its path until the exchange ends; a
//! receiver of an export likewise needs each requested file's path and metadata when its data
//! arrives. Held in
//! memory that table grows with the context (~6 MB at 200k files, the only part of the
//! client's memory that did), so records are packed into blocks and every full block goes to
//! an unlinked temporary file; memory keeps one small index entry per block, the block being
//! filled and one block read back. The daemon requests files in about the order it received
//! their STATs, so that one cached block answers almost every request without I/O.
//!
//! If no temporary file can be created or written, blocks stay in memory: correct, just not
//! flat. This module knows nothing about packets or the protocol.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of records per block: small enough that the two resident blocks are noise next to
/// the rest of the client, large enough that a 200k-file context has ~100 blocks.
const BLOCK_BYTES: usize = 64 * 1024;

/// Each record is `id: u32 LE, len: u32 LE, record bytes` (a path, or whatever the caller
/// stores).
const HEADER: usize = 8;

/// Records with their offsets, sorted by id (ids only grow).
#[derive(Default)]
struct Block {
    bytes: Vec<u8>,
    index: Vec<(u32, u32)>,
}

impl Block {
    fn push(&mut self, id: u32, record: &[u8]) {
        self.index.push((id, self.bytes.len() as u32));
        self.bytes.extend_from_slice(&id.to_le_bytes());
        self.bytes
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(record);
    }

    /// Rebuilds the index of a block read back from disk; `None` if it is not well formed.
    fn parse(bytes: Vec<u8>) -> Option<Block> {
        let mut index = Vec::new();
        let mut off = 0usize;
        while off < bytes.len() {
            let head = bytes.get(off..off + HEADER)?;
            let id = u32::from_le_bytes(head[..4].try_into().ok()?);
            let len = u32::from_le_bytes(head[4..].try_into().ok()?) as usize;
            index.push((id, off as u32));
            off += HEADER + len;
        }
        (off == bytes.len()).then_some(Block { bytes, index })
    }

    fn first_id(&self) -> Option<u32> {
        self.index.first().map(|&(id, _)| id)
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let i = self.index.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        let off = self.index[i].1 as usize;
        let len = u32::from_le_bytes(self.bytes.get(off + 4..off + HEADER)?.try_into().ok()?);
        let start = off + HEADER;
        self.bytes.get(start..start + len as usize)
    }
}

enum Stored {
    OnDisk { offset: u64, len: usize },
    InMemory(Block),
}

/// Where full blocks go.
enum Spill {
    /// No block filled yet: small contexts never create a file.
    NotYet,
    File {
        file: File,
        end: u64,
    },
    /// Creating or writing the file failed once; keep everything in memory from then on.
    Unavailable,
}

/// Relative paths (or other records) of the requestable files by STAT id. Ids must be pushed
/// in increasing order.
pub(crate) struct FileTable {
    /// Full blocks in id order, with the first id of each.
    sealed: Vec<(u32, Stored)>,
    filling: Block,
    /// A sealed on-disk block read back: (position in `sealed`, block).
    cached: Option<(usize, Block)>,
    spill: Spill,
    block_bytes: usize,
}

impl Default for FileTable {
    fn default() -> Self {
        FileTable::with_block_bytes(BLOCK_BYTES)
    }
}

impl FileTable {
    fn with_block_bytes(block_bytes: usize) -> FileTable {
        FileTable {
            sealed: Vec::new(),
            filling: Block::default(),
            cached: None,
            spill: Spill::NotYet,
            block_bytes,
        }
    }

    pub(crate) fn push(&mut self, id: u32, rel: &str) {
        self.push_record(id, rel.as_bytes());
    }

    /// Stores any record (at most 4 GiB) for `id`.
    pub(crate) fn push_record(&mut self, id: u32, record: &[u8]) {
        debug_assert!(self.filling.index.last().is_none_or(|&(last, _)| last < id));
        self.filling.push(id, record);
        if self.filling.bytes.len() >= self.block_bytes {
            self.seal();
        }
    }

    fn seal(&mut self) {
        let block = std::mem::take(&mut self.filling);
        let Some(first) = block.first_id() else {
            return;
        };
        if matches!(self.spill, Spill::NotYet) {
            self.spill = match tempfile::tempfile() {
                Ok(file) => Spill::File { file, end: 0 },
                Err(_) => Spill::Unavailable,
            };
        }
        let stored = match &mut self.spill {
            Spill::File { file, end } => match file.write_all_at(&block.bytes, *end) {
                Ok(()) => {
                    let s = Stored::OnDisk {
                        offset: *end,
                        len: block.bytes.len(),
                    };
                    *end += block.bytes.len() as u64;
                    s
                }
                Err(_) => {
                    self.spill = Spill::Unavailable;
                    Stored::InMemory(block)
                }
            },
            _ => Stored::InMemory(block),
        };
        self.sealed.push((first, stored));
    }

    /// The path of file `id`, `Ok(None)` if no requestable file has that id.
    pub(crate) fn get(&mut self, id: u32) -> io::Result<Option<&str>> {
        match self.get_record(id)? {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(bytes).map(Some).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "file table path is not UTF-8")
            }),
        }
    }

    /// The record stored for `id`, `Ok(None)` if there is none.
    pub(crate) fn get_record(&mut self, id: u32) -> io::Result<Option<&[u8]>> {
        if self.filling.first_id().is_some_and(|first| first <= id) {
            return Ok(self.filling.get(id));
        }
        let Some(pos) = self
            .sealed
            .partition_point(|(first, _)| *first <= id)
            .checked_sub(1)
        else {
            return Ok(None);
        };
        let (offset, len) = match &self.sealed[pos].1 {
            Stored::InMemory(block) => return Ok(block.get(id)),
            Stored::OnDisk { offset, len } => (*offset, *len),
        };
        if self.cached.as_ref().is_none_or(|(p, _)| *p != pos) {
            let Spill::File { file, .. } = &self.spill else {
                return Err(io::Error::other(
                    "file table block is on disk but the file is gone",
                ));
            };
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, offset)?;
            let block = Block::parse(bytes).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "file table block is corrupt")
            })?;
            self.cached = Some((pos, block));
        }
        Ok(self.cached.as_ref().and_then(|(_, b)| b.get(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_paths_by_id_in_one_block() {
        let mut t = FileTable::default();
        t.push(1, "a/x");
        t.push(4, "b");
        t.push(9, "ünï/c d");
        assert_eq!(t.get(1).unwrap(), Some("a/x"));
        assert_eq!(t.get(4).unwrap(), Some("b"));
        assert_eq!(t.get(9).unwrap(), Some("ünï/c d"));
        assert_eq!(t.get(0).unwrap(), None);
        assert_eq!(t.get(5).unwrap(), None);
        assert_eq!(t.get(10).unwrap(), None);
        assert!(t.sealed.is_empty(), "a small table never touches disk");
    }

    #[test]
    fn spilled_blocks_answer_in_any_order_and_only_one_stays_resident() {
        let mut t = FileTable::with_block_bytes(256);
        let path = |id: u32| format!("d{:03}/f{id:06}.dat", id / 100);
        // Every third id is a directory (not requestable), as in a real walk.
        let ids: Vec<u32> = (0..3000).filter(|i| i % 3 != 0).collect();
        for &id in &ids {
            t.push(id, &path(id));
        }
        assert!(t.sealed.len() > 50, "{} blocks", t.sealed.len());
        assert!(matches!(t.spill, Spill::File { .. }));
        assert!(t
            .sealed
            .iter()
            .all(|(_, s)| matches!(s, Stored::OnDisk { .. })));
        // In order (what the daemon does), then backwards, then the gaps.
        for &id in ids.iter().chain(ids.iter().rev()) {
            assert_eq!(t.get(id).unwrap(), Some(path(id).as_str()), "id {id}");
        }
        for id in (0..3000).step_by(3) {
            assert_eq!(t.get(id).unwrap(), None, "id {id}");
        }
        assert_eq!(t.get(3000).unwrap(), None);
    }

    #[test]
    fn without_a_temporary_file_blocks_stay_in_memory() {
        let mut t = FileTable::with_block_bytes(64);
        t.spill = Spill::Unavailable;
        for id in 0..200 {
            t.push(id, &format!("p/{id}"));
        }
        assert!(t.sealed.len() > 10);
        for id in (0..200).rev() {
            assert_eq!(t.get(id).unwrap(), Some(format!("p/{id}").as_str()));
        }
    }
}
