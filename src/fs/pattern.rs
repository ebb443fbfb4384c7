//! `.dockerignore` / include pattern matching with moby/patternmatcher's exact semantics.
//!
//! How a pattern list is read (the rules BuildKit applies, which we must reproduce bit for bit
//! because the daemon diffs what we send against what it expects):
//! - each pattern is whitespace-trimmed and Go-`filepath.Clean`ed; a leading `!` makes it an
//!   exception. Nothing else is stripped here: `.dockerignore` text goes through
//!   [`crate::fs::parse_dockerignore`] first, which removes leading `/` the way BuildKit's
//!   frontend does before it sends the list to us;
//! - `*` = any run of non-`/` characters, `?` = one non-`/` character, `[...]` classes,
//!   `\` escapes the next character, `**` = any number of path segments (`**/` may be empty),
//!   a trailing `**` matches everything below;
//! - patterns are evaluated in order and the last one that matches wins; a pattern that matches
//!   a parent directory of a path matches the path too.
//!
//! Patterns are compiled once into the same four kinds patternmatcher uses (exact string,
//! literal prefix, literal suffix, regular expression) so odd corners behave identically: for
//! example `**foo` is a plain suffix test and matches `barfoo`, and `a**b` matches `a/x/b` but not
//! `axb`. Regular expressions are the ones patternmatcher would build, translated from Go's RE2
//! syntax to the `regex` crate's.

use regex::Regex;

use super::FsError;

/// How one pattern is tested (mirrors patternmatcher's `matchType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No wildcard at all: string equality.
    Exact,
    /// Literal text followed by a final `**`: `starts_with`.
    Prefix,
    /// Leading `**` followed by literal text: `ends_with` (plus `**/x` matching `x`).
    Suffix,
    /// Everything else: an anchored regular expression.
    Regexp,
}

#[derive(Debug)]
struct Pattern {
    /// Cleaned pattern text without the leading `!`.
    text: String,
    exception: bool,
    kind: Kind,
    regex: Option<Regex>,
    /// For [`Kind::Regexp`]: matches every string that is a prefix of some string `regex`
    /// matches. `None` means "could not build it", treated as "anything may match below".
    prefix_regex: Option<Regex>,
    /// For [`Kind::Regexp`] patterns that can only match paths with exactly this many `/`
    /// (no `**`, no classes, no escapes that could stand for `/`): a free pre-filter.
    fixed_slashes: Option<usize>,
}

impl Pattern {
    fn is_match(&self, path: &str, slashes: usize) -> bool {
        match self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regexp => {
                if self.fixed_slashes.is_some_and(|n| n != slashes) {
                    return false;
                }
                self.regex.as_ref().is_some_and(|r| r.is_match(path))
            }
        }
    }

    /// Could this pattern match some path strictly below `dir_slash` (a directory path that
    /// ends with `/`)? May answer `true` when unsure, never `false` when a match is possible.
    fn may_match_below(&self, dir_slash: &str) -> bool {
        match self.kind {
            Kind::Exact => self.text.starts_with(dir_slash),
            Kind::Prefix => {
                let lit = &self.text[..self.text.len() - 2];
                lit.starts_with(dir_slash) || dir_slash.starts_with(lit)
            }
            Kind::Suffix => true,
            Kind::Regexp => self
                .prefix_regex
                .as_ref()
                .is_none_or(|r| r.is_match(dir_slash)),
        }
    }
}

/// A compiled include or exclude pattern list with moby/patternmatcher semantics.
#[derive(Debug)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exceptions: bool,
}

