//! Computing a target's fingerprint: walk its contexts exactly as file sync would (same walker,
//! same `.dockerignore` precedence), hash each entry's daemon-visible data, and combine it with
//! the non-file inputs into a [`Manifest`] whose hash is the key.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::Scope;

use super::cache::{FileStat, Stamp, StatCache};
use super::codec::{prefix16, put_i64, Hash16};
use super::manifest::{FileRec, Manifest, Section, SectionBuilder, FORMAT_VERSION};
use super::state::state_dir_exclude;
use super::FingerprintError;
use crate::fs::stat::XattrReader;
use crate::fs::{
    is_regular, parse_dockerignore, Entry, WalkOptions, Walker, MODE_DEVICE, MODE_SYMLINK,
};

/// Everything a target's build depends on, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FingerprintInput {
    /// Only used in error messages; two targets with identical inputs share a key.
    pub target: String,
    /// Only used to word paths in explanations relative to the project; not part of the key.
    pub project_dir: PathBuf,
    pub context_dir: PathBuf,
    pub dockerfile: PathBuf,
    /// Paths the Dockerfile can read from the main context (its COPY/ADD sources), as
    /// include patterns; `None` = the whole context, `Some(empty)` = nothing.
    pub include_patterns: Option<Vec<String>>,
    /// Named local contexts (`name`, directory); each applies its own `.dockerignore`.
    pub named_contexts: Vec<(String, PathBuf)>,
    pub args: BTreeMap<String, String>,
    pub target_stage: Option<String>,
    pub platforms: Vec<String>,
    /// Images this target builds on: (reference or target name, digest or fingerprint key).
    pub bases: Vec<(String, String)>,
    /// Anything else that changes the result (labels, no_cache, secrets ids, …).
    pub extra: BTreeMap<String, String>,
}

/// A target's key and the inputs it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hex blake3; equal keys mean the daemon would receive identical inputs.
    pub key: String,
    pub manifest: Manifest,
}

impl Fingerprint {
    /// Adds base images known only after the files were walked (a base target's own key, a
    /// registry digest) and recomputes the key: equal to computing with them in
    /// [`FingerprintInput::bases`] from the start, so walks need not wait for their bases.
    pub fn with_bases(mut self, more: impl IntoIterator<Item = (String, String)>) -> Fingerprint {
        self.manifest.bases.extend(more);
        self.manifest.bases.sort();
        self.key = self.manifest.key();
        self
    }
}

/// Computes the fingerprint of `input`, reading only files whose stat changed since `cache`
/// last saw them. Safe to call for several targets at once with the same cache.
pub fn compute(
    input: &FingerprintInput,
    cache: &StatCache,
) -> Result<Fingerprint, FingerprintError> {
    let dockerfile =
        std::fs::read(&input.dockerfile).map_err(|source| FingerprintError::Dockerfile {
            target: input.target.clone(),
            path: input.dockerfile.clone(),
            source,
        })?;

    let mut sections = Vec::with_capacity(1 + input.named_contexts.len());
    let excludes = context_excludes(input)?;
    sections.push(section(
        input,
        String::new(),
        &input.context_dir,
        excludes,
        input.include_patterns.as_deref(),
        cache,
    )?);
    let mut named: Vec<&(String, PathBuf)> = input.named_contexts.iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, dir) in named {
        // BuildKit applies a named local context's own root .dockerignore, nothing else.
        let excludes = read_ignore_file(input, &dir.join(".dockerignore"))?.unwrap_or_default();
        sections.push(section(input, name.clone(), dir, excludes, None, cache)?);
    }

    let mut bases = input.bases.clone();
    bases.sort();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        dockerfile: prefix16(&blake3::hash(&dockerfile)),
        target_stage: input.target_stage.clone().unwrap_or_default(),
        platforms: input.platforms.clone(),
        args: input.args.clone(),
        bases,
        extra: input.extra.clone(),
        sections,
    };
    Ok(Fingerprint {
        key: manifest.key(),
        manifest,
    })
}

