//! `bake --print` targets of `docker buildx bake` and of `bk-build bake` brought to one shape,
//! so the oracle tests (`bake_cli`, `bakefile_oracle`, `compose_oracle`) compare them field by
//! field. What each test tolerates on top (documented differences, compose's default tags,
//! keys bk-build warns about) stays in the test.
//!
//! How the two are written differently but mean the same, and how the shape settles it:
//!
//! - Paths: bk-build prints them absolute; buildx as written, relative to the current
//!   directory (`cwd://` spelled out or not) and `dockerfile` relative to the context. buildx's
//!   are resolved against the directory both ran in; bk-build's only folded, so a relative one
//!   shows as a difference.
//! - buildx escapes `${` and `%{` in printed `args`, `labels` and `dockerfile-inline` (`$${`,
//!   `%%{`) so its output reads back as a bake file; bk-build prints the values.
//! - Option strings: bk-build keeps `secret`, `cache-*`, `output` and `attest` entries as CSV
//!   strings (a cache entry may be a bare reference) and `ssh` as `id=path,…`; buildx prints
//!   them parsed. Both become maps of strings (`ssh` entries: `id=path,…` strings).
//! - Delivery: bk-build's `push`/`load` are outputs (`type=image,push=true`, `type=docker`),
//!   and buildx's `type=registry` is `type=image,push=true`; `outputs` holds them all as a set.
//! - Sets: cache entries (buildx's de-duplication reorders them), outputs, attestations, extra
//!   hosts, ulimits, entitlements, no-cache filters and annotations are compared sorted and
//!   de-duplicated.
//!   Tags, platforms (a `,`-separated entry counts as several), secrets and SSH entries keep
//!   their order.
//! - Sizes: buildx prints `shm-size` as written (`64m`), bk-build in bytes.
//! - An inline Dockerfile is written to a file bk-build names; buildx prints the default
//!   `dockerfile`. Only the text is compared.
//! - Key spelling: buildx's `no-cache` is bk-build's `no_cache` and so on; the shape uses
//!   bk-build's names.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};

/// A target in the common shape: field → value.
pub type Shape = Map<String, Value>;

/// The strings of a JSON array (non-strings skipped); empty for anything else.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// `p` resolved against `cwd` (a leading `cwd://` dropped), `.` and `..` folded lexically.
pub fn abs(cwd: &Path, p: &str) -> String {
    let p = p.strip_prefix("cwd://").unwrap_or(p);
    let mut out = PathBuf::new();
    for c in cwd.join(p).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out.to_string_lossy().into_owned()
}

/// One CSV record of `key=value` fields (quotes as buildx's csvvalue reads them; keys lower
/// case).
pub fn csv_map(s: &str) -> BTreeMap<String, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
        .into_iter()
        .filter_map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_lowercase(), v.to_string()))
        })
        .collect()
}

/// buildx's object form of an option (`{"type": "registry", "ref": …}`) as a map of strings:
/// a list becomes its items joined with `,`, a number or boolean its JSON text.
pub fn object_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// docker's `MemBytes` (go-units `RAMInBytes`): a number with an optional `k`, `m`, `g`, `t`
/// (powers of 1024), then optional `i` and `b`.
pub fn mem_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let s = s.strip_suffix('i').unwrap_or(s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|n| (n * mult as f64) as u64)
}

/// buildx's `--print` writes `${` and `%{` in args and labels as `$${` and `%%{`, so its
/// output reads back as a bake file; the values themselves have single ones.
fn unescape(s: &str) -> String {
    s.replace("$${", "${").replace("%%{", "%{")
}

fn sorted_strings(mut v: Vec<String>) -> Value {
    v.sort();
    v.dedup();
    json!(v)
}

fn sorted_maps(v: Vec<BTreeMap<String, String>>) -> Value {
    let mut v: Vec<Value> = v.into_iter().map(|m| json!(m)).collect();
    v.sort_by_key(|x| x.to_string());
    v.dedup();
    Value::Array(v)
}

