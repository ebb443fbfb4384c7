//! `followpaths`: resolving symlinks along requested paths into extra include patterns
//! (fsutil `FollowLinks`).
//!
//! The Dockerfile frontend asks for e.g. `Dockerfile` with followpaths; if `Dockerfile` is a
//! symlink to `build/Dockerfile.real`, both the link and its target must be sent. Every path
//! component is checked, a symlinked directory is replaced by its target and the rest of the
//! path resolved again; absolute link targets count from the context root; targets never leave
//! the root (`..` is clamped like fsutil does).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::pattern::{go_base, go_clean, go_dir, go_join, go_match};
use super::FsError;

/// fsutil recurses without a limit and relies on the "already resolved" set to stop; we also
/// cap the depth so a pathological tree cannot overflow the stack.
const MAX_DEPTH: usize = 255;

/// Resolves `paths` under `root`. Returns the include patterns fsutil would add, or `None` when
/// one of them is the root itself (then followpaths do not restrict anything).
pub(crate) fn follow_links(root: &Path, paths: &[String]) -> Result<Option<Vec<String>>, FsError> {
    let mut r = Resolver {
        root,
        resolved: BTreeSet::new(),
    };
    for p in paths {
        r.append(p, 0).map_err(|reason| FsError::FollowPath {
            path: p.clone(),
            reason,
        })?;
    }
    // BTreeSet<String> iterates in byte order, like Go's sort.Strings.
    let sorted: Vec<String> = r.resolved.into_iter().collect();
    Ok(dedupe_paths(&sorted))
}

/// fsutil `dedupePaths`: drops entries below the previously kept one; `None` if `.` is present.
/// Applied to lists that are not necessarily sorted, exactly as fsutil does.
pub(crate) fn dedupe_paths(input: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(input.len());
    let mut last_slash = String::from("/");
    for s in input {
        if s == "." {
            return None;
        }
        if s.starts_with(&last_slash) {
            continue;
        }
        out.push(s.clone());
        last_slash.clear();
        last_slash.push_str(s);
        last_slash.push('/');
    }
    Some(out)
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: BTreeSet<String>,
}

impl Resolver<'_> {
    fn append(&mut self, p: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("too many levels of symbolic links".into());
        }
        let mut rest = go_join(".", p);
        let mut current = ".".to_owned();
        loop {
            let (first, tail) = match rest.split_once('/') {
                Some((a, b)) => (a.to_owned(), b.to_owned()),
                None => (rest.clone(), String::new()),
            };
            current = go_join(&current, &first);
            let targets = self.read_symlink(&current, true)?;
            rest = tail;

            if (rest.is_empty() || !targets.is_empty()) && self.resolved.contains(&current) {
                return Ok(());
            }
            if !targets.is_empty() {
                self.resolved.insert(current);
                for t in targets {
                    self.append(&go_join(&t, &rest), depth + 1)?;
                }
                return Ok(());
            }
            if rest.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
        }
    }

    /// Targets of the symlink at `p` (root-relative), as absolute-from-root paths; for a
    /// wildcard last component, the targets of every matching symlink in that directory.
    fn read_symlink(&self, p: &str, allow_wildcard: bool) -> Result<Vec<String>, String> {
        // Never look outside the context; such a path can't match anything we send anyway.
        if p == ".." || p.starts_with("../") {
            return Ok(Vec::new());
        }
        let base = go_base(p);
        if allow_wildcard && contains_wildcards(base) {
            let dir = go_dir(p);
            let listing = match std::fs::read_dir(self.root.join(&dir)) {
                Ok(l) => l,
                Err(e) if not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(format!("readdir {dir}: {e}")),
            };
            let mut names = Vec::new();
            for dent in listing {
                let dent = dent.map_err(|e| format!("readdir {dir}: {e}"))?;
                if let Ok(name) = dent.file_name().into_string() {
                    names.push(name);
                }
            }
            names.sort_unstable();
            let mut out = Vec::new();
            for name in names {
                if go_match(base, &name) == Ok(true) {
                    out.extend(self.read_symlink(&go_join(&dir, &name), false)?);
                }
            }
            return Ok(out);
        }

        let real = self.root.join(p);
        let md = match std::fs::symlink_metadata(&real) {
            Ok(md) => md,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(format!("lstat {p}: {e}")),
        };
        if !md.file_type().is_symlink() {
            return Ok(Vec::new());
        }
        let link = std::fs::read_link(&real).map_err(|e| format!("readlink {p}: {e}"))?;
        let Some(link) = link.to_str() else {
            // A non-UTF-8 target cannot be named in a pattern; nothing to add.
            return Ok(Vec::new());
        };
        let link = go_clean(link);
        if link.starts_with('/') {
            Ok(vec![link])
        } else {
            Ok(vec![go_join("/", &go_join(&go_dir(p), &link))])
        }
    }
}

