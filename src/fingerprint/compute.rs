//! Computing fingerprints: for each target, the files BuildKit would read from each local
//! directory — chosen exactly as the daemon's file-sync requests choose them (same walker,
//! same `followpaths` and ignore patterns) — hashed with the stat cache, plus the non-file
//! inputs, combined into a [`Manifest`] whose hash is the key.
//!
//! A directory read by several targets is walked and hashed once per run: requests with the
//! same directory and ignore patterns form a group, the group is walked once with the union of
//! its members' `followpaths`, and each member's own selection is cut from that listing in
//! memory with fsutil's include rules ([`select`]), which gives exactly what a walk with the
//! member's own request would give.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use super::cache::{git_blob_data, ContentHash, FileStat, Stamp, StatCache};
use super::codec::{prefix16, put_i64, Hash16};
use super::git::{self, DirView};
use super::manifest::{FileRec, Filter, Manifest, Section, SectionBuilder, FORMAT_VERSION};
use super::state::state_dir_exclude;
use super::FingerprintError;
use crate::fs::stat::XattrReader;
use crate::fs::{
    follow_paths_includes, is_regular, parse_dockerignore, resolve_in_root, Entry, FsError,
    PatternMatcher, WalkOptions, Walker, MODE_DEVICE, MODE_DIR, MODE_SYMLINK,
};

/// What a build reads from its main context: the `followpaths` the Dockerfile frontend puts
/// on its "load build context" request (BuildKit `dockerfile2llb`: the sources of `COPY`,
/// `ADD` and bind mounts in the stages the target needs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ContextRead {
    /// Every file the ignore rules let through: `COPY .`, a bind mount of the whole context,
    /// or anything the Dockerfile scan was not sure about.
    #[default]
    Whole,
    /// Only these context-relative paths (globs as written) and whatever symlinks along them
    /// lead to inside the context.
    Paths(Vec<String>),
    /// Nothing: no instruction of the build reads the context.
    Nothing,
}

impl ContextRead {
    /// From a Dockerfile scan's `copy_sources` (`None` = not sure).
    pub fn from_sources(sources: Option<&[String]>) -> ContextRead {
        match sources {
            None => ContextRead::Whole,
            Some([]) => ContextRead::Nothing,
            Some(paths) if paths.iter().any(|p| p == "." || p == "/") => ContextRead::Whole,
            Some(paths) => ContextRead::Paths(paths.to_vec()),
        }
    }

    fn reads(&self) -> Option<Vec<String>> {
        match self {
            ContextRead::Whole => None,
            ContextRead::Paths(p) => Some(p.clone()),
            ContextRead::Nothing => Some(Vec::new()),
        }
    }
}

/// Everything a target's build depends on, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FingerprintInput {
    /// Only used in error messages; two targets with identical inputs share a key.
    pub target: String,
    /// Only used to word paths in explanations relative to the project; not part of the key.
    pub project_dir: PathBuf,
    pub context_dir: PathBuf,
    pub dockerfile: PathBuf,
    /// What the build reads from `context_dir`.
    pub context_read: ContextRead,
    /// Named local contexts (`name`, directory); each applies its own `.dockerignore` and is
    /// counted whole.
    pub named_contexts: Vec<(String, PathBuf)>,
    /// Build args the Dockerfile can see (the caller leaves out the ones it cannot).
    pub args: BTreeMap<String, String>,
    pub target_stage: Option<String>,
    pub platforms: Vec<String>,
    /// Images this target builds on: (reference or target name, digest or reference).
    pub bases: Vec<(String, String)>,
    /// Anything else that changes the result (labels, exporter options, …).
    pub extra: BTreeMap<String, String>,
}

/// A target's key and the inputs it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hex blake3; equal keys mean the daemon would receive identical inputs.
    pub key: String,
    pub manifest: Manifest,
    /// Where each section's files come from, to check a finished build's file-sync requests
    /// against ([`Fingerprint::uncovered`]). Not part of the key.
    pub(crate) sources: Vec<SectionSource>,
}

/// One directory a fingerprint read, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionSource {
    /// The section's name ("" = main context).
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// Excluded on top of the ignore rules: bk-build's own state directory.
    pub(crate) extra_excludes: Vec<String>,
}

impl Fingerprint {
    /// Adds base images known only after the files were walked (a base target's digest, a
    /// registry digest) and recomputes the key: equal to computing with them in
    /// [`FingerprintInput::bases`] from the start, so walks need not wait for their bases.
    pub fn with_bases(mut self, more: impl IntoIterator<Item = (String, String)>) -> Fingerprint {
        self.manifest.bases.extend(more);
        self.manifest.bases.sort();
        self.key = self.manifest.key();
        self
    }
}