impl PatternMatcher {
    /// Compiles a pattern list the way `patternmatcher.New` does: blank entries are dropped,
    /// each entry is trimmed and cleaned, a leading `!` marks an exception.
    ///
    /// Fails on a lone `!` and on patterns Go's `filepath.Match` or regexp compiler would reject
    /// (BuildKit fails such builds too; we report it before touching the disk).
    pub fn new(patterns: &[String]) -> Result<Self, FsError> {
        let mut out = Vec::with_capacity(patterns.len());
        let mut has_exceptions = false;
        for raw in patterns {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = go_clean(trimmed);
            let (exception, text) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(FsError::BadPattern {
                        pattern: raw.clone(),
                        reason: "a lone \"!\" excludes nothing; write the path after the !".into(),
                    })
                }
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            has_exceptions |= exception;
            if go_match(&text, ".").is_err() {
                return Err(FsError::BadPattern {
                    pattern: raw.clone(),
                    reason: "syntax error in pattern (unbalanced [ ], bad range or trailing \\)"
                        .into(),
                });
            }
            let pattern = compile(text, exception).map_err(|reason| FsError::BadPattern {
                pattern: raw.clone(),
                reason,
            })?;
            out.push(pattern);
        }
        Ok(PatternMatcher {
            patterns: out,
            has_exceptions,
        })
    }

    /// No usable pattern (all entries were blank).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exceptions(&self) -> bool {
        self.has_exceptions
    }

    /// Does `rel_path` (relative, `/`-separated, clean) match, counting matches of its parent
    /// directories? This is patternmatcher's `MatchesOrParentMatches`. The walker uses the
    /// incremental variant fsutil uses instead, which agrees with this one except on contrived
    /// lists that re-match a directory and then except part of it.
    pub fn matches(&self, rel_path: &str) -> bool {
        let slashes = rel_path.bytes().filter(|b| *b == b'/').count();
        let mut matched = false;
        for p in &self.patterns {
            if p.exception != matched {
                continue;
            }
            if p.is_match(rel_path, slashes) || parent_matches(p, rel_path) {
                matched = !p.exception;
            }
        }
        matched
    }

    /// Could a non-exception pattern match something strictly inside directory `dir`?
    /// When `false`, a directory that is not matched itself cannot contain matches either,
    /// so an include walk need not descend into it.
    pub fn may_match_inside(&self, dir: &str) -> bool {
        self.may_match_below(dir, false)
    }

    /// Could an exception (`!`) pattern match something strictly inside directory `dir`?
    /// When `false`, an excluded directory stays excluded all the way down and the walk may
    /// skip it without listing it.
    pub fn may_reinclude_inside(&self, dir: &str) -> bool {
        self.has_exceptions && self.may_match_below(dir, true)
    }

    fn may_match_below(&self, dir: &str, exceptions: bool) -> bool {
        let mut dir_slash = String::with_capacity(dir.len() + 1);
        dir_slash.push_str(dir);
        dir_slash.push('/');
        self.patterns
            .iter()
            .filter(|p| p.exception == exceptions)
            .any(|p| p.may_match_below(&dir_slash))
    }

    /// patternmatcher's `MatchesUsingParentResults`, the incremental form fsutil's walk uses.
    ///
    /// `parent` holds the per-pattern results recorded for the parent directory (`None` for
    /// top-level entries); when `record` is given it receives this path's per-pattern results
    /// for its children. `slashes` is the number of `/` in `path`.
    ///
    /// Quirks kept on purpose: a pattern skipped by the "last match wins" short-cut is recorded
    /// as not matching, and a parent's recorded match is inherited without re-testing.
    pub(crate) fn eval(
        &self,
        path: &str,
        slashes: usize,
        parent: Option<&[bool]>,
        mut record: Option<&mut Vec<bool>>,
    ) -> bool {
        let parent = parent.filter(|p| p.len() == self.patterns.len() && !p.is_empty());
        if let Some(rec) = record.as_deref_mut() {
            rec.clear();
            rec.resize(self.patterns.len(), false);
        }
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|pm| pm[i]);
            if !hit {
                if p.exception != matched {
                    continue;
                }
                hit = p.is_match(path, slashes);
                if !hit && parent.is_none() {
                    hit = parent_matches(p, path);
                }
            }
            if let Some(rec) = record.as_deref_mut() {
                rec[i] = hit;
            }
            if hit {
                matched = !p.exception;
            }
        }
        matched
    }
}

/// Does `p` match one of the parent directories of `path`? Like patternmatcher, the parent is
/// Go's `filepath.Dir` (which cleans), split at each `/`.
fn parent_matches(p: &Pattern, path: &str) -> bool {
    if !path.contains('/') {
        return false;
    }
    let parent = go_dir(path);
    if parent == "." {
        return false;
    }
    let mut slashes = 0;
    for (idx, _) in parent.match_indices('/') {
        if p.is_match(&parent[..idx], slashes) {
            return true;
        }
        slashes += 1;
    }
    p.is_match(&parent, slashes)
}

/// Builds one pattern: the match kind and regular expression patternmatcher would build for it.
fn compile(text: String, exception: bool) -> Result<Pattern, String> {
    let mut body = String::with_capacity(text.len() * 2);
    let mut kind = Kind::Exact;
    let mut can_fix_slashes = true;
    let mut slashes = 0usize;
    let mut chars = text.chars().peekable();
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                can_fix_slashes = false;
                // `**/` is treated like `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    // A final `**` accepts everything below (like .gitignore).
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        body.push_str(".*");
                        kind = Kind::Regexp;
                    }
                } else {
                    // Any number of segments, including none.
                    body.push_str("(.*/)?");
                    kind = Kind::Regexp;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                body.push_str("[^/]*");
                kind = Kind::Regexp;
            }
            '?' => {
                body.push_str("[^/]");
                kind = Kind::Regexp;
            }
            // patternmatcher means to escape `.+()|{}$`, but its bitmap drops every byte >= 64,
            // so `|`, `{` and `}` reach the regular expression raw: `a*|b*` is an alternation
            // and `x{2}` a repetition there, and therefore here too.
            '.' | '+' | '(' | ')' | '$' => {
                body.push('\\');
                body.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    body.push('\\');
                    body.push(next);
                    kind = Kind::Regexp;
                    if next == '/' {
                        slashes += 1;
                    } else if !next.is_ascii() || next.is_ascii_alphanumeric() {
                        // `\W`, `\S`, `\pL`... could stand for a `/`.
                        can_fix_slashes = false;
                    }
                }
                None => body.push('\\'),
            },
            '[' | ']' => {
                body.push(ch);
                kind = Kind::Regexp;
                can_fix_slashes = false;
            }
            _ => {
                if ch == '/' {
                    slashes += 1;
                }
                body.push(ch);
            }
        }
        first = false;
    }

    let mut pattern = Pattern {
        text,
        exception,
        kind,
        regex: None,
        prefix_regex: None,
        fixed_slashes: None,
    };
    if kind == Kind::Regexp {
        let atoms = parse_go_regex(&body)?;
        let mut full = String::with_capacity(body.len() + 8);
        for a in &atoms {
            full.push_str(&a.text);
        }
        full.push('$');
        pattern.regex =
            Some(Regex::new(&full).map_err(|e| format!("bad regular expression: {e}"))?);
        // A top-level `|` makes the anchors apply to the first and last alternative only (the
        // match may start or end anywhere): no shortcut is safe then.
        // Same when the leading `^` itself got repeated (`{2}*` compiles to `^{2}...`).
        if !atoms.iter().any(|a| a.kind == AtomKind::Alternation) && !atoms[0].quantified {
            // Deeply nested prefix expressions can exceed the regex crate's nesting limit;
            // then we simply lose the "skip this subtree" optimisation for this pattern.
            pattern.prefix_regex = Regex::new(&prefix_regex_source(&atoms[1..])).ok();
            if can_fix_slashes {
                pattern.fixed_slashes = Some(slashes);
            }
        }
    }
    Ok(pattern)
}

