//! The functions bake files can call: buildx's standard library (go-cty's `stdlib` plus the
//! few buildx adds: `basename`, `dirname`, `homedir`, `indexof`, `sanitize`, `timestamp`),
//! written here from their documented behaviour. `try` and `can` are in the evaluator, since
//! they look at errors. Functions buildx offers that bk-build does not (cryptographic ones that
//! need extra crates, CIDR arithmetic, `convert`) are named by [`unsupported`] so the error says
//! so instead of "no such function".

use std::collections::BTreeMap;

use super::value::{fmt_number, set_normalize, Value};
use crate::fs::pattern::{go_base, go_dir};

/// Every function [`call`] knows, for "did you mean" hints.
pub(crate) const NAMES: &[&str] = &[
    "absolute",
    "add",
    "and",
    "base64decode",
    "base64encode",
    "basename",
    "can",
    "ceil",
    "chomp",
    "chunklist",
    "coalesce",
    "coalescelist",
    "compact",
    "concat",
    "contains",
    "csvdecode",
    "dirname",
    "distinct",
    "divide",
    "element",
    "equal",
    "flatten",
    "floor",
    "format",
    "formatdate",
    "formatlist",
    "greaterthan",
    "greaterthanorequalto",
    "hasindex",
    "homedir",
    "indent",
    "index",
    "indexof",
    "int",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "length",
    "lessthan",
    "lessthanorequalto",
    "log",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "modulo",
    "multiply",
    "negate",
    "not",
    "notequal",
    "or",
    "parseint",
    "pow",
    "range",
    "regex",
    "regex_replace",
    "regexall",
    "replace",
    "reverse",
    "reverselist",
    "sanitize",
    "sethaselement",
    "setintersection",
    "setproduct",
    "setsubtract",
    "setsymmetricdifference",
    "setunion",
    "sha256",
    "sha512",
    "signum",
    "slice",
    "sort",
    "split",
    "strlen",
    "substr",
    "subtract",
    "timeadd",
    "timestamp",
    "title",
    "trim",
    "trimprefix",
    "trimspace",
    "trimsuffix",
    "try",
    "upper",
    "urlencode",
    "uuidv4",
    "values",
    "zipmap",
];

/// Why a function buildx has is missing here, or `None` when buildx has no such function.
pub(crate) fn unsupported(name: &str) -> Option<&'static str> {
    match name {
        "md5" | "sha1" | "bcrypt" | "rsadecrypt" | "uuidv5" => {
            Some("this hash or cipher is not built in; compute the value outside and pass it as a variable")
        }
        "cidrhost" | "cidrnetmask" | "cidrsubnet" | "cidrsubnets" => {
            Some("CIDR arithmetic is not built in; compute the value outside and pass it as a variable")
        }
        "convert" | "byteslen" | "bytesslice" => {
            Some("write the value in the type you need instead")
        }
        _ => None,
    }
}

type R = Result<Value, String>;

/// Largest indentation, width or precision accepted: far beyond real use, small enough that
/// a typo cannot exhaust memory.
const MAX_PAD: f64 = 10_000.0;
/// Largest list `range` and `setproduct` build, for the same reason.
const MAX_ELEMENTS: usize = 100_000;