/// Computes `input` again and says how its inputs differ from `planned` (computed from the
/// same input, plus bases), e.g. because a file was edited while a build ran; empty when they
/// are the same.
pub fn recheck(
    input: &FingerprintInput,
    planned: &Fingerprint,
    cache: &StatCache,
) -> Result<Vec<String>, FingerprintError> {
    let again = compute(input, cache)?.with_bases(planned.manifest.bases.iter().cloned());
    Ok(if again.key == planned.key {
        Vec::new()
    } else {
        let mut why = super::explain(&planned.manifest, &again.manifest);
        if why.is_empty() {
            why.push("inputs changed".into());
        }
        why
    })
}

/// Computes the fingerprint of `input`, reading only files whose stat changed since `cache`
/// last saw them.
pub fn compute(
    input: &FingerprintInput,
    cache: &StatCache,
) -> Result<Fingerprint, FingerprintError> {
    compute_many(std::slice::from_ref(input), cache)
        .pop()
        .unwrap_or(Err(FingerprintError::Internal("no fingerprint computed")))
}

/// One directory a target reads, before walking.
struct Request {
    input: usize,
    name: String,
    dir: PathBuf,
    label: String,
    ignore: Vec<String>,
    /// `ignore` plus `extra`: what the walk excludes.
    excludes: Vec<String>,
    /// The state directory's pattern, when it lies inside `dir`.
    extra: Vec<String>,
    read: ContextRead,
}

/// Requests that share a directory and exclude patterns: walked once.
struct Group {
    dir: PathBuf,
    excludes: Vec<String>,
    /// The union of the members' include patterns (`None` = everything).
    includes: Option<Vec<String>>,
    /// (request, its include patterns).
    members: Vec<(usize, Option<Vec<String>>)>,
    /// Some member reads less than the union (its selection is cut from the listing).
    members_narrower: bool,
}

/// A group's walk: its section (with the union's reads) and which entries are directories
/// emitted only as parents of something selected.
struct Listing {
    section: Section,
    parent_only: Vec<bool>,
    /// For each entry, the index just past its subtree (so a member's selection can skip a
    /// directory it cannot select anything in without looking at what is below).
    subtree_end: Vec<usize>,
}

/// Index just past each entry's subtree, for a section in walk (pre-)order.
fn subtree_ends(section: &Section) -> Vec<usize> {
    let n = section.len();
    let mut end = vec![n; n];
    // Open directories as (index, `path/`); an entry closes every one it is not inside.
    let mut open: Vec<(usize, String)> = Vec::new();
    for (i, (path, rec)) in section.iter().enumerate() {
        while open
            .last()
            .is_some_and(|(_, p)| !path.starts_with(p.as_str()))
        {
            if let Some((j, _)) = open.pop() {
                end[j] = i;
            }
        }
        end[i] = i + 1;
        if rec.mode & MODE_DIR != 0 {
            open.push((i, format!("{path}/")));
        }
    }
    for (j, _) in open {
        end[j] = n;
    }
    end
}

/// [`compute`] for several targets at once; results in the order of `inputs`. Directories
/// shared by several targets are walked once (see the module documentation), and different
/// directories are walked on up to one thread per CPU: a no-op run is all `lstat`s, so
/// spreading the walks over cores is what brings it near the cost of one walk.
pub fn compute_many(
    inputs: &[FingerprintInput],
    cache: &StatCache,
) -> Vec<Result<Fingerprint, FingerprintError>> {
    let mut results: Vec<Option<Result<Fingerprint, FingerprintError>>> =
        (0..inputs.len()).map(|_| None).collect();
    compute_each(inputs, cache, |i, r| results[i] = Some(r));
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or(Err(FingerprintError::Internal(
                "a fingerprint was not computed",
            )))
        })
        .collect()
}

