//! The manifest: every input a fingerprint key was computed from, kept compactly so a later
//! run can say *why* a target has to be rebuilt. The key is the blake3 hash of the manifest's
//! canonical encoding, so the two can never disagree.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::codec::{put_len, put_str, put_u32, DecodeError, Hash16, Reader, Sink};
use crate::fs::MODE_PERM;

/// Bumped whenever what goes into a key, or how, changes; an old state then explains itself as
/// "fingerprint format changed" and every target is rebuilt once.
pub const FORMAT_VERSION: u32 = 5;

/// The reason [`explain`]'s callers give when there is no previous record at all.
pub const NO_PREVIOUS_BUILD: &str = "no previous build";

/// What a target's key was computed from. Opaque on purpose: compare two with [`explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub(crate) format: u32,
    pub(crate) dockerfile: Hash16,
    pub(crate) target_stage: String,
    pub(crate) platforms: Vec<String>,
    pub(crate) args: BTreeMap<String, String>,
    /// Sorted, so the order the caller listed them in does not matter.
    pub(crate) bases: Vec<(String, String)>,
    pub(crate) extra: BTreeMap<String, String>,
    /// The main context (name "") first, then named contexts sorted by name. Shared: a
    /// fingerprint is copied while planning (bases added, the plan keeps both), and a section
    /// can hold every file of a large context.
    pub(crate) sections: Vec<Arc<Section>>,
}

/// What one entry contributes: its Go mode bits (type and permissions) and a hash of its data
/// (content and xattrs for a regular file, target for a symlink, numbers for a device, zeros
/// for a directory). Kept apart so an explanation can tell a chmod from an edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRec {
    pub(crate) mode: u32,
    pub(crate) data: Hash16,
}

/// Which files of a directory a build reads: the daemon's file-sync request for it. Part of
/// the key, so a changed ignore rule or COPY source counts even when it happens to select the
/// same files today.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Filter {
    /// The effective ignore patterns (`.dockerignore` or `<Dockerfile>.dockerignore`), parsed.
    pub(crate) excludes: Vec<String>,
    /// BuildKit `followpaths`; `None` = the whole directory, `Some(empty)` = nothing.
    pub(crate) reads: Option<Vec<String>>,
}

/// The filtered files of one context directory, in walk order (see [`walk_cmp`]).
#[derive(Debug, Clone)]
pub(crate) struct Section {
    /// "" for the main context, else the named context's name.
    pub(crate) name: String,
    /// How to show this directory's paths to a human (relative to the project where
    /// possible). Not part of the key: moving the tree must not change it.
    pub(crate) label: String,
    pub(crate) filter: Filter,
    /// All paths concatenated; one allocation instead of one per file.
    paths: String,
    /// End offset of each path in `paths`, and the entry's record.
    files: Vec<(u32, FileRec)>,
    /// blake3 of the entries' encoding, computed on first use: the key stands on it instead
    /// of the entries themselves, so adding bases to a fingerprint (twice per target per run)
    /// rehashes a few names rather than every file of the context.
    entries_digest: OnceLock<[u8; 32]>,
}

impl PartialEq for Section {
    fn eq(&self, other: &Section) -> bool {
        // The cached digest follows from the entries; whether it was computed yet is not
        // part of what a section is.
        self.name == other.name
            && self.label == other.label
            && self.filter == other.filter
            && self.paths == other.paths
            && self.files == other.files
    }
}

impl Eq for Section {}

/// fsutil's walk order: component by component, i.e. byte order with `/` below every other
/// byte (`a`, `a/x`, `a-b`, `a.txt`). Using the walk's own order means no sort on the no-op
/// path.
pub(crate) fn walk_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Collects a section's entries as they are walked, without one allocation per path.
#[derive(Default)]
pub(crate) struct SectionBuilder {
    paths: String,
    files: Vec<(u32, FileRec)>,
}

impl SectionBuilder {
    /// Appends an entry; returns its index for [`set_data`](Self::set_data).
    pub(crate) fn push(&mut self, path: &str, rec: FileRec) -> usize {
        self.paths.push_str(path);
        self.files.push((self.paths.len() as u32, rec));
        self.files.len() - 1
    }