/// An object's string values through `f`; other values kept as they are.
fn str_map(v: &Value, f: impl Fn(&str) -> String) -> Value {
    let mut m = Map::new();
    for (k, v) in v.as_object().into_iter().flatten() {
        let v = match v {
            Value::String(s) => Value::String(f(s)),
            other => other.clone(),
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m)
}

/// Platforms one by one: a `,`-separated entry is several.
fn platforms(v: &Value) -> Value {
    let all: Vec<String> = strings(v)
        .iter()
        .flat_map(|p| p.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    json!(all)
}

/// A cache or output entry with local paths made absolute.
fn entry(cwd: &Path, mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let local = matches!(
        m.get("type").map(String::as_str),
        Some("local" | "tar" | "oci" | "docker")
    );
    if local {
        for k in ["src", "dest"] {
            if let Some(v) = m.get_mut(k) {
                if v != "-" {
                    *v = abs(cwd, v);
                }
            }
        }
    }
    m
}

/// An output: `type=registry` is `type=image,push=true`.
fn output(cwd: &Path, mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if m.get("type").map(String::as_str) == Some("registry") {
        m.insert("type".into(), "image".into());
        m.insert("push".into(), "true".into());
    }
    entry(cwd, m)
}

/// A secret as `id`, `src`, `env` (empty ones left out) plus any other field.
fn secret(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if let Some(s) = m.remove("source") {
        m.entry("src".into()).or_insert(s);
    }
    // `type=env,src=NAME` names the variable, as `env=NAME` does.
    if m.get("type").map(String::as_str) == Some("env") && !m.contains_key("env") {
        if let Some(s) = m.remove("src") {
            m.insert("env".into(), s);
        }
    }
    if matches!(m.get("type").map(String::as_str), Some("env" | "file")) {
        m.remove("type");
    }
    m.retain(|_, v| !v.is_empty());
    m
}

/// An attestation: `disabled` only when true (buildx prints a JSON boolean and may print
/// `false`; a CSV entry may say `disabled=false`).
fn attest(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if m.get("disabled").is_some_and(|d| d != "true") {
        m.remove("disabled");
    }
    m
}

/// A `docker buildx bake --print` target (run in `cwd`) in the common shape.
pub fn canon_buildx(t: &Value, cwd: &Path) -> Shape {
    let null = Value::Null;
    let get = |k: &str| t.get(k).unwrap_or(&null);
    let string = |k: &str| get(k).as_str().unwrap_or_default();
    let context = abs(cwd, get("context").as_str().unwrap_or("."));
    let inline = get("dockerfile-inline").as_str().map(unescape);
    let dockerfile = match inline {
        // An inline Dockerfile is written where bk-build chooses; buildx prints the default.
        Some(_) => Value::Null,
        None => {
            let df = get("dockerfile").as_str().unwrap_or("Dockerfile");
            json!(match df.strip_prefix("cwd://") {
                Some(p) => abs(cwd, p),
                None if Path::new(df).is_absolute() => df.to_string(),
                None => abs(Path::new(&context), df),
            })
        }
    };
    let contexts = str_map(get("contexts"), |v| {
        let local = !v.contains("://") && !v.starts_with("target:") || v.starts_with("cwd://");
        if local {
            abs(cwd, v)
        } else {
            v.to_string()
        }
    });
    let objects = |k: &str| -> Vec<BTreeMap<String, String>> {
        get(k)
            .as_array()
            .into_iter()
            .flatten()
            .map(object_map)
            .collect()
    };
    let secrets: Vec<Value> = objects("secret")
        .into_iter()
        .map(|mut m| {
            if let Some(src) = m.get_mut("src").filter(|s| !s.is_empty()) {
                *src = abs(cwd, src);
            }
            json!(secret(m))
        })
        .collect();
    let ssh: Vec<String> = get("ssh")
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let id = s.get("id").and_then(Value::as_str).unwrap_or_default();
            let paths: Vec<String> = strings(s.get("paths").unwrap_or(&null))
                .iter()
                .map(|p| abs(cwd, p))
                .collect();
            if paths.is_empty() {
                id.to_string()
            } else {
                format!("{id}={}", paths.join(","))
            }
        })
        .collect();
    let cache = |k: &str| sorted_maps(objects(k).into_iter().map(|m| entry(cwd, m)).collect());
    let outputs = sorted_maps(
        objects("output")
            .into_iter()
            .map(|m| output(cwd, m))
            .collect(),
    );
    let attestations = sorted_maps(
        get("attest")
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| attest(object_map(a)))
            .collect(),
    );
    let mut hosts = Vec::new();
    for (h, ips) in get("extra-hosts").as_object().into_iter().flatten() {
        for ip in ips.as_str().unwrap_or_default().split(',') {
            hosts.push(format!("{h}={ip}"));
        }
    }
    let shape = json!({
        "context": context,
        "dockerfile": dockerfile,
        "dockerfile_inline": inline,
        "target": Some(string("target")).filter(|s| !s.is_empty()),
        "args": str_map(get("args"), unescape),
        "labels": str_map(get("labels"), unescape),
        "contexts": contexts,
        "tags": strings(get("tags")),
        "platforms": platforms(get("platforms")),
        "secrets": secrets,
        "ssh": ssh,
        "cache_from": cache("cache-from"),
        "cache_to": cache("cache-to"),
        "outputs": outputs,
        "attest": attestations,
        "pull": get("pull").as_bool().unwrap_or(false),
        "no_cache": get("no-cache").as_bool().unwrap_or(false),
        "network": Some(string("network")).filter(|n| !n.is_empty()),
        "extra_hosts": sorted_strings(hosts),
        "shm_size": get("shm-size").as_str().and_then(mem_bytes).filter(|n| *n > 0),
        "ulimits": sorted_strings(strings(get("ulimits"))),
        "entitlements": sorted_strings(strings(get("entitlements"))),
        "no_cache_filter": sorted_strings(strings(get("no-cache-filter"))),
        "annotations": sorted_strings(strings(get("annotations"))),
    });
    match shape {
        Value::Object(m) => m,
        _ => unreachable!("json!({{…}}) is an object"),
    }
}