/// Calls built-in `name`; `None` when there is no such built-in.
pub(crate) fn call(name: &str, a: Vec<Value>) -> Option<R> {
    Some(match name {
        "absolute" => num1(&a).map(|n| Value::Number(n.abs())),
        "add" => num2(&a).map(|(x, y)| Value::Number(x + y)),
        "subtract" => num2(&a).map(|(x, y)| Value::Number(x - y)),
        "multiply" => num2(&a).map(|(x, y)| Value::Number(x * y)),
        "divide" => num2(&a).and_then(|(x, y)| {
            if y == 0.0 {
                Err("division by zero".into())
            } else {
                Ok(Value::Number(x / y))
            }
        }),
        "modulo" => num2(&a).and_then(|(x, y)| {
            if y == 0.0 {
                Err("modulo by zero".into())
            } else {
                Ok(Value::Number(x % y))
            }
        }),
        "negate" => num1(&a).map(|n| Value::Number(-n)),
        "ceil" => num1(&a).map(|n| Value::Number(n.ceil())),
        "floor" => num1(&a).map(|n| Value::Number(n.floor())),
        "signum" => num1(&a).map(|n| {
            Value::Number(if n > 0.0 {
                1.0
            } else if n < 0.0 {
                -1.0
            } else {
                0.0
            })
        }),
        "int" => num1(&a).map(|n| Value::Number(n.trunc())),
        "log" => num2(&a).map(|(x, b)| Value::Number(x.ln() / b.ln())),
        "pow" => num2(&a).map(|(x, y)| Value::Number(x.powf(y))),
        "max" | "min" => minmax(name == "max", &a),
        "parseint" => parseint(&a),
        "and" => bool2(&a).map(|(x, y)| Value::Bool(x && y)),
        "or" => bool2(&a).map(|(x, y)| Value::Bool(x || y)),
        "not" => arity(&a, 1)
            .and_then(|_| a[0].to_bool())
            .map(|b| Value::Bool(!b)),
        "equal" => arity(&a, 2).map(|_| Value::Bool(a[0].equals(&a[1]))),
        "notequal" => arity(&a, 2).map(|_| Value::Bool(!a[0].equals(&a[1]))),
        "greaterthan" => num2(&a).map(|(x, y)| Value::Bool(x > y)),
        "greaterthanorequalto" => num2(&a).map(|(x, y)| Value::Bool(x >= y)),
        "lessthan" => num2(&a).map(|(x, y)| Value::Bool(x < y)),
        "lessthanorequalto" => num2(&a).map(|(x, y)| Value::Bool(x <= y)),

        "lower" => str1(&a).map(|s| Value::String(s.to_lowercase())),
        "upper" => str1(&a).map(|s| Value::String(s.to_uppercase())),
        "title" => str1(&a).map(|s| Value::String(title(&s))),
        "trimspace" => str1(&a).map(|s| Value::str(s.trim())),
        "chomp" => str1(&a).map(|s| Value::str(s.trim_end_matches(['\n', '\r']))),
        "strlen" => str1(&a).map(|s| Value::Number(s.chars().count() as f64)),
        "reverse" => str1(&a).map(|s| Value::String(s.chars().rev().collect())),
        "trim" => str2(&a).map(|(s, cut)| Value::str(s.trim_matches(|c| cut.contains(c)))),
        "trimprefix" => str2(&a).map(|(s, p)| Value::str(s.strip_prefix(p.as_str()).unwrap_or(&s))),
        "trimsuffix" => str2(&a).map(|(s, p)| Value::str(s.strip_suffix(p.as_str()).unwrap_or(&s))),
        "split" => str2(&a).map(|(sep, s)| split(&sep, &s)),
        "replace" => str3(&a).map(|(s, from, to)| Value::String(s.replace(from.as_str(), &to))),
        "substr" => substr(&a),
        "indent" => indent(&a),
        "format" => arity_min(&a, 1)
            .and_then(|_| a[0].to_str())
            .and_then(|f| format(&f, &a[1..]).map(Value::String)),
        "formatlist" => formatlist(&a),
        "join" => join(&a),
        "regex" => regex_fn(&a, false),
        "regexall" => regex_fn(&a, true),
        "regex_replace" => regex_replace(&a),
        "sanitize" => str1(&a).map(|s| {
            Value::String(
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect(),
            )
        }),
        // Go's `path.Base`/`path.Dir`, which are `filepath`'s on Unix.
        "basename" => str1(&a).map(|s| Value::String(go_base(&s).to_string())),
        "dirname" => str1(&a).map(|s| Value::String(go_dir(&s))),
        "homedir" => arity(&a, 0).and_then(|_| {
            std::env::var("HOME")
                .map(Value::String)
                .map_err(|_| "HOME is not set".to_string())
        }),
        "urlencode" => str1(&a).map(|s| Value::String(urlencode(&s))),
        "base64encode" => {
            use base64::Engine;
            str1(&a).map(|s| Value::String(base64::engine::general_purpose::STANDARD.encode(s)))
        }
        "base64decode" => str1(&a).and_then(|s| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| format!("not valid base64: {e}"))?;
            String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| "the decoded bytes are not UTF-8".to_string())
        }),
        "sha256" => str1(&a).map(|s| Value::String(hex_digest::<sha2::Sha256>(&s))),
        "sha512" => str1(&a).map(|s| Value::String(hex_digest::<sha2::Sha512>(&s))),
        "uuidv4" => arity(&a, 0).map(|_| Value::String(uuidv4())),
        "jsonencode" => arity(&a, 1).map(|_| Value::String(a[0].to_json().to_string())),
        "jsondecode" => str1(&a).and_then(|s| {
            serde_json::from_str::<serde_json::Value>(&s)
                .map(|j| Value::from_json(&j))
                .map_err(|e| format!("not valid JSON: {e}"))
        }),
        "csvdecode" => str1(&a).and_then(|s| csvdecode(&s)),
        "timestamp" => arity(&a, 0).map(|_| Value::String(time::format_rfc3339(time::now()))),
        "formatdate" => str2(&a).and_then(|(spec, ts)| {
            let t = time::parse_rfc3339(&ts)?;
            time::formatdate(&spec, &t).map(Value::String)
        }),
        "timeadd" => str2(&a).and_then(|(ts, d)| {
            let t = time::parse_rfc3339(&ts)?;
            let secs = time::parse_duration(&d)?;
            // Ten thousand years either way: far beyond any real use, and the date arithmetic
            // stays in range.
            if secs.abs() > 3.2e11 {
                return Err(format!("{d:?} is too long a duration"));
            }
            Ok(Value::String(time::format_rfc3339(t.add_seconds(secs))))
        }),

        "length" => arity(&a, 1).and_then(|_| match &a[0] {
            Value::List(l) => Ok(Value::Number(l.len() as f64)),
            Value::Object(m) => Ok(Value::Number(m.len() as f64)),
            other => Err(format!(
                "the argument must be a list or a map, not a {} (strlen() counts characters)",
                other.type_name()
            )),
        }),
        "concat" => a
            .iter()
            .map(|v| v.as_list().map(<[Value]>::to_vec))
            .collect::<Result<Vec<_>, _>>()
            .map(|ls| Value::List(ls.into_iter().flatten().collect())),
        "contains" => arity(&a, 2)
            .and_then(|_| Ok(Value::Bool(a[0].as_list()?.iter().any(|x| x.equals(&a[1]))))),
        "distinct" => list1(&a).map(|l| {
            let mut out: Vec<Value> = Vec::new();
            for x in l {
                if !out.iter().any(|y| y.equals(&x)) {
                    out.push(x);
                }
            }
            Value::List(out)
        }),
        "compact" => list1(&a).map(|l| {
            Value::List(
                l.into_iter()
                    .filter(|x| {
                        !matches!(x, Value::Null) && !matches!(x, Value::String(s) if s.is_empty())
                    })
                    .collect(),
            )
        }),
        "flatten" => list1(&a).map(|l| {
            fn go(l: Vec<Value>, out: &mut Vec<Value>) {
                for x in l {
                    match x {
                        Value::List(inner) => go(inner, out),
                        other => out.push(other),
                    }
                }
            }
            let mut out = Vec::new();
            go(l, &mut out);
            Value::List(out)
        }),
        "reverselist" => list1(&a).map(|mut l| {
            l.reverse();
            Value::List(l)
        }),
        "sort" => list1(&a).and_then(|l| {
            let mut s = l.iter().map(Value::to_str).collect::<Result<Vec<_>, _>>()?;
            s.sort();
            Ok(Value::List(s.into_iter().map(Value::String).collect()))
        }),
        "element" => arity(&a, 2).and_then(|_| {
            let l = a[0].as_list()?;
            let i = a[1].to_number()?;
            if l.is_empty() {
                return Err("cannot use element() on an empty list".into());
            }
            if i < 0.0 || i.fract() != 0.0 {
                return Err("the index must be a whole number of 0 or more".into());
            }
            Ok(l[(i as usize) % l.len()].clone())
        }),
        "index" => arity(&a, 2).and_then(|_| match &a[0] {
            Value::List(l) => {
                let i = a[1].to_number()?;
                if i < 0.0 || i.fract() != 0.0 || i as usize >= l.len() {
                    return Err(format!("index {} is out of range", fmt_number(i)));
                }
                Ok(l[i as usize].clone())
            }
            Value::Object(m) => {
                let k = a[1].to_str()?;
                m.get(&k)
                    .cloned()
                    .ok_or_else(|| format!("no element {k:?}"))
            }
            other => Err(format!("cannot index a {}", other.type_name())),
        }),
        "indexof" => arity(&a, 2).and_then(|_| {
            let l = a[0].as_list()?;
            if l.is_empty() {
                return Err("cannot search an empty list".into());
            }
            l.iter()
                .position(|x| x.equals(&a[1]))
                .map(|i| Value::Number(i as f64))
                .ok_or_else(|| "item not found".to_string())
        }),
        "hasindex" => arity(&a, 2).map(|_| {
            Value::Bool(match &a[0] {
                Value::List(l) => a[1]
                    .to_number()
                    .is_ok_and(|i| i >= 0.0 && i.fract() == 0.0 && (i as usize) < l.len()),
                Value::Object(m) => a[1].to_str().is_ok_and(|k| m.contains_key(&k)),
                _ => false,
            })
        }),
        "slice" => arity(&a, 3).and_then(|_| {
            let l = a[0].as_list()?;
            let (s, e) = (a[1].to_number()?, a[2].to_number()?);
            if s < 0.0 || e < s || e as usize > l.len() || s.fract() != 0.0 || e.fract() != 0.0 {
                return Err(format!(
                    "slice({}, {}) is out of range for a list of {}",
                    fmt_number(s),
                    fmt_number(e),
                    l.len()
                ));
            }
            Ok(Value::List(l[s as usize..e as usize].to_vec()))
        }),
        "chunklist" => arity(&a, 2).and_then(|_| {
            let l = a[0].as_list()?;
            let n = a[1].to_number()?;
            if n < 0.0 || n.fract() != 0.0 {
                return Err("the chunk size must be a whole number of 0 or more".into());
            }
            if n == 0.0 {
                return Ok(Value::List(vec![Value::List(l.to_vec())]));
            }
            Ok(Value::List(
                l.chunks(n as usize)
                    .map(|c| Value::List(c.to_vec()))
                    .collect(),
            ))
        }),
        "coalesce" => a
            .iter()
            .find(|v| **v != Value::Null)
            .cloned()
            .ok_or_else(|| "no non-null arguments".to_string()),
        "coalescelist" => (|| {
            for v in &a {
                if !v.as_list()?.is_empty() {
                    return Ok(v.clone());
                }
            }
            Err("no non-empty list arguments".to_string())
        })(),
        "range" => range(&a),
        "keys" => arity(&a, 1).and_then(|_| {
            Ok(Value::List(
                a[0].as_object()?
                    .keys()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ))
        }),
        "values" => arity(&a, 1)
            .and_then(|_| Ok(Value::List(a[0].as_object()?.values().cloned().collect()))),
        "lookup" => {
            if a.len() != 2 && a.len() != 3 {
                return Some(Err(format!("takes 2 or 3 arguments, {} given", a.len())));
            }
            (|| {
                let m = a[0].as_object()?;
                let k = a[1].to_str()?;
                match (m.get(&k), a.get(2)) {
                    (Some(v), _) => Ok(v.clone()),
                    (None, Some(d)) => Ok(d.clone()),
                    (None, None) => Err(format!("no element {k:?} and no default given")),
                }
            })()
        }
        "merge" => {
            let mut out = BTreeMap::new();
            for v in &a {
                match v {
                    Value::Null => {}
                    Value::Object(m) => out.extend(m.clone()),
                    other => return Some(Err(format!("cannot merge a {}", other.type_name()))),
                }
            }
            Ok(Value::Object(out))
        }
        "zipmap" => arity(&a, 2).and_then(|_| {
            let (k, v) = (a[0].as_list()?, a[1].as_list()?);
            if k.len() != v.len() {
                return Err(format!("{} keys and {} values", k.len(), v.len()));
            }
            Ok(Value::Object(
                k.iter()
                    .map(Value::to_str)
                    .zip(v.iter().cloned())
                    .map(|(k, v)| k.map(|k| (k, v)))
                    .collect::<Result<_, _>>()?,
            ))
        }),
        "sethaselement" => arity(&a, 2)
            .and_then(|_| Ok(Value::Bool(a[0].as_list()?.iter().any(|x| x.equals(&a[1]))))),
        "setunion" | "setintersection" | "setsubtract" | "setsymmetricdifference" => {
            set_op(name, &a)
        }
        "setproduct" => {
            let mut acc: Vec<Vec<Value>> = vec![Vec::new()];
            for v in &a {
                let l = match v.as_list() {
                    Ok(l) => l,
                    Err(e) => return Some(Err(e)),
                };
                if acc.len().saturating_mul(l.len()) > MAX_ELEMENTS {
                    return Some(Err(format!("more than {MAX_ELEMENTS} combinations")));
                }
                acc = acc
                    .into_iter()
                    .flat_map(|p| {
                        l.iter().map(move |x| {
                            let mut q = p.clone();
                            q.push(x.clone());
                            q
                        })
                    })
                    .collect();
            }
            if a.is_empty() {
                acc.clear();
            }
            Ok(Value::List(acc.into_iter().map(Value::List).collect()))
        }
        _ => return None,
    })
}

