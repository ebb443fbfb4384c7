//! Reading just enough of a Dockerfile to know what a build reads from outside itself: the
//! images it starts from (to infer that one target builds on another, and to fingerprint
//! bases) and the paths it copies from the main context (to fingerprint only those).
//!
//! It follows BuildKit's Dockerfile rules where they matter for that question: parser
//! directives (`# syntax=`, `# escape=`), line continuations (comment and blank lines inside a
//! continuation are dropped), heredocs (`<<EOF` bodies are skipped), global `ARG`s before the
//! first `FROM` (the only variables a `FROM` can use), stage names (case-insensitive,
//! `COPY --from=` by name or index), named contexts replacing stages or images by name, and
//! only the stages the target stage actually depends on. It is not a Dockerfile
//! interpreter: anything it cannot be sure of makes [`DockerfileScan::copy_sources`] `None`
//! ("assume the whole context"), never a wrong, narrower answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::reference::familiar;

/// Which build the Dockerfile is read for.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions<'a> {
    /// Build args (`--build-arg`), which override `ARG` defaults.
    pub args: &'a BTreeMap<String, String>,
    /// Stage to build; `None` means the last stage.
    pub target: Option<&'a str>,
    /// Named contexts given to the build, by name: a stage or image of that name is replaced
    /// and is not read from the Dockerfile's point of view.
    pub named_contexts: &'a BTreeSet<String>,
    /// The one platform the build is for (`linux/arm64/v8`), when it is just one: BuildKit's
    /// `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH` and `TARGETVARIANT` then have known values.
    pub platform: Option<&'a str>,
}

/// What a build of one Dockerfile reads from outside the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerfileScan {
    /// The `# syntax=` frontend image, when set.
    pub syntax: Option<String>,
    /// External images the build reads (`FROM`, `COPY --from=IMAGE`, `RUN --mount=from=IMAGE`)
    /// after `ARG` expansion, in order of first use; no stage names, no `scratch`, nothing a
    /// named context replaces.
    pub base_refs: Vec<String>,
    /// Main-context paths read by `COPY`/`ADD` (without `--from`) and by bind mounts, relative
    /// to the context root, cleaned (`./a/../b/` → `b`; `.` is the whole context); glob
    /// characters are kept as written. Sorted, no duplicates. `None` when that cannot be known
    /// (a variable whose value is unknown here, a `# syntax=` frontend that is not BuildKit's
    /// Dockerfile frontend).
    pub copy_sources: Option<Vec<String>>,
    /// Named contexts (of [`ScanOptions::named_contexts`], [`familiar`] form) the build reads,
    /// by `FROM`, `COPY --from` or `RUN --mount=from=`, or as the stage they replace; every one
    /// of them when the file cannot be read with certainty. Which one an arg selects is an
    /// input even where the arg itself is hidden.
    pub used_contexts: BTreeSet<String>,
    /// Build args (of [`ScanOptions::args`]) that cannot change the build except through the
    /// image references in [`base_refs`](Self::base_refs): declared nowhere (BuildKit ignores
    /// them), or declared only before the first `FROM` and used only to spell image names (or
    /// the names of named contexts, see [`used_contexts`](Self::used_contexts)) there.
    /// Empty when the Dockerfile cannot be read with certainty. Never contains BuildKit's
    /// special args ([`is_special_arg`]), which act without being declared.
    ///
    /// Known limit: an external base image's `ONBUILD ARG` trigger could read an arg this file
    /// never declares; bases built by the project are checked through [`has_onbuild`].
    ///
    /// [`has_onbuild`]: Self::has_onbuild
    pub hidden_args: BTreeSet<String>,
    /// The file has an `ONBUILD` instruction: builds `FROM` its image run code this scan of
    /// theirs cannot see, so their args must all count.
    pub has_onbuild: bool,
    /// `ADD` sources the daemon fetches itself (URLs, git) without a `--checksum`: their
    /// content is not known before building.
    pub remote_sources: Vec<String>,
    /// Whether the stages could be read with certainty. When not (a line that looks like a
    /// `FROM` but was not read as one), the base images are unknown too, and a build must
    /// not be reused.
    pub certain: bool,
}

/// Args BuildKit or the Dockerfile frontend act on without an `ARG` line: `BUILDKIT_*`
/// frontend options, `SOURCE_DATE_EPOCH` (image timestamps), the proxy args (set in every
/// `RUN`), and the platform args (BuildKit `frontend/dockerfile/docs/reference.md`, "Predefined
/// ARGs" and "BuildKit built-in build args").
pub fn is_special_arg(name: &str) -> bool {
    const NAMED: &[&str] = &[
        "SOURCE_DATE_EPOCH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];
    name.starts_with("BUILDKIT_")
        || NAMED.iter().any(|n| n.eq_ignore_ascii_case(name))
        || PLATFORM_ARGS.contains(&name)
}

/// External images the last stage of `dockerfile_text` depends on, with `args` applied.
pub fn dockerfile_base_refs(dockerfile_text: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    scan_dockerfile(
        dockerfile_text,
        &ScanOptions {
            args,
            target: None,
            named_contexts: &BTreeSet::new(),
            platform: None,
        },
    )
    .base_refs
}

/// Main-context paths the last stage of `dockerfile_text` reads, or `None` when unknowable.
/// See [`DockerfileScan::copy_sources`].
pub fn dockerfile_copy_sources(
    dockerfile_text: &str,
    args: &BTreeMap<String, String>,
) -> Option<Vec<String>> {
    scan_dockerfile(
        dockerfile_text,
        &ScanOptions {
            args,
            target: None,
            named_contexts: &BTreeSet::new(),
            platform: None,
        },
    )
    .copy_sources
}

/// Reads `text` for the build described by `opts`.
pub fn scan_dockerfile(text: &str, opts: &ScanOptions) -> DockerfileScan {
    let (directives, instructions, lines) = split_instructions(text);
    let foreign_frontend = directives.syntax.as_deref().is_some_and(|s| {
        let f = familiar(s);
        !(f.starts_with("docker/dockerfile") || f.starts_with("docker/dockerfile-upstream"))
    });
    let has_onbuild = instructions.iter().any(|i| i.keyword == "ONBUILD");
    let all_contexts = || opts.named_contexts.iter().map(|n| familiar(n)).collect();
    if foreign_frontend {
        return DockerfileScan {
            syntax: directives.syntax,
            base_refs: Vec::new(),
            copy_sources: None,
            used_contexts: all_contexts(),
            hidden_args: BTreeSet::new(),
            has_onbuild,
            remote_sources: Vec::new(),
            certain: false,
        };
    }
    let named: BTreeSet<String> = opts.named_contexts.iter().map(|n| familiar(n)).collect();
    let mut interp = Interpreter::new(directives.escape, opts, &named);
    interp.run(&instructions);
    // A FROM whose image could not be worked out (a variable unknown here) could name any
    // stage or image: then neither the stages nor the bases are known.
    let certain = !interp.unsure_from;
    let hidden_args = if !certain {
        BTreeSet::new()
    } else {
        let spoken = lines_that_use_args(&instructions, lines.len());
        let defaults = global_arg_defaults(&instructions);
        opts.args
            .keys()
            .filter(|n| {
                !is_special_arg(n)
                    && !interp.stage_args.contains(*n)
                    && !interp.seen_args.contains(*n)
                    // Belt and braces: a name written anywhere but in a global ARG or a FROM
                    // counts, however this reading understood that line; so does one that
                    // goes into another global ARG's default (`ARG V=v${VERSION}`).
                    && !spoken.iter().any(|&l| mentions(lines[l], n))
                    && !defaults.iter().any(|d| mentions(d, n))
            })
            .cloned()
            .collect()
    };
    let stages = interp.stages;

    let target = match opts.target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&t.to_lowercase())),
        None => stages.len().checked_sub(1),
    };
    // An unknown target stage is BuildKit's error to report; here every stage counts.
    let reached: BTreeSet<usize> = match target {
        Some(t) => reachable(&stages, t),
        None => (0..stages.len()).collect(),
    };
    let mut base_refs: Vec<String> = Vec::new();
    let mut sources = BTreeSet::new();
    let mut unknowable = !certain;
    let mut used_contexts = BTreeSet::new();
    let mut remote_sources = Vec::new();
    for i in reached {
        let s = &stages[i];
        if s.replaced {
            used_contexts.extend(s.name.iter().cloned());
            continue;
        }
        used_contexts.extend(s.contexts.iter().cloned());
        for r in &s.images {
            if !base_refs.contains(r) {
                base_refs.push(r.clone());
            }
        }
        sources.extend(s.sources.iter().cloned());
        remote_sources.extend(s.remote.iter().cloned());
        unknowable |= s.unknowable;
    }
    DockerfileScan {
        syntax: directives.syntax,
        base_refs,
        copy_sources: (!unknowable).then(|| sources.into_iter().collect()),
        used_contexts: if certain {
            used_contexts
        } else {
            all_contexts()
        },
        hidden_args,
        has_onbuild,
        remote_sources,
        certain,
    }
}