/// [`compute_many`], handing each target's result to `ready` as soon as every directory it
/// reads has been walked, rather than all at the end: a caller can decide about a target
/// (ask the registry about it, say) while the others are still walked. `ready` runs on the
/// calling thread, once per index of `inputs`, in no particular order.
pub fn compute_each(
    inputs: &[FingerprintInput],
    cache: &StatCache,
    mut ready: impl FnMut(usize, Result<Fingerprint, FingerprintError>),
) {
    let mut dockerfiles: Vec<Hash16> = vec![[0; 16]; inputs.len()];
    let mut requests: Vec<Request> = Vec::new();
    let mut failed = vec![false; inputs.len()];
    for (i, input) in inputs.iter().enumerate() {
        match prepare(i, input) {
            Ok((hash, reqs)) => {
                dockerfiles[i] = hash;
                requests.extend(reqs);
            }
            Err(e) => {
                failed[i] = true;
                ready(i, Err(e));
            }
        }
    }

    // Group by directory and exclude patterns. Each member's `followpaths` are resolved into
    // include patterns on their own first: fsutil's resolution is not monotone (a link already
    // met through one path is not followed again for another), so resolving the union of the
    // paths could select less than a member's own request does.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: BTreeMap<(PathBuf, Vec<String>, Option<usize>), usize> = BTreeMap::new();
    let mut sections: Vec<Option<Result<Section, FingerprintError>>> =
        requests.iter().map(|_| None).collect();
    for (r, req) in requests.iter().enumerate() {
        let dir = std::fs::canonicalize(&req.dir).unwrap_or_else(|_| req.dir.clone());
        let includes = match &req.read {
            ContextRead::Nothing => {
                sections[r] = Some(Ok(Section::new(String::new(), String::new(), Vec::new())));
                continue;
            }
            ContextRead::Whole => None,
            ContextRead::Paths(p) => match follow_paths_includes(&dir, p) {
                Ok(i) => i,
                Err(source) => {
                    sections[r] = Some(Err(FingerprintError::Walk {
                        target: inputs[req.input].target.clone(),
                        source,
                    }));
                    continue;
                }
            },
        };
        // A pattern that starts with `!` is an exception: it could take away from another
        // member's selection, so such a request is walked on its own.
        let alone = includes
            .as_ref()
            .is_some_and(|i| i.iter().any(|p| p.starts_with('!')))
            .then_some(r);
        let g = *index
            .entry((dir.clone(), req.excludes.clone(), alone))
            .or_insert_with(|| {
                groups.push(Group {
                    dir,
                    excludes: req.excludes.clone(),
                    includes: Some(Vec::new()),
                    members: Vec::new(),
                    members_narrower: false,
                });
                groups.len() - 1
            });
        let group = &mut groups[g];
        group.includes = match (group.includes.take(), &includes) {
            (Some(mut all), Some(mine)) => {
                all.extend(mine.iter().cloned());
                all.sort();
                all.dedup();
                Some(all)
            }
            _ => None,
        };
        group.members.push((r, includes));
    }
    for g in &mut groups {
        g.members_narrower = g.members.iter().any(|(_, i)| *i != g.includes);
    }

    // Requests are in input order, main context first; each target is assembled once the
    // last of its sections is there.
    let mut by_input: Vec<Vec<usize>> = (0..inputs.len()).map(|_| Vec::new()).collect();
    for (r, req) in requests.iter().enumerate() {
        by_input[req.input].push(r);
    }
    let mut waiting: Vec<usize> = by_input
        .iter()
        .map(|rs| rs.iter().filter(|r| sections[**r].is_none()).count())
        .collect();
    let inputs_of: Vec<usize> = requests.iter().map(|req| req.input).collect();
    let mut requests: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
    let mut finish =
        |i: usize,
         requests: &mut Vec<Option<Request>>,
         sections: &mut Vec<Option<Result<Section, FingerprintError>>>| {
            let reqs = by_input[i]
                .iter()
                .filter_map(|r| {
                    let sec = sections[*r].take().unwrap_or_else(|| {
                        Ok(Section::new(String::new(), String::new(), Vec::new()))
                    });
                    requests[*r].take().map(|req| (req, sec))
                })
                .collect();
            ready(i, assemble(&inputs[i], dockerfiles[i], reqs));
        };
    for i in 0..inputs.len() {
        if !failed[i] && waiting[i] == 0 {
            finish(i, &mut requests, &mut sections);
        }
    }

    walk_groups(&groups, cache, |g, listing| {
        let group = &groups[g];
        // Each member request's section, cut from the group's listing.
        match listing {
            Ok(listing) => {
                for (r, includes) in &group.members {
                    let section = if *includes == group.includes {
                        Ok(listing.section.clone())
                    } else {
                        select(&listing, includes.as_deref()).map_err(|source| {
                            FingerprintError::Walk {
                                target: inputs[inputs_of[*r]].target.clone(),
                                source,
                            }
                        })
                    };
                    sections[*r] = Some(section);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut first = Some(e);
                for (r, _) in &group.members {
                    let target = inputs[inputs_of[*r]].target.clone();
                    let err = match first.take() {
                        Some(FingerprintError::Walk { source, .. }) => {
                            FingerprintError::Walk { target, source }
                        }
                        Some(FingerprintError::Read { path, source, .. }) => {
                            FingerprintError::Read {
                                target,
                                path,
                                source,
                            }
                        }
                        _ => FingerprintError::Shared {
                            target,
                            message: message.clone(),
                        },
                    };
                    sections[*r] = Some(Err(err));
                }
            }
        }
        for (r, _) in &group.members {
            let i = inputs_of[*r];
            waiting[i] -= 1;
            if waiting[i] == 0 {
                finish(i, &mut requests, &mut sections);
            }
        }
    });
}

fn assemble(
    input: &FingerprintInput,
    dockerfile: Hash16,
    reqs: Vec<(Request, Result<Section, FingerprintError>)>,
) -> Result<Fingerprint, FingerprintError> {
    let mut sections = Vec::with_capacity(reqs.len());
    let mut sources = Vec::with_capacity(reqs.len());
    for (req, sec) in reqs {
        let mut sec = sec?;
        sec.name = req.name.clone();
        sec.label = req.label;
        let reads = req.read.reads();
        // A directory nothing reads contributes nothing, not even its ignore rules.
        let ignore = if reads.as_ref().is_some_and(Vec::is_empty) {
            Vec::new()
        } else {
            req.ignore
        };
        sections.push(Arc::new(sec.with_filter(Filter {
            excludes: ignore,
            reads,
        })));
        sources.push(SectionSource {
            name: req.name,
            dir: req.dir,
            extra_excludes: req.extra,
        });
    }
    let mut bases = input.bases.clone();
    bases.sort();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        dockerfile,
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
        sources,
    })
}

