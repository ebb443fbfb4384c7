//! `.dockerignore` text → the exclude-pattern list BuildKit's Dockerfile frontend would send
//! (moby/patternmatcher `ignorefile.ReadAll`).
//!
//! Normally the daemon parses `.dockerignore` itself and ships the result back to us as
//! `exclude-patterns`; we need the same list locally to fingerprint a context without a daemon.

use super::pattern::go_clean;

/// Parses `.dockerignore` content into patterns, line by line:
/// - a UTF-8 BOM at the start is dropped; lines end at `\n` (a trailing `\r` is dropped);
/// - a line whose first character is `#` is a comment (checked *before* trimming, so `  #x` is
///   a pattern);
/// - surrounding whitespace is trimmed and blank lines are skipped;
/// - a leading `!` is kept, the text after it trimmed again;
/// - the path is Go-`Clean`ed and one leading `/` removed (`/a` and `a` are the same pattern).
pub fn parse_dockerignore(content: &str) -> Vec<String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut lines: Vec<&str> = content.split('\n').collect();
    // A final newline does not start another (empty) line.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = Vec::new();
    for raw in lines {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_trimming() {
        let text = "# comment\n\n  node_modules  \n\t*.log\r\n  # not a comment\n";
        assert_eq!(
            parse_dockerignore(text),
            vec!["node_modules", "*.log", "# not a comment"]
        );
    }

    #[test]
    fn exceptions_and_cleaning() {
        let text = "!README.md\n! /docs/keep.md \n./build/\n/abs/path\n/\n!\na//b/../c\n";
        assert_eq!(
            parse_dockerignore(text),
            vec![
                "!README.md",
                "!docs/keep.md",
                "build",
                "abs/path",
                "/",
                "!",
                "a/c"
            ]
        );
    }

    #[test]
    fn bom_only_on_first_line_and_no_trailing_newline() {
        assert_eq!(parse_dockerignore("\u{feff}a\nb"), vec!["a", "b"]);
        assert_eq!(parse_dockerignore("\u{feff}#c\nb"), vec!["b"]);
        assert!(parse_dockerignore("").is_empty());
        assert!(parse_dockerignore("\n\n").is_empty());
    }

    #[test]
    fn lone_bang_is_kept_so_the_matcher_rejects_it() {
        let list = parse_dockerignore("a\n!\n");
        assert!(crate::fs::PatternMatcher::new(&list).is_err());
    }
}