/// The default values of the global `ARG`s (before the first `FROM`), as written.
fn global_arg_defaults(instructions: &[Instruction]) -> Vec<String> {
    instructions
        .iter()
        .take_while(|i| i.keyword != "FROM")
        .filter(|i| i.keyword == "ARG")
        .flat_map(|i| raw_words(&i.rest))
        .filter_map(|w| w.split_once('=').map(|(_, v)| v.to_string()))
        .collect()
}

/// Indices of the raw lines where a build arg's name makes it count: every line of every
/// instruction except the global `ARG`s (before the first `FROM`) and the `FROM`s.
fn lines_that_use_args(instructions: &[Instruction], n: usize) -> Vec<usize> {
    let mut quiet = vec![true; n];
    let mut seen_from = false;
    for ins in instructions {
        seen_from |= ins.keyword == "FROM";
        let harmless = ins.keyword == "FROM" || (ins.keyword == "ARG" && !seen_from);
        if !harmless {
            quiet[ins.lines.clone()].iter_mut().for_each(|q| *q = false);
        }
    }
    (0..n).filter(|&l| !quiet[l]).collect()
}

/// Whether `line` contains `name` as a whole identifier.
fn mentions(line: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(name).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

fn reachable(stages: &[Stage], from: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(i) = todo.pop() {
        if !seen.insert(i) || stages[i].replaced {
            continue;
        }
        todo.extend(
            stages[i]
                .stage_deps
                .iter()
                .copied()
                .filter(|d| *d < stages.len()),
        );
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Lines → instructions
// ---------------------------------------------------------------------------------------------

struct Directives {
    syntax: Option<String>,
    escape: char,
}

#[derive(Debug)]
struct Instruction {
    keyword: String,
    rest: String,
    /// The raw lines it came from, continuation lines and heredoc bodies included
    /// (0-based, end exclusive).
    lines: std::ops::Range<usize>,
}

/// BuildKit's parser directives (`frontend/dockerfile/parser/directives.go`): only leading
/// `# key=value` lines with a known key; the first other line — an unknown directive, a
/// comment, a blank line, an instruction — ends them.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim_start().strip_prefix('#')?.trim_start();
    let (k, v) = body.split_once('=')?;
    let k = k.trim_end();
    let mut chars = k.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric());
    let v = v.trim();
    let k = k.to_ascii_lowercase();
    (valid && !v.is_empty() && matches!(k.as_str(), "syntax" | "escape" | "check"))
        .then(|| (k, v.to_string()))
}

/// BuildKit's line continuation (`parser.go`, `setEscapeToken`): the escape character at the
/// end of the line (trailing blanks allowed), unless it is itself escaped. Returns the line
/// without it, and whether the instruction goes on.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(before) if before.is_empty() || !before.ends_with(escape) => (before, true),
        _ => (line, false),
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Splits a Dockerfile into instructions the way BuildKit's parser does
/// (`frontend/dockerfile/parser/parser.go`, `Parse`): a UTF-8 BOM is dropped, directives are
/// read first, comment lines are skipped (also inside continuations, as are blank ones),
/// and the heredoc bodies of `RUN`, `COPY` and `ADD` are consumed up to their exact
/// terminator line.
fn split_instructions(text: &str) -> (Directives, Vec<Instruction>, Vec<&str>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut d = Directives {
        syntax: None,
        escape: '\\',
    };
    let mut i = 0;
    while let Some((k, v)) = lines.get(i).and_then(|l| directive(l)) {
        match k.as_str() {
            "syntax" => d.syntax = Some(v),
            "escape" => {
                if let Some(c @ ('`' | '\\')) = v.chars().next().filter(|_| v.len() == 1) {
                    d.escape = c;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.starts_with('#') {
            continue;
        }
        let (head, mut more) = continuation(first, d.escape);
        if !more && head.is_empty() {
            continue;
        }
        let mut logical = head.to_string();
        while more && i < lines.len() {
            let l = lines[i];
            i += 1;
            if is_comment(l) || l.trim_start().is_empty() {
                continue;
            }
            let (part, goes_on) = continuation(l, d.escape);
            logical.push_str(part);
            more = goes_on;
        }
        let logical = logical.trim();
        let (kw, rest) = logical
            .split_once(char::is_whitespace)
            .unwrap_or((logical, ""));
        let keyword = kw.to_ascii_uppercase();
        let rest = rest.trim().to_string();
        if can_have_heredocs(&keyword, &rest) && logical.contains("<<") {
            for (name, chomp) in heredoc_names(logical) {
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    let l = if chomp { l.trim_start_matches('\t') } else { l };
                    if l == name {
                        break;
                    }
                }
            }
        }
        out.push(Instruction {
            keyword,
            rest,
            lines: start..i,
        });
    }
    (d, out, lines)
}

/// `RUN`, `COPY` and `ADD` (also behind `ONBUILD`) in shell form may have heredocs.
fn can_have_heredocs(keyword: &str, rest: &str) -> bool {
    let (keyword, rest) = if keyword == "ONBUILD" {
        let (k, r) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        (k.to_ascii_uppercase(), r.trim())
    } else {
        (keyword.to_string(), rest)
    };
    if !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
        return false;
    }
    let (_, args) = split_flags(rest);
    let json = args.starts_with('[') && serde_json::from_str::<Vec<String>>(args).is_ok();
    !json
}

/// The heredocs a line opens, in order: (terminator, strip leading tabs). BuildKit splits the
/// line into words keeping quotes and escapes (`<<` takes the blanks after it into its word),
/// and a word is a heredoc when it is `[digits]<<[-]WORD` with WORD one shell word without
/// `<` (`parser.go`, `heredocsFromLine` and `reHeredoc`).
fn heredoc_names(line: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for word in raw_words(line) {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else {
            continue;
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.contains('<') {
            continue;
        }
        let words = shell_words(rest.trim_start(), '\\', &|n| Var::Known(format!("${n}")));
        if let [(name, _)] = words.as_slice() {
            out.push((name.clone(), chomp));
        }
    }
    out
}

/// Words split at unquoted blanks, quotes and escapes kept as written; `<<` followed by
/// blanks stays one word with what follows (BuildKit's lexer, `processPossibleHeredoc`).
fn raw_words(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                } else if c == '\\' && q == '"' && i + 1 < chars.len() {
                    cur.push(chars[i + 1]);
                    i += 1;
                }
            }
            None if c == '\\' && i + 1 < chars.len() => {
                cur.push(c);
                cur.push(chars[i + 1]);
                i += 1;
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c == '<' && chars.get(i + 1) == Some(&'<') => {
                cur.push_str("<<");
                i += 2;
                while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
                    cur.push(chars[i]);
                    i += 1;
                }
                continue;
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Leading `--flag=value` tokens, and what follows them.
fn split_flags(rest: &str) -> (Vec<(String, String)>, &str) {
    let mut flags = Vec::new();
    let mut r = rest.trim_start();
    while let Some(after) = r.strip_prefix("--") {
        // A flag ends at the first blank outside quotes (`--exclude="a b"`).
        let mut quote = None;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == '"' || c == '\'' => quote = Some(c),
                    None => return c.is_whitespace(),
                }
                false
            })
            .map_or(after.len(), |(i, _)| i);
        let tok = &after[..end];
        let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
        let v = v.replace(['"', '\''], "");
        flags.push((k.to_ascii_lowercase(), v));
        r = after[end..].trim_start();
    }
    (flags, r)
}