    /// Fills in a data hash that was computed after the entry was pushed.
    pub(crate) fn set_data(&mut self, idx: usize, data: Hash16) {
        self.files[idx].1.data = data;
    }

    /// [`finish`](Self::finish) for a section built with one flag per entry, keeping each
    /// flag with its entry.
    pub(crate) fn finish_with_flags(self, flags: Vec<bool>) -> (Section, Vec<bool>) {
        let in_order = {
            let mut start = 0usize;
            let mut prev: Option<&str> = None;
            self.files.iter().all(|(end, _)| {
                let p = &self.paths[start..*end as usize];
                start = *end as usize;
                let ok = prev.is_none_or(|q| walk_cmp(q, p).is_lt());
                prev = Some(p);
                ok
            })
        };
        if in_order || flags.len() != self.files.len() {
            return (self.finish(String::new(), String::new()), flags);
        }
        let mut start = 0usize;
        let mut items: Vec<(String, FileRec, bool)> = self
            .files
            .iter()
            .zip(flags)
            .map(|((end, rec), f)| {
                let p = self.paths[start..*end as usize].to_string();
                start = *end as usize;
                (p, *rec, f)
            })
            .collect();
        items.sort_unstable_by(|a, b| walk_cmp(&a.0, &b.0));
        let flags = items.iter().map(|i| i.2).collect();
        let mut b = SectionBuilder::default();
        for (p, r, _) in &items {
            b.push(p, *r);
        }
        (b.finish(String::new(), String::new()), flags)
    }

    pub(crate) fn finish(self, name: String, label: String) -> Section {
        let mut sec = Section {
            name,
            label,
            filter: Filter::default(),
            paths: self.paths,
            files: self.files,
            entries_digest: OnceLock::new(),
        };
        let in_order = {
            let mut it = sec.iter().map(|(p, _)| p);
            let mut prev = it.next();
            it.all(|p| {
                let ok = prev.is_none_or(|q| walk_cmp(q, p).is_lt());
                prev = Some(p);
                ok
            })
        };
        if !in_order {
            // The walker always yields its order; this keeps keys canonical regardless.
            let items: Vec<(String, FileRec)> =
                sec.iter().map(|(p, r)| (p.to_string(), *r)).collect();
            sec = Section::new(sec.name, sec.label, items);
        }
        sec
    }
}

impl Section {
    /// `items` in any order; duplicates are not expected (the walk never repeats a path).
    pub(crate) fn new(name: String, label: String, mut items: Vec<(String, FileRec)>) -> Section {
        items.sort_unstable_by(|a, b| walk_cmp(&a.0, &b.0));
        let mut b = SectionBuilder::default();
        for (p, r) in &items {
            b.push(p, *r);
        }
        Section {
            name,
            label,
            filter: Filter::default(),
            paths: b.paths,
            files: b.files,
            entries_digest: OnceLock::new(),
        }
    }

    pub(crate) fn with_filter(mut self, filter: Filter) -> Section {
        self.filter = filter;
        self
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// The `i`-th entry in walk order.
    pub(crate) fn get(&self, i: usize) -> (&str, &FileRec) {
        let start = if i == 0 {
            0
        } else {
            self.files[i - 1].0 as usize
        };
        let (end, rec) = &self.files[i];
        (&self.paths[start..*end as usize], rec)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &FileRec)> + '_ {
        let mut start = 0usize;
        self.files.iter().map(move |(end, h)| {
            let end = *end as usize;
            let p = &self.paths[start..end];
            start = end;
            (p, h)
        })
    }

    /// The entries as stored: sorted paths share long prefixes, so only each new suffix is
    /// written (roughly halves the size of state files).
    fn encode_entries(&self, s: &mut impl Sink) {
        let mut prev = "";
        for (path, h) in self.iter() {
            let shared = common_prefix(prev, path);
            put_len(s, shared as u64);
            put_str(s, &path[shared..]);
            put_u32(s, h.mode);
            s.put(&h.data);
            prev = path;
        }
    }

    /// blake3 of [`encode_entries`](Self::encode_entries), computed once per section. The
    /// encoder's pieces are a few bytes each; they are batched so blake3 sees whole chunks.
    pub(crate) fn entries_digest(&self) -> &[u8; 32] {
        self.entries_digest.get_or_init(|| {
            let mut sink = HashSink {
                hash: blake3::Hasher::new(),
                buf: Vec::with_capacity(HASH_BATCH),
            };
            self.encode_entries(&mut sink);
            sink.hash.update(&sink.buf);
            *sink.hash.finalize().as_bytes()
        })
    }

