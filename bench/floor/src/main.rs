//! `bkbench-floor`: the cost floor of deciding "nothing changed" for a set of build contexts.
//!
//! For each context root it applies that root's `.dockerignore` (only the two pattern shapes the
//! benchmark generator writes: `**/GLOB` = a name anywhere, `GLOB` = a name at the root; `*` is
//! the only wildcard) and measures, with warm page cache:
//!
//! * `walk`: readdir + lstat of every included entry (what any tool that must also notice new
//!   files has to do at least once per run);
//! * `lstat`: lstat of every included file from a list known in advance (no readdir);
//! * `hash`: read + blake3 of every included byte (the cost of checking by content alone).
//!
//! Each phase runs on `--threads` threads (default: the machine's cores) `--repeat` times after
//! one warm-up; all timings are printed as one JSON object so the harness can take medians.
//! It knows nothing about bk-build; it is a yardstick, not a reimplementation.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
enum Rule {
    /// `**/GLOB`: a path component matching GLOB at any depth.
    Anywhere(String),
    /// `GLOB` without a slash: an entry directly under the root.
    AtRoot(String),
}

fn parse_dockerignore(root: &Path) -> Result<Vec<Rule>, String> {
    let p = root.join(".dockerignore");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.trim_start_matches("./").trim_end_matches('/');
        if let Some(rest) = l.strip_prefix("**/") {
            if !rest.contains('/') && !rest.contains("**") {
                rules.push(Rule::Anywhere(rest.to_string()));
                continue;
            }
        } else if !l.contains('/') && !l.starts_with('!') {
            rules.push(Rule::AtRoot(l.to_string()));
            continue;
        }
        return Err(format!(
            "{}:{}: pattern {l:?} is not supported by this floor tool (only `**/NAME` and `NAME`); \
             extend parse_dockerignore if the generator changed",
            p.display(),
            i + 1
        ));
    }
    Ok(rules)
}