/// Reads the Dockerfile and the ignore files of one input and lists the directories it reads.
fn prepare(i: usize, input: &FingerprintInput) -> Result<(Hash16, Vec<Request>), FingerprintError> {
    let dockerfile =
        std::fs::read(&input.dockerfile).map_err(|source| FingerprintError::Dockerfile {
            target: input.target.clone(),
            path: input.dockerfile.clone(),
            source,
        })?;
    let mut reqs = Vec::with_capacity(1 + input.named_contexts.len());
    let ignore = context_ignore(input)?;
    reqs.push(request(
        i,
        input,
        String::new(),
        &input.context_dir,
        ignore,
        input.context_read.clone(),
    ));
    let mut named: Vec<&(String, PathBuf)> = input.named_contexts.iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, dir) in named {
        // BuildKit applies a named local context's own root .dockerignore, nothing else.
        let ignore = read_ignore_file(input, dir, ".dockerignore")?.unwrap_or_default();
        reqs.push(request(
            i,
            input,
            name.clone(),
            dir,
            ignore,
            ContextRead::Whole,
        ));
    }
    Ok((prefix16(&blake3::hash(&dockerfile)), reqs))
}

fn request(
    i: usize,
    input: &FingerprintInput,
    name: String,
    dir: &Path,
    ignore: Vec<String>,
    read: ContextRead,
) -> Request {
    let extra: Vec<String> = state_dir_exclude(dir, &input.project_dir)
        .into_iter()
        .collect();
    let mut excludes = ignore.clone();
    // Last, so no `!` exception in a .dockerignore can re-include it.
    excludes.extend(extra.iter().cloned());
    Request {
        input: i,
        name,
        dir: dir.to_path_buf(),
        label: label_for(&input.project_dir, dir),
        ignore,
        excludes,
        extra,
        read,
    }
}

/// BuildKit's precedence: `<Dockerfile name>.dockerignore` beside the Dockerfile wins over the
/// context's `.dockerignore`. Each is read the way the daemon reads it out of its synced copy:
/// symlinks are followed only inside that directory.
fn context_ignore(input: &FingerprintInput) -> Result<Vec<String>, FingerprintError> {
    if let (Some(name), Some(dir)) = (input.dockerfile.file_name(), input.dockerfile.parent()) {
        let mut specific = name.to_string_lossy().into_owned();
        specific.push_str(".dockerignore");
        if let Some(p) = read_ignore_file(input, dir, &specific)? {
            return Ok(p);
        }
    }
    Ok(read_ignore_file(input, &input.context_dir, ".dockerignore")?.unwrap_or_default())
}

fn read_ignore_file(
    input: &FingerprintInput,
    dir: &Path,
    name: &str,
) -> Result<Option<Vec<String>>, FingerprintError> {
    let err = |path: PathBuf, source| FingerprintError::Dockerignore {
        target: input.target.clone(),
        path,
        source,
    };
    let path = resolve_in_root(dir, name).map_err(|e| err(dir.join(name), e))?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(parse_dockerignore(&String::from_utf8_lossy(&bytes)))),
        // A directory or a dangling link reads as no file, as it does for the daemon.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(source) => Err(err(path, source)),
    }
}

fn label_for(project_dir: &Path, dir: &Path) -> String {
    let shown = match dir.strip_prefix(project_dir) {
        Ok(rel) if !project_dir.as_os_str().is_empty() => rel,
        _ => dir,
    };
    shown.to_string_lossy().into_owned()
}

/// Walks every group, on up to one thread per CPU, handing each group's listing to `done`
/// (on the calling thread, as soon as it is ready) with the group's index.
fn walk_groups(
    groups: &[Group],
    cache: &StatCache,
    mut done: impl FnMut(usize, Result<Listing, FingerprintError>),
) {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(groups.len());
    if workers <= 1 {
        for (i, g) in groups.iter().enumerate() {
            done(i, walk_group(g, cache));
        }
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Listing, FingerprintError>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, next) = (tx.clone(), &next);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(group) = groups.get(i) else { break };
                if tx.send((i, walk_group(group, cache))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut seen = vec![false; groups.len()];
        for (i, listing) in rx {
            seen[i] = true;
            done(i, listing);
        }
        // Only a panicked walker leaves a group unanswered; the scope re-raises its panic.
        for (i, seen) in seen.into_iter().enumerate() {
            if !seen {
                done(
                    i,
                    Err(FingerprintError::Internal(
                        "a fingerprint thread stopped early",
                    )),
                );
            }
        }
    });
}

