//! `${VAR}` interpolation for project files.
//!
//! One engine serves both dialects because compose's syntax is a superset of ours: bk-build.toml
//! only reacts to `${...}` (a bare `$HOME` stays literal, so build args meant for the Dockerfile's
//! own expansion survive), while compose files also expand `$VAR`. Both understand `$$` as a
//! literal `$` and the operators `:-` `-` `:?` `?` `:+` `+` with their POSIX meaning; the word
//! after an operator is itself interpolated, but only when it is used, so `${A:?msg}` with `A`
//! set never evaluates `msg`.
//!
//! Where values come from is the caller's business (the `lookup` callback); this module does
//! not know about environments, `[vars]` tables or git.

/// Which file format's rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// bk-build.toml: only `${...}` and `$$`; an undefined variable without default is an error.
    Toml,
    /// compose: also `$VAR`; an undefined variable becomes "" (compose warns, we record it).
    Compose,
}

/// Why a string could not be interpolated. `E` is the lookup's own error, passed through.
#[derive(Debug)]
pub(crate) enum InterpError<E> {
    /// `${VAR}` with VAR unset and no default (toml dialect only).
    Undefined { var: String },
    /// `${VAR:?message}` / `${VAR?message}` triggered.
    Required { var: String, message: String },
    /// Malformed template, e.g. an unterminated `${`.
    Syntax { message: String },
    /// The lookup callback failed (for example `GIT_SHA` outside a git checkout).
    Lookup(E),
}

/// How deep `${A:-${B:-…}}` may nest. Real files nest two or three levels; the bound keeps
/// the recursion off the end of the stack and the work linear in the input's size.
pub(crate) const MAX_NESTING: usize = 32;
/// The longest value interpolated, in bytes (1 MiB): far above any real tag, arg or path.
pub(crate) const MAX_VALUE_LEN: usize = 1 << 20;

use crate::options::excerpt;

/// Expands `input`. `lookup(name)` returns `Ok(None)` for an unset variable. In the compose
/// dialect the names of unset variables that were replaced by "" are appended to `undefined`.
///
/// Errors: [`InterpError::Syntax`] also for nesting deeper than [`MAX_NESTING`] and for input
/// or results longer than [`MAX_VALUE_LEN`].
pub(crate) fn interpolate<E>(
    input: &str,
    dialect: Dialect,
    lookup: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
    undefined: &mut Vec<String>,
) -> Result<String, InterpError<E>> {
    if input.len() > MAX_VALUE_LEN {
        return Err(InterpError::Syntax {
            message: format!(
                "value of {} bytes is longer than the {MAX_VALUE_LEN} bytes allowed: {}",
                input.len(),
                excerpt(input)
            ),
        });
    }
    let out = interpolate_at(input, dialect, lookup, undefined, 0)?;
    if out.len() > MAX_VALUE_LEN {
        return Err(InterpError::Syntax {
            message: format!(
                "{} expands to {} bytes, more than the {MAX_VALUE_LEN} bytes allowed",
                excerpt(input),
                out.len()
            ),
        });
    }
    Ok(out)
}