// ---------------------------------------------------------------------------------------------
// Words and variables
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Var {
    Known(String),
    /// Declared but its value is not known here (a platform arg, an image's ENV, …).
    Unknown,
}

/// Args BuildKit defines automatically; their values depend on the daemon and `--platform`.
const PLATFORM_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Splits `s` into shell words (quotes removed, variables expanded), reporting per word
/// whether an unknown variable took part.
fn shell_words(s: &str, escape: char, lookup: &dyn Fn(&str) -> Var) -> Vec<(String, bool)> {
    let chars: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut started = false;
    let mut unknown = false;
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if single {
            if c == '\'' {
                single = false;
            } else {
                cur.push(c);
            }
            i += 1;
            continue;
        }
        if c == escape && i + 1 < chars.len() {
            cur.push(chars[i + 1]);
            started = true;
            i += 2;
            continue;
        }
        match c {
            '\'' if !double => {
                single = true;
                started = true;
            }
            '"' => {
                double = !double;
                started = true;
            }
            '$' => {
                let (value, used, next) = expand_at(&chars, i, escape, lookup);
                cur.push_str(&value);
                unknown |= used;
                started = true;
                i = next;
                continue;
            }
            c if c.is_whitespace() && !double => {
                if started {
                    words.push((std::mem::take(&mut cur), unknown));
                }
                started = false;
                unknown = false;
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
        i += 1;
    }
    if started {
        words.push((cur, unknown));
    }
    words
}

/// Expands the variable reference starting at `chars[at] == '$'`: (value, unknown, next index).
fn expand_at(
    chars: &[char],
    at: usize,
    escape: char,
    lookup: &dyn Fn(&str) -> Var,
) -> (String, bool, usize) {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match chars.get(at + 1) {
        Some('{') => {
            let mut depth = 0;
            let mut j = at + 2;
            while j < chars.len() {
                match chars[j] {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            let body: String = chars[at + 2..j.min(chars.len())].iter().collect();
            let name_len = body.find(|c: char| !is_name(c)).unwrap_or(body.len());
            let (name, op) = body.split_at(name_len);
            let value = lookup(name);
            let word = |w: &str| -> (String, bool) {
                let ws = shell_words(w, escape, lookup);
                let unknown = ws.iter().any(|(_, u)| *u);
                (
                    ws.into_iter().map(|(s, _)| s).collect::<Vec<_>>().join(" "),
                    unknown,
                )
            };
            let (set, non_empty) = match &value {
                Var::Known(v) => (true, !v.is_empty()),
                Var::Unknown => (true, true),
            };
            let unknown_value = value == Var::Unknown;
            let value = match value {
                Var::Known(v) => v,
                Var::Unknown => String::new(),
            };
            let (out, unknown) = if op.is_empty() {
                (value, unknown_value)
            } else if let Some(w) = op.strip_prefix(":-") {
                if unknown_value {
                    (String::new(), true)
                } else if non_empty {
                    (value, false)
                } else {
                    word(w)
                }
            } else if let Some(w) = op.strip_prefix(":+") {
                if unknown_value {
                    (String::new(), true)
                } else if non_empty {
                    word(w)
                } else {
                    (String::new(), false)
                }
            } else if let Some(w) = op.strip_prefix('-') {
                if unknown_value {
                    (String::new(), true)
                } else if set {
                    (value, false)
                } else {
                    word(w)
                }
            } else if let Some(w) = op.strip_prefix('+') {
                if unknown_value {
                    (String::new(), true)
                } else if set {
                    word(w)
                } else {
                    (String::new(), false)
                }
            } else if op.starts_with(":?") || op.starts_with('?') {
                (value, unknown_value)
            } else {
                // Pattern operators (`#`, `%`, `/`): not modelled, so the result is unknown.
                (String::new(), true)
            };
            (out, unknown, (j + 1).min(chars.len()))
        }
        Some(c) if is_name(*c) => {
            let mut j = at + 1;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            let name: String = chars[at + 1..j].iter().collect();
            match lookup(&name) {
                Var::Known(v) => (v, false, j),
                Var::Unknown => (String::new(), true, j),
            }
        }
        _ => ("$".to_string(), false, at + 1),
    }
}

/// Expands variables in `s` without word splitting or quote removal (JSON-form arguments).
fn expand_plain(s: &str, escape: char, lookup: &dyn Fn(&str) -> Var) -> (String, bool) {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut unknown = false;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let (v, u, next) = expand_at(&chars, i, escape, lookup);
            out.push_str(&v);
            unknown |= u;
            i = next;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    (out, unknown)
}

// ---------------------------------------------------------------------------------------------
// Instructions → stages
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Stage {
    name: Option<String>,
    /// Replaced by a named context of the same name: nothing inside it is read.
    replaced: bool,
    stage_deps: Vec<usize>,
    images: Vec<String>,
    /// Named contexts it reads (by `FROM`, `COPY --from`, `RUN --mount=from`), familiar form.
    contexts: Vec<String>,
    /// `ADD` sources fetched by the daemon without a pinned checksum.
    remote: Vec<String>,
    sources: Vec<String>,
    unknowable: bool,
    /// ENV wins over an ARG of the same name, as in BuildKit.
    env: HashMap<String, Var>,
    args: HashMap<String, Var>,
    /// Whether every variable this stage can see is declared in the Dockerfile (a scratch
    /// root); when it starts from an image, that image's ENV is unknown.
    env_known: bool,
}

struct Interpreter<'a> {
    escape: char,
    opts: &'a ScanOptions<'a>,
    named: &'a BTreeSet<String>,
    globals: HashMap<String, Var>,
    stages: Vec<Stage>,
    /// Names declared by an `ARG` inside any stage: visible to that stage's instructions.
    stage_args: BTreeSet<String>,
    /// Names a `FROM` line uses other than to spell an image reference (a stage name, a
    /// named context, `--platform`): their value changes the build without changing
    /// `base_refs`.
    seen_args: BTreeSet<String>,
    /// Some `FROM` could not be resolved, so no arg can be called invisible.
    unsure_from: bool,
}

impl<'a> Interpreter<'a> {
    fn new(escape: char, opts: &'a ScanOptions<'a>, named: &'a BTreeSet<String>) -> Self {
        Interpreter {
            escape,
            opts,
            named,
            globals: HashMap::new(),
            stages: Vec::new(),
            stage_args: BTreeSet::new(),
            seen_args: BTreeSet::new(),
            unsure_from: false,
        }
    }

    fn run(&mut self, instructions: &[Instruction]) {
        for ins in instructions {
            match ins.keyword.as_str() {
                "FROM" => self.from(&ins.rest),
                "ARG" => self.arg(&ins.rest),
                "ENV" if !self.stages.is_empty() => self.env(&ins.rest),
                "COPY" | "ADD" if !self.stages.is_empty() => {
                    self.copy(ins.keyword == "ADD", &ins.rest)
                }
                "RUN" if !self.stages.is_empty() => self.run_mounts(&ins.rest),
                _ => {}
            }
        }
    }

    fn global_lookup(&self, name: &str) -> Var {
        match self.globals.get(name) {
            Some(v) => v.clone(),
            None if PLATFORM_ARGS.contains(&name) => match self.opts.args.get(name) {
                Some(v) => Var::Known(v.clone()),
                None => self.platform_arg(name),
            },
            // BuildKit expands an undeclared variable in FROM to "".
            None => Var::Known(String::new()),
        }
    }

    /// A platform arg's automatic value: known for the target platform when the build has
    /// exactly one; the build platform is the daemon's, not known here.
    fn platform_arg(&self, name: &str) -> Var {
        let Some(p) = self.opts.platform else {
            return Var::Unknown;
        };
        // BuildKit sets these from the platform as containerd normalizes it
        // (`linux/amd64/v1` has no variant, `linux/arm` has `v7`).
        let parts: Vec<String> = p.split('/').map(str::to_ascii_lowercase).collect();
        let [os, arch, rest @ ..] = parts.as_slice() else {
            return Var::Unknown;
        };
        if rest.len() > 1 {
            return Var::Unknown;
        }
        let (arch, variant) =
            crate::options::normalize_arch(arch, rest.first().map_or("", String::as_str));
        let v = match name {
            "TARGETPLATFORM" => [os.as_str(), &arch, &variant]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("/"),
            "TARGETOS" => os.clone(),
            "TARGETARCH" => arch,
            "TARGETVARIANT" => variant,
            _ => return Var::Unknown,
        };
        Var::Known(v)
    }

    fn stage_lookup(&self, name: &str) -> Var {
        let Some(stage) = self.stages.last() else {
            return self.global_lookup(name);
        };
        // ENV wins over ARG, and a stage built on an image has that image's ENV, which is
        // not known here: only the Dockerfile's own ENV, or a stage whose ENV is all known,
        // gives a certain value.
        match (stage.env.get(name), stage.env_known) {
            (Some(v), _) => v.clone(),
            (None, true) => stage
                .args
                .get(name)
                .cloned()
                .unwrap_or(Var::Known(String::new())),
            (None, false) => Var::Unknown,
        }
    }

    fn from(&mut self, rest: &str) {
        let (flags, rest) = split_flags(rest);
        let used = std::cell::RefCell::new(BTreeSet::new());
        let recording = |n: &str| {
            used.borrow_mut().insert(n.to_string());
            self.global_lookup(n)
        };
        for (_, value) in &flags {
            shell_words(value, self.escape, &recording);
        }
        // Whatever `--platform` (or any flag) reads counts in full.
        let flag_args = std::mem::take(&mut *used.borrow_mut());
        let words = shell_words(rest, self.escape, &recording);
        let image_args = used.into_inner();
        self.seen_args.extend(flag_args);
        let mut stage = Stage::default();
        if let [_, as_kw, name, ..] = words.as_slice() {
            if as_kw.0.eq_ignore_ascii_case("as") {
                stage.name = Some(name.0.to_lowercase());
            }
        }
        stage.replaced = stage.name.as_ref().is_some_and(|n| self.named.contains(n));
        match words.first() {
            Some((image, false)) => {
                let lower = image.to_lowercase();
                let earlier_stage = self
                    .stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()));
                if earlier_stage.is_some() {
                    // Which stage is used is not visible in `base_refs`.
                    self.seen_args.extend(image_args);
                } else if self.named.contains(&familiar(image)) {
                    // Which named context is used is (`used_contexts`).
                    stage.contexts.push(familiar(image));
                }
                if let Some(idx) = earlier_stage {
                    stage.stage_deps.push(idx);
                    // ENV is inherited by a stage built on another; ARGs end with their stage.
                    stage.env = self.stages[idx].env.clone();
                    stage.env_known = self.stages[idx].env_known;
                } else if lower == "scratch" {
                    stage.env_known = true;
                } else if !image.is_empty() && !self.named.contains(&familiar(image)) {
                    stage.images.push(image.clone());
                }
            }
            // A base that depends on an unknown variable: the inputs cannot be known.
            _ => {
                stage.unknowable = true;
                self.unsure_from = true;
            }
        }
        self.stages.push(stage);
    }

    /// `ARG NAME[=default] ...`: a build arg wins, then the default; inside a stage a bare
    /// `ARG NAME` re-imports the global value.
    fn arg(&mut self, rest: &str) {
        let in_stage = !self.stages.is_empty();
        let words = if in_stage {
            shell_words(rest, self.escape, &|n| self.stage_lookup(n))
        } else {
            shell_words(rest, self.escape, &|n| self.global_lookup(n))
        };
        for (word, unknown) in words {
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (word.clone(), None),
            };
            if in_stage {
                self.stage_args.insert(name.clone());
            }
            let value = match (self.opts.args.get(&name), default) {
                (Some(v), _) => Var::Known(v.clone()),
                (None, Some(_)) if unknown => Var::Unknown,
                (None, Some(d)) => Var::Known(d),
                (None, None) if in_stage && self.globals.contains_key(&name) => {
                    self.globals[&name].clone()
                }
                (None, None) if PLATFORM_ARGS.contains(&name.as_str()) => self.platform_arg(&name),
                (None, None) => Var::Known(String::new()),
            };
            match self.stages.last_mut() {
                Some(stage) => {
                    stage.args.insert(name, value);
                }
                None => {
                    self.globals.insert(name, value);
                }
            }
        }
    }

    fn env(&mut self, rest: &str) {
        let words = shell_words(rest, self.escape, &|n| self.stage_lookup(n));
        let mut pairs = Vec::new();
        match words.first() {
            Some((w, _)) if w.contains('=') => {
                for (w, unknown) in words {
                    if let Some((k, v)) = w.split_once('=') {
                        pairs.push((
                            k.to_string(),
                            if unknown {
                                Var::Unknown
                            } else {
                                Var::Known(v.to_string())
                            },
                        ));
                    }
                }
            }
            // Legacy `ENV NAME value with spaces`.
            Some((name, _)) => {
                let unknown = words[1..].iter().any(|(_, u)| *u);
                let value = words[1..]
                    .iter()
                    .map(|(w, _)| w.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                pairs.push((
                    name.clone(),
                    if unknown {
                        Var::Unknown
                    } else {
                        Var::Known(value)
                    },
                ));
            }
            None => {}
        }
        if let Some(stage) = self.stages.last_mut() {
            stage.env.extend(pairs);
        }
    }

    /// A `--from=` / `from=` reference: an earlier stage, a named context, or an image.
    fn reference(&mut self, raw: &str) {
        let words = shell_words(raw, self.escape, &|n| self.stage_lookup(n));
        let Some(stage) = self.stages.last_mut() else {
            return;
        };
        let Some((name, false)) = words.into_iter().next() else {
            stage.unknowable = true;
            return;
        };
        let lower = name.to_lowercase();
        let current = self.stages.len() - 1;
        let idx = match lower.parse::<usize>() {
            Ok(i) if i < current => Some(i),
            _ => self.stages[..current]
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str())),
        };
        let stage = &mut self.stages[current];
        match idx {
            Some(i) => stage.stage_deps.push(i),
            None if self.named.contains(&familiar(&name)) => stage.contexts.push(familiar(&name)),
            None => {
                if !stage.images.contains(&name) {
                    stage.images.push(name);
                }
            }
        }
    }

    fn copy(&mut self, is_add: bool, rest: &str) {
        let (flags, rest) = split_flags(rest);
        if let Some((_, from)) = flags.iter().find(|(k, _)| k == "from") {
            self.reference(from);
            return;
        }
        let words: Vec<(String, bool)> = if rest.starts_with('[') {
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(items) => items
                    .iter()
                    .map(|w| expand_plain(w, self.escape, &|n| self.stage_lookup(n)))
                    .collect(),
                Err(_) => {
                    self.mark_unknowable();
                    return;
                }
            }
        } else {
            shell_words(rest, self.escape, &|n| self.stage_lookup(n))
        };
        let Some(stage) = self.stages.last_mut() else {
            return;
        };
        if words.len() < 2 {
            return;
        }
        for (src, unknown) in &words[..words.len() - 1] {
            if src.starts_with("<<") {
                continue; // heredoc: inline content, not a context file
            }
            if is_add && (*unknown || fetched_by_the_daemon(src)) {
                // Fetched by the daemon (or, not fully known, maybe); only a checksum pins
                // it. Forms that some BuildKit versions read from the context instead are
                // hashed as sources too, so that the daemon check finds every path a daemon
                // may ask for.
                if !flags.iter().any(|(k, _)| k == "checksum") {
                    stage.remote.push(if *unknown {
                        format!("{src:?} (a variable in it is not known before building)")
                    } else {
                        src.clone()
                    });
                }
                if *unknown {
                    stage.unknowable = true;
                } else if !src.contains("://") {
                    stage.sources.push(clean(src));
                }
                continue;
            }
            if *unknown {
                stage.unknowable = true;
                continue;
            }
            stage.sources.push(clean(src));
        }
    }

    fn run_mounts(&mut self, rest: &str) {
        let (flags, _) = split_flags(rest);
        for (k, v) in flags {
            if k != "mount" {
                continue;
            }
            let mut typ = "bind".to_string();
            let mut from = None;
            let mut source = None;
            for field in v.split(',') {
                let (fk, fv) = field.split_once('=').unwrap_or((field, ""));
                match fk.to_ascii_lowercase().as_str() {
                    "type" => typ = fv.to_ascii_lowercase(),
                    "from" => from = Some(fv.to_string()),
                    "source" | "src" => source = Some(fv.to_string()),
                    _ => {}
                }
            }
            match (typ.as_str(), from) {
                ("bind" | "cache", Some(f)) => self.reference(&f),
                ("bind", None) => {
                    let words =
                        source.map(|s| shell_words(&s, self.escape, &|n| self.stage_lookup(n)));
                    let Some(stage) = self.stages.last_mut() else {
                        return;
                    };
                    match words.as_deref() {
                        None | Some([]) => stage.sources.push(".".into()),
                        Some([(_, true), ..]) => stage.unknowable = true,
                        Some([(s, false), ..]) => stage.sources.push(clean(s)),
                    }
                }
                _ => {}
            }
        }
    }

    fn mark_unknowable(&mut self) {
        if let Some(s) = self.stages.last_mut() {
            s.unknowable = true;
        }
    }
}

