//! Go `os.FileMode` bits (what fsutil puts in `Stat.mode`), device numbers, xattrs, and the
//! "racy" rule for trusting a file's stat to tell a later change.
//!
//! The receiver calls Go's `os.Chmod(os.FileMode(mode))`, so Unix `st_mode` bits would be
//! misread (a directory's `S_IFDIR` is not Go's `ModeDir`): everything here converts to Go's
//! layout, the way Go's `os.Lstat` does on Linux.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// `os.ModeDir`.
pub const MODE_DIR: u32 = 1 << 31;
/// `os.ModeAppend` (never produced on Linux).
pub const MODE_APPEND: u32 = 1 << 30;
/// `os.ModeExclusive` (never produced on Linux).
pub const MODE_EXCLUSIVE: u32 = 1 << 29;
/// `os.ModeTemporary` (never produced on Linux).
pub const MODE_TEMPORARY: u32 = 1 << 28;
/// `os.ModeSymlink`.
pub const MODE_SYMLINK: u32 = 1 << 27;
/// `os.ModeDevice` (block devices; char devices also carry [`MODE_CHAR_DEVICE`]).
pub const MODE_DEVICE: u32 = 1 << 26;
/// `os.ModeNamedPipe`.
pub const MODE_NAMED_PIPE: u32 = 1 << 25;
/// `os.ModeSocket`.
pub const MODE_SOCKET: u32 = 1 << 24;
/// `os.ModeSetuid`.
pub const MODE_SETUID: u32 = 1 << 23;
/// `os.ModeSetgid`.
pub const MODE_SETGID: u32 = 1 << 22;
/// `os.ModeCharDevice`.
pub const MODE_CHAR_DEVICE: u32 = 1 << 21;
/// `os.ModeSticky`.
pub const MODE_STICKY: u32 = 1 << 20;
/// `os.ModeIrregular`.
pub const MODE_IRREGULAR: u32 = 1 << 19;
/// `os.ModeType`: any of these bits means "not a regular file".
pub const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | MODE_SOCKET
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | MODE_IRREGULAR;
/// `os.ModePerm`.
pub const MODE_PERM: u32 = 0o777;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Converts a Unix `st_mode` to Go's `os.FileMode` bits (same mapping as Go's `os.Lstat`).
pub fn go_file_mode_from_unix(st_mode: u32) -> u32 {
    let mut mode = st_mode & MODE_PERM;
    match st_mode & S_IFMT {
        S_IFBLK => mode |= MODE_DEVICE,
        S_IFCHR => mode |= MODE_DEVICE | MODE_CHAR_DEVICE,
        S_IFDIR => mode |= MODE_DIR,
        S_IFIFO => mode |= MODE_NAMED_PIPE,
        S_IFLNK => mode |= MODE_SYMLINK,
        S_IFSOCK => mode |= MODE_SOCKET,
        // Regular files carry no type bit; Go also leaves unknown types without one on Linux.
        S_IFREG => {}
        _ => {}
    }
    if st_mode & S_ISUID != 0 {
        mode |= MODE_SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= MODE_SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= MODE_STICKY;
    }
    mode
}

/// Go `os.FileMode` bits of lstat metadata. Sockets keep [`MODE_SOCKET`] here; the walker
/// clears it, as fsutil does (see [`crate::fs::walk`]).
pub fn go_file_mode(md: &Metadata) -> u32 {
    go_file_mode_from_unix(md.mode())
}

/// Go's `Time.UnixNano` of a stat time: wraps (instead of failing) outside years 1678..2262,
/// so a file with a bogus far-future mtime gets the number BuildKit's client would send, and
/// every record of a stat (walk, caches, copy records) agrees with it.
pub fn unix_nanos(secs: i64, nanos: i64) -> i64 {
    secs.wrapping_mul(1_000_000_000).wrapping_add(nanos)
}

/// [`unix_nanos`] of the mtime.
pub fn mtime_ns(md: &Metadata) -> i64 {
    unix_nanos(md.mtime(), md.mtime_nsec())
}