/// `*` matches any run of characters; everything else literally.
fn glob(pat: &str, name: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn excluded(rules: &[Rule], name: &str, at_root: bool) -> bool {
    rules.iter().any(|r| match r {
        Rule::Anywhere(g) => glob(g, name),
        Rule::AtRoot(g) => at_root && glob(g, name),
    })
}

#[derive(Default)]
struct Walked {
    files: Vec<(PathBuf, u64)>,
    entries: usize,
}

fn walk(root: &Path, rules: &[Rule], out: &mut Walked) -> std::io::Result<()> {
    let mut stack = vec![(root.to_path_buf(), true)];
    while let Some((dir, is_root)) = stack.pop() {
        for ent in fs::read_dir(&dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if excluded(rules, &name, is_root) {
                continue;
            }
            let path = ent.path();
            let md = fs::symlink_metadata(&path)?;
            out.entries += 1;
            if md.is_dir() {
                stack.push((path, false));
            } else {
                out.files.push((path, md.len()));
            }
        }
    }
    Ok(())
}

/// Run `f` over `items` on `threads` threads, items handed out one by one.
fn par<T: Sync, R: Send + Default>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T, &mut R) + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut acc = R::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        match items.get(i) {
                            Some(it) => f(it, &mut acc),
                            None => break,
                        }
                    }
                    acc
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bkbench-floor: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut repeat = 5usize;
    let mut roots = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--threads N")?
            }
            "--repeat" => {
                repeat = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--repeat N")?
            }
            "-h" | "--help" => {
                println!("usage: bkbench-floor [--threads N] [--repeat R] ROOT...");
                return Ok(());
            }
            _ => roots.push(PathBuf::from(a)),
        }
    }
    if roots.is_empty() {
        return Err("usage: bkbench-floor [--threads N] [--repeat R] ROOT...".into());
    }
    let threads = threads.max(1);
    let ctxs: Vec<(PathBuf, Vec<Rule>)> = roots
        .iter()
        .map(|r| parse_dockerignore(r).map(|rules| (r.clone(), rules)))
        .collect::<Result<_, _>>()?;

    let walk_once = || -> Result<Walked, String> {
        let parts: Vec<(Walked, Option<String>)> = par(
            &ctxs,
            threads,
            |(root, rules), acc: &mut (Walked, Option<String>)| {
                if let Err(e) = walk(root, rules, &mut acc.0) {
                    acc.1
                        .get_or_insert_with(|| format!("walking {}: {e}", root.display()));
                }
            },
        );
        let mut all = Walked::default();
        for (mut w, err) in parts {
            if let Some(e) = err {
                return Err(e);
            }
            all.files.append(&mut w.files);
            all.entries += w.entries;
        }
        Ok(all)
    };

    let w = walk_once()?; // warm-up; also gives the file list
    let files = w.files;
    let bytes: u64 = files.iter().map(|(_, n)| n).sum();
    let mut walk_s = Vec::new();
    let mut lstat_s = Vec::new();
    let mut hash_s = Vec::new();
    let hash_all = || -> Result<(), String> {
        let errs: Vec<Option<String>> = par(&files, threads, |(p, _), acc: &mut Option<String>| {
            let mut h = blake3::Hasher::new();
            let mut buf = [0u8; 64 * 1024];
            let r = fs::File::open(p).and_then(|mut f| loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break Ok(());
                }
                h.update(&buf[..n]);
            });
            std::hint::black_box(h.finalize());
            if let Err(e) = r {
                acc.get_or_insert_with(|| format!("{}: {e}", p.display()));
            }
        });
        match errs.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    hash_all()?; // warm the page cache for the contents too
    for _ in 0..repeat {
        let t = Instant::now();
        let n = walk_once()?.entries;
        walk_s.push(t.elapsed().as_secs_f64());
        std::hint::black_box(n);

        let t = Instant::now();
        let missing: Vec<usize> = par(&files, threads, |(p, _), acc: &mut usize| {
            if fs::symlink_metadata(p).is_err() {
                *acc += 1;
            }
        });
        lstat_s.push(t.elapsed().as_secs_f64());
        if missing.iter().sum::<usize>() > 0 {
            return Err("files vanished while measuring".into());
        }

        let t = Instant::now();
        hash_all()?;
        hash_s.push(t.elapsed().as_secs_f64());
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.6}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"roots\":{},\"threads\":{threads},\"files\":{},\"entries\":{},\"bytes\":{bytes},\
         \"walk_s\":[{}],\"lstat_s\":[{}],\"hash_s\":[{}]}}",
        roots.len(),
        files.len(),
        w.entries,
        list(&walk_s),
        list(&lstat_s),
        list(&hash_s)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_dockerignore_names() {
        assert!(glob("*.pyc", "m.cpython-311.pyc"));
        assert!(!glob("*.pyc", "m.py"));
        assert!(glob("node_modules", "node_modules"));
        assert!(!glob("node_modules", "node_modules2"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "acb"));
    }

    #[test]
    fn walk_applies_root_and_anywhere_rules() {
        let d = std::env::temp_dir().join(format!("bkfloor-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        for f in [
            "keep/a.py",
            "keep/x.pyc",
            "build/out.bin",
            "keep/build/k.txt",
            "n/node_modules/j.js",
        ] {
            let p = d.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        fs::write(
            d.join(".dockerignore"),
            "# c\n**/node_modules\n**/*.pyc\nbuild\n",
        )
        .unwrap();
        let rules = parse_dockerignore(&d).unwrap();
        let mut w = Walked::default();
        walk(&d, &rules, &mut w).unwrap();
        let mut got: Vec<String> = w
            .files
            .iter()
            .map(|(p, _)| p.strip_prefix(&d).unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, [".dockerignore", "keep/a.py", "keep/build/k.txt"]);
        fs::remove_dir_all(&d).unwrap();
    }
}