/// One element of a translated regular expression: a single-character matcher, an anchor, or
/// the `(.*/)` group, with its quantifier.
struct Atom {
    /// Rust `regex` syntax for this element, quantifier included.
    text: String,
    kind: AtomKind,
    quantified: bool,
}

#[derive(PartialEq, Eq)]
enum AtomKind {
    Char,
    Group,
    Anchor,
    /// A raw top-level `|` (see [`compile`]).
    Alternation,
}

/// Splits `^` + the RE2-syntax body patternmatcher would compile into atoms, rewriting what the two
/// dialects read differently: inside `[...]` Go treats `[`, `&`, `~` as plain characters while
/// the regex crate uses them for nested classes and set operations; a `{` that does not form a
/// valid repetition is a literal in Go but an error in the regex crate. Errors are the ones Go
/// reports (repetition without operand, nested repetition, count over 1000).
fn parse_go_regex(body: &str) -> Result<Vec<Atom>, String> {
    let chars: Vec<char> = body.chars().collect();
    // patternmatcher's own leading `^`: a repetition at the very start applies to it.
    let mut atoms: Vec<Atom> = vec![Atom {
        text: "^".into(),
        kind: AtomKind::Anchor,
        quantified: false,
    }];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            if let Some((text, len)) = repetition(&chars[i..])? {
                apply_quantifier(&mut atoms, &text)?;
                i += len;
                continue;
            }
        }
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err("trailing backslash".into());
                };
                atoms.push(Atom {
                    text: escape_for_rust(next),
                    kind: AtomKind::Char,
                    quantified: false,
                });
                i += 2;
            }
            '[' => {
                let (text, end) = parse_class(&chars, i)?;
                atoms.push(Atom {
                    text,
                    kind: AtomKind::Char,
                    quantified: false,
                });
                i = end;
            }
            '(' => {
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ')')
                    .ok_or_else(|| "missing closing )".to_owned())?;
                atoms.push(Atom {
                    text: chars[i..=i + close].iter().collect(),
                    kind: AtomKind::Group,
                    quantified: false,
                });
                i += close + 1;
            }
            '^' | '$' => {
                atoms.push(Atom {
                    text: c.to_string(),
                    kind: AtomKind::Anchor,
                    quantified: false,
                });
                i += 1;
            }
            '*' | '?' | '+' => {
                apply_quantifier(&mut atoms, &c.to_string())?;
                i += 1;
            }
            '|' => {
                atoms.push(Atom {
                    text: "|".into(),
                    kind: AtomKind::Alternation,
                    quantified: false,
                });
                i += 1;
            }
            ']' | '{' | '}' => {
                atoms.push(Atom {
                    text: format!("\\{c}"),
                    kind: AtomKind::Char,
                    quantified: false,
                });
                i += 1;
            }
            '.' => {
                atoms.push(Atom {
                    text: ".".into(),
                    kind: AtomKind::Char,
                    quantified: false,
                });
                i += 1;
            }
            _ => {
                atoms.push(Atom {
                    text: regex::escape(&c.to_string()),
                    kind: AtomKind::Char,
                    quantified: false,
                });
                i += 1;
            }
        }
    }
    Ok(atoms)
}

/// Attaches a repetition operator to the previous atom, rejecting what Go's parser rejects
/// (it accepts repeated anchors such as `^*`; so does the regex crate, with the same meaning).
fn apply_quantifier(atoms: &mut [Atom], op: &str) -> Result<(), String> {
    match atoms.last_mut() {
        Some(last) if last.kind != AtomKind::Alternation => {
            if last.quantified {
                return Err(format!("invalid nested repetition operator {op:?}"));
            }
            last.text.push_str(op);
            last.quantified = true;
            Ok(())
        }
        _ => Err(format!("missing argument to repetition operator {op:?}")),
    }
}