/// [`unix_nanos`] of the ctime.
pub fn ctime_ns(md: &Metadata) -> i64 {
    unix_nanos(md.ctime(), md.ctime_nsec())
}

/// How close to a moment a file's last change must be for a write in the same timestamp tick
/// to be possible without its stat changing ("racy git", git's
/// Documentation/technical/racy-git.txt). Sub-second filesystems tick in milliseconds.
pub const RACY_WINDOW_FINE: Duration = Duration::from_millis(100);
/// Filesystems with whole-second timestamps (FAT has 2 s) need a wider window.
pub const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// The racy window for a file with these timestamps (Unix ns): [`RACY_WINDOW_COARSE`] when
/// both are whole seconds (the filesystem may keep no more), else [`RACY_WINDOW_FINE`].
pub fn racy_window(mtime_ns: i64, ctime_ns: i64) -> Duration {
    let whole_seconds = |ns: i64| ns.rem_euclid(1_000_000_000) == 0;
    if whole_seconds(mtime_ns) && whole_seconds(ctime_ns) {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW_FINE
    }
}

/// True when a file's last change (the later of mtime and ctime, Unix ns) is not older than
/// `since_ns` by more than `window`, or lies after it (clock skew): a write after `since_ns`
/// could then have left its stat as it is.
pub fn changed_within(mtime_ns: i64, ctime_ns: i64, since_ns: i64, window: Duration) -> bool {
    let last_change = mtime_ns.max(ctime_ns);
    last_change.saturating_add(window.as_nanos() as i64) > since_ns
}

/// True for a regular file: the only kind of entry whose content BuildKit may request.
pub fn is_regular(go_mode: u32) -> bool {
    go_mode & MODE_TYPE == 0
}

/// Device major/minor the way fsutil computes them (old 12/20-bit Linux encoding), so the
/// numbers compare equal with what `docker buildx` sends.
pub(crate) fn dev_major_minor(rdev: u64) -> (i64, i64) {
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    (major as i64, minor as i64)
}

/// xattrs whose names start with this are dropped, as fsutil does (macOS metadata).
const APPLE_PREFIX: &str = "com.apple.";

/// Reads extended attributes without following symlinks, reusing its buffers across calls so
/// the common "no xattrs" case costs one syscall and no allocation.
#[derive(Default)]
pub(crate) struct XattrReader {
    #[cfg(target_os = "linux")]
    cpath: Vec<u8>,
    #[cfg(target_os = "linux")]
    names: Vec<u8>,
}