/// Where `rel` leads inside `root` when every symlink on the way is resolved *within* `root`:
/// absolute link targets count from `root` and `..` stops at it, the way BuildKit reads a file
/// (a Dockerfile, a `.dockerignore`) out of a synced directory (containerd `fs.RootPath`). The
/// result need not exist. Errors other than "not found" along the way are returned; after 255
/// links the lookup gives up with an error, like the kernel's `ELOOP`.
pub fn resolve_in_root(root: &Path, rel: &str) -> io::Result<std::path::PathBuf> {
    // Components still to resolve, last first; `resolved` never leaves the root.
    let mut todo: Vec<String> = go_clean(rel)
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(str::to_owned)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&c);
        let md = match std::fs::symlink_metadata(&candidate) {
            Ok(md) => md,
            Err(e) if not_found(&e) => {
                resolved.push(c);
                continue;
            }
            Err(e) => return Err(e),
        };
        if !md.file_type().is_symlink() {
            resolved.push(c);
            continue;
        }
        links += 1;
        if links > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "too many levels of symbolic links at {}",
                candidate.display()
            )));
        }
        let target = std::fs::read_link(&candidate)?;
        let target = target.to_string_lossy();
        if target.starts_with('/') {
            resolved.clear();
        }
        todo.extend(
            target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .rev()
                .map(str::to_owned),
        );
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    Ok(out)
}

/// fsutil `containsWildcards`: an unescaped `*`, `?` or `[`.
fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn plain_paths_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x").unwrap();
        let got = follow_links(dir.path(), &s(&["Dockerfile", "missing/file"])).unwrap();
        assert_eq!(got, Some(s(&["Dockerfile", "missing/file"])));
    }

    #[test]
    fn symlinks_add_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("build/real")).unwrap();
        std::fs::write(r.join("build/Dockerfile.real"), "FROM x").unwrap();
        symlink("build/Dockerfile.real", r.join("Dockerfile")).unwrap();
        // Absolute targets count from the context root; `..` cannot escape it.
        symlink("/build/real", r.join("abs")).unwrap();
        symlink("../../../build", r.join("up")).unwrap();
        let got = follow_links(r, &s(&["Dockerfile", "abs/f", "up/x"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            s(&[
                "Dockerfile",
                "abs",
                "build/Dockerfile.real",
                "build/real/f",
                "build/x",
                "up"
            ])
        );
    }

    #[test]
    fn symlink_loops_terminate() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        symlink("self/x", r.join("self")).unwrap();
        let got = follow_links(r, &s(&["a", "self"])).unwrap().unwrap();
        assert_eq!(got, s(&["a", "b", "self"]));
    }

    #[test]
    fn wildcards_resolve_matching_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("t")).unwrap();
        std::fs::write(r.join("t/real.txt"), "x").unwrap();
        symlink("t/real.txt", r.join("one.txt")).unwrap();
        std::fs::write(r.join("two.txt"), "x").unwrap();
        let got = follow_links(r, &s(&["*.txt"])).unwrap().unwrap();
        assert_eq!(got, s(&["*.txt", "t/real.txt"]));
    }

    #[test]
    fn resolve_in_root_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("conf/etc")).unwrap();
        std::fs::write(r.join("conf/ignore"), "x").unwrap();
        symlink("conf/ignore", r.join(".dockerignore")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../../conf", r.join("up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, ".dockerignore").unwrap(),
            r.join("conf/ignore")
        );
        // Absolute targets start again at the root, not at the machine's /.
        assert_eq!(
            resolve_in_root(r, "abs/passwd").unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "up/ignore").unwrap(),
            r.join("conf/ignore")
        );
        assert_eq!(resolve_in_root(r, "../x/./y").unwrap(), r.join("x/y"));
        assert!(resolve_in_root(r, "loop").is_err());
    }

    #[test]
    fn root_disables_filtering_and_dedupe_drops_children() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(follow_links(dir.path(), &s(&["."])).unwrap(), None);
        assert_eq!(follow_links(dir.path(), &s(&["/"])).unwrap(), None);
        assert_eq!(
            dedupe_paths(&s(&["a", "a/b", "ab", "c/d"])),
            Some(s(&["a", "ab", "c/d"]))
        );
        // fsutil's first comparison is against "/" — a leading-slash entry is dropped.
        assert_eq!(dedupe_paths(&s(&["/x", "y"])), Some(s(&["y"])));
    }
}
