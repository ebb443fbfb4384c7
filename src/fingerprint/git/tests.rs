//! Against real repositories made by the `git` on PATH: what git writes is the specification
//! these tests hold the reader to.

use super::*;
use crate::fingerprint::cache::StatCache;
use crate::fingerprint::compute::compute;
use crate::fingerprint::FingerprintInput;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::process::Command;
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A committed repository `src` and a clone of it `clone`, whose index was rewritten once the
/// files were older than the racy window (as on a clone of a large tree, where all but the
/// last moment's files are).
fn cloned(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q"]);
    for (path, text) in files {
        let p = src.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-qm", "one"]);
    git(t.path(), &["clone", "-q", "src", "clone"]);
    let clone = t.path().join("clone");
    settle(&clone);
    (t, clone)
}

/// Rewrites the index after the racy window so that every unchanged file is vouched for.
fn settle(repo: &Path) {
    std::thread::sleep(Duration::from_millis(250));
    fs::remove_file(repo.join(".git/index")).unwrap();
    git(repo, &["reset", "-q"]);
}

/// `git ls-files -s`: (path, oid hex, mode, stage).
fn ls_files(repo: &Path) -> Vec<(String, String, String, u8)> {
    git(repo, &["ls-files", "-s"])
        .lines()
        .map(|l| {
            let (meta, path) = l.split_once('\t').unwrap();
            let mut m = meta.split(' ');
            let (mode, oid, stage) = (m.next().unwrap(), m.next().unwrap(), m.next().unwrap());
            (path.into(), oid.into(), mode.into(), stage.parse().unwrap())
        })
        .collect()
}

fn hex(oid: &Oid) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

fn stat_of(p: &Path) -> FileStat {
    FileStat::from_metadata(&fs::symlink_metadata(p).unwrap())
}

fn view(dir: &Path) -> Option<DirView> {
    GitIndexes::default().view(dir)
}

const TREE: &[(&str, &str)] = &[
    ("svc/Dockerfile", "FROM base\nCOPY . /app\n"),
    ("svc/app/main.py", "print(1)\n"),
    ("svc/app/pkg/util.py", "x = 1\n"),
    ("svc/README.md", "readme\n"),
    ("shared/lua/init.lua", "return {}\n"),
    ("top.txt", "top\n"),
];

#[test]
fn every_index_version_reads_as_git_lists_it() {
    // Long names, so that v4's prefix compression strips more than one varint byte's worth.
    let long = format!("svc/{0}/{0}/{0}/deep.txt", "n".repeat(200));
    let mut files = TREE.to_vec();
    files.push((&long, "deep\n"));
    let (_t, repo) = cloned(&files);
    fs::write(repo.join("svc/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        repo.join("svc/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    symlink("app/main.py", repo.join("svc/entry")).unwrap();
    fs::write(repo.join("svc/later.txt"), "not yet\n").unwrap();
    git(&repo, &["add", "svc/run.sh", "svc/entry"]);
    // Intent-to-add sets the extended flags, which only versions 3 and 4 can hold.
    git(&repo, &["add", "-N", "svc/later.txt"]);
    for version in ["3", "4", "2"] {
        if version == "2" {
            git(&repo, &["rm", "-q", "--cached", "svc/later.txt"]);
        }
        git(&repo, &["update-index", "--index-version", version]);
        let bytes = fs::read(repo.join(".git/index")).unwrap();
        let parsed = parse_index(&bytes, 0).unwrap_or_else(|| panic!("version {version}"));
        let got: Vec<(String, String, bool)> = parsed
            .entries
            .iter()
            .map(|e| {
                let p = String::from_utf8(parsed.path(e).to_vec()).unwrap();
                (p, hex(&e.oid), e.regular_clean)
            })
            .collect();
        let want: Vec<(String, String, bool)> = ls_files(&repo)
            .into_iter()
            .map(|(p, oid, mode, stage)| {
                let regular = mode == "100644" || mode == "100755";
                let clean = regular && stage == 0 && p != "svc/later.txt";
                (p, oid, clean)
            })
            .collect();
        assert_eq!(got, want, "index version {version}");
    }
}

#[test]
fn a_settled_clone_is_vouched_for_and_any_change_is_not() {
    let (_t, repo) = cloned(TREE);
    let v = view(&repo.join("svc")).expect("a plain clone is usable");
    let oids: HashMap<String, String> = ls_files(&repo)
        .into_iter()
        .map(|(p, oid, _, _)| (p, oid))
        .collect();
    for rel in ["Dockerfile", "app/main.py", "app/pkg/util.py", "README.md"] {
        let p = repo.join("svc").join(rel);
        match v.vouched_blob(rel, &stat_of(&p)) {
            Some(oid) => assert_eq!(hex(&oid), oids[&format!("svc/{rel}")], "{rel}"),
            None => panic!("{rel} is not vouched for"),
        }
    }
    // The top of the work tree and a directory deeper than the files' own.
    let top = view(&repo).unwrap();
    assert!(top
        .vouched_blob("top.txt", &stat_of(&repo.join("top.txt")))
        .is_some());
    assert_eq!(
        top.vouched_blob("svc", &stat_of(&repo.join("svc"))),
        None,
        "a directory is not a tracked file"
    );

    // Same size, mtime put back: only the ctime tells, and it must. An old mtime, so that git
    // itself sees nothing racy about the entry and keeps it as recorded (it compares seconds).
    let main = repo.join("svc/app/main.py");
    fs::File::options()
        .write(true)
        .open(&main)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    settle(&repo);
    let before = fs::metadata(&main).unwrap().modified().unwrap();
    fs::write(&main, "print(2)\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&main)
        .unwrap()
        .set_modified(before)
        .unwrap();
    assert_eq!(v.vouched_blob("app/main.py", &stat_of(&main)), None);
    // Later, git writes its index again without looking at that file: now only its ctime
    // differs from the recorded one, and the change is no longer recent.
    std::thread::sleep(Duration::from_millis(250));
    fs::write(repo.join("svc/other.txt"), "other\n").unwrap();
    git(&repo, &["add", "svc/other.txt"]);
    let v = view(&repo.join("svc")).unwrap();
    assert_eq!(v.vouched_blob("app/main.py", &stat_of(&main)), None);
    // Replaced by another file with the same content (a new inode).
    let util = repo.join("svc/app/pkg/util.py");
    fs::write(repo.join("svc/tmp"), "x = 1\n").unwrap();
    fs::rename(repo.join("svc/tmp"), &util).unwrap();
    assert_eq!(v.vouched_blob("app/pkg/util.py", &stat_of(&util)), None);
    fs::write(repo.join("svc/new.txt"), "new\n").unwrap();
    assert_eq!(
        v.vouched_blob("new.txt", &stat_of(&repo.join("svc/new.txt"))),
        None
    );
    // A file changed just before the index was written is racy, even with its stat recorded.
    fs::write(repo.join("svc/README.md"), "changed\n").unwrap();
    git(&repo, &["add", "svc/README.md"]);
    let v = view(&repo.join("svc")).unwrap();
    assert_eq!(
        v.vouched_blob("README.md", &stat_of(&repo.join("svc/README.md"))),
        None
    );
}

#[test]
fn anything_that_can_convert_on_checkout_turns_the_index_off() {
    let harmless = "*.png binary\n*.md -diff linguist-documentation\n# text eol=crlf\n";
    let cases: &[(&str, &str, &str, bool)] = &[
        // (file, content, where it goes, usable afterwards)
        (".gitattributes", harmless, "commit", true),
        (".gitattributes", "* text=auto\n", "commit", false),
        ("svc/.gitattributes", "*.py eol=crlf\n", "commit", false),
        (
            "svc/.gitattributes",
            "*.py filter=lfs diff=lfs merge=lfs -text\n",
            "commit",
            false,
        ),
        (".gitattributes", "[attr]mine text\n", "commit", false),
        // Untracked, above the context: git still reads it.
        ("svc/.gitattributes", "* ident\n", "disk", false),
        (
            ".gitattributes",
            "* working-tree-encoding=UTF-16\n",
            "disk",
            false,
        ),
        (".git/info/attributes", "* text\n", "disk", false),
        (".git/info/attributes", harmless, "disk", true),
        (
            ".git/config",
            "[core]\n\tautocrlf = true\n",
            "append",
            false,
        ),
        (
            ".git/config",
            "[core]\n\tautocrlf = input\n",
            "append",
            false,
        ),
        (
            ".git/config",
            "[core]\n\tautocrlf = false\n",
            "append",
            true,
        ),
        (".git/config", "[core]\n\teol = crlf\n", "append", false),
        (".git/config", "[include]\n\tpath = extra\n", "append", true),
        (".git/extra", "[core]\n\tautocrlf = true\n", "disk", false),
        (
            ".git/config",
            "[includeIf \"gitdir:/nowhere/\"]\n\tpath = extra2\n",
            "append",
            true,
        ),
        // git reads an included file only when its condition holds; this one does not.
        (".git/extra2", "[core]\n\tautocrlf = true\n", "disk", true),
        (
            ".git/config",
            "[core]\n\tattributesFile = /x\n",
            "append",
            false,
        ),
        (
            ".git/config",
            "[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n",
            "append",
            true,
        ),
        // Attributes read from a tree instead of the work tree (git 2.45).
        (".git/config", "[attr]\n\ttree = HEAD\n", "append", false),
        (".git/config", "[core]\n\tbare = false\n", "append", true),
    ];
    // Each case builds on a fresh clone, except the include chain (its two steps share one).
    let (mut _t, mut repo) = cloned(TREE);
    for (i, (file, content, how, usable)) in cases.iter().enumerate() {
        let chained = *file == ".git/extra" || *file == ".git/extra2";
        if !chained {
            (_t, repo) = cloned(TREE);
        }
        let p = repo.join(file);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match *how {
            "append" => {
                let mut text = fs::read_to_string(&p).unwrap();
                text.push_str(content);
                fs::write(&p, text).unwrap();
            }
            _ => fs::write(&p, content).unwrap(),
        }
        if *how == "commit" {
            git(&repo, &["add", file]);
            git(&repo, &["commit", "-qm", "attributes"]);
            settle(&repo);
        }
        let got = view(&repo.join("svc")).is_some();
        assert_eq!(got, *usable, "case {i}: {file} {how} {content:?}");
    }
}

#[test]
fn an_index_git_itself_would_treat_differently_is_not_read() {
    // Split index: the entries live partly in another file.
    let (_t, repo) = cloned(TREE);
    git(&repo, &["update-index", "--split-index"]);
    assert!(view(&repo.join("svc")).is_none(), "split index");

    // A damaged index fails its checksum.
    let (_t, repo) = cloned(TREE);
    let path = repo.join(".git/index");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(view(&repo.join("svc")).is_none(), "bad checksum");
    assert!(parse_index(&bytes, 0).is_none());

    // Turned off.
    let (_t, repo) = cloned(TREE);
    let mut off = GitIndexes::default();
    off.set_off(true);
    assert!(off.view(&repo.join("svc")).is_none());
    // Not in a repository at all.
    let plain = tempfile::tempdir().unwrap();
    assert!(view(plain.path()).is_none());
}

#[test]
fn a_linked_work_tree_reads_its_own_index() {
    let (t, repo) = cloned(TREE);
    let wt = t.path().join("wt");
    git(&repo, &["worktree", "add", "-q", wt.to_str().unwrap()]);
    settle_linked(&wt);
    let v = view(&wt.join("svc")).expect("a linked work tree is usable");
    assert!(v
        .vouched_blob("README.md", &stat_of(&wt.join("svc/README.md")))
        .is_some());
    // Its common directory's config still counts.
    let mut cfg = fs::read_to_string(repo.join(".git/config")).unwrap();
    cfg.push_str("[core]\n\tautocrlf = true\n");
    fs::write(repo.join(".git/config"), cfg).unwrap();
    assert!(view(&wt.join("svc")).is_none());
}

fn settle_linked(wt: &Path) {
    std::thread::sleep(Duration::from_millis(250));
    let git_dir = git(wt, &["rev-parse", "--git-dir"]);
    fs::remove_file(Path::new(git_dir.trim()).join("index")).unwrap();
    git(wt, &["reset", "-q"]);
}

fn fp_input(root: &Path) -> FingerprintInput {
    FingerprintInput {
        target: "svc".into(),
        project_dir: root.to_path_buf(),
        context_dir: root.join("svc"),
        dockerfile: root.join("svc/Dockerfile"),
        named_contexts: vec![("lua".into(), root.join("shared/lua"))],
        args: BTreeMap::new(),
        ..Default::default()
    }
}

/// What a fresh runner does: a new stat cache, the index as the clone left it.
fn fresh_key(root: &Path, git_index: bool) -> (String, u64) {
    let mut cache = StatCache::new();
    cache.use_git_index(git_index);
    let fp = compute(&fp_input(root), &cache).unwrap();
    (fp.key, cache.hashes_performed())
}

fn touch_all(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            touch_all(&p);
        } else if md.is_file() {
            // Rewriting the same bytes moves the ctime: the index no longer vouches.
            fs::write(&p, fs::read(&p).unwrap()).unwrap();
        }
    }
}

#[test]
fn a_fresh_clone_reads_no_tracked_file_and_keys_as_reading_them_all_would() {
    let (_t, repo) = cloned(TREE);
    fs::write(repo.join("svc/untracked.txt"), "u\n").unwrap();
    let (vouched, read) = fresh_key(&repo, true);
    assert_eq!(read, 1, "only the untracked file is read");
    touch_all(&repo);
    let (rehashed, read_all) = fresh_key(&repo, true);
    assert_eq!(read_all, 6, "every file of the two directories is read");
    assert_eq!(
        vouched, rehashed,
        "a blob id from the index and one computed from the bytes are the same record"
    );
    // Without the index every record is blake3's: another key, the same decisions (below).
    let (plain, _) = fresh_key(&repo, false);
    assert_ne!(plain, vouched);
    // Staging a file does not change its record: tracked or not, it is a git blob.
    git(&repo, &["add", "svc/untracked.txt"]);
    assert_eq!(fresh_key(&repo, true).0, vouched);
}

#[test]
fn turning_the_index_off_reads_again_what_it_vouched_for_in_earlier_runs() {
    let (_t, repo) = cloned(TREE);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("stat-cache");
    let cache = StatCache::new();
    let with_index = compute(&fp_input(&repo), &cache).unwrap().key;
    assert_eq!(cache.hashes_performed(), 0);
    assert_eq!(cache.files_vouched(), 5);
    cache.save(&saved).unwrap();

    // A later run: with the index, its records come from the stat cache.
    let (cache, _) = StatCache::load(&saved);
    assert_eq!(compute(&fp_input(&repo), &cache).unwrap().key, with_index);
    assert_eq!(cache.hashes_performed() + cache.files_vouched(), 0);
    // Turned off, nothing the index vouched for is taken, not even from the stat cache.
    let (mut cache, _) = StatCache::load(&saved);
    cache.use_git_index(false);
    let without = compute(&fp_input(&repo), &cache).unwrap().key;
    assert_eq!(cache.hashes_performed(), 5);
    assert_eq!(without, fresh_key(&repo, false).0);
    cache.save(&saved).unwrap();
    // And on again: what the run without it read is read again, and the key is a fresh
    // clone's once more (not a mix of the two kinds of record).
    let (cache, _) = StatCache::load(&saved);
    assert_eq!(compute(&fp_input(&repo), &cache).unwrap().key, with_index);
    assert_eq!(cache.files_vouched(), 5, "taken from the index again");
}

#[test]
fn an_attributes_file_the_walk_leaves_out_still_turns_the_index_off() {
    let (_t, repo) = cloned(TREE);
    let with_index = fresh_key(&repo, true);
    assert_eq!(with_index.1, 0);
    // Untracked, below the context, and ignored: git applies it all the same.
    fs::write(repo.join("svc/.dockerignore"), "**/.gitattributes\n").unwrap();
    fs::write(repo.join("svc/app/pkg/.gitattributes"), "*.py eol=crlf\n").unwrap();
    let cache = StatCache::new();
    compute(&fp_input(&repo), &cache).unwrap();
    // Only the named context's file, which the attributes file does not cover.
    assert_eq!(cache.files_vouched(), 1);
    assert!(
        cache.hashes_performed() >= 5,
        "the context's files are read"
    );
    // A harmless one leaves it on.
    fs::write(repo.join("svc/app/pkg/.gitattributes"), "*.py diff\n").unwrap();
    let cache = StatCache::new();
    compute(&fp_input(&repo), &cache).unwrap();
    assert!(cache.files_vouched() > 0);
}

#[test]
fn a_staged_attributes_file_other_than_the_one_on_disk_turns_the_index_off() {
    let (_t, repo) = cloned(TREE);
    fs::write(repo.join(".gitattributes"), "*.py eol=crlf\n").unwrap();
    git(&repo, &["add", ".gitattributes"]);
    fs::write(repo.join(".gitattributes"), "*.py diff\n").unwrap();
    assert!(view(&repo.join("svc")).is_none());
}

#[test]
fn replaced_objects_and_symlinked_attributes_turn_the_index_off() {
    let (_t, repo) = cloned(TREE);
    let blob = git(&repo, &["rev-parse", "HEAD:svc/README.md"]);
    fs::write(repo.join("other"), "replacement\n").unwrap();
    let other = git(&repo, &["hash-object", "-w", "other"]);
    git(&repo, &["replace", blob.trim(), other.trim()]);
    assert!(view(&repo.join("svc")).is_none(), "loose replace ref");
    git(&repo, &["pack-refs", "--all"]);
    assert!(view(&repo.join("svc")).is_none(), "packed replace ref");

    // A tracked attributes file that is a symlink to a FIFO: not followed, not waited on.
    let (t, repo) = cloned(TREE);
    let fifo = t.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    symlink(&fifo, repo.join("shared/.gitattributes")).unwrap();
    git(&repo, &["add", "shared/.gitattributes"]);
    assert!(view(&repo.join("svc")).is_none());
    // Untracked, above the context.
    let (t, repo) = cloned(TREE);
    let fifo = t.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    symlink(&fifo, repo.join("svc/.gitattributes")).unwrap();
    assert!(view(&repo.join("svc/app")).is_none());
}

#[test]
fn an_index_without_a_checksum_is_read() {
    // feature.manyFiles turns index.skipHash on (git 2.40): the trailer is all zeros. Written
    // by hand here, so that the test does not depend on the git it runs with.
    let (_t, repo) = cloned(TREE);
    let path = repo.join(".git/index");
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 20..].fill(0);
    let md = fs::metadata(&path).unwrap();
    fs::write(&path, &bytes).unwrap();
    // Same write time as git's, so that the files are not newer than this index.
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(md.modified().unwrap())
        .unwrap();
    let v = view(&repo.join("svc")).expect("usable");
    assert!(v
        .vouched_blob("README.md", &stat_of(&repo.join("svc/README.md")))
        .is_some());
}

#[test]
fn an_entry_git_smudged_as_racy_is_not_taken_for_an_empty_file() {
    let (_t, repo) = cloned(TREE);
    let file = repo.join("svc/app/main.py");
    // What git writes when it finds the entry racily clean: the file's stat, size 0. The file
    // is then emptied without its stat moving (a coarse clock): only size 0 says "changed".
    fs::write(&file, "").unwrap();
    let st = fs::symlink_metadata(&file).unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let index = repo.join(".git/index");
    let mut bytes = fs::read(&index).unwrap();
    let mut at = 12;
    let mut found = false;
    for _ in 0..be32(&bytes, 8).unwrap() {
        let nul = bytes[at + 62..].iter().position(|&b| b == 0).unwrap();
        let name = &bytes[at + 62..at + 62 + nul];
        if name == b"svc/app/main.py" {
            let fields = [
                st.ctime() as u32,
                st.ctime_nsec() as u32,
                st.mtime() as u32,
                st.mtime_nsec() as u32,
                st.dev() as u32,
                st.ino() as u32,
            ];
            for (i, v) in fields.iter().enumerate() {
                bytes[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
            }
            bytes[at + 36..at + 40].copy_from_slice(&0u32.to_be_bytes());
            found = true;
        }
        at += (62 + nul + 8) & !7;
    }
    assert!(found);
    let body = bytes.len() - 20;
    let sum = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &bytes[..body]);
    bytes[body..].copy_from_slice(sum.as_ref());
    fs::write(&index, &bytes).unwrap();
    let status = git(&repo, &["status", "--porcelain"]);
    assert!(
        status.contains("svc/app/main.py"),
        "git sees the change: {status}"
    );
    let v = view(&repo.join("svc")).unwrap();
    assert_eq!(v.vouched_blob("app/main.py", &stat_of(&file)), None);
    // An empty file committed as such is the empty blob, and is vouched for.
    fs::write(repo.join("svc/empty"), "").unwrap();
    git(&repo, &["add", "svc/empty"]);
    git(&repo, &["commit", "-qam", "empty"]);
    settle(&repo);
    let v = view(&repo.join("svc")).unwrap();
    assert!(v
        .vouched_blob("empty", &stat_of(&repo.join("svc/empty")))
        .is_some());
}

#[test]
fn with_the_index_a_change_is_seen_exactly_when_it_is_seen_without_it() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("BK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b6b_2026);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let files: Vec<(String, String)> = (0..12)
        .map(|i| {
            let dir = ["svc", "svc/app", "svc/app/pkg", "shared/lua"][i % 4];
            (format!("{dir}/f{i}.txt"), format!("content {i}\n"))
        })
        .chain(TREE.iter().map(|(p, c)| (p.to_string(), c.to_string())))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let (_t, repo) = cloned(&refs);
    let mut last = (fresh_key(&repo, true).0, fresh_key(&repo, false).0);
    for round in 0..40 {
        let (path, _) = &files[rng.gen_range(0..files.len())];
        let p = repo.join(path);
        let kind = rng.gen_range(0..7);
        let exists = p.exists();
        match kind {
            // Same length, mtime put back.
            0 if exists => {
                let before = fs::metadata(&p).unwrap().modified().unwrap();
                let mut bytes = fs::read(&p).unwrap();
                if let Some(b) = bytes.first_mut() {
                    *b = if *b == b'X' { b'Y' } else { b'X' };
                }
                fs::write(&p, bytes).unwrap();
                let f = fs::File::options().write(true).open(&p).unwrap();
                f.set_modified(before).unwrap();
            }
            1 if exists => {
                let mut bytes = fs::read(&p).unwrap();
                bytes.extend_from_slice(format!("{round}\n").as_bytes());
                fs::write(&p, bytes).unwrap();
            }
            2 if exists => fs::remove_file(&p).unwrap(),
            3 if exists => {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&p).unwrap().permissions().mode();
                fs::set_permissions(&p, fs::Permissions::from_mode(mode ^ 0o100)).unwrap();
            }
            // Same bytes rewritten: nothing changed.
            4 if exists => fs::write(&p, fs::read(&p).unwrap()).unwrap(),
            // Commit what is there, then a settled index, as a new clone would have.
            5 => {
                git(&repo, &["add", "-A", "svc", "shared"]);
                let _ = Command::new("git")
                    .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                    .args(["commit", "-qm", "edit"])
                    .current_dir(&repo)
                    .output();
                settle(&repo);
            }
            _ => fs::write(&p, format!("back {round}\n")).unwrap(),
        }
        let now = (fresh_key(&repo, true).0, fresh_key(&repo, false).0);
        let plain_changed = now.1 != last.1;
        let git_changed = now.0 != last.0;
        assert_eq!(
            git_changed, plain_changed,
            "seed {seed} round {round}: kind {kind} on {path}"
        );
        last = now;
    }
}

#[test]
fn a_repository_git_will_not_open_is_not_used() {
    // git then leaves out the repository's own config, autocrlf included, without an error.
    let (_t, repo) = cloned(TREE);
    let mut cfg = fs::read_to_string(repo.join(".git/config")).unwrap();
    cfg = cfg.replace("repositoryformatversion = 0", "repositoryformatversion = 1");
    cfg.push_str("[core]\n\tautocrlf = true\n[extensions]\n\tbkbuildunknown = true\n");
    fs::write(repo.join(".git/config"), cfg).unwrap();
    assert!(view(&repo.join("svc")).is_none());
}

#[test]
fn a_fifo_in_the_git_directory_is_not_waited_on() {
    let (_t, repo) = cloned(TREE);
    let packed = repo.join(".git/packed-refs");
    let _ = fs::remove_file(&packed);
    assert!(Command::new("mkfifo")
        .arg(&packed)
        .status()
        .unwrap()
        .success());
    let dir = repo.join("svc");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(view(&dir).is_some());
    });
    let usable = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the view must not block on a FIFO");
    assert!(!usable);
}