impl XattrReader {
    /// All xattrs of `path` except `com.apple.*`, sorted by name. Errors (unsupported
    /// filesystem, vanished file, non-UTF-8 names) mean "no such xattr": the receiver ignores
    /// xattrs it cannot set anyway, and a missing xattr must never fail a build.
    #[cfg(target_os = "linux")]
    pub(crate) fn read(&mut self, path: &Path) -> Vec<(String, Vec<u8>)> {
        use std::os::unix::ffi::OsStrExt;

        let bytes = path.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return Vec::new();
        }
        let mut cpath = std::mem::take(&mut self.cpath);
        cpath.clear();
        cpath.extend_from_slice(bytes);
        cpath.push(0);
        let out = self.collect(
            // SAFETY: `cpath` is NUL-terminated and outlives the call; the buffer and size
            // come from `collect`, which passes a live buffer of that many writable bytes (or
            // null and 0 to ask for the size).
            |buf, len| unsafe { libc::llistxattr(cpath.as_ptr().cast(), buf, len) },
            // SAFETY: as for the list; `xattr_value` passes a NUL-terminated name and a live
            // buffer of the given size (or null and 0).
            |name| {
                xattr_value(name, |cname, buf, len| unsafe {
                    libc::lgetxattr(cpath.as_ptr().cast(), cname, buf, len)
                })
            },
        );
        self.cpath = cpath;
        out
    }

    /// As [`read`](Self::read), for an open file: no path lookup, and the attributes are
    /// those of exactly the file that was read.
    #[cfg(target_os = "linux")]
    pub(crate) fn read_fd(&mut self, fd: std::os::fd::RawFd) -> Vec<(String, Vec<u8>)> {
        self.collect(
            // SAFETY: as in `read`; `fd` is open for the duration of the call.
            |buf, len| unsafe { libc::flistxattr(fd, buf, len) },
            // SAFETY: as for the list; `xattr_value` passes a NUL-terminated name and a live
            // buffer of the given size (or null and 0).
            |name| {
                xattr_value(name, |cname, buf, len| unsafe {
                    libc::fgetxattr(fd, cname, buf, len)
                })
            },
        )
    }

    /// The shared part of [`read`](Self::read) and [`read_fd`](Self::read_fd): `list` is
    /// `listxattr(2)` on the file, `get` one value.
    #[cfg(target_os = "linux")]
    fn collect(
        &mut self,
        mut list: impl FnMut(*mut libc::c_char, usize) -> isize,
        mut get: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Vec<(String, Vec<u8>)> {
        if self.names.is_empty() {
            self.names.resize(1024, 0);
        }
        let len = loop {
            let n = list(self.names.as_mut_ptr().cast(), self.names.len());
            if n >= 0 {
                break n as usize;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                return Vec::new();
            }
            // A null buffer with size 0 only asks for the needed size.
            let need = list(std::ptr::null_mut(), 0);
            if need < 0 {
                return Vec::new();
            }
            self.names.resize(need as usize + 64, 0);
        };
        if len == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for name in self.names[..len].split(|b| *b == 0) {
            let Ok(name_str) = std::str::from_utf8(name) else {
                continue;
            };
            if name_str.is_empty() || name_str.starts_with(APPLE_PREFIX) {
                continue;
            }
            if let Some(value) = get(name) {
                out.push((name_str.to_owned(), value));
            }
        }
        out.sort();
        out
    }

    /// Portable fallback (non-Linux development machines): the `xattr` crate, also lstat-based.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn read(&mut self, path: &Path) -> Vec<(String, Vec<u8>)> {
        let Ok(names) = xattr::list(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in names {
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if name_str.starts_with(APPLE_PREFIX) {
                continue;
            }
            if let Ok(Some(value)) = xattr::get(path, &name) {
                out.push((name_str.to_owned(), value));
            }
        }
        out.sort();
        out
    }
}

