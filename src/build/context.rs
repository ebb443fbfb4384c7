//! Where a build's context comes from when it is not a directory on this machine: a URL the
//! daemon fetches itself (a Git repository, `https://host/repo.git#ref:subdir`, or an HTTP(S)
//! archive or Dockerfile), or a tar archive on standard input that the daemon pulls through the
//! session's upload service, as `docker buildx build` does (`build/opt.go` `loadInputs`).
//!
//! Owns telling a tar archive on standard input from a Dockerfile, by its first bytes, with
//! buildx's rule (`build/utils.go` `isArchive`). Knows nothing about the session or the request.

use crate::session::upload::Upload;

/// How many leading bytes of standard input decide whether it is an archive (two tar blocks,
/// as buildx peeks).
pub const ARCHIVE_PEEK: usize = 1024;

/// The build context, when it is not the directory [`super::BuildSpec::context`].
#[derive(Debug, Clone, Default)]
pub enum ContextInput {
    /// The directory `context`, synced through the session (the default).
    #[default]
    Dir,
    /// A Git or HTTP(S) URL, given to the frontend as it is; the daemon fetches it.
    Url {
        url: String,
        /// The Dockerfile's path inside the fetched context (`-f`), when no local
        /// Dockerfile is given; default `Dockerfile`.
        filename: Option<String>,
    },
    /// A tar archive (plain, gzip, bzip2 or xz) the daemon pulls from this client.
    Upload {
        upload: Upload,
        /// The Dockerfile's path inside the archive (`-f`), when no local Dockerfile is
        /// given; default `Dockerfile`.
        filename: Option<String>,
    },
}

/// Whether `head` (the first [`ARCHIVE_PEEK`] bytes of a stream, or all of a shorter one)
/// starts an archive the daemon can unpack as a context: the magic number of a compressed
/// stream, or a valid tar header. Anything else on standard input is taken for a Dockerfile.
pub fn is_archive(head: &[u8]) -> bool {
    const MAGIC: [&[u8]; 3] = [
        &[0x42, 0x5A, 0x68],                   // bzip2
        &[0x1F, 0x8B, 0x08],                   // gzip
        &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], // xz
    ];
    if MAGIC.iter().any(|m| head.starts_with(m)) {
        return true;
    }
    // A header whose checksum holds; the entry's data may go past what was read. An
    // all-zero block (an empty archive) has no first entry, and is no context either.
    let mut archive = tar::Archive::new(head);
    let first = archive.entries().ok().and_then(|mut e| e.next());
    matches!(first, Some(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn archives_are_told_from_dockerfiles_by_their_first_bytes() {
        let big = tar_of("Dockerfile", &[b'x'; 5000]);
        assert!(
            is_archive(&big[..ARCHIVE_PEEK]),
            "a tar whose first file is long"
        );
        assert!(is_archive(&tar_of("a", b"hi")));
        assert!(is_archive(&[0x1F, 0x8B, 0x08, 0, 0]), "gzip");
        assert!(is_archive(b"BZh91AY&SY"), "bzip2");
        assert!(!is_archive(b"FROM busybox\nRUN true\n"));
        assert!(!is_archive(&[0u8; ARCHIVE_PEEK]), "an empty archive");
        assert!(!is_archive(b""));
        let mut broken = tar_of("a", b"hi");
        broken[0] ^= 1;
        assert!(!is_archive(&broken), "a header whose checksum fails");
    }
}