/// An RE2 counted repetition (`{n}`, `{n,}`, `{n,m}`) at the start of `chars`: its text and
/// length; `None` when the braces are literal text.
fn repetition(chars: &[char]) -> Result<Option<(String, usize)>, String> {
    let close = match chars.iter().position(|c| *c == '}') {
        Some(p) => p,
        None => return Ok(None),
    };
    let inner: String = chars[1..close].iter().collect();
    let (min, max) = match inner.split_once(',') {
        Some((a, b)) => (a, Some(b)),
        None => (inner.as_str(), None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(min) || max.is_some_and(|m| !m.is_empty() && !digits(m)) {
        return Ok(None);
    }
    let count = |s: &str| s.parse::<u32>().unwrap_or(u32::MAX);
    let lo = count(min);
    let hi = max.filter(|m| !m.is_empty()).map(count);
    if lo > 1000 || hi.is_some_and(|h| h > 1000 || h < lo) {
        return Err(format!("invalid repeat count {{{inner}}}"));
    }
    Ok(Some((format!("{{{inner}}}"), close + 1)))
}

/// `\c` from the Go expression in Rust syntax: punctuation becomes a plain (escaped if needed)
/// literal; letters and digits keep their meaning (`\d`, `\n`, ...), as in Go.
fn escape_for_rust(c: char) -> String {
    if c.is_ascii() && !c.is_ascii_alphanumeric() {
        regex::escape(&c.to_string())
    } else {
        format!("\\{c}")
    }
}

/// Parses an RE2 character class starting at `chars[start] == '['`; returns its Rust form and
/// the index just past its closing `]`.
fn parse_class(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut out = String::from("[");
    let mut i = start + 1;
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("missing closing ]".into());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok((out, i + 1));
        }
        first = false;
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err("trailing backslash".into());
                };
                // Same meaning in both dialects: punctuation is literal, `\d` etc. are classes.
                out.push('\\');
                out.push(next);
                i += 2;
                continue;
            }
            '[' => {
                // `[:alpha:]` keeps its meaning in both dialects; any other `[` is literal in Go.
                if let Some(len) = posix_class_len(&chars[i..]) {
                    out.extend(&chars[i..i + len]);
                    i += len;
                    continue;
                }
                out.push_str("\\[");
            }
            ']' => out.push_str("\\]"),
            '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
}

/// Length of a `[:name:]` / `[:^name:]` POSIX class at the start of `chars`, if it is one.
fn posix_class_len(chars: &[char]) -> Option<usize> {
    if chars.get(1) != Some(&':') {
        return None;
    }
    let mut j = 2;
    if chars.get(j) == Some(&'^') {
        j += 1;
    }
    let name_start = j;
    while chars.get(j).is_some_and(|c| c.is_ascii_lowercase()) {
        j += 1;
    }
    (j > name_start && chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&']'))
        .then_some(j + 2)
}

/// An anchored expression matching exactly the prefixes of strings matched by `atoms`:
/// `Pref(a·rest) = a·Pref(rest) | Pref(a)`, where a single-character atom's own proper
/// prefix is the empty string and the `(.*/)` group's is any string.
fn prefix_regex_source(atoms: &[Atom]) -> String {
    let mut rest = String::new();
    for a in atoms.iter().rev() {
        let alt = if a.kind == AtomKind::Group {
            "|(?s:.*)"
        } else {
            ""
        };
        rest = format!("(?:{}{}{})?", a.text, rest, alt);
    }
    format!("^{rest}$")
}

// ---------------------------------------------------------------------------------------------
// Go `path/filepath` behaviour (Unix flavour) that the pattern rules depend on.

/// Go's `filepath.Clean`: collapse `//`, drop `.` segments, resolve `..` lexically, drop the
/// trailing `/`; `""` becomes `"."`.
pub(crate) fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    if rooted {
        format!("/{body}")
    } else if body.is_empty() {
        ".".to_owned()
    } else {
        body
    }
}

/// Go's `filepath.Join(a, b)`: empty elements are ignored, the result is cleaned.
pub(crate) fn go_join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => go_clean(b),
        (false, true) => go_clean(a),
        (false, false) => go_clean(&format!("{a}/{b}")),
    }
}

/// Go's `filepath.Dir`.
pub(crate) fn go_dir(p: &str) -> String {
    match p.rfind('/') {
        Some(i) => go_clean(&p[..=i]),
        None => ".".to_owned(),
    }
}

/// Go's `filepath.Base`.
pub(crate) fn go_base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Marker for a malformed `filepath.Match` pattern (Go's `ErrBadPattern`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Go's `filepath.Match` on Unix, including its full syntax check of the pattern.
pub(crate) fn go_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pat = pattern.as_bytes();
    let mut name = name.as_bytes();
    'outer: while !pat.is_empty() {
        let (star, chunk, rest) = scan_chunk(pat);
        pat = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest unless it contains a `/`.
            return Ok(!name.contains(&b'/'));
        }
        let (t, ok) = match_chunk(chunk, name)?;
        if ok && (t.is_empty() || !pat.is_empty()) {
            name = t;
            continue;
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok) = match_chunk(chunk, &name[i + 1..])?;
                if ok {
                    if pat.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'outer;
                }
                i += 1;
            }
        }
        // No match; still report a syntax error anywhere in the rest of the pattern.
        while !pat.is_empty() {
            let (_, chunk, rest) = scan_chunk(pat);
            pat = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off leading stars and the following chunk up to the next unbracketed `*`.
fn scan_chunk(mut pat: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pat.first() == Some(&b'*') {
        pat = &pat[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            // An escaped character never ends the chunk.
            b'\\' if i + 1 < pat.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pat[..i], &pat[i..])
}

/// Matches one star-free chunk at the start of `s`; checks the whole chunk's syntax even
/// after a mismatch, as Go does.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<(&'a [u8], bool), BadPattern> {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (c, n) = decode_rune(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let lit = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&b) => b,
                        None => return Err(BadPattern),
                    }
                } else {
                    c
                };
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        Ok((&[], false))
    } else {
        Ok((s, true))
    }
}

