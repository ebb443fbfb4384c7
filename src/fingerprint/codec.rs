//! Tiny binary encoding shared by the manifest, the stat cache and the state files.
//!
//! Little-endian fixed-width integers and LEB128 lengths. The same writer feeds either a byte
//! buffer (files) or a blake3 hasher (keys), so a key is by construction the hash of a
//! canonical encoding and never depends on how something happens to be laid out in memory.

/// Something bytes can be appended to.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for blake3::Hasher {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

pub(crate) fn put_u32(s: &mut impl Sink, v: u32) {
    s.put(&v.to_le_bytes());
}

pub(crate) fn put_i64(s: &mut impl Sink, v: i64) {
    s.put(&v.to_le_bytes());
}

/// LEB128: lengths are almost always < 128, so one byte each.
pub(crate) fn put_len(s: &mut impl Sink, mut v: u64) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    s.put(&buf[..n]);
}

pub(crate) fn put_bytes(s: &mut impl Sink, b: &[u8]) {
    put_len(s, b.len() as u64);
    s.put(b);
}

pub(crate) fn put_str(s: &mut impl Sink, v: &str) {
    put_bytes(s, v.as_bytes());
}

/// The input ended early or held something impossible; callers turn it into "corrupt file".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Cursor over an encoded buffer. Every read is bounds-checked: state files are untrusted.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(DecodeError("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn len(&mut self) -> Result<usize, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // A length can never exceed what is left; rejecting it here keeps a corrupt
                // count from turning into a huge allocation.
                return usize::try_from(v)
                    .ok()
                    .filter(|n| *n <= self.buf.len() - self.pos)
                    .ok_or(DecodeError("length out of range"));
            }
        }
        Err(DecodeError("length out of range"))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("invalid UTF-8"))
    }
}

/// First 16 bytes of a blake3 hash: 128 bits is ample to detect changes, and halves the size
/// of per-file data kept in memory and on disk.
pub(crate) type Hash16 = [u8; 16];

pub(crate) fn prefix16(h: &blake3::Hash) -> Hash16 {
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_including_multi_byte() {
        let mut buf = Vec::new();
        for v in [0u64, 1, 127, 128, 300, 1 << 20] {
            put_len(&mut buf, v);
        }
        // Pad so the range check (length <= buffer size) accepts the big values.
        buf.resize(buf.len() + (1 << 20), 0);
        let mut r = Reader::new(&buf);
        for v in [0usize, 1, 127, 128, 300, 1 << 20] {
            assert_eq!(r.len().unwrap(), v);
        }
    }

    #[test]
    fn truncated_and_absurd_inputs_are_errors_not_panics() {
        let mut buf = Vec::new();
        put_str(&mut buf, "hello");
        assert_eq!(
            Reader::new(&buf[..3]).str(),
            Err(DecodeError("length out of range"))
        );
        assert_eq!(Reader::new(&buf[..3]).u32(), Err(DecodeError("truncated")));
        let mut huge = Vec::new();
        put_len(&mut huge, u64::MAX);
        assert!(Reader::new(&huge).len().is_err());
        assert!(Reader::new(&[0xff; 12]).len().is_err());
        assert!(Reader::new(&[]).u32().is_err());
    }
}