/// [`compute`] for several targets at once, on up to one thread per CPU; results in the order
/// of `inputs`. A no-op run is all `lstat`s, so spreading targets over cores is what brings it
/// near the cost of one walk.
pub fn compute_many(
    inputs: &[FingerprintInput],
    cache: &StatCache,
) -> Vec<Result<Fingerprint, FingerprintError>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(inputs.len());
    if workers <= 1 {
        return inputs.iter().map(|i| compute(i, cache)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<Fingerprint, FingerprintError>>>> =
        inputs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(input) = inputs.get(i) else { break };
                let r = compute(input, cache);
                *slots[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unwrap_or(Err(FingerprintError::Internal(
                    "a fingerprint thread stopped early",
                )))
        })
        .collect()
}

/// BuildKit's precedence: `<Dockerfile name>.dockerignore` beside the Dockerfile wins over the
/// context's `.dockerignore`.
fn context_excludes(input: &FingerprintInput) -> Result<Vec<String>, FingerprintError> {
    if let Some(name) = input.dockerfile.file_name() {
        let mut specific = name.to_os_string();
        specific.push(".dockerignore");
        if let Some(p) = read_ignore_file(input, &input.dockerfile.with_file_name(specific))? {
            return Ok(p);
        }
    }
    Ok(read_ignore_file(input, &input.context_dir.join(".dockerignore"))?.unwrap_or_default())
}

