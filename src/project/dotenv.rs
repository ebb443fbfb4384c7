//! compose's env files (`.env`, `COMPOSE_ENV_FILES`, `include: env_file`): `KEY=VALUE` lines
//! with compose's quoting and interpolation rules. Reads files; knows nothing of compose keys.

use std::collections::BTreeMap;
use std::path::Path;

use super::interp::{interpolate, Dialect, InterpError};
use super::ProjectError;

/// Reads compose's `.env`: `KEY=VALUE` lines, `export` prefixes, `#` comments, single quotes
/// (literal), double quotes (escapes and interpolation, may span lines), unquoted values
/// (trimmed, ` #` starts a comment, interpolated). A missing file is an empty one.
pub(super) fn read_dotenv(
    path: &Path,
    required: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ProjectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(BTreeMap::new())
        }
        Err(e) => {
            return Err(ProjectError::Read {
                path: path.to_path_buf(),
                source: e,
                fix: if required {
                    "check the env file's path (COMPOSE_ENV_FILES, include: env_file)".into()
                } else {
                    "make the .env file readable, or remove it".into()
                },
            })
        }
    };
    parse_dotenv(&text, env).map_err(|(line, problem)| ProjectError::Invalid {
        file: path.to_path_buf(),
        line: Some(line),
        key: String::new(),
        problem,
        fix: "write KEY=value, KEY=\"value\" or KEY='value', one per line".into(),
    })
}

pub(super) fn parse_dotenv(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let line_end = |from: usize| {
        chars[from..]
            .iter()
            .position(|c| *c == '\n')
            .map_or(chars.len(), |p| from + p)
    };
    while i < chars.len() {
        let end = line_end(i);
        let raw: String = chars[i..end].iter().collect();
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i = end + 1;
            line += 1;
            continue;
        }
        let start_line = line;
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        // compose also accepts `KEY: value`; a bare `KEY` leaves the variable to the environment.
        let Some(sep) = body.find(['=', ':']) else {
            i = end + 1;
            line += 1;
            continue;
        };
        let key = &body[..sep];
        let key = key.trim().to_string();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err((start_line, format!("{key:?} is not a valid variable name")));
        }
        // Position of the value in `chars`: after the separator on this line.
        let eq = i + raw.find(['=', ':']).map_or(0, |b| raw[..b].chars().count()) + 1;
        let mut j = eq;
        while j < end && (chars[j] == ' ' || chars[j] == '\t') {
            j += 1;
        }
        let lookup = |n: &str| env(n).or_else(|| vars.get(n).cloned());
        let value = match chars.get(j) {
            Some(q @ ('\'' | '"')) if j < end => {
                let q = *q;
                let mut k = j + 1;
                let mut content = String::new();
                loop {
                    match chars.get(k) {
                        None => return Err((start_line, format!("missing closing {q}"))),
                        Some(c) if *c == q => break,
                        Some('\\') if q == '"' => {
                            k += 1;
                            match chars.get(k) {
                                Some('n') => content.push('\n'),
                                Some('t') => content.push('\t'),
                                Some('r') => content.push('\r'),
                                Some('"') => content.push('"'),
                                Some('\\') => content.push('\\'),
                                Some('$') => content.push_str("$$"),
                                Some(c) => {
                                    content.push('\\');
                                    content.push(*c);
                                }
                                None => return Err((start_line, "missing closing \"".into())),
                            }
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line += 1;
                            }
                            content.push(*c);
                        }
                    }
                    k += 1;
                }
                let next_end = line_end(k);
                i = next_end + 1;
                if q == '\'' {
                    content
                } else {
                    expand_env_value(&content, &lookup).map_err(|m| (start_line, m))?
                }
            }
            _ => {
                let v: String = chars[j..end].iter().collect();
                let v = match v.find(" #").or_else(|| v.find("\t#")) {
                    Some(p) => v[..p].to_string(),
                    None => v,
                };
                i = end + 1;
                expand_env_value(v.trim_end(), &lookup).map_err(|m| (start_line, m))?
            }
        };
        line += 1;
        vars.insert(key, value);
    }
    Ok(vars)
}

fn expand_env_value(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut look = |n: &str| -> Result<Option<String>, ()> { Ok(lookup(n)) };
    interpolate(s, Dialect::Compose, &mut look, &mut Vec::new()).map_err(|e| match e {
        InterpError::Required { var, message } => {
            format!("required variable {var} is missing: {message}")
        }
        InterpError::Syntax { message } => message,
        InterpError::Undefined { var } => format!("variable {var} is not set"),
        InterpError::Lookup(()) => "variable lookup failed".into(),
    })
}