    fn display(&self, path: &str) -> String {
        if self.label.is_empty() || self.label == "." {
            path.to_string()
        } else {
            format!("{}/{}", self.label.trim_end_matches('/'), path)
        }
    }

    fn title(&self) -> String {
        if self.name.is_empty() {
            "the build context".to_string()
        } else {
            format!("context {}", self.name)
        }
    }
}

impl Manifest {
    /// The hex fingerprint key of these inputs.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        self.encode_into(&mut h, false);
        h.finalize().to_hex().to_string()
    }

    /// Files (and directories and links) across all contexts.
    pub fn file_count(&self) -> usize {
        self.sections.iter().map(|s| s.len()).sum()
    }

    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.file_count() * 40);
        self.encode_into(&mut out, true);
        out
    }

    /// Size of the stored encoding, so it can be length-prefixed and then streamed.
    pub(crate) fn encoded_len(&self) -> u64 {
        let mut n = Counter(0);
        self.encode_into(&mut n, true);
        n.0
    }

    /// Streams the stored encoding into `w` (no copy of it in memory, which at 200k files
    /// would be ~8 MB) and returns its blake3 hash.
    pub(crate) fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<blake3::Hash> {
        let mut sink = WriteSink {
            w,
            hash: blake3::Hasher::new(),
            buf: Vec::with_capacity(64 * 1024),
            err: None,
        };
        self.encode_into(&mut sink, true);
        sink.flush();
        match sink.err {
            Some(e) => Err(e),
            None => Ok(sink.hash.finalize()),
        }
    }

    /// Labels are written to files but left out of the key.
    fn encode_into(&self, s: &mut impl Sink, with_labels: bool) {
        put_u32(s, self.format);
        s.put(&self.dockerfile);
        put_str(s, &self.target_stage);
        put_len(s, self.platforms.len() as u64);
        for p in &self.platforms {
            put_str(s, p);
        }
        put_pairs(s, self.args.iter());
        put_pairs(s, self.bases.iter().map(|(a, b)| (a, b)));
        put_pairs(s, self.extra.iter());
        put_len(s, self.sections.len() as u64);
        for sec in &self.sections {
            put_str(s, &sec.name);
            if with_labels {
                put_str(s, &sec.label);
            }
            put_len(s, sec.filter.excludes.len() as u64);
            for p in &sec.filter.excludes {
                put_str(s, p);
            }
            match &sec.filter.reads {
                None => put_u32(s, 0),
                Some(paths) => {
                    put_u32(s, 1);
                    put_len(s, paths.len() as u64);
                    for p in paths {
                        put_str(s, p);
                    }
                }
            }
            put_len(s, sec.files.len() as u64);
            if with_labels {
                sec.encode_entries(s);
            } else {
                s.put(sec.entries_digest());
            }
        }
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Manifest, DecodeError> {
        let mut r = Reader::new(buf);
        let format = r.u32()?;
        if format != FORMAT_VERSION {
            return Err(DecodeError("manifest from another fingerprint format"));
        }
        let dockerfile = r.array()?;
        let target_stage = r.str()?.to_string();
        let n = r.len()?;
        let mut platforms = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            platforms.push(r.str()?.to_string());
        }
        let args = read_pairs(&mut r)?.into_iter().collect();
        let bases = read_pairs(&mut r)?;
        let extra = read_pairs(&mut r)?.into_iter().collect();
        let nsec = r.len()?;
        let mut sections = Vec::with_capacity(nsec.min(64));
        for _ in 0..nsec {
            let name = r.str()?.to_string();
            let label = r.str()?.to_string();
            let mut filter = Filter::default();
            for _ in 0..r.len()? {
                filter.excludes.push(r.str()?.to_string());
            }
            filter.reads = match r.u32()? {
                0 => None,
                1 => {
                    let n = r.len()?;
                    let mut paths = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        paths.push(r.str()?.to_string());
                    }
                    Some(paths)
                }
                _ => return Err(DecodeError("bad filter")),
            };
            let nfiles = r.len()?;
            let mut paths = String::new();
            let mut files = Vec::with_capacity(nfiles);
            let mut prev_start = 0usize;
            for _ in 0..nfiles {
                let shared = r.len()?;
                let suffix = r.str()?;
                let h = FileRec {
                    mode: r.u32()?,
                    data: r.array()?,
                };
                let prev = &paths[prev_start..];
                if shared > prev.len() || !prev.is_char_boundary(shared) {
                    return Err(DecodeError("bad path prefix"));
                }
                let start = paths.len();
                paths.extend_from_within(prev_start..prev_start + shared);
                paths.push_str(suffix);
                files.push((paths.len() as u32, h));
                prev_start = start;
            }
            sections.push(Arc::new(Section {
                name,
                label,
                filter,
                paths,
                files,
                entries_digest: OnceLock::new(),
            }));
        }
        if !r.is_empty() {
            return Err(DecodeError("trailing data"));
        }
        Ok(Manifest {
            format,
            dockerfile,
            target_stage,
            platforms,
            args,
            bases,
            extra,
            sections,
        })
    }
}