fn arity(a: &[Value], n: usize) -> Result<(), String> {
    if a.len() == n {
        Ok(())
    } else {
        Err(format!(
            "takes {n} argument{}, {} given",
            if n == 1 { "" } else { "s" },
            a.len()
        ))
    }
}

fn arity_min(a: &[Value], n: usize) -> Result<(), String> {
    if a.len() >= n {
        Ok(())
    } else {
        Err(format!("takes at least {n} arguments, {} given", a.len()))
    }
}

fn not_null(v: &Value) -> Result<&Value, String> {
    if *v == Value::Null {
        Err("argument must not be null".into())
    } else {
        Ok(v)
    }
}

fn num1(a: &[Value]) -> Result<f64, String> {
    arity(a, 1)?;
    not_null(&a[0])?.to_number()
}

fn num2(a: &[Value]) -> Result<(f64, f64), String> {
    arity(a, 2)?;
    Ok((not_null(&a[0])?.to_number()?, not_null(&a[1])?.to_number()?))
}

fn bool2(a: &[Value]) -> Result<(bool, bool), String> {
    arity(a, 2)?;
    Ok((a[0].to_bool()?, a[1].to_bool()?))
}

fn str1(a: &[Value]) -> Result<String, String> {
    arity(a, 1)?;
    a[0].to_str()
}

fn str2(a: &[Value]) -> Result<(String, String), String> {
    arity(a, 2)?;
    Ok((a[0].to_str()?, a[1].to_str()?))
}

fn str3(a: &[Value]) -> Result<(String, String, String), String> {
    arity(a, 3)?;
    Ok((a[0].to_str()?, a[1].to_str()?, a[2].to_str()?))
}

fn list1(a: &[Value]) -> Result<Vec<Value>, String> {
    arity(a, 1)?;
    a[0].as_list().map(<[Value]>::to_vec)
}

fn minmax(max: bool, a: &[Value]) -> R {
    arity_min(a, 1)?;
    let mut best = a[0].to_number()?;
    for v in &a[1..] {
        let n = v.to_number()?;
        if (max && n > best) || (!max && n < best) {
            best = n;
        }
    }
    Ok(Value::Number(best))
}