fn interpolate_at<E>(
    input: &str,
    dialect: Dialect,
    lookup: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
    undefined: &mut Vec<String>,
    depth: usize,
) -> Result<String, InterpError<E>> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    if depth > MAX_NESTING {
        return Err(InterpError::Syntax {
            message: format!(
                "`${{…}}` nested more than {MAX_NESTING} levels deep (at {})",
                excerpt(input)
            ),
        });
    }
    let chars: Vec<char> = input.chars().collect();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let close = matching_brace(&chars, i + 2).ok_or_else(|| InterpError::Syntax {
                    message: format!("unterminated `${{` in {}", excerpt(input)),
                })?;
                let body: String = chars[i + 2..close].iter().collect();
                out.push_str(&expand_braced(&body, dialect, lookup, undefined, depth)?);
                i = close + 1;
            }
            Some(n) if dialect == Dialect::Compose && is_name_start(*n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match lookup(&name).map_err(InterpError::Lookup)? {
                    Some(v) => out.push_str(&v),
                    None => undefined.push(name),
                }
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts at `start`, honouring nested `${...}`.
fn matching_brace(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'$') => i += 1,
            '$' if chars.get(i + 1) == Some(&'{') => {
                depth += 1;
                i += 1;
            }
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand_braced<E>(
    body: &str,
    dialect: Dialect,
    lookup: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
    undefined: &mut Vec<String>,
    depth: usize,
) -> Result<String, InterpError<E>> {
    let name_len = body
        .char_indices()
        .find(|&(idx, c)| !(is_name_char(c) && (idx > 0 || is_name_start(c))))
        .map_or(body.len(), |(idx, _)| idx);
    let name = &body[..name_len];
    if name.is_empty() {
        return Err(InterpError::Syntax {
            message: format!(
                "`${{…}}` does not start with a variable name: {}",
                excerpt(body)
            ),
        });
    }
    let rest = &body[name_len..];
    let value = lookup(name).map_err(InterpError::Lookup)?;
    let (op, word) = if let Some(w) = rest.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = rest.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = rest.strip_prefix(":+") {
        (":+", w)
    } else if let Some(w) = rest.strip_prefix('-') {
        ("-", w)
    } else if let Some(w) = rest.strip_prefix('?') {
        ("?", w)
    } else if let Some(w) = rest.strip_prefix('+') {
        ("+", w)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(InterpError::Syntax {
            message: format!(
                "{}: unsupported operator after `{name}` (use `:-`, `-`, `:?`, `?`, `:+` or `+`)",
                excerpt(body)
            ),
        });
    };
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let value = value.unwrap_or_default();
    match op {
        "" if set => Ok(value),
        "" if dialect == Dialect::Toml => Err(InterpError::Undefined {
            var: name.to_string(),
        }),
        "" => {
            undefined.push(name.to_string());
            Ok(String::new())
        }
        ":-" if !non_empty => interpolate_at(word, dialect, lookup, undefined, depth + 1),
        "-" if !set => interpolate_at(word, dialect, lookup, undefined, depth + 1),
        ":?" | "?" if (op == ":?" && !non_empty) || (op == "?" && !set) => {
            Err(InterpError::Required {
                var: name.to_string(),
                message: interpolate_at(word, dialect, lookup, undefined, depth + 1)?,
            })
        }
        ":+" | "+" if (op == ":+" && non_empty) || (op == "+" && set) => {
            interpolate_at(word, dialect, lookup, undefined, depth + 1)
        }
        ":+" | "+" => Ok(String::new()),
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(input: &str, dialect: Dialect, vars: &[(&str, &str)]) -> Result<String, String> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut undefined = Vec::new();
        let mut lookup = |n: &str| -> Result<Option<String>, String> { Ok(map.get(n).cloned()) };
        interpolate(input, dialect, &mut lookup, &mut undefined).map_err(|e| match e {
            InterpError::Undefined { var } => format!("undefined {var}"),
            InterpError::Required { var, message } => format!("required {var}: {message}"),
            InterpError::Syntax { message } => format!("syntax: {message}"),
            InterpError::Lookup(e) => e,
        })
    }

    #[test]
    fn braced_and_defaults() {
        let vars = [("REPO", "r"), ("EMPTY", "")];
        let t = Dialect::Toml;
        assert_eq!(run("${REPO}/x", t, &vars).unwrap(), "r/x");
        assert_eq!(run("${NOPE:-d}", t, &vars).unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}", t, &vars).unwrap(), "d");
        assert_eq!(run("${EMPTY-d}", t, &vars).unwrap(), "");
        assert_eq!(run("${NOPE-d}", t, &vars).unwrap(), "d");
        assert_eq!(run("${REPO:+alt}", t, &vars).unwrap(), "alt");
        assert_eq!(run("${EMPTY:+alt}", t, &vars).unwrap(), "");
        assert_eq!(run("${EMPTY+alt}", t, &vars).unwrap(), "alt");
        assert_eq!(run("${NOPE:-${REPO}/y}", t, &vars).unwrap(), "r/y");
        assert_eq!(run("a$$b $${REPO}", t, &vars).unwrap(), "a$b ${REPO}");
    }

    #[test]
    fn toml_leaves_bare_dollar_and_rejects_undefined() {
        assert_eq!(run("$HOME/x $", Dialect::Toml, &[]).unwrap(), "$HOME/x $");
        assert_eq!(
            run("${NOPE}", Dialect::Toml, &[]).unwrap_err(),
            "undefined NOPE"
        );
    }

    #[test]
    fn compose_bare_names_and_undefined_become_empty() {
        let mut undefined = Vec::new();
        let mut lookup =
            |n: &str| -> Result<Option<String>, ()> { Ok((n == "A").then(|| "1".to_string())) };
        let out = interpolate("$A-$B-${C}", Dialect::Compose, &mut lookup, &mut undefined).unwrap();
        assert_eq!(out, "1--");
        assert_eq!(undefined, vec!["B".to_string(), "C".to_string()]);
    }

    #[test]
    fn required_only_evaluated_when_triggered() {
        let vars = [("A", "x")];
        assert_eq!(run("${A:?${NOPE}}", Dialect::Toml, &vars).unwrap(), "x");
        assert_eq!(
            run("${B:?set B to the registry}", Dialect::Compose, &vars).unwrap_err(),
            "required B: set B to the registry"
        );
        assert_eq!(run("${B?m}", Dialect::Compose, &[("B", "")]).unwrap(), "");
    }

    #[test]
    fn malformed_templates() {
        assert!(run("${A", Dialect::Toml, &[])
            .unwrap_err()
            .starts_with("syntax"));
        assert!(run("${}", Dialect::Toml, &[])
            .unwrap_err()
            .starts_with("syntax"));
        assert!(run("${A%b}", Dialect::Toml, &[("A", "1")])
            .unwrap_err()
            .starts_with("syntax"));
    }
}