struct Counter(u64);

/// Bytes collected before each `blake3::Hasher::update` in [`HashSink`].
const HASH_BATCH: usize = 16 * 1024;

/// Hashes the encoder's small pieces in batches: one `update` per piece costs more than
/// hashing the bytes themselves.
struct HashSink {
    hash: blake3::Hasher,
    buf: Vec<u8>,
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > HASH_BATCH {
            self.hash.update(&self.buf);
            self.buf.clear();
        }
        if bytes.len() >= HASH_BATCH {
            self.hash.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }
}

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// Batches the encoder's many small pieces into 64 KiB writes and hashes them on the way.
struct WriteSink<'a, W: std::io::Write> {
    w: &'a mut W,
    hash: blake3::Hasher,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
}

impl<W: std::io::Write> WriteSink<'_, W> {
    fn flush(&mut self) {
        if self.err.is_none() {
            self.hash.update(&self.buf);
            if let Err(e) = self.w.write_all(&self.buf) {
                self.err = Some(e);
            }
        }
        self.buf.clear();
    }
}

impl<W: std::io::Write> Sink for WriteSink<'_, W> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 64 * 1024 {
            self.flush();
        }
    }
}

fn put_pairs<'a>(
    s: &mut impl Sink,
    pairs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) {
    put_len(s, pairs.len() as u64);
    for (k, v) in pairs {
        put_str(s, k);
        put_str(s, v);
    }
}

fn read_pairs(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.len()?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push((r.str()?.to_string(), r.str()?.to_string()));
    }
    Ok(out)
}

fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .take_while(|(x, y)| x == y)
        .count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Human reasons why `new` differs from `old`, most fundamental first; empty when they are
/// equivalent. Paths are shown under each context's label (`src/luamods/init.lua changed`).
pub fn explain(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    if old.format != new.format {
        out.push(format!(
            "fingerprint format changed ({} → {})",
            old.format, new.format
        ));
        return out;
    }
    if old.dockerfile != new.dockerfile {
        out.push("Dockerfile changed".to_string());
    }
    if old.target_stage != new.target_stage {
        out.push(format!(
            "target stage changed ({} → {})",
            shown(&old.target_stage),
            shown(&new.target_stage)
        ));
    }
    if old.platforms != new.platforms {
        out.push(format!(
            "platforms changed ({} → {})",
            shown(&old.platforms.join(",")),
            shown(&new.platforms.join(","))
        ));
    }
    diff_maps(&mut out, "arg ", &old.args, &new.args);
    let bases = |m: &Manifest| -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &m.bases {
            let slot = out.entry(k.clone()).or_default();
            if !slot.is_empty() {
                slot.push('\n');
            }
            slot.push_str(v);
        }
        out
    };
    diff_maps(&mut out, "base ", &bases(old), &bases(new));
    diff_maps(&mut out, "", &old.extra, &new.extra);

    for sec in &new.sections {
        match old.sections.iter().find(|s| s.name == sec.name) {
            None => out.push(format!("{} added", sec.title())),
            Some(prev) => {
                if prev.filter.excludes != sec.filter.excludes {
                    out.push(format!("ignore rules of {} changed", sec.title()));
                }
                if prev.filter.reads != sec.filter.reads {
                    out.push(format!(
                        "paths the Dockerfile reads from {} changed ({} → {})",
                        sec.title(),
                        reads_shown(&prev.filter.reads),
                        reads_shown(&sec.filter.reads)
                    ));
                }
                diff_files(&mut out, prev, sec)
            }
        }
    }
    for sec in &old.sections {
        if !new.sections.iter().any(|s| s.name == sec.name) {
            out.push(format!("{} removed", sec.title()));
        }
    }
    if out.is_empty() && old.key() != new.key() {
        // Cannot happen with this encoder; kept so a future field can never yield "no reason".
        out.push("inputs changed".to_string());
    }
    out
}