/// One xattr value; `None` when it vanished or cannot be read.
///
/// `get` is `getxattr(2)` for `name` on one file (`lgetxattr` by path, `fgetxattr` by fd): it
/// receives the NUL-terminated name and a buffer with its size in bytes, and is called with a
/// null buffer and size 0 to ask for the value's size. The size is asked first and the read
/// retried when the value grew in between (ERANGE), a few times at most.
#[cfg(target_os = "linux")]
fn xattr_value(
    name: &[u8],
    mut get: impl FnMut(*const libc::c_char, *mut libc::c_void, usize) -> isize,
) -> Option<Vec<u8>> {
    let mut cname = Vec::with_capacity(name.len() + 1);
    cname.extend_from_slice(name);
    cname.push(0);
    let mut value: Vec<u8> = Vec::new();
    for _ in 0..4 {
        let need = get(cname.as_ptr().cast(), std::ptr::null_mut(), 0);
        if need < 0 {
            return None;
        }
        value.resize(need as usize, 0);
        if need == 0 {
            return Some(value);
        }
        let got = get(
            cname.as_ptr().cast(),
            value.as_mut_ptr().cast(),
            value.len(),
        );
        if got >= 0 {
            value.truncate(got as usize);
            return Some(value);
        }
        // ERANGE: the value grew between the two calls; ask again.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_to_go_mode() {
        assert_eq!(go_file_mode_from_unix(S_IFDIR | 0o755), 0x8000_01ED);
        assert_eq!(go_file_mode_from_unix(S_IFREG | 0o644), 0x1A4);
        assert_eq!(go_file_mode_from_unix(S_IFLNK | 0o777), 0x0800_01FF);
        assert_eq!(
            go_file_mode_from_unix(S_IFREG | 0o4755),
            MODE_SETUID | 0o755
        );
        assert_eq!(
            go_file_mode_from_unix(S_IFREG | 0o2755),
            MODE_SETGID | 0o755
        );
        assert_eq!(
            go_file_mode_from_unix(S_IFDIR | 0o1777),
            MODE_DIR | MODE_STICKY | 0o777
        );
        assert_eq!(
            go_file_mode_from_unix(S_IFIFO | 0o600),
            MODE_NAMED_PIPE | 0o600
        );
        assert_eq!(go_file_mode_from_unix(S_IFBLK | 0o660), MODE_DEVICE | 0o660);
        assert_eq!(
            go_file_mode_from_unix(S_IFCHR | 0o666),
            MODE_DEVICE | MODE_CHAR_DEVICE | 0o666
        );
        assert_eq!(
            go_file_mode_from_unix(S_IFSOCK | 0o755),
            MODE_SOCKET | 0o755
        );
    }

    #[test]
    fn regular_means_no_type_bits() {
        assert!(is_regular(0o644));
        assert!(is_regular(MODE_SETUID | 0o755));
        assert!(!is_regular(MODE_DIR | 0o755));
        assert!(!is_regular(MODE_SYMLINK | 0o777));
        assert!(!is_regular(MODE_NAMED_PIPE | 0o644));
        assert!(!is_regular(MODE_DEVICE | MODE_CHAR_DEVICE));
        assert_eq!(MODE_TYPE, 0x8F28_0000);
    }

    #[test]
    fn device_numbers_like_fsutil() {
        // /dev/null is 1:3, /dev/sda1 8:1; a large minor uses the split encoding.
        assert_eq!(dev_major_minor(0x0103), (1, 3));
        assert_eq!(dev_major_minor(0x0801), (8, 1));
        assert_eq!(
            dev_major_minor((0x12345 & 0xff) | ((0x12345 & 0xfff00) << 12) | (4 << 8)),
            (4, 0x12345)
        );
    }

    #[test]
    fn metadata_of_real_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("f", &l).unwrap();
        let md = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(go_file_mode(&md(&d)), 0x8000_01ED);
        assert_eq!(go_file_mode(&md(&f)), 0x1A4);
        assert_eq!(go_file_mode(&md(&l)), 0x0800_01FF);
    }

    #[test]
    fn xattrs_are_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let mut r = XattrReader::default();
        assert!(r.read(&f).is_empty());
        // Not every filesystem (or sandbox) allows user xattrs; only assert when it does.
        if xattr::set(&f, "user.bk", b"v1").is_ok() {
            xattr::set(&f, "user.a", b"").unwrap();
            assert_eq!(
                r.read(&f),
                vec![
                    ("user.a".to_owned(), Vec::new()),
                    ("user.bk".to_owned(), b"v1".to_vec())
                ]
            );
        }
        assert!(r.read(&dir.path().join("missing")).is_empty());
    }

    /// The path and fd forms share the size-probe/read logic; both must see the same values,
    /// including one larger than any buffer guess.
    #[test]
    fn xattrs_by_fd_match_xattrs_by_path() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let big = vec![b'v'; 3000];
        if xattr::set(&f, "user.big", &big).is_err() {
            return;
        }
        xattr::set(&f, "user.empty", b"").unwrap();
        let want = vec![
            ("user.big".to_owned(), big),
            ("user.empty".to_owned(), Vec::new()),
        ];
        let mut r = XattrReader::default();
        assert_eq!(r.read(&f), want);
        let file = std::fs::File::open(&f).unwrap();
        assert_eq!(r.read_fd(file.as_raw_fd()), want);
    }
}