fn read_ignore_file(
    input: &FingerprintInput,
    path: &Path,
) -> Result<Option<Vec<String>>, FingerprintError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(parse_dockerignore(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FingerprintError::Dockerignore {
            target: input.target.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn label_for(project_dir: &Path, dir: &Path) -> String {
    let shown = match dir.strip_prefix(project_dir) {
        Ok(rel) if !project_dir.as_os_str().is_empty() => rel,
        _ => dir,
    };
    shown.to_string_lossy().into_owned()
}

/// Walks one context and returns its sorted file records.
fn section(
    input: &FingerprintInput,
    name: String,
    dir: &Path,
    excludes: Vec<String>,
    includes: Option<&[String]>,
    cache: &StatCache,
) -> Result<Section, FingerprintError> {
    let label = label_for(&input.project_dir, dir);
    let mut excludes = excludes;
    // Last, so no `!` exception in a .dockerignore can re-include it.
    excludes.extend(state_dir_exclude(dir, &input.project_dir));
    if includes.is_some_and(|i| i.is_empty()) {
        // The Dockerfile reads nothing from this context; the walker would treat an empty
        // include list as "everything".
        return Ok(Section::new(name, label, Vec::new()));
    }
    let opts = WalkOptions {
        include_patterns: includes.map(<[String]>::to_vec).unwrap_or_default(),
        exclude_patterns: excludes,
        follow_paths: Vec::new(),
    };
    let walk_err = |source| FingerprintError::Walk {
        target: input.target.clone(),
        source,
    };
    // xattrs are folded into the data hash on a cache miss instead (changing one changes the
    // ctime, so a hit proves they are unchanged): this saves a syscall per file on a no-op run.
    let walker = Walker::new(dir, &opts)
        .map_err(walk_err)?
        .with_xattrs(false);

    let mut items = SectionBuilder::default();
    let mut cursor = cache.cursor();
    std::thread::scope(|scope| -> Result<(), FingerprintError> {
        let mut pool: Option<Pool> = None;
        let mut first_err: Option<FingerprintError> = None;
        let apply =
            |items: &mut SectionBuilder, first_err: &mut Option<_>, done: Done| match done.result {
                Ok(data) => items.set_data(done.idx, data),
                Err((path, source)) => {
                    first_err.get_or_insert(FingerprintError::Read {
                        target: input.target.clone(),
                        path,
                        source,
                    });
                }
            };
        for entry in walker {
            let e = entry.map_err(walk_err)?;
            if !is_regular(e.mode) {
                items.push(&e.rel_path, other_record(&e));
                continue;
            }
            let stat = FileStat::from_entry(&e);
            if let Some(data) = cache.lookup(&mut cursor, &e.abs_path, &stat) {
                items.push(&e.rel_path, FileRec { mode: e.mode, data });
                continue;
            }
            let rec = FileRec {
                mode: e.mode,
                data: [0; 16],
            };
            let job = Job {
                idx: items.push(&e.rel_path, rec),
                path: e.abs_path,
                stat,
                stamp: cursor.stamp(),
            };
            let pool = pool.get_or_insert_with(|| Pool::start(scope, cache));
            pool.submit(job)?;
            // Collect finished results as we go, so they never pile up (a cold 200k-file walk
            // would otherwise hold every result until the end).
            for done in pool.ready() {
                apply(&mut items, &mut first_err, done);
            }
        }
        if let Some(pool) = pool {
            for done in pool.finish() {
                apply(&mut items, &mut first_err, done);
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    Ok(items.finish(name, label))
}

/// Directories contribute only their mode, symlinks their target text, devices their
/// numbers. Never mtimes, owners or paths on disk: COPY results do not depend on them.
fn other_record(e: &Entry) -> FileRec {
    let data = if e.mode & MODE_SYMLINK != 0 {
        prefix16(&blake3::hash(e.linkname.as_bytes()))
    } else if e.mode & MODE_DEVICE != 0 {
        let mut h = blake3::Hasher::new();
        put_i64(&mut h, e.devmajor);
        put_i64(&mut h, e.devminor);
        prefix16(&h.finalize())
    } else {
        [0; 16]
    };
    FileRec { mode: e.mode, data }
}

struct Job {
    idx: usize,
    path: PathBuf,
    stat: FileStat,
    stamp: Stamp,
}

struct Done {
    idx: usize,
    /// The path only comes back with an error: it is all an error message needs.
    result: Result<Hash16, (PathBuf, io::Error)>,
}

/// A few hashing threads fed through a bounded queue, so memory stays flat however many
/// files miss the cache; started only when the first file misses.
struct Pool {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
}

const QUEUE_DEPTH: usize = 256;
const MAX_WORKERS: usize = 4;

impl Pool {
    fn start<'scope>(scope: &'scope Scope<'scope, '_>, cache: &'scope StatCache) -> Pool {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let (done_tx, done) = mpsc::channel::<Done>();
        let job_rx = std::sync::Arc::new(Mutex::new(job_rx));
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, MAX_WORKERS);
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut xattrs = XattrReader::default();
                loop {
                    let next = job_rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok(job) = next else { break };
                    let result = cache
                        .hash_file(&job.path, &job.stat, job.stamp, &mut xattrs)
                        .map_err(|e| (job.path, e));
                    let done = Done {
                        idx: job.idx,
                        result,
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        Pool { jobs, done }
    }

    fn submit(&self, job: Job) -> Result<(), FingerprintError> {
        // Workers only stop early if one panicked; the scope re-raises that panic on exit.
        self.jobs
            .send(job)
            .map_err(|_| FingerprintError::Internal("file hashing threads stopped"))
    }

    /// Results already finished, without waiting.
    fn ready(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter()
    }

    /// Closes the queue and yields every remaining result.
    fn finish(self) -> impl Iterator<Item = Done> {
        drop(self.jobs);
        self.done.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::explain;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    /// A small service context with a named context beside it.
    fn project() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::create_dir_all(p.join("svc/app/pkg")).unwrap();
        fs::create_dir_all(p.join("svc/node_modules/x")).unwrap();
        fs::create_dir_all(p.join("shared/lua")).unwrap();
        fs::write(p.join("svc/Dockerfile"), "FROM base\nCOPY app /app\n").unwrap();
        fs::write(p.join("svc/.dockerignore"), "**/node_modules\n*.log\n").unwrap();
        fs::write(p.join("svc/app/main.py"), "print(1)\n").unwrap();
        fs::write(p.join("svc/app/pkg/util.py"), "x = 1\n").unwrap();
        fs::write(p.join("svc/README.md"), "readme\n").unwrap();
        fs::write(p.join("svc/debug.log"), "noise\n").unwrap();
        fs::write(p.join("svc/node_modules/x/i.js"), "junk\n").unwrap();
        symlink("app/main.py", p.join("svc/entry")).unwrap();
        fs::write(p.join("shared/lua/init.lua"), "return {}\n").unwrap();
        t
    }

    fn input(root: &Path) -> FingerprintInput {
        FingerprintInput {
            target: "svc".into(),
            project_dir: root.to_path_buf(),
            context_dir: root.join("svc"),
            dockerfile: root.join("svc/Dockerfile"),
            named_contexts: vec![("lua".into(), root.join("shared/lua"))],
            args: BTreeMap::from([("TAG".to_string(), "dev".to_string())]),
            bases: vec![("pybase".into(), "sha256:aaa".into())],
            ..Default::default()
        }
    }

    fn key(input: &FingerprintInput) -> Fingerprint {
        compute(input, &StatCache::new()).unwrap()
    }

    fn set_old_mtime(p: &Path, secs_ago: u64) {
        let f = fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn bases_added_later_give_the_same_key_as_bases_given_up_front() {
        let t = project();
        let full = input(t.path());
        let mut partial = full.clone();
        let late = partial.bases.split_off(0);
        let later = compute(&partial, &StatCache::new())
            .unwrap()
            .with_bases(late);
        assert_eq!(later, key(&full));
        assert_ne!(key(&partial).key, later.key);
    }

    #[test]
    fn many_at_once_equals_one_by_one_in_input_order() {
        let t = project();
        let a = input(t.path());
        let mut b = a.clone();
        b.target = "other".into();
        b.context_dir = t.path().join("shared");
        b.named_contexts.clear();
        let mut broken = a.clone();
        broken.dockerfile = t.path().join("missing/Dockerfile");
        let inputs = vec![a.clone(), b.clone(), broken, a.clone()];
        let got = compute_many(&inputs, &StatCache::new());
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].as_ref().unwrap(), &key(&a));
        assert_eq!(got[1].as_ref().unwrap(), &key(&b));
        assert!(matches!(got[2], Err(FingerprintError::Dockerfile { .. })));
        assert_eq!(got[3].as_ref().unwrap(), &key(&a));
    }

    #[test]
    fn stable_across_touch_and_across_moving_the_tree() {
        let t = project();
        let before = key(&input(t.path()));
        set_old_mtime(&t.path().join("svc/app/main.py"), 3600);
        set_old_mtime(&t.path().join("shared/lua/init.lua"), 7200);
        assert_eq!(key(&input(t.path())).key, before.key);

        let elsewhere = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(t.path().join("svc"))
            .arg(t.path().join("shared"))
            .arg(elsewhere.path())
            .status()
            .unwrap();
        assert!(status.success());
        let moved = key(&input(elsewhere.path()));
        assert_eq!(moved.key, before.key);
    }

    #[test]
    fn content_mode_symlink_and_file_set_changes_change_the_key_with_reasons() {
        let t = project();
        let p = t.path();
        let mut prev = key(&input(p));
        let mut step = |what: &dyn Fn(), reason: &str| {
            what();
            let next = key(&input(p));
            assert_ne!(next.key, prev.key, "{reason}");
            assert_eq!(
                explain(&prev.manifest, &next.manifest),
                vec![reason.to_string()]
            );
            prev = next;
        };
        step(
            &|| fs::write(p.join("svc/app/main.py"), "print(2)\n").unwrap(),
            "svc/app/main.py changed",
        );
        step(
            &|| {
                fs::set_permissions(p.join("svc/app/main.py"), fs::Permissions::from_mode(0o755))
                    .unwrap()
            },
            "svc/app/main.py mode changed (0644 → 0755)",
        );
        step(
            &|| {
                fs::remove_file(p.join("svc/entry")).unwrap();
                symlink("app/pkg/util.py", p.join("svc/entry")).unwrap();
            },
            "svc/entry changed",
        );
        step(
            &|| {
                for i in 0..3 {
                    fs::write(p.join(format!("svc/app/new{i}.py")), "n").unwrap();
                }
            },
            "3 files added (e.g. svc/app/new0.py)",
        );
        step(
            &|| fs::remove_file(p.join("svc/README.md")).unwrap(),
            "svc/README.md removed",
        );
        step(
            &|| fs::write(p.join("shared/lua/init.lua"), "return {1}\n").unwrap(),
            "shared/lua/init.lua changed",
        );
        step(
            &|| fs::create_dir(p.join("svc/app/empty")).unwrap(),
            "svc/app/empty added",
        );
    }

    #[test]
    fn dockerignored_files_do_not_matter() {
        let t = project();
        let p = t.path();
        let before = key(&input(p));
        fs::write(p.join("svc/debug.log"), "other noise\n").unwrap();
        fs::write(p.join("svc/node_modules/x/i.js"), "more junk\n").unwrap();
        fs::write(p.join("svc/fresh.log"), "new\n").unwrap();
        assert_eq!(key(&input(p)).key, before.key);
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins_over_the_context_one() {
        let t = project();
        let p = t.path();
        let before = key(&input(p));
        // Dockerfile.dockerignore replaces .dockerignore entirely: debug.log now counts,
        // README.md does not.
        fs::write(
            p.join("svc/Dockerfile.dockerignore"),
            "README.md\n**/node_modules\n",
        )
        .unwrap();
        let with_specific = key(&input(p));
        assert_eq!(
            explain(&before.manifest, &with_specific.manifest),
            vec![
                "2 files added (e.g. svc/Dockerfile.dockerignore)",
                "svc/README.md removed"
            ]
        );
        fs::write(p.join("svc/README.md"), "edited\n").unwrap();
        assert_eq!(key(&input(p)).key, with_specific.key);
    }

    #[test]
    fn named_context_applies_its_own_dockerignore() {
        let t = project();
        let p = t.path();
        fs::create_dir_all(p.join("shared/lua/.cache")).unwrap();
        fs::write(p.join("shared/lua/.dockerignore"), ".cache\n").unwrap();
        let before = key(&input(p));
        fs::write(p.join("shared/lua/.cache/blob"), "junk").unwrap();
        assert_eq!(key(&input(p)).key, before.key);
    }

    #[test]
    fn include_patterns_restrict_what_counts() {
        let t = project();
        let p = t.path();
        let mut inp = input(p);
        inp.include_patterns = Some(vec!["app".into()]);
        let before = key(&inp);
        fs::write(p.join("svc/README.md"), "not copied by the Dockerfile\n").unwrap();
        assert_eq!(key(&inp).key, before.key);
        fs::write(p.join("svc/app/pkg/util.py"), "x = 2\n").unwrap();
        let after = key(&inp);
        assert_eq!(
            explain(&before.manifest, &after.manifest),
            vec!["svc/app/pkg/util.py changed"]
        );

        inp.include_patterns = Some(vec![]);
        let nothing = key(&inp);
        assert_eq!(nothing.manifest.sections[0].len(), 0);
        fs::write(p.join("svc/app/main.py"), "anything\n").unwrap();
        assert_eq!(key(&inp).key, nothing.key);
    }

    #[test]
    fn non_file_inputs_change_the_key_with_the_right_reason() {
        let t = project();
        let p = t.path();
        let base = key(&input(p));
        let check = |edit: &dyn Fn(&mut FingerprintInput), reason: &str| {
            let mut inp = input(p);
            edit(&mut inp);
            let fp = key(&inp);
            assert_ne!(fp.key, base.key, "{reason}");
            assert_eq!(
                explain(&base.manifest, &fp.manifest),
                vec![reason.to_string()]
            );
        };
        check(
            &|i| {
                i.args.insert("TAG".into(), "v2".into());
            },
            "arg TAG changed",
        );
        check(
            &|i| i.bases[0].1 = "sha256:bbb".into(),
            "base pybase changed",
        );
        check(
            &|i| i.target_stage = Some("final".into()),
            "target stage changed (none → final)",
        );
        check(
            &|i| i.platforms = vec!["linux/arm64".into()],
            "platforms changed (none → linux/arm64)",
        );
        check(
            &|i| {
                i.extra.insert("no_cache".into(), "true".into());
            },
            "no_cache added",
        );
        check(&|i| i.named_contexts.clear(), "context lua removed");
        fs::write(p.join("svc/Dockerfile"), "FROM base\nCOPY . /app\n").unwrap();
        let fp = key(&input(p));
        let reasons = explain(&base.manifest, &fp.manifest);
        // The Dockerfile is also a file of the context.
        assert_eq!(
            reasons,
            vec!["Dockerfile changed", "svc/Dockerfile changed"]
        );
    }

    #[test]
    fn order_of_bases_and_named_contexts_does_not_matter() {
        let t = project();
        let p = t.path();
        fs::create_dir_all(p.join("other")).unwrap();
        let mut a = input(p);
        a.bases.push(("zbase".into(), "k".into()));
        a.named_contexts.push(("other".into(), p.join("other")));
        let mut b = a.clone();
        b.bases.reverse();
        b.named_contexts.reverse();
        assert_eq!(key(&a).key, key(&b).key);
    }

    #[test]
    fn stat_cache_hit_reads_nothing_and_gives_the_same_key() {
        let t = project();
        let p = t.path();
        // Settle the files so they are not racily recent.
        for f in [
            "svc/app/main.py",
            "svc/app/pkg/util.py",
            "svc/README.md",
            "svc/Dockerfile",
            "svc/.dockerignore",
            "shared/lua/init.lua",
        ] {
            set_old_mtime(&p.join(f), 3600);
        }
        let mut cache = StatCache::new();
        cache.set_racy_window(Duration::ZERO);
        let first = compute(&input(p), &cache).unwrap();
        let hashed = cache.hashes_performed();
        assert_eq!(hashed, 6, "every regular file read once");
        let second = compute(&input(p), &cache).unwrap();
        assert_eq!(second.key, first.key);
        assert_eq!(cache.hashes_performed(), hashed, "nothing re-read");

        // Same content, new stat: re-read, same key.
        set_old_mtime(&p.join("svc/app/main.py"), 60);
        let third = compute(&input(p), &cache).unwrap();
        assert_eq!(cache.hashes_performed(), hashed + 1);
        assert_eq!(third.key, first.key);
    }

    #[test]
    fn recently_written_files_are_re_read_next_time() {
        let t = project();
        let mut cache = StatCache::new();
        // The files were written just now; a wide window keeps this independent of how slow
        // the machine is.
        cache.set_racy_window(Duration::from_secs(3600));
        compute(&input(t.path()), &cache).unwrap();
        let first = cache.hashes_performed();
        compute(&input(t.path()), &cache).unwrap();
        assert_eq!(cache.hashes_performed(), 2 * first);
    }

    #[test]
    fn many_files_hash_concurrently_to_the_same_key() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::create_dir_all(p.join("ctx")).unwrap();
        fs::write(p.join("ctx/Dockerfile"), "FROM scratch\n").unwrap();
        for i in 0..600 {
            let d = p.join(format!("ctx/d{}", i % 7));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("f{i}")), vec![i as u8; i * 13]).unwrap();
        }
        let inp = FingerprintInput {
            target: "t".into(),
            project_dir: p.to_path_buf(),
            context_dir: p.join("ctx"),
            dockerfile: p.join("ctx/Dockerfile"),
            ..Default::default()
        };
        let a = key(&inp);
        let b = key(&inp);
        assert_eq!(a.key, b.key);
        assert_eq!(a.manifest.file_count(), 601 + 7);
    }

    #[test]
    fn errors_name_the_target_and_the_file() {
        let t = project();
        let mut inp = input(t.path());
        inp.dockerfile = t.path().join("svc/Nope.Dockerfile");
        let err = compute(&inp, &StatCache::new()).unwrap_err().to_string();
        assert!(
            err.contains("svc") && err.contains("Nope.Dockerfile"),
            "{err}"
        );

        let mut inp = input(t.path());
        inp.context_dir = t.path().join("missing");
        let err = compute(&inp, &StatCache::new()).unwrap_err().to_string();
        assert!(
            err.contains("target svc") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn the_state_directory_inside_a_context_never_counts() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::write(p.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        // Even a .dockerignore that tries to re-include it.
        fs::write(p.join(".dockerignore"), "!.bk-build\n").unwrap();
        let inp = FingerprintInput {
            target: "root".into(),
            project_dir: p.to_path_buf(),
            context_dir: p.to_path_buf(),
            dockerfile: p.join("Dockerfile"),
            ..Default::default()
        };
        let before = key(&inp);
        let store =
            crate::fingerprint::StateStore::open_with(p, Duration::ZERO, &mut |_| {}).unwrap();
        store
            .record(
                "root",
                &crate::fingerprint::TargetRecord {
                    key: before.key.clone(),
                    image_digest: None,
                    tags: vec![],
                    outputs: vec![],
                    finished_unix: 0,
                },
                &before.manifest,
            )
            .unwrap();
        let after = compute(&inp, store.stat_cache()).unwrap();
        assert_eq!(after.key, before.key);
        assert!(after.manifest.sections[0]
            .iter()
            .all(|(p, _)| !p.starts_with(".bk-build")));
    }
}
