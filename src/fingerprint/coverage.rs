//! Letting the daemon check the scan: after a build, every file-sync request the daemon made
//! must select only files the fingerprint hashed. A request that reaches further means the
//! static reading of the Dockerfile (or of `.dockerignore`) was wrong for this build; the
//! result is then not reused, and the tests treat it as a bug.

use std::path::Path;

use super::compute::Fingerprint;
use super::manifest::Section;
use crate::fs::{StatDigest, WalkOptions, Walker};

/// One file-sync request of a finished build (BuildKit `FSSync` metadata), attributed to the
/// fingerprint section of the directory it read.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DaemonRead {
    /// The session's name for the directory (`context`, `dockerfile`, a named context).
    pub local_name: String,
    /// The section it belongs to: `Some("")` = the main context, `Some(name)` = a named
    /// context, `None` = the Dockerfile's own directory.
    pub section: Option<String>,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
    /// What file sync saw of the entries it sent ([`StatDigest`]); `None` when it did not
    /// finish sending them.
    #[serde(default)]
    pub stat_digest: Option<String>,
}

/// At most this many uncovered paths are named per request.
const MAX_SHOWN: usize = 3;

impl Fingerprint {
    /// What the daemon read that this fingerprint does not vouch for, one line per problem;
    /// empty when everything was covered.
    ///
    /// Covered: reading the Dockerfile and its ignore files (hashed on their own), and any
    /// request whose walk selects only paths present in the section of that directory. The
    /// usual case — the same ignore patterns and `followpaths` the scan predicted — needs no
    /// path-by-path comparison. Every request is also walked again to compare its
    /// [`StatDigest`] with the one file sync computed while sending: a difference means a file
    /// changed while the build ran, so the daemon may have got other bytes than the ones
    /// hashed (or than the ones on disk now).
    pub fn uncovered(&self, reads: &[DaemonRead], dockerfile: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let df_name = dockerfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for read in reads {
            let definition_only = |names: &[&str]| {
                read.include_patterns.is_empty()
                    && read.exclude_patterns.is_empty()
                    && !read.follow_paths.is_empty()
                    && read
                        .follow_paths
                        .iter()
                        .all(|p| names.contains(&p.as_str()))
            };
            let Some(section_name) = &read.section else {
                let ignore = format!("{df_name}.dockerignore");
                if !definition_only(&[&df_name, &ignore, "dockerfile"]) {
                    out.push(format!(
                        "{}: more than the Dockerfile ({:?})",
                        read.local_name, read.follow_paths
                    ));
                } else if let Some(dir) = dockerfile.parent() {
                    out.extend(walk_check(dir, &[], None, read));
                }
                continue;
            };
            let found = self
                .manifest
                .sections
                .iter()
                .zip(&self.sources)
                .find(|(s, _)| &s.name == section_name);
            let Some((section, source)) = found else {
                out.push(format!("{}: a directory it did not hash", read.local_name));
                continue;
            };
            let must_be_in = (!definition_only(&[".dockerignore"]) && !predicted(section, read))
                .then_some(section.as_ref());
            out.extend(walk_check(
                &source.dir,
                &source.extra_excludes,
                must_be_in,
                read,
            ));
        }
        out
    }
}

/// The request is the scan's own prediction: same ignore patterns, no include patterns, and
/// the same `followpaths` in the same order — or any, when the whole directory was hashed.
/// (A subset of the predicted paths is not enough: fsutil resolves symlinks along them with
/// shared state, so fewer paths can select a file more paths do not.)
fn predicted(section: &Section, read: &DaemonRead) -> bool {
    if !read.include_patterns.is_empty() || read.exclude_patterns != section.filter.excludes {
        return false;
    }
    match &section.filter.reads {
        None => true,
        Some(paths) => !paths.is_empty() && read.follow_paths == *paths,
    }
}