/// Whether `ADD` may fetch `src` (a git repository or an HTTP(S) file) instead of reading it
/// from the context. BuildKit's dockerfile2llb takes a git source where `gitutil.ParseGitRef`
/// accepts one and a URL where the source has a scheme; its scp-like form
/// (`util/sshutil`, `IsImplicitSSHTransport`) is `USER@HOST:PATH` in older versions and
/// `[USER@]HOST:PATH` in newer ones, and the deprecated `github.com/…` form was a git source
/// before it became a local path. This takes the widest of those rules: a local file that only
/// looks like one of them is then always built, the safe side.
fn fetched_by_the_daemon(src: &str) -> bool {
    if src.contains("://") || src.starts_with("git@") || src.starts_with("github.com/") {
        return true;
    }
    let Some((head, _)) = src.split_once(':') else {
        return false;
    };
    let host = match head.split_once('@') {
        Some((user, host)) => {
            let user_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            if user.is_empty() || !user.bytes().all(user_ok) {
                return false;
            }
            host
        }
        None => head,
    };
    let host_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    !host.is_empty() && host.bytes().all(host_ok)
}

/// Context-relative spelling of a source: no leading `/` or `./`, `..` clamped at the root
/// (BuildKit does the same), `.` for the whole context.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn scan(
        text: &str,
        a: &[(&str, &str)],
        target: Option<&str>,
        named: &[&str],
    ) -> DockerfileScan {
        let args = args(a);
        let named: BTreeSet<String> = named.iter().map(|s| s.to_string()).collect();
        scan_dockerfile(
            text,
            &ScanOptions {
                args: &args,
                target,
                named_contexts: &named,
                platform: None,
            },
        )
    }

    const SERVICE: &str = "ARG REPO=localhost:5000\nARG TAG=latest\nFROM ${REPO}/pybase:${TAG}\nWORKDIR /app\nCOPY app/ /app/\nCOPY assets/model.bin /app/assets/\nRUN find /app | wc -l\n";

    #[test]
    fn from_uses_global_args_with_build_args_winning() {
        assert_eq!(
            dockerfile_base_refs(SERVICE, &args(&[])),
            ["localhost:5000/pybase:latest"]
        );
        assert_eq!(
            dockerfile_base_refs(
                SERVICE,
                &args(&[("REPO", "localhost:5000/acme"), ("TAG", "dev")])
            ),
            ["localhost:5000/acme/pybase:dev"]
        );
        assert_eq!(
            dockerfile_copy_sources(SERVICE, &args(&[])).unwrap(),
            ["app", "assets/model.bin"]
        );
    }

    #[test]
    fn stages_are_not_images_and_only_reachable_stages_count() {
        let df = "# syntax=docker/dockerfile:1.7\n\
                  ARG BASE_IMAGE=localhost:5000/busybox:latest\n\
                  FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS Build\n\
                  COPY requirements.txt ./\n\
                  COPY lib/ ./lib/\n\
                  FROM build AS test\n\
                  COPY tests/ /tests/\n\
                  FROM golang:1.22 AS unused\n\
                  COPY go/ /go/\n\
                  FROM ${BASE_IMAGE}\n\
                  COPY --from=BUILD /opt /opt\n\
                  COPY --from=0 /x /x\n\
                  COPY --from=nginx:alpine /etc/nginx /etc/nginx\n";
        let s = scan(df, &[], None, &[]);
        assert_eq!(s.syntax.as_deref(), Some("docker/dockerfile:1.7"));
        assert_eq!(
            s.base_refs,
            ["localhost:5000/busybox:latest", "nginx:alpine"]
        );
        assert_eq!(s.copy_sources.unwrap(), ["lib", "requirements.txt"]);
        let t = scan(df, &[], Some("test"), &[]);
        assert_eq!(t.base_refs, ["localhost:5000/busybox:latest"]);
        assert_eq!(
            t.copy_sources.unwrap(),
            ["lib", "requirements.txt", "tests"]
        );
    }

    #[test]
    fn named_contexts_replace_stages_and_images() {
        let df = "ARG BASE_IMAGE=localhost:5000/busybox:latest\nFROM scratch AS luamods\nCOPY src/luamods/ /\n\nFROM ${BASE_IMAGE}\nCOPY conf/ /conf/\nCOPY --from=luamods / /lua/\n";
        let plain = scan(df, &[], None, &[]);
        assert_eq!(plain.copy_sources.unwrap(), ["conf", "src/luamods"]);
        let named = scan(df, &[], None, &["luamods"]);
        assert_eq!(named.copy_sources.unwrap(), ["conf"]);
        assert_eq!(named.base_refs, ["localhost:5000/busybox:latest"]);
        let img = scan(
            df,
            &[],
            None,
            &[
                "docker.io/library/localhost:5000/busybox:latest",
                "localhost:5000/busybox",
            ],
        );
        assert!(img.base_refs.is_empty());
    }

    #[test]
    fn continuations_comments_and_heredocs() {
        let df = "FROM alpine\n\
                  COPY a \\\n\
                  # a comment inside the continuation\n\
                  \n\
                       b /dst/\n\
                  RUN <<EOF\n\
                  COPY not-an-instruction /x\n\
                  EOF\n\
                  COPY <<-END /etc/conf\n\
                  \tinline\n\
                  \tEND\n\
                  COPY [\"c d\", \"./e/../f\", \"/dst/\"]\n";
        let s = scan(df, &[], None, &[]);
        assert_eq!(s.base_refs, ["alpine"]);
        assert_eq!(s.copy_sources.unwrap(), ["a", "b", "c d", "f"]);
    }

    #[test]
    fn escape_directive_changes_the_continuation_character() {
        let df = "# escape=`\nFROM alpine\nCOPY a `\n  b c:\\dst\\\n";
        assert_eq!(scan(df, &[], None, &[]).copy_sources.unwrap(), ["a", "b"]);
    }

    #[test]
    fn unknown_variables_make_sources_unknowable() {
        // APP comes from the base image's ENV, which is not known here.
        let df = "FROM alpine\nCOPY $APP/x /x\n";
        assert_eq!(scan(df, &[], None, &[]).copy_sources, None);
        // Declared in the Dockerfile: known (from the default, or the build arg) where no
        // image ENV can shadow it.
        let df = "FROM alpine\nARG APP=web\nENV DIR=${APP}/static\nCOPY ${DIR} /x\n";
        assert_eq!(scan(df, &[], None, &[]).copy_sources, None);
        let df = "FROM scratch\nARG APP=web\nENV DIR=${APP}/static\nCOPY ${DIR} /x\n";
        assert_eq!(
            scan(df, &[], None, &[]).copy_sources.unwrap(),
            ["web/static"]
        );
        assert_eq!(
            scan(df, &[("APP", "api")], None, &[]).copy_sources.unwrap(),
            ["api/static"]
        );
        // Platform args depend on the daemon.
        let df = "FROM alpine\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/tool /usr/bin/\n";
        assert_eq!(scan(df, &[], None, &[]).copy_sources, None);
        // A foreign frontend could mean anything.
        let df = "# syntax=example.com/other-frontend:1\nFROM alpine\nCOPY a /a\n";
        assert_eq!(scan(df, &[], None, &[]).copy_sources, None);
    }

    #[test]
    fn add_urls_and_mounts() {
        let df = "FROM alpine\nADD https://example.com/x.tgz /x\nADD local.tgz /y\n\
                  RUN --mount=type=bind,source=go.sum,target=/go.sum --mount=type=cache,target=/c true\n\
                  RUN --mount=type=bind,from=tools,source=/bin,target=/t true\n\
                  RUN --mount=type=secret,id=x true\n";
        let s = scan(df, &[], None, &[]);
        assert_eq!(s.copy_sources.unwrap(), ["go.sum", "local.tgz"]);
        assert_eq!(s.base_refs, ["alpine", "tools"]);
        let whole = scan(
            "FROM alpine\nRUN --mount=type=bind,target=/src make\n",
            &[],
            None,
            &[],
        );
        assert_eq!(whole.copy_sources.unwrap(), ["."]);
    }

    #[test]
    fn scratch_and_undeclared_from_variables() {
        assert!(dockerfile_base_refs("FROM scratch\nCOPY x /\n", &args(&[])).is_empty());
        // Undeclared in FROM expands to "" like BuildKit; a platform arg is unknowable.
        assert_eq!(
            dockerfile_base_refs("FROM alpine${SUFFIX}\n", &args(&[])),
            ["alpine"]
        );
        assert!(dockerfile_base_refs("FROM ${TARGETARCH}/alpine\n", &args(&[])).is_empty());
    }

    #[test]
    fn args_that_only_spell_a_base_image_or_are_never_declared_are_hidden() {
        let all = [
            ("REPO", "r"),
            ("TAG", "t"),
            ("UNUSED", "x"),
            ("BUILDKIT_INLINE_CACHE", "1"),
            ("SOURCE_DATE_EPOCH", "0"),
            ("http_proxy", "p"),
        ];
        let hidden = |df: &str| -> Vec<String> {
            scan(df, &all, None, &[]).hidden_args.into_iter().collect()
        };
        // The seed's service: REPO/TAG only name the base image; UNUSED is declared nowhere.
        assert_eq!(
            hidden("ARG REPO\nARG TAG\nFROM ${REPO}/pybase:${TAG}\nCOPY app /app\n"),
            ["REPO", "TAG", "UNUSED"]
        );
        // Re-declared inside a stage: visible to RUN.
        assert_eq!(
            hidden("ARG REPO\nARG TAG\nFROM ${REPO}/pybase:${TAG}\nARG TAG\nRUN echo $TAG\n"),
            ["REPO", "UNUSED"]
        );
        // Choosing a stage, or a platform, is not visible in the base references.
        assert_eq!(
            hidden("ARG TAG\nFROM alpine AS t\nFROM busybox AS u\nFROM ${TAG}\n"),
            ["REPO", "UNUSED"]
        );
        assert_eq!(
            hidden("ARG REPO\nFROM --platform=${REPO} alpine\n"),
            ["TAG", "UNUSED"]
        );
        // A named context chosen by an arg: the arg is hidden, the choice is not.
        let named = scan("ARG TAG\nFROM ${TAG}\n", &all, None, &["t", "u"]);
        assert!(named.hidden_args.contains("TAG"));
        assert_eq!(named.used_contexts.iter().collect::<Vec<_>>(), ["t"]);
        let named = scan(
            "FROM scratch AS lib\nFROM a\nCOPY --from=lib / /\nCOPY --from=other / /\n",
            &[],
            None,
            &["lib", "other", "unused"],
        );
        assert_eq!(
            named.used_contexts.iter().collect::<Vec<_>>(),
            ["lib", "other"]
        );
        // Unsure: nothing is hidden.
        assert!(scan("FROM ${TARGETARCH}/x\n", &all, None, &[])
            .hidden_args
            .is_empty());
        assert!(scan("# syntax=example.com/f\nFROM a\n", &all, None, &[])
            .hidden_args
            .is_empty());
        assert!(scan("FROM a\nONBUILD RUN true\n", &[], None, &[]).has_onbuild);
        assert!(!scan("FROM a\nRUN onbuild\n", &[], None, &[]).has_onbuild);
    }

    /// Dockerfiles that an earlier reading took differently from BuildKit (each one let a
    /// changed build arg or base go unnoticed): the arg must count, the base must be seen.
    #[test]
    fn lines_are_read_as_buildkit_reads_them() {
        let greeting = [("GREETING", "hello")];
        let counts = |df: &str| {
            !scan(df, &greeting, None, &[])
                .hidden_args
                .contains("GREETING")
        };
        let tail = "ARG GREETING\nRUN echo \"$GREETING\" > /greeting\nFROM scratch\nCOPY --from=b /greeting /\n";
        // A heredoc word may contain `-` and `.`.
        assert!(counts(&format!(
            "FROM busybox AS b\nCOPY <<END-OF-CONFIG /etc/app.conf\nlisten=8080\nEND-OF-CONFIG\n{tail}"
        )));
        // `<<` inside a word is not a heredoc (only a word that starts with it is).
        assert!(counts(&format!(
            "FROM busybox AS b\nRUN echo $((1<<BITS)) > /bits || true\n{tail}"
        )));
        let s = scan(
            "FROM busybox AS b\nRUN echo x<<EOF\nCOPY a.txt /a\nRUN echo hi\nFROM scratch\nCOPY --from=b /a /a\n",
            &[],
            None,
            &[],
        );
        assert_eq!(s.copy_sources.unwrap(), ["a.txt"]);
        // An escaped escape character at the end of a line does not continue it.
        assert!(counts(&format!(
            "FROM busybox AS b\nENV SHARE=\\\\\\\\server\\\\share\\\\\n{tail}"
        )));
        // A byte-order mark does not hide the escape directive.
        let s = scan(
            "\u{feff}# escape=`\nFROM busybox AS b\nWORKDIR /opt\\\nARG GREETING\nRUN echo \"$GREETING\"\n",
            &greeting,
            None,
            &[],
        );
        assert!(!s.hidden_args.contains("GREETING"));
        // An unknown directive ends the directives: the escape line after it is a comment.
        assert!(counts(&format!(
            "# foo=bar\n# escape=`\nFROM busybox AS b\nRUN echo one > /one # comment with backtick `\n{tail}"
        )));
        // A heredoc ends only at its exact terminator line.
        let s = scan(
            "ARG REPO\nARG TAG\nFROM ${REPO}/base:${TAG}\nCOPY <<EOF /notes.txt\nmentions the word\nEOF \nfrom the base image, then ends.\nEOF\nRUN cat /notes.txt\n",
            &[("REPO", "r"), ("TAG", "t")],
            None,
            &[],
        );
        assert_eq!(s.base_refs, ["r/base:t"]);
        assert!(s.certain);
    }

    #[test]
    fn what_this_reading_may_have_missed_still_counts() {
        // An arg named anywhere but in a global ARG or a FROM counts, however the line was
        // read; comments outside instructions do not.
        let a = [("TAG", "t")];
        let s = scan(
            "# TAG comes from CI\nARG TAG\nFROM base:${TAG}\nRUN <<EOF\necho $TAG\nEOF\n",
            &a,
            None,
            &[],
        );
        assert!(!s.hidden_args.contains("TAG"));
        let s = scan(
            "# TAG comes from CI\nARG TAG\nFROM base:${TAG}\nRUN true\n",
            &a,
            None,
            &[],
        );
        assert!(s.hidden_args.contains("TAG"));
        // SQL in a heredoc is not a FROM line.
        let s = scan(
            "FROM a\nCOPY <<EOF /init.sql\nSELECT id\nFROM users\nEOF\n",
            &[],
            None,
            &[],
        );
        assert!(s.certain);
        assert_eq!(s.base_refs, ["a"]);
        // A FROM that cannot be worked out could be any stage or image.
        let s = scan("ARG TAG\nFROM base:${TAG%-x}\n", &a, None, &[]);
        assert!(!s.certain);
        assert!(s.hidden_args.is_empty());
        // An arg that feeds another global ARG's default counts.
        let chain = [("VERSION", "1.0")];
        let s = scan(
            "ARG VERSION=1.0\nARG IMAGE_VERSION=v${VERSION}\nFROM busybox AS b\nARG IMAGE_VERSION\nRUN echo $IMAGE_VERSION\n",
            &chain,
            None,
            &[],
        );
        assert!(!s.hidden_args.contains("VERSION"));
        // ENV from a base image wins over an ARG of the same name, and is not known here.
        let s = scan(
            "FROM busybox\nARG DIR=a\nCOPY ${DIR}/f /f\n",
            &[],
            None,
            &[],
        );
        assert_eq!(s.copy_sources, None);
        let s = scan(
            "FROM scratch\nARG DIR=a\nCOPY ${DIR}/f /f\n",
            &[],
            None,
            &[],
        );
        assert_eq!(s.copy_sources.unwrap(), ["a/f"]);
        // A quoted flag value with a blank.
        let s = scan(
            "FROM scratch\nCOPY --exclude=\"a b\" x /x\n",
            &[],
            None,
            &[],
        );
        assert_eq!(s.copy_sources.unwrap(), ["x"]);
        // ADD of a URL: fetched by the daemon, unless a checksum pins it.
        let s = scan(
            "FROM scratch\nADD https://example.com/a.tgz /a\nADD --checksum=sha256:0123 https://example.com/b.tgz /b\n",
            &[],
            None,
            &[],
        );
        assert_eq!(s.remote_sources, ["https://example.com/a.tgz"]);
        // Git over ssh in its scp-like forms, with and without a user, and the old
        // `github.com/…` form: fetched (and, where a daemon may read it locally, hashed).
        let s = scan(
            "FROM scratch\nADD root@127.0.0.1:/srv/repo.git /src\nADD build-host:repo.git#main /b\nADD github.com/o/r /r\nADD ./a:b c:/ /x/\nADD git@example.com:o/r.git /g\n",
            &[],
            None,
            &[],
        );
        assert_eq!(
            s.remote_sources,
            [
                "root@127.0.0.1:/srv/repo.git",
                "build-host:repo.git#main",
                "github.com/o/r",
                "c:/",
                "git@example.com:o/r.git"
            ]
        );
        // A source whose value comes from the base image's ENV may be a URL: always built.
        let s = scan("FROM base\nARG D=src\nADD ${D} /x\n", &[], None, &[]);
        assert_eq!(s.remote_sources.len(), 1, "{:?}", s.remote_sources);
        assert!(s.copy_sources.is_none());
        let s = scan("FROM scratch\nARG D=src\nADD ${D} /x\n", &[], None, &[]);
        assert!(s.remote_sources.is_empty(), "{:?}", s.remote_sources);
        assert_eq!(s.copy_sources.unwrap(), ["src"]);
        // Plain local paths, one with a colon past a slash, stay local only.
        assert!(fetched_by_the_daemon("a@b:c"));
        for local in [
            "./a:b",
            "dir/a:b",
            "a b:c",
            "@h:p",
            "u@:p",
            "plain.txt",
            "u@h@x:p",
        ] {
            assert!(!fetched_by_the_daemon(local), "{local}");
        }
    }

    #[test]
    fn target_platform_args_are_known_for_a_single_platform() {
        let df = "FROM base AS build-amd64\nCOPY a /a\nFROM base AS build-arm64\nCOPY b /b\nFROM build-${TARGETARCH}\n";
        let named = BTreeSet::new();
        let none = BTreeMap::new();
        let scan_on = |df: &str, platform| {
            scan_dockerfile(
                df,
                &ScanOptions {
                    args: &none,
                    target: None,
                    named_contexts: &named,
                    platform,
                },
            )
        };
        let with = |platform| scan_on(df, platform);
        let arm = with(Some("linux/arm64"));
        assert!(arm.certain);
        assert_eq!(arm.copy_sources.unwrap(), ["b"]);
        assert!(!with(None).certain, "several platforms: any stage");
        // The values BuildKit gives, from the platform as containerd normalizes it.
        assert_eq!(with(Some("linux/x86_64")).copy_sources.unwrap(), ["a"]);
        assert_eq!(with(Some("Linux/AArch64/v8")).copy_sources.unwrap(), ["b"]);
        let df = "FROM base AS v-\nCOPY none /n\nFROM base AS v-v1\nCOPY v1 /1\nFROM base AS v-v7\nCOPY v7 /7\nFROM v-${TARGETVARIANT}\n";
        let sources = |p| scan_on(df, Some(p)).copy_sources.unwrap();
        assert_eq!(sources("linux/amd64/v1"), ["none"]);
        assert_eq!(sources("linux/arm"), ["v7"]);
        let bases = |p| scan_on("FROM reg.example/${TARGETPLATFORM}\n", Some(p)).base_refs;
        let b = bases("linux/amd64/v1");
        assert!(
            b.len() == 1 && b[0].contains("reg.example/linux/amd64"),
            "{b:?}"
        );
        assert!(!b[0].contains("v1"), "{b:?}");
        let b = bases("linux/arm");
        assert!(
            b.len() == 1 && b[0].contains("reg.example/linux/arm/v7"),
            "{b:?}"
        );
    }
}