/// A `bk-build bake --print` target in the common shape. bk-build prints absolute paths; they
/// are only folded (`.`, `..`), never resolved, so a relative one shows as a difference.
pub fn canon_bk(t: &Value) -> Shape {
    let root = Path::new("/");
    let null = Value::Null;
    let get = |k: &str| t.get(k).unwrap_or(&null);
    let inline = get("dockerfile_inline").as_str();
    let secrets: Vec<Value> = strings(get("secrets"))
        .iter()
        .map(|s| json!(secret(csv_map(s))))
        .collect();
    let cache = |k: &str| {
        sorted_maps(
            strings(get(k))
                .iter()
                .map(|s| {
                    let m = if s.contains('=') {
                        csv_map(s)
                    } else {
                        csv_map(&format!("type=registry,ref={s}"))
                    };
                    entry(root, m)
                })
                .collect(),
        )
    };
    let mut outputs: Vec<BTreeMap<String, String>> = strings(get("outputs"))
        .iter()
        .map(|s| {
            let m = if s == "-" {
                csv_map("type=tar,dest=-")
            } else if !s.contains('=') {
                csv_map(&format!("type=local,dest={s}"))
            } else {
                csv_map(s)
            };
            output(root, m)
        })
        .collect();
    let attestations = sorted_maps(
        strings(get("attest"))
            .iter()
            .map(|a| attest(csv_map(a)))
            .collect(),
    );
    if get("push").as_bool() == Some(true) {
        outputs.push(csv_map("type=image,push=true"));
    }
    if get("load").as_bool() == Some(true) {
        outputs.push(csv_map("type=docker"));
    }
    let shape = json!({
        "context": get("context"),
        "dockerfile": if inline.is_some() { &null } else { get("dockerfile") },
        "dockerfile_inline": inline,
        "target": get("target").as_str().filter(|s| !s.is_empty()),
        "args": str_map(get("args"), str::to_string),
        "labels": str_map(get("labels"), str::to_string),
        "contexts": str_map(get("contexts"), str::to_string),
        "tags": strings(get("tags")),
        "platforms": platforms(get("platforms")),
        "secrets": secrets,
        "ssh": strings(get("ssh")),
        "cache_from": cache("cache_from"),
        "cache_to": cache("cache_to"),
        "outputs": sorted_maps(outputs),
        "attest": attestations,
        "pull": get("pull").as_bool().unwrap_or(false),
        "no_cache": get("no_cache").as_bool().unwrap_or(false),
        "network": get("network").as_str(),
        "extra_hosts": sorted_strings(strings(get("extra_hosts"))),
        "shm_size": get("shm_size").as_u64(),
        "ulimits": sorted_strings(strings(get("ulimits"))),
        "entitlements": sorted_strings(strings(get("entitlements"))),
        "no_cache_filter": sorted_strings(strings(get("no_cache_filter"))),
        "annotations": sorted_strings(strings(get("annotations"))),
    });
    match shape {
        Value::Object(m) => m,
        _ => unreachable!("json!({{…}}) is an object"),
    }
}