/// Walks `dir` with the daemon's request: the entries must have the stat digest file sync
/// saw, and, with `must_be_in`, every one must be in that section.
fn walk_check(
    dir: &Path,
    extra_excludes: &[String],
    must_be_in: Option<&Section>,
    read: &DaemonRead,
) -> Vec<String> {
    let mut excludes = read.exclude_patterns.clone();
    // bk-build never sends its own state directory, whatever the daemon asks.
    excludes.extend(extra_excludes.iter().cloned());
    let opts = WalkOptions {
        include_patterns: read.include_patterns.clone(),
        exclude_patterns: excludes,
        follow_paths: read.follow_paths.clone(),
    };
    let walker = match Walker::new(dir, &opts) {
        Ok(w) => w.with_xattrs(false),
        Err(e) => return vec![format!("{}: cannot check: {e}", read.local_name)],
    };
    let mut hashed = must_be_in.map(|s| s.iter().peekable());
    let mut digest = StatDigest::default();
    let mut missing = Vec::new();
    let mut count = 0usize;
    for entry in walker {
        let e = match entry {
            Ok(e) => e,
            Err(e) => return vec![format!("{}: cannot check: {e}", read.local_name)],
        };
        digest.add(&e);
        let Some(hashed) = hashed.as_mut() else {
            continue;
        };
        // Both sequences are in walk order.
        let mut found = false;
        while let Some((p, rec)) = hashed.peek() {
            match super::manifest::walk_cmp(p, &e.rel_path) {
                std::cmp::Ordering::Less => {
                    hashed.next();
                }
                std::cmp::Ordering::Equal => {
                    found = rec.mode == e.mode;
                    hashed.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        if !found {
            count += 1;
            if missing.len() < MAX_SHOWN {
                missing.push(e.rel_path);
            }
        }
    }
    let mut out = Vec::new();
    if count > 0 {
        let more = count.saturating_sub(missing.len());
        out.push(format!(
            "{}: {}{}",
            read.local_name,
            missing.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if read.stat_digest.as_deref() != Some(digest.finish().as_str()) {
        out.push(format!(
            "{}: files changed while it was being built",
            read.local_name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{compute, ContextRead, FingerprintInput, StatCache};
    use std::fs;
    use std::path::Path;

    fn setup() -> (tempfile::TempDir, FingerprintInput) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::create_dir_all(p.join("ctx/app")).unwrap();
        fs::write(p.join("ctx/Dockerfile"), "FROM scratch\nCOPY app /app\n").unwrap();
        fs::write(p.join("ctx/.dockerignore"), "*.log\n").unwrap();
        fs::write(p.join("ctx/app/a.py"), "a").unwrap();
        fs::write(p.join("ctx/other.txt"), "o").unwrap();
        let input = FingerprintInput {
            target: "t".into(),
            project_dir: p.to_path_buf(),
            context_dir: p.join("ctx"),
            dockerfile: p.join("ctx/Dockerfile"),
            context_read: ContextRead::Paths(vec!["app".into()]),
            ..Default::default()
        };
        (t, input)
    }

    /// A request as file sync would report it after sending `root`'s files: with the stat
    /// digest of what it sent.
    fn read(root: &Path, section: Option<&str>, exclude: &[&str], follow: &[&str]) -> DaemonRead {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let opts = WalkOptions {
            include_patterns: vec![],
            exclude_patterns: owned(exclude),
            follow_paths: owned(follow),
        };
        let mut digest = StatDigest::default();
        for e in Walker::new(root, &opts).unwrap() {
            digest.add(&e.unwrap());
        }
        DaemonRead {
            local_name: section.map_or("dockerfile", |_| "context").into(),
            section: section.map(str::to_string),
            include_patterns: vec![],
            exclude_patterns: owned(exclude),
            follow_paths: owned(follow),
            stat_digest: Some(digest.finish()),
        }
    }

    #[test]
    fn the_predicted_requests_are_covered_and_anything_wider_is_not() {
        let (_t, input) = setup();
        let fp = compute(&input, &StatCache::new()).unwrap();
        let (df, ctx) = (&input.dockerfile, &input.context_dir);
        let ok = [
            read(
                ctx,
                None,
                &[],
                &["Dockerfile", "Dockerfile.dockerignore", "dockerfile"],
            ),
            read(ctx, Some(""), &[], &[".dockerignore"]),
            read(ctx, Some(""), &["*.log"], &["app"]),
            // Different, but selects nothing outside what was hashed.
            read(ctx, Some(""), &["*.log"], &["app/a.py"]),
        ];
        assert!(
            fp.uncovered(&ok, df).is_empty(),
            "{:?}",
            fp.uncovered(&ok, df)
        );
        // The whole context: other.txt was not hashed.
        let wide = [read(ctx, Some(""), &["*.log"], &[])];
        let got = fp.uncovered(&wide, df);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("other.txt"), "{got:?}");
        // Other ignore rules than the ones hashed: checked by walking, and caught.
        fs::write(ctx.join("app/debug.log"), "l").unwrap();
        let got = fp.uncovered(&[read(ctx, Some(""), &[], &["app"])], df);
        assert!(got.iter().any(|g| g.contains("app/debug.log")), "{got:?}");
        // More than the Dockerfile from its directory, or a directory never hashed.
        assert!(!fp.uncovered(&[read(ctx, None, &[], &["x"])], df).is_empty());
        assert!(!fp
            .uncovered(&[read(ctx, Some("lib"), &[], &[])], df)
            .is_empty());
    }

    #[test]
    fn a_file_written_after_it_was_sent_is_noticed() {
        let (_t, input) = setup();
        let fp = compute(&input, &StatCache::new()).unwrap();
        let (df, ctx) = (&input.dockerfile, &input.context_dir);
        let sent = read(ctx, Some(""), &["*.log"], &["app"]);
        assert!(fp.uncovered(std::slice::from_ref(&sent), df).is_empty());
        // Same content written again: the ctime moves, so the daemon's copy is in doubt.
        fs::write(ctx.join("app/a.py"), "a").unwrap();
        let got = fp.uncovered(&[sent], df);
        assert!(got.iter().any(|g| g.contains("changed while")), "{got:?}");
        // A sync that never finished is no proof either.
        let mut unfinished = read(ctx, Some(""), &["*.log"], &["app"]);
        unfinished.stat_digest = None;
        assert!(!fp.uncovered(&[unfinished], df).is_empty());
    }
}
