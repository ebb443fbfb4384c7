//! Letting the daemon check the scan: after a build, every file-sync request the daemon made
//! must select only files the fingerprint hashed. A request that reaches further means the
//! static reading of the Dockerfile (or of `.dockerignore`) was wrong for this build; the
//! result is then not reused, and the tests treat it as a bug.

use std::path::Path;

use super::compute::{Fingerprint, SectionSource};
use super::manifest::Section;
use crate::fs::{WalkOptions, Walker};

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
}

/// At most this many uncovered paths are named per request.
const MAX_SHOWN: usize = 3;

impl Fingerprint {
    /// What the daemon read that this fingerprint does not cover, one line per problem;
    /// empty when everything was covered.
    ///
    /// Covered: reading the Dockerfile and its ignore files (hashed on their own), and any
    /// request whose walk selects only paths present in the section of that directory. The
    /// usual case — the same ignore patterns and `followpaths` the scan predicted, or fewer —
    /// is settled without touching the disk; anything else is walked and compared path by
    /// path.
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
                }
                continue;
            };
            if definition_only(&[".dockerignore"]) {
                continue;
            }
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
            if predicted(section, read) {
                continue;
            }
            if let Some(problem) = walk_check(section, source, read) {
                out.push(problem);
            }
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

/// Walks the directory with the daemon's request and looks every entry up in the section.
fn walk_check(section: &Section, source: &SectionSource, read: &DaemonRead) -> Option<String> {
    let mut excludes = read.exclude_patterns.clone();
    // bk-build never sends its own state directory, whatever the daemon asks.
    excludes.extend(source.extra_excludes.iter().cloned());
    let opts = WalkOptions {
        include_patterns: read.include_patterns.clone(),
        exclude_patterns: excludes,
        follow_paths: read.follow_paths.clone(),
    };
    let walker = match Walker::new(&source.dir, &opts) {
        Ok(w) => w.with_xattrs(false),
        Err(e) => return Some(format!("{}: cannot check: {e}", read.local_name)),
    };
    let mut hashed = section.iter().peekable();
    let mut missing = Vec::new();
    let mut count = 0usize;
    for entry in walker {
        let e = match entry {
            Ok(e) => e,
            Err(e) => return Some(format!("{}: cannot check: {e}", read.local_name)),
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
    (count > 0).then(|| {
        let more = count.saturating_sub(missing.len());
        format!(
            "{}: {}{}",
            read.local_name,
            missing.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{compute, ContextRead, FingerprintInput, StatCache};
    use std::fs;

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

    fn read(section: Option<&str>, exclude: &[&str], follow: &[&str]) -> DaemonRead {
        DaemonRead {
            local_name: section.map_or("dockerfile", |_| "context").into(),
            section: section.map(str::to_string),
            include_patterns: vec![],
            exclude_patterns: exclude.iter().map(|s| s.to_string()).collect(),
            follow_paths: follow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_predicted_requests_are_covered_and_anything_wider_is_not() {
        let (_t, input) = setup();
        let fp = compute(&input, &StatCache::new()).unwrap();
        let df = &input.dockerfile;
        let ok = [
            read(
                None,
                &[],
                &["Dockerfile", "Dockerfile.dockerignore", "dockerfile"],
            ),
            read(Some(""), &[], &[".dockerignore"]),
            read(Some(""), &["*.log"], &["app"]),
            // Different, but selects nothing outside what was hashed.
            read(Some(""), &["*.log"], &["app/a.py"]),
        ];
        assert!(
            fp.uncovered(&ok, df).is_empty(),
            "{:?}",
            fp.uncovered(&ok, df)
        );
        // The whole context: other.txt was not hashed.
        let wide = [read(Some(""), &["*.log"], &[])];
        let got = fp.uncovered(&wide, df);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("other.txt"), "{got:?}");
        // Other ignore rules than the ones hashed: checked by walking, and caught.
        fs::write(input.context_dir.join("app/debug.log"), "l").unwrap();
        let got = fp.uncovered(&[read(Some(""), &[], &["app"])], df);
        assert!(got.iter().any(|g| g.contains("app/debug.log")), "{got:?}");
        // More than the Dockerfile from its directory, or a directory never hashed.
        assert!(!fp.uncovered(&[read(None, &[], &["x"])], df).is_empty());
        assert!(!fp.uncovered(&[read(Some("lib"), &[], &[])], df).is_empty());
    }
}