/// One (possibly escaped) character of a class range; the rest must be non-empty.
fn get_esc(mut chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return Err(BadPattern);
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = decode_rune(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `utf8.DecodeRune`: the first character and its length; `(U+FFFD, 1)` when invalid.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    let end = s.len().min(4);
    let valid = match std::str::from_utf8(&s[..end]) {
        Ok(v) => v,
        Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).unwrap_or_default(),
    };
    match valid.chars().next() {
        Some(c) => (c as u32, c.len_utf8()),
        None => (0xFFFD, 1),
    }
}

/// A pattern that matches exactly the relative path `rel` (no wildcard meaning), for excluding
/// one known directory, e.g. bk-build's own state directory inside a context.
pub fn literal_pattern(rel: &str) -> String {
    let mut pattern = String::with_capacity(rel.len() + 4);
    for (i, c) in rel.chars().enumerate() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') || (i == 0 && c == '!') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        PatternMatcher::new(&owned).unwrap()
    }

    /// The incremental (walker) evaluation of `path`, feeding parent results down like fsutil.
    fn eval_walk(m: &PatternMatcher, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut parent: Option<Vec<bool>> = None;
        for i in 0..parts.len() - 1 {
            let p = parts[..=i].join("/");
            let mut rec = Vec::new();
            m.eval(&p, i, parent.as_deref(), Some(&mut rec));
            parent = Some(rec);
        }
        m.eval(path, parts.len() - 1, parent.as_deref(), None)
    }

    #[test]
    fn go_clean_rules() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./foo", "foo"),
            ("foo/", "foo"),
            ("a//b", "a/b"),
            ("a/./b/", "a/b"),
            ("a/../b", "b"),
            ("a/../..", ".."),
            ("../../x", "../../x"),
            ("/", "/"),
            ("/../a", "/a"),
            ("//a//", "/a"),
            ("!./foo", "!./foo"),
            ("**/", "**"),
        ] {
            assert_eq!(go_clean(input), want, "clean({input:?})");
        }
        assert_eq!(go_join(".", "/abs/x"), "abs/x");
        assert_eq!(go_join(".", ""), ".");
        assert_eq!(go_join("/", "../../x"), "/x");
        assert_eq!(go_dir("a"), ".");
        assert_eq!(go_dir("a/b"), "a");
        assert_eq!(go_dir("/a"), "/");
        assert_eq!(go_base("a/b"), "b");
        assert_eq!(go_base("a/b/"), "b");
        assert_eq!(go_base(""), ".");
    }

    /// Go's own `filepath.Match` test vectors (semantics, written out here).
    #[test]
    fn go_filepath_match_vectors() {
        let ok = |p: &str, s: &str, want: bool| {
            assert_eq!(go_match(p, s), Ok(want), "Match({p:?}, {s:?})");
        };
        ok("abc", "abc", true);
        ok("*", "abc", true);
        ok("*c", "abc", true);
        ok("a*", "a", true);
        ok("a*", "abc", true);
        ok("a*", "ab/c", false);
        ok("a*/b", "abc/b", true);
        ok("a*/b", "a/c/b", false);
        ok("a*b*c*d*e*/f", "axbxcxdxe/f", true);
        ok("a*b*c*d*e*/f", "axbxcxdxexxx/f", true);
        ok("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false);
        ok("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false);
        ok("a*b?c*x", "abxbbxdbxebxczzx", true);
        ok("a*b?c*x", "abxbbxdbxebxczzy", false);
        ok("ab[c]", "abc", true);
        ok("ab[b-d]", "abc", true);
        ok("ab[e-g]", "abc", false);
        ok("ab[^c]", "abc", false);
        ok("ab[^b-d]", "abc", false);
        ok("ab[^e-g]", "abc", true);
        ok("a\\*b", "a*b", true);
        ok("a\\*b", "ab", false);
        ok("a?b", "a☺b", true);
        ok("a[^a]b", "a☺b", true);
        ok("a???b", "a☺b", false);
        ok("a[^a][^a][^a]b", "a☺b", false);
        ok("[a-ζ]*", "α", true);
        ok("*[a-ζ]", "A", false);
        ok("a?b", "a/b", false);
        ok("a*b", "a/b", false);
        ok("[\\]a]", "]", true);
        ok("[\\-]", "-", true);
        ok("[x\\-]", "x", true);
        ok("[x\\-]", "-", true);
        ok("[x\\-]", "z", false);
        ok("[\\-x]", "x", true);
        ok("[\\-x]", "-", true);
        ok("[\\-x]", "a", false);
        ok("*x", "xxx", true);
        for bad in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "a/b[",
        ] {
            assert_eq!(
                go_match(bad, "a"),
                Err(BadPattern),
                "Match({bad:?}) must be bad"
            );
        }
    }

    /// patternmatcher's single-pattern table: (pattern, path, matches itself, matches with parents).
    #[test]
    fn patternmatcher_semantics() {
        let cases: &[(&str, &str, bool, bool)] = &[
            ("**", "file", true, true),
            ("**", "file/", true, true),
            ("**/", "file", true, true),
            ("**", "/", true, true),
            ("**", "dir/file", true, true),
            ("**/**", "dir/file", true, true),
            ("dir/**", "dir/file", true, true),
            ("dir/**", "dir/dir2/file", true, true),
            ("**/dir", "dir", true, true),
            ("**/dir", "dir/file", false, true),
            ("**/dir2/*", "dir/dir2/file", true, true),
            ("**/dir2/*", "dir/dir2/file/", false, true),
            ("**/dir2/**", "dir/dir2/dir3/file", true, true),
            ("**file", "file", true, true),
            ("**file", "dir/file", true, true),
            ("**/file", "dir/file", true, true),
            ("**file", "dir/dir/file", true, true),
            ("**/file*", "dir/dir/file.txt", true, true),
            ("**/file*txt", "dir/dir/file.txt", true, true),
            ("**/file*.txt*", "dir/dir/file.txt", true, true),
            ("**/**/*.txt", "dir/dir/file.txt", true, true),
            ("**/**/*.txt2", "dir/dir/file.txt", false, false),
            ("**/*.txt", "file.txt", true, true),
            ("**/**/*.txt", "file.txt", true, true),
            ("a**/*.txt", "a/file.txt", true, true),
            ("a**/*.txt", "a/dir/dir/file.txt", true, true),
            ("a/*.txt", "a/dir/file.txt", false, false),
            ("a/*.txt", "a/file.txt", true, true),
            ("a/*.txt**", "a/file.txt", true, true),
            ("a[b-d]e", "ae", false, false),
            ("a[b-d]e", "ace", true, true),
            ("a[b-d]e", "aae", false, false),
            ("a[^b-d]e", "aze", true, true),
            (".*", ".foo", true, true),
            (".*", "foo", false, false),
            ("abc.def", "abcdef", false, false),
            ("abc.def", "abc.def", true, true),
            ("abc.def", "abcZdef", false, false),
            ("abc?def", "abcZdef", true, true),
            ("abc?def", "abcdef", false, false),
            ("**/foo/bar", "foo/bar", true, true),
            ("**/foo/bar", "dir/dir2/foo/bar", true, true),
            ("abc/**", "abc", false, false),
            ("abc/**", "abc/def/ghi", true, true),
            ("**/.foo", ".foo", true, true),
            ("**/.foo", "bar.foo", false, false),
            ("a(b)c/def", "a(b)c/def", true, true),
            ("a(b)c/def", "a(b)c/xyz", false, false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true, true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
                true,
            ),
            ("a\\\\", "a\\", true, true),
            ("a\\*b", "a*b", true, true),
            // Quirks of the compiled kinds, kept on purpose.
            ("**foo", "barfoo", true, true),
            ("a**b", "ab", true, true),
            ("a**b", "a/x/b", true, true),
            ("a**b", "axb", false, false),
            ("foo**", "foobar", true, true),
            ("a^b", "a^b", true, true),
            ("*^b", "a^b", false, false),
        ];
        for &(pat, path, exact, with_parents) in cases {
            let m = pm(&[pat]);
            let slashes = path.matches('/').count();
            assert_eq!(
                m.patterns[0].is_match(path, slashes),
                exact,
                "exact match of {pat:?} against {path:?}"
            );
            assert_eq!(m.matches(path), with_parents, "{pat:?} against {path:?}");
            assert_eq!(
                eval_walk(&m, path),
                with_parents,
                "walk {pat:?} against {path:?}"
            );
        }
    }

    #[test]
    fn compiled_kinds() {
        let kind = |p: &str| pm(&[p]).patterns[0].kind;
        assert_eq!(kind("**"), Kind::Suffix);
        assert_eq!(kind("**/**"), Kind::Regexp);
        assert_eq!(kind("dir/**"), Kind::Prefix);
        assert_eq!(kind("**/dir"), Kind::Suffix);
        assert_eq!(kind("**/dir2/*"), Kind::Regexp);
        assert_eq!(kind("abc.def"), Kind::Exact);
        assert_eq!(kind("a(b)c/def"), Kind::Exact);
        assert_eq!(kind("a[b-d]e"), Kind::Regexp);
        let re = |p: &str| {
            pm(&[p]).patterns[0]
                .regex
                .as_ref()
                .unwrap()
                .as_str()
                .to_owned()
        };
        assert_eq!(re("a*/b"), "^a[^/]*/b$");
        assert_eq!(re("**/**/*.txt"), r"^(.*/)?(.*/)?[^/]*\.txt$");
        assert_eq!(re("**/dir2/**"), "^(.*/)?dir2/.*$");
        assert_eq!(re("abc?def"), "^abc[^/]def$");
    }

    #[test]
    fn multi_pattern_last_match_wins() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (&["!fileutils.go", "*.go"], "fileutils.go", true),
            (&["*.go", "!fileutils.go"], "fileutils.go", false),
            (&["docs", "!docs/README.md"], "docs/README.md", false),
            (&["docs/", "!docs/README.md"], "docs/README.md", false),
            (&["docs/*", "!docs/README.md"], "docs/README.md", false),
            (&["docs", "  !docs/README.md  "], "docs/README.md", false),
            (&["docs", "!docs/README.md"], "docs/other.md", true),
        ];
        for &(pats, path, want) in cases {
            let m = pm(pats);
            assert_eq!(m.matches(path), want, "{pats:?} against {path:?}");
            assert_eq!(eval_walk(&m, path), want, "walk {pats:?} against {path:?}");
        }
    }

    /// The examples of Docker's `.dockerignore` documentation.
    #[test]
    fn dockerignore_documented_examples() {
        let m = pm(&["*/temp*", "*/*/temp*", "temp?"]);
        assert!(m.matches("somedir/temporary.txt"));
        assert!(m.matches("somedir/temp"));
        assert!(m.matches("somedir/temp/inside.txt"));
        assert!(m.matches("somedir/subdir/temporary.txt"));
        assert!(m.matches("tempa"));
        assert!(m.matches("tempb"));
        assert!(!m.matches("temp"));
        assert!(!m.matches("tempab"));
        assert!(!m.matches("temporary.txt"));
        assert!(!m.matches("a/b/c/temp.txt"));

        let m = pm(&["**/*.go"]);
        assert!(m.matches("main.go"));
        assert!(m.matches("pkg/x/y.go"));
        assert!(!m.matches("pkg/x/y.rs"));

        let m = pm(&["*.md", "!README.md"]);
        assert!(m.matches("CHANGELOG.md"));
        assert!(!m.matches("README.md"));
        assert!(!m.matches("docs/x.md"), "*.md only covers the root");

        let m = pm(&["*.md", "!README*.md", "README-secret.md"]);
        assert!(m.matches("CHANGELOG.md"));
        assert!(!m.matches("README.md"));
        assert!(!m.matches("README-public.md"));
        assert!(m.matches("README-secret.md"));

        let m = pm(&["*.md", "README-secret.md", "!README*.md"]);
        assert!(!m.matches("README-secret.md"));
        assert!(m.matches("CHANGELOG.md"));

        // `./` and a trailing `/` are cleaned away; parents match their contents.
        let m = pm(&["./build/", "node_modules"]);
        assert!(m.matches("build"));
        assert!(m.matches("build/out/a.o"));
        assert!(m.matches("node_modules/x/index.js"));
        assert!(!m.matches("src/node_modules_x"));
    }

    #[test]
    fn leading_slash_via_dockerignore() {
        let list = crate::fs::parse_dockerignore("/secret\n!/secret/public\n");
        assert_eq!(list, vec!["secret", "!secret/public"]);
        let m = PatternMatcher::new(&list).unwrap();
        assert!(m.matches("secret/key"));
        assert!(!m.matches("secret/public"));
        assert!(!m.matches("secret/public/x"));
        assert!(!m.matches("other/secret"));
    }

    #[test]
    fn bad_patterns_are_errors_naming_the_pattern() {
        for bad in ["!", "[", "a[", "[]a]", "x\\", "[z-a]"] {
            let err = PatternMatcher::new(&[bad.to_owned()]).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "error for {bad:?} should name it: {err}"
            );
        }
        // Blank entries are skipped, not errors.
        assert!(PatternMatcher::new(&["  ".to_owned(), String::new()])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn class_dialect_differences() {
        // `[*]`: Go puts `[^/]*` inside the brackets, RE2 reads `[[^/]` + `*` + `]`.
        let m = pm(&["a[*]"]);
        assert!(m.matches("a]"));
        assert!(m.matches("a[^/]"));
        assert!(!m.matches("ab"));
        // `&` and `~` are plain characters in a Go class.
        let m = pm(&["x[&~]"]);
        assert!(m.matches("x&"));
        assert!(m.matches("x~"));
        let m = pm(&["[[:digit:]]*"]);
        assert!(m.matches("1abc"));
        assert!(!m.matches("abc"));
    }

    #[test]
    fn may_match_inside_is_exact_for_literals_and_safe_for_globs() {
        let m = pm(&["src/lib", "docs/**", "assets/*.png"]);
        assert!(m.may_match_inside("src"));
        assert!(
            !m.may_match_inside("src/lib"),
            "src/lib itself matches; nothing below is needed"
        );
        assert!(!m.may_match_inside("other"));
        assert!(m.may_match_inside("docs"));
        assert!(m.may_match_inside("assets"));
        assert!(!m.may_match_inside("assets/sub"));
        // `**/keep` can be anywhere.
        let m2 = pm(&["src/lib", "**/keep"]);
        assert!(m2.may_match_inside("src/lib"));
        assert!(m2.may_match_inside("any/where"));
        let m3 = pm(&["src/*/gen/*.rs"]);
        assert!(m3.may_match_inside("src"));
        assert!(m3.may_match_inside("src/a"));
        assert!(m3.may_match_inside("src/a/gen"));
        assert!(!m3.may_match_inside("src/a/other"));
        assert!(!m3.may_match_inside("lib"));
        let m4 = pm(&["a**b/c"]);
        assert!(m4.may_match_inside("a"));
        assert!(m4.may_match_inside("ax/y/zb"));
        assert!(!m4.may_match_inside("b"));
    }

    #[test]
    fn may_reinclude_inside_only_looks_at_exceptions() {
        let m = pm(&["node_modules", "vendor"]);
        assert!(!m.may_reinclude_inside("node_modules"));
        let m = pm(&["node_modules", "!node_modules/keep/**"]);
        assert!(m.may_reinclude_inside("node_modules"));
        assert!(m.may_reinclude_inside("node_modules/keep"));
        assert!(!m.may_reinclude_inside("node_modules/other"));
        let m = pm(&["dir", "!dir/*.txt"]);
        assert!(m.may_reinclude_inside("dir"));
        assert!(!m.may_reinclude_inside("dir/sub"));
    }

    /// Golden vectors produced by the real moby/patternmatcher (see
    /// `testdata/gen_patternmatcher_vectors.go.txt`): which lists Go rejects, and for each path
    /// both `MatchesOrParentMatches` and the incremental form fsutil's walk uses.
    #[test]
    fn agrees_with_real_patternmatcher() {
        let data = include_str!("testdata/patternmatcher_vectors.jsonl");
        let (mut cases, mut checked) = (0, 0);
        for (n, line) in data.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let pats: Vec<String> = v["p"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            let bad = v["bad"].as_bool().unwrap_or(false);
            let m = PatternMatcher::new(&pats);
            if bad {
                assert!(m.is_err(), "line {}: Go rejects {pats:?}", n + 1);
                continue;
            }
            let m = m.unwrap_or_else(|e| panic!("line {}: Go accepts {pats:?}: {e}", n + 1));
            cases += 1;
            for pair in v["m"].as_array().unwrap() {
                let path = pair[0].as_str().unwrap();
                let bits = pair[1].as_str().unwrap().as_bytes();
                assert_eq!(
                    m.matches(path),
                    bits[0] == b'1',
                    "line {}: MatchesOrParentMatches({pats:?}, {path:?})",
                    n + 1
                );
                assert_eq!(
                    eval_walk(&m, path),
                    bits[1] == b'1',
                    "line {}: incremental match of {pats:?} against {path:?}",
                    n + 1
                );
                // The subtree-skipping answers must never deny a real match below a directory.
                for p in &m.patterns {
                    if p.is_match(path, path.matches('/').count()) {
                        for (idx, _) in path.match_indices('/') {
                            assert!(
                                p.may_match_below(&path[..=idx]),
                                "line {}: {:?} matches {path:?} below {:?}",
                                n + 1,
                                p.text,
                                &path[..idx]
                            );
                        }
                    }
                }
                checked += 1;
            }
        }
        assert!(
            cases > 1000 && checked > 10_000,
            "{cases} cases, {checked} paths"
        );
    }

    #[test]
    fn unescaped_alternation_and_braces_like_go() {
        // `|` is a raw alternation in the regular expression patternmatcher builds.
        let m = pm(&["a*|b*"]);
        assert!(m.matches("zb"));
        assert!(m.matches("ax/y/z"));
        assert!(!m.matches("zz"));
        // Without a wildcard the pattern is an exact string: `|` is just a character.
        assert!(pm(&["a|b"]).matches("a|b"));
        // `{n}` repeats; braces that are not a repetition are literal.
        assert!(pm(&["*x{2}"]).matches("axx"));
        assert!(!pm(&["*x{2}"]).matches("ax"));
        assert!(pm(&["*.{js,ts}"]).matches("a.{js,ts}"));
        assert!(!pm(&["*.{js,ts}"]).matches("a.js"));
        for bad in ["*{2}", "*a{1001}", "*a{3,2}"] {
            assert!(PatternMatcher::new(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_regex_is_exact_on_random_strings() {
        // For every pattern and every path, if the full regex matches path then the prefix
        // regex must match every prefix of it.
        let pats = [
            "a*/b?c/**/d",
            "x[a-c]*/y",
            "**/*.go",
            "a**b/c",
            "f?o/*/bar*",
        ];
        let paths = [
            "aq/bzc/d",
            "aq/bzc/e/f/d",
            "xb1/y",
            "xz/y",
            "p/q.go",
            "a.go",
            "ab/c",
            "ax/y/b/c",
            "foo/x/barz",
            "fo/x/bar",
        ];
        for p in pats {
            let m = pm(&[p]);
            let pat = &m.patterns[0];
            for path in paths {
                if pat.is_match(path, path.matches('/').count()) {
                    for (i, _) in path.match_indices('/') {
                        assert!(
                            pat.may_match_below(&path[..=i]),
                            "{p:?} matches {path:?} so {:?} must be a possible prefix",
                            &path[..=i]
                        );
                    }
                }
            }
        }
    }
}