fn parseint(a: &[Value]) -> R {
    arity(a, 2)?;
    let s = a[0].to_str()?;
    let base = a[1].to_number()?;
    if !(2.0..=62.0).contains(&base) || base.fract() != 0.0 {
        return Err("the base must be a whole number from 2 to 62".into());
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(&s)),
    };
    if digits.is_empty() {
        return Err(format!(
            "cannot parse {s:?} as a base {} integer",
            fmt_number(base)
        ));
    }
    let mut n: f64 = 0.0;
    for c in digits.chars() {
        let d = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 10,
            'A'..='Z' if base <= 36.0 => c as u32 - 'A' as u32 + 10,
            'A'..='Z' => c as u32 - 'A' as u32 + 36,
            _ => u32::MAX,
        };
        if f64::from(d) >= base {
            return Err(format!(
                "cannot parse {s:?} as a base {} integer",
                fmt_number(base)
            ));
        }
        n = n * base + f64::from(d);
    }
    Ok(Value::Number(if neg { -n } else { n }))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        if !prev_letter && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_letter = c.is_alphanumeric() || c == '_' || c == '\'';
    }
    out
}

fn split(sep: &str, s: &str) -> Value {
    if s.is_empty() {
        return Value::List(vec![Value::str("")]);
    }
    if sep.is_empty() {
        return Value::List(s.chars().map(|c| Value::String(c.to_string())).collect());
    }
    Value::List(s.split(sep).map(Value::str).collect())
}

fn substr(a: &[Value]) -> R {
    arity(a, 3)?;
    let s: Vec<char> = a[0].to_str()?.chars().collect();
    let mut off = a[1].to_number()?;
    let len = a[2].to_number()?;
    let n = s.len() as f64;
    if off < 0.0 {
        off += n;
        if off < 0.0 {
            off = 0.0;
        }
    }
    if off > n {
        return Ok(Value::str(""));
    }
    let end = if len < 0.0 { n } else { (off + len).min(n) };
    Ok(Value::String(
        s[off as usize..end as usize].iter().collect(),
    ))
}

fn indent(a: &[Value]) -> R {
    arity(a, 2)?;
    let n = a[0].to_number()?;
    let s = a[1].to_str()?;
    if n > MAX_PAD {
        return Err(format!("{} spaces is too much indentation", fmt_number(n)));
    }
    let pad = " ".repeat(n.max(0.0) as usize);
    Ok(Value::String(s.replace('\n', &format!("\n{pad}"))))
}

fn join(a: &[Value]) -> R {
    if a.len() < 2 {
        return Err("the separator and at least one list are required".into());
    }
    let sep = a[0].to_str()?;
    let mut parts = Vec::new();
    for l in &a[1..] {
        for (i, x) in l.as_list()?.iter().enumerate() {
            if *x == Value::Null {
                return Err(format!("element {i} is null"));
            }
            parts.push(x.to_str()?);
        }
    }
    Ok(Value::String(parts.join(&sep)))
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"))
}

fn regex_fn(a: &[Value], all: bool) -> R {
    let (pattern, s) = str2(a)?;
    let re = compile(&pattern)?;
    let names: Vec<Option<&str>> = re.capture_names().skip(1).collect();
    let one = |c: regex::Captures| -> Value {
        if names.is_empty() {
            return Value::str(c.get(0).map_or("", |m| m.as_str()));
        }
        if names.iter().any(Option::is_some) {
            return Value::Object(
                names
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        n.map(|n| {
                            (
                                n.to_string(),
                                Value::str(c.get(i + 1).map_or("", |m| m.as_str())),
                            )
                        })
                    })
                    .collect(),
            );
        }
        Value::List(
            (1..=names.len())
                .map(|i| Value::str(c.get(i).map_or("", |m| m.as_str())))
                .collect(),
        )
    };
    if all {
        Ok(Value::List(re.captures_iter(&s).map(one).collect()))
    } else {
        re.captures(&s)
            .map(one)
            .ok_or_else(|| "the pattern did not match any part of the string".to_string())
    }
}

fn regex_replace(a: &[Value]) -> R {
    let (s, pattern, with) = str3(a)?;
    let re = compile(&pattern)?;
    Ok(Value::String(
        re.replace_all(&s, with.as_str()).into_owned(),
    ))
}

/// Go's `url.QueryEscape`.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hex_digest<D: sha2::Digest>(s: &str) -> String {
    D::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn uuidv4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn range(a: &[Value]) -> R {
    let n: Vec<f64> = a.iter().map(Value::to_number).collect::<Result<_, _>>()?;
    let (start, end, step) = match n.as_slice() {
        [e] => (0.0, *e, 1.0),
        [s, e] => (*s, *e, if e >= s { 1.0 } else { -1.0 }),
        [s, e, st] => (*s, *e, *st),
        _ => return Err(format!("takes 1 to 3 arguments, {} given", a.len())),
    };
    if step == 0.0 || (step > 0.0 && end < start) || (step < 0.0 && end > start) {
        if step == 0.0 {
            return Err("the step must not be zero".into());
        }
        return Err("the step goes away from the end".into());
    }
    let mut out = Vec::new();
    let mut x = start;
    while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
        if out.len() >= MAX_ELEMENTS {
            return Err(format!("more than {MAX_ELEMENTS} elements"));
        }
        out.push(Value::Number(x));
        x += step;
    }
    Ok(Value::List(out))
}

fn set_op(name: &str, a: &[Value]) -> R {
    arity_min(a, 1)?;
    let sets: Vec<&[Value]> = a.iter().map(Value::as_list).collect::<Result<_, _>>()?;
    let has = |s: &[Value], x: &Value| s.iter().any(|y| y.equals(x));
    let mut out: Vec<Value> = match name {
        "setunion" => sets.iter().flat_map(|s| s.iter().cloned()).collect(),
        "setintersection" => sets[0]
            .iter()
            .filter(|x| sets[1..].iter().all(|s| has(s, x)))
            .cloned()
            .collect(),
        "setsubtract" => {
            arity(a, 2)?;
            sets[0]
                .iter()
                .filter(|x| !has(sets[1], x))
                .cloned()
                .collect()
        }
        _ => {
            let all: Vec<Value> = sets.iter().flat_map(|s| s.iter().cloned()).collect();
            all.iter()
                .filter(|x| sets.iter().filter(|s| has(s, x)).count() % 2 == 1)
                .cloned()
                .collect()
        }
    };
    set_normalize(&mut out);
    Ok(Value::List(out))
}

fn csvdecode(s: &str) -> R {
    let mut lines = s.lines().filter(|l| !l.is_empty());
    let Some(header) = lines.next() else {
        return Err("missing header line".into());
    };
    let head = csv_fields(header)?;
    let mut rows = Vec::new();
    for (i, l) in lines.enumerate() {
        let f = csv_fields(l)?;
        if f.len() != head.len() {
            return Err(format!(
                "line {}: {} fields, the header has {}",
                i + 2,
                f.len(),
                head.len()
            ));
        }
        rows.push(Value::Object(
            head.iter()
                .cloned()
                .zip(f.into_iter().map(Value::String))
                .collect(),
        ));
    }
    Ok(Value::List(rows))
}

/// One CSV record: comma-separated fields, `"` quoting with `""` for a quote inside.
pub(crate) fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            ',' => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
            }
            c => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quoted field in {s:?}"));
    }
    out.push(cur);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// format / formatlist: printf-style verbs as cty implements them