/// Walks one group's directory with its exclude patterns and the union of its members'
/// `followpaths`, hashing what the stat cache cannot vouch for and git's index (on a fresh
/// clone) does not.
fn walk_group(group: &Group, cache: &StatCache) -> Result<Listing, FingerprintError> {
    match walk_group_with(group, cache, true)? {
        Some(listing) => Ok(listing),
        // An untracked attributes file below the directory may convert files on checkout:
        // the index's blob ids are then not what is on disk.
        None => walk_group_with(group, cache, false)?.ok_or(FingerprintError::Internal(
            "a walk without git asked for a walk without git",
        )),
    }
}

/// [`walk_group`], taking blob ids from git's index when `use_git`; `None` when that turned
/// out to be unsafe for this directory (nothing was remembered from the index then).
fn walk_group_with(
    group: &Group,
    cache: &StatCache,
    use_git: bool,
) -> Result<Option<Listing>, FingerprintError> {
    let opts = WalkOptions {
        // `followpaths` already resolved (equal to walking with them: the walker resolves
        // them into exactly these include patterns).
        include_patterns: group.includes.clone().unwrap_or_default(),
        exclude_patterns: group.excludes.clone(),
        follow_paths: Vec::new(),
    };
    // Errors get the target's name once the group's members are known.
    let walk_err = |source| FingerprintError::Walk {
        target: String::new(),
        source,
    };
    // xattrs are folded into the data hash on a cache miss instead (changing one changes the
    // ctime, so a hit proves they are unchanged): this saves a syscall per file on a no-op run.
    let walker = Walker::new(&group.dir, &opts)
        .map_err(walk_err)?
        .with_xattrs(false);

    let mut items = SectionBuilder::default();
    let mut parent_only = Vec::new();
    let mut cursor = cache.cursor();
    let mut xattrs = XattrReader::default();
    // Looked up on the first file the stat cache misses: a no-op run never reads an index.
    let mut git: Option<Option<DirView>> = if use_git { None } else { Some(None) };
    let mut vouched = Vec::new();
    let mut vouched_dirs: Vec<String> = Vec::new();
    std::thread::scope(|scope| -> Result<(), FingerprintError> {
        let mut pool: Option<Pool> = None;
        let mut first_err: Option<FingerprintError> = None;
        let apply =
            |items: &mut SectionBuilder, first_err: &mut Option<_>, done: Done| match done.result {
                Ok(data) => items.set_data(done.idx, data),
                Err((path, source)) => {
                    first_err.get_or_insert(FingerprintError::Read {
                        target: String::new(),
                        path,
                        source,
                    });
                }
            };
        for entry in walker {
            let e = entry.map_err(walk_err)?;
            parent_only.push(e.parent_only);
            if !is_regular(e.mode) {
                items.push(&e.rel_path, other_record(&e));
                continue;
            }
            if e.socket {
                // Hashed as what the daemon receives: an empty regular file.
                let data = StatCache::socket_data(&e.abs_path, &mut xattrs);
                items.push(&e.rel_path, FileRec { mode: e.mode, data });
                continue;
            }
            let stat = FileStat::from_entry(&e);
            if let Some(data) = cache.lookup(&mut cursor, &e.abs_path, &stat) {
                items.push(&e.rel_path, FileRec { mode: e.mode, data });
                continue;
            }
            let view = git.get_or_insert_with(|| cache.git().view(&group.dir));
            // In a repository whose checkout cannot convert, every file is a git blob, tracked
            // or not, so staging or resolving a file never changes its record.
            let how = match view.as_ref().map(|v| v.vouched_blob(&e.rel_path, &stat)) {
                Some(Some(oid)) => {
                    let data = git_blob_data(&oid, &xattrs.read(&e.abs_path));
                    let dir = e.rel_path.rsplit_once('/').map_or("", |(d, _)| d);
                    if vouched_dirs.last().is_none_or(|last: &String| last != dir) {
                        vouched_dirs.push(dir.to_string());
                    }
                    items.push(&e.rel_path, FileRec { mode: e.mode, data });
                    vouched.push(cache.vouched(&e.abs_path, &stat, cursor.stamp(), data));
                    continue;
                }
                Some(None) => ContentHash::GitBlob,
                None => ContentHash::Blake3,
            };
            let rec = FileRec {
                mode: e.mode,
                data: [0; 16],
            };
            let job = Job {
                idx: items.push(&e.rel_path, rec),
                path: e.abs_path,
                stat,
                stamp: cursor.stamp(),
                how,
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
            for done in pool.finish()? {
                apply(&mut items, &mut first_err, done);
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    // An attributes file in a directory of a vouched file, or above it, converts it on
    // checkout whether git tracks the attributes file or not, and whether the walk visited it
    // or left it out (ignored, or not on the build's paths).
    if !vouched_dirs.is_empty() && !attributes_in_walked_dirs_are_harmless(&group.dir, vouched_dirs)
    {
        return Ok(None);
    }
    cache.count_vouched(vouched.len());
    cache.remember(vouched);
    let (section, parent_only) = items.finish_with_flags(parent_only);
    // On this walking thread rather than later on the planner's: members that read the whole
    // directory get clones of this section, digest included.
    section.entries_digest();
    let subtree_end = match group.members_narrower {
        true => subtree_ends(&section),
        false => Vec::new(),
    };
    Ok(Some(Listing {
        section,
        parent_only,
        subtree_end,
    }))
}

/// Checks `.gitattributes` in each of `dirs` (relative to `root`, `/`-separated; the root
/// itself is [`git::GitIndexes::view`]'s to check) and in every directory between them and
/// the root.
fn attributes_in_walked_dirs_are_harmless(root: &Path, dirs: Vec<String>) -> bool {
    let mut all = std::collections::BTreeSet::new();
    for dir in dirs {
        let mut d = dir.as_str();
        while !d.is_empty() && all.insert(d.to_string()) {
            d = d.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }
    all.iter()
        .all(|d| git::attributes_file_is_harmless(&root.join(d).join(".gitattributes"), true))
}

/// The part of a group's listing that one member's request selects: fsutil's include rule
/// (`MatchesUsingParentResults` with the member's `followpaths` resolved into include
/// patterns), with directories that are only parents emitted before their first selected
/// child. Exclusions need no second look: the group's walk already applied the same ones.
///
/// Equal to walking the directory with the member's own request because the group's include
/// patterns are a superset of the member's, none of them an exception, so the listing holds
/// every entry the member's walk would visit and emit.
fn select(listing: &Listing, includes: Option<&[String]>) -> Result<Section, FsError> {
    let Some(includes) = includes else {
        return Ok(listing.section.clone());
    };
    let matcher = PatternMatcher::new(includes)?;
    struct Frame {
        /// `path/`
        prefix: String,
        rec: FileRec,
        incl: Vec<bool>,
        emitted: bool,
    }
    let section = &listing.section;
    let mut out = SectionBuilder::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < section.len() {
        let (path, rec) = section.get(i);
        let parent_only = listing.parent_only[i];
        while stack.last().is_some_and(|f| !path.starts_with(&f.prefix)) {
            stack.pop();
        }
        let is_dir = rec.mode & MODE_DIR != 0;
        let slashes = path.bytes().filter(|b| *b == b'/').count();
        let mut record = Vec::new();
        let included = matcher.eval(
            path,
            slashes,
            stack.last().map(|f| f.incl.as_slice()),
            is_dir.then_some(&mut record),
        );
        let selected = included && !parent_only;
        if selected {
            for f in stack.iter_mut().filter(|f| !f.emitted) {
                out.push(&f.prefix[..f.prefix.len() - 1], f.rec);
                f.emitted = true;
            }
            out.push(path, *rec);
        }
        if is_dir {
            if !included && !matcher.may_match_inside(path) {
                // The walker would not enter it: nothing below can be selected.
                i = listing.subtree_end[i];
                continue;
            }
            stack.push(Frame {
                prefix: format!("{path}/"),
                rec: *rec,
                incl: record,
                emitted: selected,
            });
        }
        i += 1;
    }
    Ok(out.finish(String::new(), String::new()))
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
    how: ContentHash,
}

struct Done {
    idx: usize,
    /// The path only comes back with an error: it is all an error message needs.
    result: Result<Hash16, (PathBuf, io::Error)>,
}

/// A few hashing threads fed through a bounded queue, so memory stays flat however many
/// files miss the cache; started only when the first file misses. Files travel in batches
/// (one channel message and one stat-cache lock per batch, not per file): on a cold walk of
/// 20k small files the per-file hand-offs otherwise cost more than the hashing.
struct Pool {
    jobs: SyncSender<Vec<Job>>,
    done: Receiver<Vec<Done>>,
    batch: Vec<Job>,
    batch_bytes: i64,
}

/// Batches in flight; with [`BATCH_FILES`] this bounds the queued paths to a few thousand.
const QUEUE_DEPTH: usize = 32;
const BATCH_FILES: usize = 64;
/// A batch is also sent once it holds this much data, so large files spread over workers.
const BATCH_BYTES: i64 = 4 << 20;
const MAX_WORKERS: usize = 4;

impl Pool {
    fn start<'scope>(scope: &'scope Scope<'scope, '_>, cache: &'scope StatCache) -> Pool {
        let (jobs, job_rx) = mpsc::sync_channel::<Vec<Job>>(QUEUE_DEPTH);
        let (done_tx, done) = mpsc::channel::<Vec<Done>>();
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
                let mut buf = Vec::new();
                loop {
                    let next = job_rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok(batch) = next else { break };
                    let mut done = Vec::with_capacity(batch.len());
                    let mut remember = Vec::with_capacity(batch.len());
                    for job in batch {
                        let result = cache
                            .hash_file_deferred(
                                &job.path,
                                &job.stat,
                                job.stamp,
                                job.how,
                                &mut xattrs,
                                &mut buf,
                            )
                            .map(|(data, pending)| {
                                remember.extend(pending);
                                data
                            })
                            .map_err(|e| (job.path, e));
                        done.push(Done {
                            idx: job.idx,
                            result,
                        });
                    }
                    cache.remember(remember);
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        Pool {
            jobs,
            done,
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
        }
    }

    fn submit(&mut self, job: Job) -> Result<(), FingerprintError> {
        self.batch_bytes += job.stat.size;
        self.batch.push(job);
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FingerprintError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        self.batch_bytes = 0;
        // Workers only stop early if one panicked; the scope re-raises that panic on exit.
        self.jobs
            .send(batch)
            .map_err(|_| FingerprintError::Internal("file hashing threads stopped"))
    }

    /// Results already finished, without waiting.
    fn ready(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter().flatten()
    }

    /// Closes the queue and yields every remaining result.
    fn finish(mut self) -> Result<impl Iterator<Item = Done>, FingerprintError> {
        self.flush()?;
        drop(self.jobs);
        Ok(self.done.into_iter().flatten())
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
    fn a_socket_counts_as_the_empty_file_the_daemon_receives() {
        let t = project();
        let inp = input(t.path());
        let sock = t.path().join("svc/app/agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o640)).unwrap();
        let with_socket = key(&inp);
        drop(listener);
        fs::remove_file(&sock).unwrap();
        let without = key(&inp);
        assert_ne!(
            with_socket.key, without.key,
            "the socket is sent, so it is an input"
        );
        fs::write(&sock, "").unwrap();
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(key(&inp).key, with_socket.key);
        fs::write(&sock, "x").unwrap();
        assert_ne!(key(&inp).key, with_socket.key);
    }

    #[test]
    fn a_name_that_is_not_utf8_fails_the_fingerprint_naming_it_unless_ignored() {
        use std::os::unix::ffi::OsStrExt;
        let t = project();
        let inp = input(t.path());
        let bad = t
            .path()
            .join("svc/app")
            .join(std::ffi::OsStr::from_bytes(b"x\xff.py"));
        fs::write(&bad, "x").unwrap();
        let err = compute(&inp, &StatCache::new()).unwrap_err().to_string();
        assert!(
            err.contains(r"x\xFF.py") && err.contains("not valid UTF-8"),
            "{err}"
        );
        // In an ignored directory, it is not sent and so no error.
        fs::remove_file(&bad).unwrap();
        let ignored = t
            .path()
            .join("svc/node_modules")
            .join(std::ffi::OsStr::from_bytes(b"x\xff"));
        fs::write(ignored, "x").unwrap();
        compute(&inp, &StatCache::new()).unwrap();
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
                "ignore rules of the build context changed",
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
        inp.context_read = ContextRead::Paths(vec!["app".into()]);
        let before = key(&inp);
        fs::write(p.join("svc/README.md"), "not copied by the Dockerfile\n").unwrap();
        assert_eq!(key(&inp).key, before.key);
        fs::write(p.join("svc/app/pkg/util.py"), "x = 2\n").unwrap();
        let after = key(&inp);
        assert_eq!(
            explain(&before.manifest, &after.manifest),
            vec!["svc/app/pkg/util.py changed"]
        );

        inp.context_read = ContextRead::Nothing;
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
                    output_witness: Default::default(),
                    finished_unix: 0,
                    uncovered: vec![],
                    daemon_reads: vec![],
                    whole_context: false,
                    local_bases: Default::default(),
                    daemon: None,
                    daemon_address: None,
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

    /// Sections of one directory as a direct walk with exactly this request gives them.
    fn walked(dir: &Path, excludes: &[String], read: &ContextRead) -> Vec<(String, u32)> {
        let follow_paths = match read {
            ContextRead::Paths(p) => p.clone(),
            ContextRead::Nothing => return Vec::new(),
            ContextRead::Whole => Vec::new(),
        };
        let opts = WalkOptions {
            include_patterns: Vec::new(),
            exclude_patterns: excludes.to_vec(),
            follow_paths,
        };
        Walker::new(dir, &opts)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.rel_path, e.mode)
            })
            .collect()
    }

    #[test]
    fn cut_from_a_shared_walk_equals_walking_alone_on_random_trees() {
        use rand::{Rng, SeedableRng};
        let seed = std::env::var("BK_SELECT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5e1ec7u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let names = ["a", "b", "c.txt", "d.py", "lib", "src", "x-y", "z.log"];
        for round in 0..60 {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("ctx");
            fs::create_dir(&root).unwrap();
            let mut paths: Vec<String> = Vec::new();
            for _ in 0..rng.gen_range(5..40) {
                let depth = rng.gen_range(1..4);
                let rel: Vec<&str> = (0..depth)
                    .map(|_| names[rng.gen_range(0..names.len())])
                    .collect();
                let rel = rel.join("/");
                let full = root.join(&rel);
                if full.parent().is_some_and(|p| p.is_file() || p.is_symlink()) {
                    continue;
                }
                if fs::create_dir_all(full.parent().unwrap()).is_err() || full.exists() {
                    continue;
                }
                // Paths through links may not be creatable; such an entry is just left out.
                let made = match rng.gen_range(0..6) {
                    0 => fs::create_dir(&full),
                    1 if !paths.is_empty() => {
                        let target = &paths[rng.gen_range(0..paths.len())];
                        let text = if rng.gen_bool(0.5) {
                            format!("/{target}")
                        } else {
                            format!("{}{target}", "../".repeat(depth - 1))
                        };
                        symlink(text, &full)
                    }
                    _ => fs::write(&full, rel.as_bytes()),
                };
                if made.is_ok() {
                    paths.push(rel);
                }
            }
            let pool = [
                "*.log",
                "lib",
                "!lib/keep",
                "**/b",
                "src/*",
                "!src/a",
                "x-y/c.txt",
            ];
            let excludes: Vec<String> = (0..rng.gen_range(0..3))
                .map(|_| pool[rng.gen_range(0..pool.len())].to_string())
                .collect();
            let pick = |rng: &mut rand::rngs::StdRng| -> ContextRead {
                let n = rng.gen_range(0..4);
                if n == 0 {
                    return ContextRead::Whole;
                }
                let mut v: Vec<String> = (0..n)
                    .map(|_| match rng.gen_range(0..4) {
                        0 if !paths.is_empty() => paths[rng.gen_range(0..paths.len())].clone(),
                        1 => format!("{}/*", names[rng.gen_range(0..names.len())]),
                        2 => "*.txt".to_string(),
                        _ => names[rng.gen_range(0..names.len())].to_string(),
                    })
                    .collect();
                v.sort();
                v.dedup();
                ContextRead::Paths(v)
            };
            let reads: Vec<ContextRead> = (0..3).map(|_| pick(&mut rng)).collect();
            let inputs: Vec<FingerprintInput> = reads
                .iter()
                .enumerate()
                .map(|(i, r)| FingerprintInput {
                    target: format!("t{i}"),
                    project_dir: t.path().to_path_buf(),
                    context_dir: root.clone(),
                    dockerfile: t.path().join("Dockerfile"),
                    context_read: r.clone(),
                    ..Default::default()
                })
                .collect();
            fs::write(t.path().join("Dockerfile"), "FROM scratch\n").unwrap();
            if !excludes.is_empty() {
                fs::write(
                    t.path().join("Dockerfile.dockerignore"),
                    excludes.join("\n"),
                )
                .unwrap();
            }
            let got = compute_many(&inputs, &StatCache::new());
            for (i, r) in reads.iter().enumerate() {
                let fp = got[i].as_ref().unwrap();
                let shared: Vec<(String, u32)> = fp.manifest.sections[0]
                    .iter()
                    .map(|(p, rec)| (p.to_string(), rec.mode))
                    .collect();
                assert_eq!(
                    shared,
                    walked(&root, &excludes, r),
                    "seed {seed} round {round}: read {r:?} (all: {reads:?}) with excludes {excludes:?} over {:?}",
                    walked(&root, &[], &ContextRead::Whole)
                        .iter()
                        .map(|(p, _)| {
                            let l = std::fs::read_link(root.join(p)).ok();
                            format!("{p}{}", l.map(|l| format!(" -> {}", l.display())).unwrap_or_default())
                        })
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn a_directory_read_by_many_targets_is_walked_once() {
        let t = project();
        let p = t.path();
        let mut inputs = Vec::new();
        for (i, read) in [
            ContextRead::Paths(vec!["app".into()]),
            ContextRead::Paths(vec!["README.md".into(), "entry".into()]),
            ContextRead::Whole,
        ]
        .into_iter()
        .enumerate()
        {
            let mut inp = input(p);
            inp.target = format!("t{i}");
            inp.context_read = read;
            inputs.push(inp);
        }
        let cache = StatCache::new();
        let got = compute_many(&inputs, &cache);
        // svc: main.py, util.py, README.md, Dockerfile, .dockerignore; lua: init.lua.
        assert_eq!(cache.hashes_performed(), 6, "every file hashed once");
        let files = |i: usize| -> Vec<String> {
            got[i].as_ref().unwrap().manifest.sections[0]
                .iter()
                .map(|(p, _)| p.to_string())
                .collect()
        };
        assert_eq!(
            files(0),
            ["app", "app/main.py", "app/pkg", "app/pkg/util.py"]
        );
        // `entry` links to app/main.py: the link and what it reaches.
        assert_eq!(files(1), ["README.md", "app", "app/main.py", "entry"]);
        assert!(files(2).len() > files(0).len());
    }
}
