//! OCI content digests (`algorithm:hex`): parsing user and daemon input strictly, and hashing.
//!
//! Owns which algorithms exist and what a valid digest looks like (the OCI image spec's
//! registered algorithms, as go-digest accepts them: `sha256`, `sha384`, `sha512`, lowercase
//! hex of the exact length). A parsed [`Digest`] is safe to use as a file name component:
//! that is what lets the content store map digests to `blobs/<algorithm>/<hex>` without any
//! chance of a path escaping the layout. Pure: no files, no network.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A hash algorithm the OCI image spec registers for descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The name in digests and in `blobs/<name>/` directories.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex part.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Every algorithm, for walking `blobs/`.
    pub const ALL: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512];
}

/// A validated digest, e.g. `sha256:9f86d0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    /// Lowercase hex, exactly [`Algorithm::hex_len`] characters.
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid digest {input:?}: {reason} (expected sha256: followed by 64 lowercase hex digits)"
)]
pub struct DigestError {
    pub input: String,
    pub reason: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let err = |reason: &str| DigestError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (alg, hex) = s.split_once(':').ok_or_else(|| err("no ':'"))?;
        let algorithm = Algorithm::from_name(alg)
            .ok_or_else(|| err(&format!("unsupported algorithm {alg:?}")))?;
        if hex.len() != algorithm.hex_len() {
            return Err(err(&format!(
                "{alg} needs {} hex digits, not {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err("the hex part must be lowercase 0-9a-f"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// An incremental hash in one of the [`Algorithm`]s. Cloning is cheap (a few hundred bytes of
/// state), which is how the digest of the bytes so far is reported mid-stream.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha384(_) => Algorithm::Sha384,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything hashed so far; the hasher itself is left as it was.
    pub fn current(&self) -> Digest {
        self.clone().finish()
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            use fmt::Write;
            let _ = write!(hex, "{b:02x}");
        }
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_the_canonical_form() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn rejects_anything_that_could_be_a_path_or_is_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Digest::parse("sha1:abc").unwrap_err().to_string();
        assert!(e.contains("unsupported algorithm \"sha1\""), "{e}");
    }

    #[test]
    fn hashes_incrementally_in_every_algorithm() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"ab");
        let mid = h.current();
        h.update(b"c");
        assert_eq!(mid, Digest::sha256_of(b"ab"));
        assert_eq!(
            h.finish().to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"abc");
        let d = h.finish();
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert!(d.hex().starts_with("ddaf35a193617aba"));
        assert!(Digest::parse(&d.to_string()).is_ok());
        let mut h = Hasher::new(Algorithm::Sha384);
        h.update(b"abc");
        assert!(h.finish().hex().starts_with("cb00753f45a35e8b"));
    }
}