// ---------------------------------------------------------------------------------------------

fn formatlist(a: &[Value]) -> R {
    arity_min(a, 1)?;
    let f = a[0].to_str()?;
    let mut n: Option<usize> = None;
    for v in &a[1..] {
        if let Value::List(l) = v {
            match n {
                Some(m) if m != l.len() => {
                    return Err(format!(
                        "all list arguments must have the same length ({m} and {})",
                        l.len()
                    ))
                }
                _ => n = Some(l.len()),
            }
        }
    }
    let n = n.unwrap_or(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let args: Vec<Value> = a[1..]
            .iter()
            .map(|v| match v {
                Value::List(l) => l[i].clone(),
                other => other.clone(),
            })
            .collect();
        out.push(Value::String(format(&f, &args)?));
    }
    Ok(Value::List(out))
}

/// cty's `format`: `%%`, `%v`, `%#v`, `%t`, `%s`, `%q`, `%d`, `%b`, `%o`, `%x`, `%X`, `%e`,
/// `%E`, `%f`, `%g`, `%G` with flags `+ - # 0 space`, width, precision and `%[n]` indexes.
pub(crate) fn format(f: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = f.chars().collect();
    let mut i = 0;
    let mut next_arg = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '%' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        if chars.get(i) == Some(&'%') {
            out.push('%');
            i += 1;
            continue;
        }
        let (mut plus, mut minus, mut sharp, mut zero, mut space) =
            (false, false, false, false, false);
        while let Some(&fl) = chars.get(i) {
            match fl {
                '+' => plus = true,
                '-' => minus = true,
                '#' => sharp = true,
                '0' => zero = true,
                ' ' => space = true,
                _ => break,
            }
            i += 1;
        }
        if chars.get(i) == Some(&'[') {
            let end = chars[i..]
                .iter()
                .position(|c| *c == ']')
                .ok_or("unterminated %[ index")?;
            let idx: usize = chars[i + 1..i + end]
                .iter()
                .collect::<String>()
                .parse()
                .map_err(|_| "invalid %[ index")?;
            if idx == 0 {
                return Err("%[ indexes start at 1".into());
            }
            next_arg = idx - 1;
            i += end + 1;
        }
        let mut width: Option<usize> = None;
        let start = i;
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
        if i > start {
            width = chars[start..i].iter().collect::<String>().parse().ok();
        }
        let mut prec: Option<usize> = None;
        if chars.get(i) == Some(&'.') {
            i += 1;
            let s = i;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            prec = Some(chars[s..i].iter().collect::<String>().parse().unwrap_or(0));
        }
        if width.unwrap_or(0) as f64 > MAX_PAD || prec.unwrap_or(0) as f64 > MAX_PAD {
            return Err("width or precision too large".into());
        }
        let Some(&verb) = chars.get(i) else {
            return Err("the format string ends in the middle of a verb".into());
        };
        i += 1;
        let Some(arg) = args.get(next_arg) else {
            return Err(format!("not enough arguments for the verb %{verb}"));
        };
        next_arg += 1;
        let number = |arg: &Value| -> Result<f64, String> {
            arg.to_number()
                .map_err(|e| format!("%{verb} needs a number: {e}"))
        };
        let sign = |n: f64, body: String| -> String {
            if n < 0.0 || body.starts_with('-') {
                body
            } else if plus {
                format!("+{body}")
            } else if space {
                format!(" {body}")
            } else {
                body
            }
        };
        let int = |n: f64| -> Result<i128, String> {
            if n.fract() != 0.0 {
                Err(format!(
                    "%{verb} needs a whole number, found {}",
                    fmt_number(n)
                ))
            } else {
                Ok(n as i128)
            }
        };
        let body = match verb {
            'v' if sharp => arg.to_json().to_string(),
            'v' => match arg {
                Value::List(_) | Value::Object(_) => arg.to_json().to_string(),
                Value::Null => "null".into(),
                other => sign(other.to_number().unwrap_or(0.0), other.to_str()?),
            },
            't' => arg.to_bool()?.to_string(),
            's' => {
                let s = arg.to_str()?;
                match prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            'q' => serde_json::Value::String(arg.to_str()?).to_string(),
            'd' => {
                let n = number(arg)?;
                sign(n, int(n)?.to_string())
            }
            'b' | 'o' | 'x' | 'X' => {
                let n = number(arg)?;
                let v = int(n)?;
                let (neg, m) = (v < 0, v.unsigned_abs());
                let digits = match verb {
                    'b' => format!("{m:b}"),
                    'o' => format!("{m:o}"),
                    'x' => format!("{m:x}"),
                    _ => format!("{m:X}"),
                };
                let prefix = if sharp {
                    match verb {
                        'b' => "0b",
                        'o' => "0",
                        'x' => "0x",
                        _ => "0X",
                    }
                } else {
                    ""
                };
                sign(n, format!("{}{prefix}{digits}", if neg { "-" } else { "" }))
            }
            'f' => {
                let n = number(arg)?;
                sign(n, format!("{:.*}", prec.unwrap_or(6), n))
            }
            'e' | 'E' => {
                let n = number(arg)?;
                let s = go_exp(n, prec.unwrap_or(6));
                sign(n, if verb == 'E' { s.to_uppercase() } else { s })
            }
            'g' | 'G' => {
                let n = number(arg)?;
                let s = match prec {
                    Some(p) => format!("{:.*}", p.saturating_sub(1), n),
                    None => fmt_number(n),
                };
                sign(n, if verb == 'G' { s.to_uppercase() } else { s })
            }
            other => return Err(format!("unsupported format verb %{other}")),
        };
        let len = body.chars().count();
        match width {
            Some(w) if w > len => {
                let pad = w - len;
                if minus {
                    out.push_str(&body);
                    out.push_str(&" ".repeat(pad));
                } else if zero && "dfeEgGbxXo".contains(verb) {
                    let (s, rest) = match body.chars().next() {
                        Some(c @ ('-' | '+' | ' ')) => (c.to_string(), body[1..].to_string()),
                        _ => (String::new(), body.clone()),
                    };
                    out.push_str(&s);
                    out.push_str(&"0".repeat(pad));
                    out.push_str(&rest);
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(&body);
                }
            }
            _ => out.push_str(&body),
        }
    }
    if next_arg < args.len() && !f.contains("%[") {
        return Err(format!(
            "too many arguments: the format uses {next_arg}, {} given",
            args.len()
        ));
    }
    Ok(out)
}