fn reads_shown(r: &Option<Vec<String>>) -> String {
    match r {
        None => "all".to_string(),
        Some(p) if p.is_empty() => "none".to_string(),
        Some(p) => p.join(", "),
    }
}

fn shown(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

fn diff_maps(
    out: &mut Vec<String>,
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) {
    for (k, v) in new {
        match old.get(k) {
            None => out.push(format!("{what}{k} added")),
            Some(o) if o != v => out.push(format!("{what}{k} changed")),
            Some(_) => {}
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(format!("{what}{k} removed"));
        }
    }
}

fn diff_files(out: &mut Vec<String>, old: &Section, new: &Section) {
    let mut changed = Tally::default();
    let mut chmod = Tally::default();
    let mut added = Tally::default();
    let mut removed = Tally::default();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((pa, _)), None) => {
                removed.note(old, pa);
                a.next();
            }
            (None, Some((pb, _))) => {
                added.note(new, pb);
                b.next();
            }
            (Some((pa, ha)), Some((pb, hb))) => match walk_cmp(pa, pb) {
                std::cmp::Ordering::Less => {
                    removed.note(old, pa);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    added.note(new, pb);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if ha.data != hb.data || (ha.mode ^ hb.mode) & !MODE_PERM != 0 {
                        changed.note(new, pb);
                    } else if ha.mode != hb.mode {
                        chmod.note(new, pb);
                        chmod.detail.get_or_insert_with(|| {
                            format!(
                                "({:04o} → {:04o})",
                                ha.mode & MODE_PERM,
                                hb.mode & MODE_PERM
                            )
                        });
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    changed.report(out, "changed");
    chmod.report(out, "mode changed");
    added.report(out, "added");
    removed.report(out, "removed");
}

#[derive(Default)]
struct Tally {
    count: usize,
    example: Option<String>,
    /// Shown after the verb when exactly one entry is affected.
    detail: Option<String>,
}

impl Tally {
    fn note(&mut self, sec: &Section, path: &str) {
        self.count += 1;
        if self.example.is_none() {
            self.example = Some(sec.display(path));
        }
    }

    fn report(self, out: &mut Vec<String>, verb: &str) {
        match (self.count, self.example) {
            (0, _) | (_, None) => {}
            (1, Some(p)) => match self.detail {
                Some(d) => out.push(format!("{p} {verb} {d}")),
                None => out.push(format!("{p} {verb}")),
            },
            (n, Some(p)) => out.push(format!("{n} files {verb} (e.g. {p})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest(files: &[(&str, u8)]) -> Manifest {
        let items = files
            .iter()
            .map(|(p, h)| {
                let rec = FileRec {
                    mode: 0o644,
                    data: [*h; 16],
                };
                (p.to_string(), rec)
            })
            .collect();
        Manifest {
            format: FORMAT_VERSION,
            dockerfile: [0; 16],
            target_stage: String::new(),
            platforms: vec![],
            args: BTreeMap::new(),
            bases: vec![],
            extra: BTreeMap::new(),
            sections: vec![Arc::new(Section::new(String::new(), "svc".into(), items))],
        }
    }

    #[test]
    fn encode_decode_round_trip_with_shared_prefixes_and_unicode() {
        let mut m = manifest(&[
            ("a", 1),
            ("a/b/c.txt", 2),
            ("a/b/d.txt", 3),
            ("é/ü.txt", 4),
            ("é/ü2.txt", 5),
            ("z", 6),
        ]);
        m.args.insert("TAG".into(), "dev".into());
        m.bases.push(("pybase".into(), "abc".into()));
        m.extra.insert("labels".into(), "x=1".into());
        m.platforms.push("linux/amd64".into());
        m.target_stage = "final".into();
        m.sections.push(Arc::new(Section::new(
            "luamods".into(),
            "src/luamods".into(),
            vec![(
                "init.lua".into(),
                FileRec {
                    mode: 0o755,
                    data: [9; 16],
                },
            )],
        )));
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.key(), m.key());
        let paths: Vec<_> = back.sections[0]
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(paths[4], "é/ü.txt");
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn streamed_encoding_equals_the_buffered_one() {
        let names: Vec<String> = (0..5000)
            .map(|i| format!("dir{}/file{i}.txt", i % 13))
            .collect();
        let files: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 7)).collect();
        let m = manifest(&files);
        let mut streamed = Vec::new();
        let sum = m.write_to(&mut streamed).unwrap();
        assert!(streamed.len() > 64 * 1024, "exercise more than one batch");
        assert_eq!(streamed, m.encode());
        assert_eq!(m.encoded_len(), streamed.len() as u64);
        assert_eq!(sum, blake3::hash(&streamed));
    }

    #[test]
    fn label_is_not_part_of_the_key() {
        let a = manifest(&[("x", 1)]);
        let mut b = a.clone();
        Arc::make_mut(&mut b.sections[0]).label = "/elsewhere/entirely".into();
        assert_eq!(a.key(), b.key());
        assert!(explain(&a, &b).is_empty());
    }

    #[test]
    fn explain_words_file_changes_with_counts_and_examples() {
        let old = manifest(&[("a.py", 1), ("b.py", 1), ("c.py", 1), ("gone.py", 1)]);
        let new = manifest(&[
            ("a.py", 2),
            ("b.py", 1),
            ("c.py", 1),
            ("new1.py", 1),
            ("new2.py", 1),
            ("new3.py", 1),
        ]);
        assert_eq!(
            explain(&old, &new),
            vec![
                "svc/a.py changed",
                "3 files added (e.g. svc/new1.py)",
                "svc/gone.py removed"
            ]
        );
        assert!(explain(&new, &new).is_empty());
    }

    #[test]
    fn explain_words_non_file_changes() {
        let old = manifest(&[]);
        let mut new = old.clone();
        new.dockerfile = [1; 16];
        new.target_stage = "final".into();
        new.args.insert("TAG".into(), "v2".into());
        new.bases.push(("pybase".into(), "sha256:2".into()));
        new.extra.insert("no_cache".into(), "true".into());
        new.sections.push(Arc::new(Section::new(
            "common".into(),
            "src/common".into(),
            vec![],
        )));
        let mut old2 = old.clone();
        old2.args.insert("TAG".into(), "v1".into());
        old2.args.insert("GONE".into(), "1".into());
        old2.bases.push(("pybase".into(), "sha256:1".into()));
        assert_eq!(
            explain(&old2, &new),
            vec![
                "Dockerfile changed",
                "target stage changed (none → final)",
                "arg TAG changed",
                "arg GONE removed",
                "base pybase changed",
                "no_cache added",
                "context common added",
            ]
        );
        let mut other_format = old.clone();
        other_format.format = 0;
        assert_eq!(
            explain(&other_format, &new),
            vec![format!("fingerprint format changed (0 → {FORMAT_VERSION})")]
        );
    }

    #[test]
    fn walk_order_puts_children_before_siblings_with_higher_bytes() {
        let mut v = vec!["a.txt", "a-b", "a/x", "a", "a/x/y", "b"];
        v.sort_by(|x, y| walk_cmp(x, y));
        assert_eq!(v, ["a", "a/x", "a/x/y", "a-b", "a.txt", "b"]);
        // A builder fed out of order still yields the canonical section.
        let rec = FileRec {
            mode: 0,
            data: [0; 16],
        };
        let mut b = SectionBuilder::default();
        for p in ["b", "a-b", "a/x"] {
            b.push(p, rec);
        }
        let s = b.finish(String::new(), String::new());
        let got: Vec<&str> = s.iter().map(|(p, _)| p).collect();
        assert_eq!(got, ["a/x", "a-b", "b"]);
    }

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix("aé", "aè"), 1);
        assert_eq!(common_prefix("abc", "abd"), 2);
        assert_eq!(common_prefix("", "x"), 0);
    }
}