/// `%e` as Go prints it: `1.234560e+03` (two-digit exponent at least).
fn go_exp(n: f64, prec: usize) -> String {
    let s = format!("{:.*e}", prec, n);
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Time: RFC 3339 timestamps, `formatdate` and `timeadd`, without a date library
// ---------------------------------------------------------------------------------------------

pub(crate) mod time {
    /// A point in time with the UTC offset it was written with.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(crate) struct Time {
        /// Seconds since the Unix epoch (UTC).
        pub secs: i64,
        pub nanos: u32,
        /// Offset from UTC in minutes; `None` for `Z`.
        pub offset: Option<i32>,
    }

    impl Time {
        pub(crate) fn add_seconds(self, d: f64) -> Time {
            let total = self.secs as f64 + f64::from(self.nanos) / 1e9 + d;
            let secs = total.floor();
            Time {
                secs: secs as i64,
                nanos: ((total - secs) * 1e9).round().min(999_999_999.0) as u32,
                offset: self.offset,
            }
        }
    }

    pub(crate) fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: 0,
            offset: None,
        }
    }

    /// Days since 1970-01-01 of a civil date (proleptic Gregorian).
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (i64::from(m) + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// Parses `2006-01-02T15:04:05Z` / `...05.123+07:00`.
    pub(crate) fn parse_rfc3339(s: &str) -> Result<Time, String> {
        let bad = || format!("{s:?} is not an RFC 3339 timestamp (like 2006-01-02T15:04:05Z)");
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
            s.get(r).and_then(|x| x.parse().ok()).ok_or_else(bad)
        };
        let (y, mo, d, h, mi, se) = (
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        );
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        let mut i = 19;
        let mut nanos = 0u32;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let frac = &s[start..i];
            if frac.is_empty() {
                return Err(bad());
            }
            let padded = format!("{frac:0<9}");
            nanos = padded[..9].parse().map_err(|_| bad())?;
        }
        let offset = match &s[i..] {
            "Z" | "z" => None,
            rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
                let part = |r: std::ops::Range<usize>| -> Result<i32, String> {
                    rest.get(r).and_then(|x| x.parse().ok()).ok_or_else(bad)
                };
                let (oh, om) = (part(1..3)?, part(4..6)?);
                let m = oh * 60 + om;
                Some(if rest.starts_with('-') { -m } else { m })
            }
            _ => return Err(bad()),
        };
        let local = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se;
        Ok(Time {
            secs: local - i64::from(offset.unwrap_or(0)) * 60,
            nanos,
            offset,
        })
    }

    struct Parts {
        y: i64,
        mo: u32,
        d: u32,
        h: u32,
        mi: u32,
        s: u32,
        wday: u32,
    }

    fn parts(t: &Time) -> Parts {
        let local = t.secs + i64::from(t.offset.unwrap_or(0)) * 60;
        let days = local.div_euclid(86_400);
        let sod = local.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        Parts {
            y,
            mo,
            d,
            h: (sod / 3600) as u32,
            mi: (sod % 3600 / 60) as u32,
            s: (sod % 60) as u32,
            wday: (days + 4).rem_euclid(7) as u32,
        }
    }

    pub(crate) fn format_rfc3339(t: Time) -> String {
        let p = parts(&t);
        let frac = if t.nanos == 0 {
            String::new()
        } else {
            format!(".{:09}", t.nanos).trim_end_matches('0').to_string()
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{}",
            p.y,
            p.mo,
            p.d,
            p.h,
            p.mi,
            p.s,
            offset_str(t.offset, true, "Z")
        )
    }

    fn offset_str(offset: Option<i32>, colon: bool, utc: &str) -> String {
        match offset {
            None => utc.to_string(),
            Some(m) => {
                let sign = if m < 0 { '-' } else { '+' };
                let m = m.abs();
                if colon {
                    format!("{sign}{:02}:{:02}", m / 60, m % 60)
                } else {
                    format!("{sign}{:02}{:02}", m / 60, m % 60)
                }
            }
        }
    }

    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];

    /// Terraform's `formatdate` specification language (`YYYY-MM-DD`, `hh:mm`, `'quoted'`).
    pub(crate) fn formatdate(spec: &str, t: &Time) -> Result<String, String> {
        let p = parts(t);
        let chars: Vec<char> = spec.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                if chars.get(i + 1) == Some(&'\'') {
                    out.push('\'');
                    i += 2;
                    continue;
                }
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err("unterminated literal '".into()),
                        Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                            out.push('\'');
                            j += 2;
                        }
                        Some('\'') => break,
                        Some(ch) => {
                            out.push(*ch);
                            j += 1;
                        }
                    }
                }
                i = j + 1;
                continue;
            }
            if !c.is_ascii_alphabetic() {
                out.push(c);
                i += 1;
                continue;
            }
            let mut n = 1;
            while chars.get(i + n) == Some(&c) {
                n += 1;
            }
            let h12 = if p.h.is_multiple_of(12) { 12 } else { p.h % 12 };
            let s = match (c, n) {
                ('Y', 4) => format!("{:04}", p.y),
                ('Y', 2) => format!("{:02}", p.y.rem_euclid(100)),
                ('M', 4) => MONTHS[p.mo as usize - 1].to_string(),
                ('M', 3) => MONTHS[p.mo as usize - 1][..3].to_string(),
                ('M', 2) => format!("{:02}", p.mo),
                ('M', 1) => p.mo.to_string(),
                ('D', 2) => format!("{:02}", p.d),
                ('D', 1) => p.d.to_string(),
                ('E', 4) => DAYS[p.wday as usize].to_string(),
                ('E', 3) => DAYS[p.wday as usize][..3].to_string(),
                ('h', 2) => format!("{:02}", p.h),
                ('h', 1) => p.h.to_string(),
                ('H', 2) => format!("{h12:02}"),
                ('H', 1) => h12.to_string(),
                ('A', 2) => if p.h < 12 { "AM" } else { "PM" }.to_string(),
                ('a', 2) => if p.h < 12 { "am" } else { "pm" }.to_string(),
                ('m', 2) => format!("{:02}", p.mi),
                ('m', 1) => p.mi.to_string(),
                ('s', 2) => format!("{:02}", p.s),
                ('s', 1) => p.s.to_string(),
                ('Z', 5) => offset_str(t.offset, true, "Z"),
                ('Z', 4) => offset_str(t.offset, false, "+0000"),
                ('Z', 3) => offset_str(t.offset, false, "UTC"),
                ('Z', 1) => offset_str(t.offset, true, "Z"),
                _ => {
                    return Err(format!(
                        "invalid date format sequence {:?} (quote literal letters with ')",
                        chars[i..i + n].iter().collect::<String>()
                    ))
                }
            };
            out.push_str(&s);
            i += n;
        }
        Ok(out)
    }

    /// Go's `time.ParseDuration`: `1h30m`, `-10s`, `1.5h`, `300ms`.
    pub(crate) fn parse_duration(s: &str) -> Result<f64, String> {
        let bad = || format!("{s:?} is not a duration (like 1h30m or -10s)");
        let (neg, mut rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if rest == "0" {
            return Ok(0.0);
        }
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = 0.0;
        while !rest.is_empty() {
            let n_end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(bad)?;
            if n_end == 0 {
                return Err(bad());
            }
            let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
            rest = &rest[n_end..];
            let u_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = match &rest[..u_end] {
                "ns" => 1e-9,
                "us" | "µs" | "μs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += n * unit;
            rest = &rest[u_end..];
        }
        Ok(if neg { -total } else { total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::str(v)
    }
    fn n(v: f64) -> Value {
        Value::Number(v)
    }
    fn l(v: Vec<Value>) -> Value {
        Value::List(v)
    }
    fn c(name: &str, args: Vec<Value>) -> Value {
        call(name, args)
            .expect("known function")
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
    fn e(name: &str, args: Vec<Value>) -> String {
        call(name, args).expect("known function").unwrap_err()
    }

    #[test]
    fn comparison_and_logic() {
        assert_eq!(c("equal", vec![s("a"), s("a")]), Value::Bool(true));
        assert_eq!(c("notequal", vec![s(""), s("x")]), Value::Bool(true));
        assert_eq!(c("notequal", vec![n(1.0), s("1")]), Value::Bool(true));
        assert_eq!(
            c("and", vec![Value::Bool(true), s("false")]),
            Value::Bool(false)
        );
        assert_eq!(
            c("or", vec![Value::Bool(false), Value::Bool(true)]),
            Value::Bool(true)
        );
        assert_eq!(c("not", vec![Value::Bool(true)]), Value::Bool(false));
        assert_eq!(c("greaterthan", vec![n(2.0), s("1")]), Value::Bool(true));
        assert!(e("and", vec![s("maybe"), Value::Bool(true)]).contains("not a bool"));
    }

    #[test]
    fn strings() {
        assert_eq!(c("lower", vec![s("AbC")]), s("abc"));
        assert_eq!(c("upper", vec![s("abc")]), s("ABC"));
        assert_eq!(c("title", vec![s("hello big world")]), s("Hello Big World"));
        assert_eq!(c("replace", vec![s("a.b.c"), s("."), s("-")]), s("a-b-c"));
        assert_eq!(
            c(
                "regex_replace",
                vec![s("v1.2.3"), s("^v([0-9]+).*$"), s("major-$1")]
            ),
            s("major-1")
        );
        assert_eq!(
            c("trimprefix", vec![s("refs/heads/main"), s("refs/heads/")]),
            s("main")
        );
        assert_eq!(c("trimsuffix", vec![s("app.tar"), s(".tar")]), s("app"));
        assert_eq!(c("trim", vec![s("--x--"), s("-")]), s("x"));
        assert_eq!(c("trimspace", vec![s("  x \n")]), s("x"));
        assert_eq!(c("chomp", vec![s("x\n\r\n")]), s("x"));
        assert_eq!(c("substr", vec![s("hello"), n(1.0), n(3.0)]), s("ell"));
        assert_eq!(c("substr", vec![s("hello"), n(-3.0), n(-1.0)]), s("llo"));
        assert_eq!(c("strlen", vec![s("héllo")]), n(5.0));
        assert_eq!(c("split", vec![s(","), s("a,b")]), l(vec![s("a"), s("b")]));
        assert_eq!(c("split", vec![s(","), s("")]), l(vec![s("")]));
        assert_eq!(
            c(
                "join",
                vec![s(","), l(vec![s("a"), n(1.0)]), l(vec![s("b")])]
            ),
            s("a,1,b")
        );
        assert!(e("join", vec![s(","), l(vec![Value::Null])]).contains("null"));
        assert_eq!(c("indent", vec![n(2.0), s("a\nb")]), s("a\n  b"));
        assert_eq!(c("reverse", vec![s("abc")]), s("cba"));
        assert_eq!(c("sanitize", vec![s("feature/x.y")]), s("feature_x_y"));
        assert_eq!(c("basename", vec![s("/a/b/")]), s("b"));
        assert_eq!(c("dirname", vec![s("a/b/c")]), s("a/b"));
        assert_eq!(c("dirname", vec![s("c")]), s("."));
        // Go's corner cases: empty, the root, repeated and trailing slashes, `..` cleaned.
        assert_eq!(c("basename", vec![s("")]), s("."));
        assert_eq!(c("basename", vec![s("///")]), s("/"));
        assert_eq!(c("basename", vec![s("a/b.txt")]), s("b.txt"));
        assert_eq!(c("dirname", vec![s("")]), s("."));
        assert_eq!(c("dirname", vec![s("/")]), s("/"));
        assert_eq!(c("dirname", vec![s("//a")]), s("/"));
        assert_eq!(c("dirname", vec![s("a//b/./c/")]), s("a/b/c"));
        assert_eq!(c("dirname", vec![s("a/../../b")]), s(".."));
        assert_eq!(c("dirname", vec![s("/../b")]), s("/"));
        assert_eq!(c("urlencode", vec![s("a b&c~")]), s("a+b%26c~"));
        assert_eq!(c("base64encode", vec![s("hi")]), s("aGk="));
        assert_eq!(c("base64decode", vec![s("aGk=")]), s("hi"));
        assert_eq!(
            c("sha256", vec![s("")]),
            s("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(c("regex", vec![s("[0-9]+"), s("v12x")]), s("12"));
        assert_eq!(
            c(
                "regex",
                vec![s("(?P<maj>[0-9]+)\\.(?P<min>[0-9]+)"), s("1.2")]
            ),
            Value::Object([("maj".into(), s("1")), ("min".into(), s("2"))].into())
        );
        assert_eq!(
            c("regexall", vec![s("[a-z]"), s("a1b")]),
            l(vec![s("a"), s("b")])
        );
        assert!(e("regex", vec![s("x"), s("y")]).contains("did not match"));
        assert_eq!(c("uuidv4", vec![]).to_str().unwrap().len(), 36);
    }

    #[test]
    fn format_verbs() {
        let f = |fmt: &str, args: Vec<Value>| format(fmt, &args).unwrap();
        assert_eq!(f("%s-%d", vec![s("a"), n(3.0)]), "a-3");
        assert_eq!(
            f("%05d|%-4s|%4s", vec![n(42.0), s("ab"), s("ab")]),
            "00042|ab  |  ab"
        );
        assert_eq!(
            f("%.2f %t %q", vec![n(1.23456), Value::Bool(true), s("x\"y")]),
            "1.23 true \"x\\\"y\""
        );
        assert_eq!(
            f("%x %X %o %b", vec![n(255.0), n(255.0), n(8.0), n(5.0)]),
            "ff FF 10 101"
        );
        assert_eq!(f("%v %#v", vec![l(vec![s("a")]), s("b")]), "[\"a\"] \"b\"");
        assert_eq!(f("%[2]s %[1]s", vec![s("a"), s("b")]), "b a");
        assert_eq!(f("100%%", vec![]), "100%");
        assert_eq!(f("%e", vec![n(1234.5678)]), "1.234568e+03");
        assert!(format("%d", &[n(1.5)]).is_err());
        assert!(format("%s", &[]).is_err());
        assert!(format("%s", &[s("a"), s("b")]).is_err());
        assert_eq!(
            c(
                "formatlist",
                vec![s("%s-%s"), l(vec![s("a"), s("b")]), s("x")]
            ),
            l(vec![s("a-x"), s("b-x")])
        );
    }

    #[test]
    fn collections() {
        let ab = l(vec![s("a"), s("b")]);
        assert_eq!(c("length", vec![ab.clone()]), n(2.0));
        assert!(e("length", vec![s("abc")]).contains("strlen"));
        assert_eq!(
            c("concat", vec![ab.clone(), l(vec![s("c")])]),
            l(vec![s("a"), s("b"), s("c")])
        );
        assert_eq!(c("contains", vec![ab.clone(), s("b")]), Value::Bool(true));
        assert_eq!(c("distinct", vec![l(vec![s("a"), s("a"), s("b")])]), ab);
        assert_eq!(
            c("flatten", vec![l(vec![s("a"), l(vec![l(vec![s("b")])])])]),
            ab
        );
        assert_eq!(c("element", vec![ab.clone(), n(3.0)]), s("b"));
        assert_eq!(
            c("compact", vec![l(vec![s("a"), s(""), Value::Null, s("b")])]),
            ab
        );
        assert_eq!(c("coalesce", vec![Value::Null, s(""), s("x")]), s(""));
        assert!(e("coalesce", vec![Value::Null]).contains("no non-null"));
        assert_eq!(c("coalescelist", vec![l(vec![]), ab.clone()]), ab);
        assert_eq!(
            c("slice", vec![ab.clone(), n(1.0), n(2.0)]),
            l(vec![s("b")])
        );
        assert_eq!(c("sort", vec![l(vec![s("b"), s("a")])]), ab);
        assert_eq!(c("reverselist", vec![ab.clone()]), l(vec![s("b"), s("a")]));
        assert_eq!(c("indexof", vec![ab.clone(), s("b")]), n(1.0));
        assert_eq!(c("range", vec![n(3.0)]), l(vec![n(0.0), n(1.0), n(2.0)]));
        assert_eq!(
            c("chunklist", vec![l(vec![s("a"), s("b"), s("c")]), n(2.0)]),
            l(vec![ab.clone(), l(vec![s("c")])])
        );
        let m = Value::Object([("x".into(), s("1")), ("y".into(), s("2"))].into());
        assert_eq!(c("keys", vec![m.clone()]), l(vec![s("x"), s("y")]));
        assert_eq!(c("values", vec![m.clone()]), l(vec![s("1"), s("2")]));
        assert_eq!(c("lookup", vec![m.clone(), s("z"), s("d")]), s("d"));
        assert_eq!(c("lookup", vec![m.clone(), s("x")]), s("1"));
        assert!(e("lookup", vec![m.clone(), s("z")]).contains("no element"));
        assert_eq!(
            c(
                "merge",
                vec![m.clone(), Value::Object([("x".into(), s("9"))].into())]
            ),
            Value::Object([("x".into(), s("9")), ("y".into(), s("2"))].into())
        );
        assert_eq!(
            c("zipmap", vec![ab.clone(), l(vec![n(1.0), n(2.0)])]),
            Value::Object([("a".into(), n(1.0)), ("b".into(), n(2.0))].into())
        );
        assert_eq!(c("setunion", vec![l(vec![s("b")]), ab.clone()]), ab);
        assert_eq!(
            c("setsubtract", vec![ab.clone(), l(vec![s("a")])]),
            l(vec![s("b")])
        );
        assert_eq!(
            c("setproduct", vec![ab.clone(), l(vec![n(1.0)])]),
            l(vec![l(vec![s("a"), n(1.0)]), l(vec![s("b"), n(1.0)])])
        );
        assert_eq!(
            c("jsonencode", vec![m.clone()]),
            s("{\"x\":\"1\",\"y\":\"2\"}")
        );
        assert_eq!(
            c("jsondecode", vec![s("{\"a\":[1,true]}")]),
            Value::Object([("a".into(), l(vec![n(1.0), Value::Bool(true)]))].into())
        );
        assert_eq!(
            c("csvdecode", vec![s("a,b\n1,\"x,y\"\n")]),
            l(vec![Value::Object(
                [("a".into(), s("1")), ("b".into(), s("x,y"))].into()
            )])
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(c("add", vec![n(1.0), s("2")]), n(3.0));
        assert_eq!(c("max", vec![n(1.0), n(5.0), n(3.0)]), n(5.0));
        assert_eq!(c("parseint", vec![s("ff"), n(16.0)]), n(255.0));
        assert_eq!(c("int", vec![n(-2.7)]), n(-2.0));
        assert!(e("divide", vec![n(1.0), n(0.0)]).contains("zero"));
        assert!(e("add", vec![s("x"), n(1.0)]).contains("not a number"));
    }

    #[test]
    fn dates() {
        let t = time::parse_rfc3339("2024-02-29T13:04:05Z").unwrap();
        assert_eq!(time::format_rfc3339(t), "2024-02-29T13:04:05Z");
        assert_eq!(
            c(
                "formatdate",
                vec![
                    s("YYYY-MM-DD hh:mm:ss EEE MMM 'at' H AA ZZZ"),
                    s("2024-02-29T13:04:05Z")
                ]
            ),
            s("2024-02-29 13:04:05 Thu Feb at 1 PM UTC")
        );
        assert_eq!(
            c(
                "formatdate",
                vec![s("YYYYMMDD ZZZZZ"), s("2023-12-31T23:30:00-02:00")]
            ),
            s("20231231 -02:00")
        );
        assert_eq!(
            c("timeadd", vec![s("2024-02-28T23:00:00Z"), s("1h30m")]),
            s("2024-02-29T00:30:00Z")
        );
        assert!(e("formatdate", vec![s("YYYY"), s("yesterday")]).contains("RFC 3339"));
        assert!(e("formatdate", vec![s("Q"), s("2024-02-29T13:04:05Z")])
            .contains("invalid date format"));
        let now = c("timestamp", vec![]).to_str().unwrap();
        assert!(time::parse_rfc3339(&now).is_ok(), "{now}");
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn unsupported_functions_say_why() {
        assert!(call("md5", vec![s("x")]).is_none());
        assert!(unsupported("md5").is_some());
        assert!(unsupported("nosuch").is_none());
        for name in NAMES {
            if !matches!(*name, "try" | "can") {
                assert!(
                    call(name, vec![]).is_some(),
                    "{name} is listed but not implemented"
                );
            }
        }
    }
}
