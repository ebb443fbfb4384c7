//! Parsing of `docker buildx build`-style option strings into plain data.
//!
//! Owns the syntax of `--build-arg`, `--label`, `-o/--output`, `--cache-from`, `--cache-to`,
//! `--build-context`, `--secret`, `--ssh`, `--add-host`, `--platform`, `--network`,
//! `--progress`, `--ulimit`, `--shm-size`, `--annotation`, `--allow` (entitlements) and
//! attestations (`--attest`), shared by the CLI and the project file so both accept exactly
//! the same strings. Every parser takes one `&str` (so it can be a clap `value_parser`) and
//! reports an [`OptionError`] naming the flag, the bad input and a correct example.
//!
//! This module must not know about gRPC, the session, the filesystem or the daemon: it never
//! opens files or sockets. The only outside state it reads is the process environment, and only
//! where buildx does (`--build-arg NAME` without a value).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::digest::Digest;

/// At most the first 60 characters of `s`, quoted, for error messages: a 100 KB value is not
/// echoed back in full.
pub(crate) fn excerpt(s: &str) -> String {
    const SHOWN: usize = 60;
    match s.char_indices().nth(SHOWN) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// `s` cut to 300 characters: reasons quote parts of the value, which may be huge.
pub(crate) fn shorten(s: &str) -> String {
    const SHOWN: usize = 300;
    match s.char_indices().nth(SHOWN) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &s[..cut], s.len()),
    }
}

/// An option value parsed once, at the edge, together with the spelling it was written in.
///
/// The project loaders turn each option string of a project file (`outputs`, `cache_from`,
/// `secrets`, …) into one of these, so a bad value fails at load with the file, line and key
/// that hold it, and everything further in uses [`Spelled::value`] without parsing again. The
/// spelling is what `--print`, `--set … +=` de-duplication and the fingerprint's reasons show;
/// equality and ordering are by spelling (the value is a function of it).
#[derive(Debug, Clone)]
pub struct Spelled<T> {
    raw: String,
    value: T,
}

impl<T> Spelled<T> {
    /// Parses `raw` with `parse` (one of this module's parsers).
    ///
    /// # Errors
    /// `parse`'s error, unchanged.
    pub fn parse(
        raw: impl Into<String>,
        parse: impl FnOnce(&str) -> Result<T, OptionError>,
    ) -> Result<Self, OptionError> {
        let raw = raw.into();
        let value = parse(&raw)?;
        Ok(Spelled { raw, value })
    }

    /// The string as written (client-side paths made absolute by the loader).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The parsed value.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> PartialEq for Spelled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T> Eq for Spelled<T> {}

impl<T> PartialEq<str> for Spelled<T> {
    fn eq(&self, other: &str) -> bool {
        self.raw == other
    }
}

impl<T> PartialEq<&str> for Spelled<T> {
    fn eq(&self, other: &&str) -> bool {
        self.raw == *other
    }
}

impl<T> PartialEq<String> for Spelled<T> {
    fn eq(&self, other: &String) -> bool {
        &self.raw == other
    }
}

impl<T> fmt::Display for Spelled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A malformed option string. Fields are public so the project-file loader can re-render the
/// message with its own location (file, key) instead of a CLI flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag} {}: {}, e.g. {flag} {example}", excerpt(.input), shorten(.reason))]
pub struct OptionError {
    /// The flag as the user typed it on the CLI, e.g. `--output`.
    pub flag: String,
    /// The whole value that was rejected.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
    /// A correct value for the same flag (without the flag itself).
    pub example: String,
}

impl OptionError {
    fn new(flag: &str, input: &str, reason: impl Into<String>, example: &str) -> Self {
        OptionError {
            flag: flag.to_string(),
            input: input.to_string(),
            reason: reason.into(),
            example: example.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CSV fields
// ---------------------------------------------------------------------------------------------

/// Splits one CSV record the way Go's `encoding/csv` does (buildx parses `--output`, `--cache-*`
/// and `--secret` with it): a field may be wrapped in double quotes to contain commas, `""` inside
/// quotes is a literal quote, and a quote inside an unquoted field is an error.
pub(crate) fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is missing its closing '\"'".into()),
                    Some('"') => {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            field.push('"');
                        } else {
                            break;
                        }
                    }
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(
                        "text after a closing '\"'; quote the whole field, like \"name=a,b\""
                            .into(),
                    )
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(
                        "a '\"' inside an unquoted field; quote the whole field, like \"name=a,b\""
                            .into(),
                    ),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// `key=value` fields of a CSV record, keys lower-cased like buildx does. A field without `=`
/// directly after a `name=` field continues that comma-separated list, so the common
/// `type=image,name=a,b` works without quoting.
pub(crate) fn csv_attrs(
    flag: &str,
    input: &str,
    example: &str,
) -> Result<Vec<(String, String)>, OptionError> {
    let fields = csv_fields(input).map_err(|r| OptionError::new(flag, input, r, example))?;
    let mut out: Vec<(String, String)> = Vec::with_capacity(fields.len());
    for field in fields {
        match field.split_once('=') {
            Some((k, v)) => {
                let key = k.trim().to_ascii_lowercase();
                if key.is_empty() {
                    return Err(OptionError::new(
                        flag,
                        input,
                        format!("field {field:?} has an empty key"),
                        example,
                    ));
                }
                out.push((key, v.to_string()));
            }
            None => match out.last_mut() {
                Some((k, v)) if k == "name" && !field.is_empty() => {
                    v.push(',');
                    v.push_str(&field);
                }
                _ => {
                    return Err(OptionError::new(
                        flag,
                        input,
                        format!("field {field:?} is not KEY=VALUE"),
                        example,
                    ))
                }
            },
        }
    }
    Ok(out)
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    // Go's strconv.ParseBool, which buildx and BuildKit use for boolean attributes.
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// --build-arg, --label
// ---------------------------------------------------------------------------------------------

/// Splits `KEY=VALUE`; `KEY` alone yields `(KEY, None)`. An empty key is an error.
pub fn parse_key_value(flag: &str, s: &str) -> Result<(String, Option<String>), OptionError> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    if key.is_empty() {
        return Err(OptionError::new(
            flag,
            s,
            "expected KEY=VALUE with a non-empty KEY",
            "FOO=bar",
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(OptionError::new(
            flag,
            s,
            format!("KEY {key:?} contains whitespace"),
            "FOO=bar",
        ));
    }
    Ok((key.to_string(), value))
}

/// `--build-arg KEY=VALUE`. `KEY` alone takes its value from the environment and is dropped
/// (`Ok(None)`) when the variable is unset, as buildx does.
pub fn parse_build_arg(s: &str) -> Result<Option<(String, String)>, OptionError> {
    parse_build_arg_with(s, |k| std::env::var(k).ok())
}

/// [`parse_build_arg`] with an explicit environment, for callers that interpolate their own.
pub fn parse_build_arg_with(
    s: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, OptionError> {
    let (key, value) = parse_key_value("--build-arg", s)?;
    Ok(match value {
        Some(v) => Some((key, v)),
        None => env(&key).map(|v| (key, v)),
    })
}

/// `--label KEY=VALUE`; `KEY` alone is an empty label, as in buildx.
pub fn parse_label(s: &str) -> Result<(String, String), OptionError> {
    let (key, value) = parse_key_value("--label", s)?;
    Ok((key, value.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------------
// -o / --output
// ---------------------------------------------------------------------------------------------

/// One `-o/--output` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    /// Where the client writes what the daemon sends back. Client-side only: never sent to the
    /// daemon. `None` for `image`/`cacheonly`, and for `docker` where it means "load into the
    /// Docker Engine".
    pub dest: Option<OutputDest>,
    /// Exporter attributes to send to the daemon as they are (`name`, `push`, `compression`, …).
    pub attrs: BTreeMap<String, String>,
}

/// The exporter type. `type=registry` is folded into [`OutputKind::Image`] with `push=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    Image,
    Local,
    Tar,
    Oci,
    Docker,
    CacheOnly,
}

impl OutputKind {
    /// The exporter name BuildKit expects in `Exporter.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Image => "image",
            OutputKind::Local => "local",
            OutputKind::Tar => "tar",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            OutputKind::CacheOnly => "cacheonly",
        }
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Client-side destination of an exported result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputDest {
    /// `dest=-`: write the tar stream to standard output.
    Stdout,
    Path(PathBuf),
}

impl OutputSpec {
    /// Whether the daemon will push the image (`push=true`).
    pub fn push(&self) -> bool {
        self.attrs
            .get("push")
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    }

    /// For `type=oci|docker,tar=false`: the OCI image layout directory the daemon writes
    /// into through the session (BuildKit's store output), instead of a tar stream.
    pub fn layout_dir(&self) -> Option<&std::path::Path> {
        let tarball = self
            .attrs
            .get("tar")
            .and_then(|v| parse_bool(v))
            .unwrap_or(true);
        match (&self.kind, &self.dest) {
            (OutputKind::Oci | OutputKind::Docker, Some(OutputDest::Path(p))) if !tarball => {
                Some(p)
            }
            _ => None,
        }
    }

    /// Image names from the comma-separated `name` attribute.
    pub fn names(&self) -> Vec<String> {
        self.attrs
            .get("name")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

const OUTPUT_EXAMPLE: &str = "type=local,dest=out";

/// Parses `-o/--output`: CSV `type=…,key=value,…`, or the shorthands `-o DIR` (local) and
/// `-o -` (tar to standard output).
pub fn parse_output(s: &str) -> Result<OutputSpec, OptionError> {
    const FLAG: &str = "--output";
    if s.is_empty() {
        return Err(OptionError::new(FLAG, s, "empty value", OUTPUT_EXAMPLE));
    }
    // buildx: a single field that is not `type=…` is a destination, not a CSV record.
    if !s.starts_with("type=") && !s.contains('=') && !s.contains(',') {
        let (kind, dest) = if s == "-" {
            (OutputKind::Tar, OutputDest::Stdout)
        } else {
            (OutputKind::Local, OutputDest::Path(PathBuf::from(s)))
        };
        return Ok(OutputSpec {
            kind,
            dest: Some(dest),
            attrs: BTreeMap::new(),
        });
    }

    let mut kind_str: Option<String> = None;
    let mut dest: Option<String> = None;
    let mut attrs = BTreeMap::new();
    for (k, v) in csv_attrs(FLAG, s, OUTPUT_EXAMPLE)? {
        match k.as_str() {
            "type" => kind_str = Some(v),
            "dest" => dest = Some(v),
            _ => {
                attrs.insert(k, v);
            }
        }
    }
    let Some(kind_str) = kind_str else {
        return Err(OptionError::new(
            FLAG,
            s,
            "missing type= (one of image, registry, local, tar, oci, docker, cacheonly)",
            "type=image,name=registry.example.com/app:1,push=true",
        ));
    };
    let kind = match kind_str.as_str() {
        "image" => OutputKind::Image,
        "registry" => {
            attrs.insert("push".into(), "true".into());
            OutputKind::Image
        }
        "local" => OutputKind::Local,
        "tar" => OutputKind::Tar,
        "oci" => OutputKind::Oci,
        "docker" => OutputKind::Docker,
        "cacheonly" => OutputKind::CacheOnly,
        other => {
            return Err(OptionError::new(
                FLAG,
                s,
                format!(
                    "unknown type {other:?} (expected image, registry, local, tar, oci, docker or cacheonly)"
                ),
                "type=oci,dest=image.tar",
            ))
        }
    };
    if kind == OutputKind::Image {
        // `ref=` reads naturally next to `--cache-to type=registry,ref=…`; accept it as `name`.
        if let Some(r) = attrs.remove("ref") {
            attrs.entry("name".into()).or_insert(r);
        }
        if let Some(p) = attrs.get("push") {
            if parse_bool(p).is_none() {
                return Err(OptionError::new(
                    FLAG,
                    s,
                    format!("push={p:?} is not a boolean"),
                    "type=image,name=registry.example.com/app:1,push=true",
                ));
            }
        }
    }

    let tarball = match (kind, attrs.get("tar")) {
        (OutputKind::Oci | OutputKind::Docker, Some(v)) => parse_bool(v).ok_or_else(|| {
            OptionError::new(
                FLAG,
                s,
                format!("tar={v:?} is not a boolean"),
                "type=oci,tar=false,dest=layout",
            )
        })?,
        _ => true,
    };
    if !tarball && matches!(dest.as_deref(), None | Some("") | Some("-")) {
        return Err(OptionError::new(
            FLAG,
            s,
            "tar=false writes an OCI image layout directory; give it as dest=DIR",
            "type=oci,tar=false,dest=layout",
        ));
    }
    let dest = match (kind, dest) {
        (OutputKind::Image | OutputKind::CacheOnly, Some(_)) => {
            return Err(OptionError::new(
                FLAG,
                s,
                format!("type={kind_str} takes no dest= (the result stays in the daemon or registry)"),
                "type=oci,dest=image.tar",
            ))
        }
        (OutputKind::Image | OutputKind::CacheOnly, None) => None,
        (_, Some(d)) if d.is_empty() => {
            return Err(OptionError::new(
                FLAG,
                s,
                "dest= is empty",
                "type=tar,dest=out.tar",
            ))
        }
        (OutputKind::Local, Some(d)) if d == "-" => {
            return Err(OptionError::new(
                FLAG,
                s,
                "type=local writes a directory and cannot go to standard output; use type=tar,dest=- for a tar stream",
                "type=tar,dest=-",
            ))
        }
        (_, Some(d)) if d == "-" => Some(OutputDest::Stdout),
        (_, Some(d)) => Some(OutputDest::Path(PathBuf::from(d))),
        // Without dest, buildx loads `type=docker` into the Docker Engine (what --load means).
        (OutputKind::Docker, None) => None,
        (OutputKind::Local, None) => {
            return Err(OptionError::new(
                FLAG,
                s,
                "type=local needs dest=DIR",
                "type=local,dest=out",
            ))
        }
        (_, None) => {
            return Err(OptionError::new(
                FLAG,
                s,
                format!("type={kind_str} needs dest=FILE (or dest=- for standard output)"),
                &format!("type={kind_str},dest=image.tar"),
            ))
        }
    };
    Ok(OutputSpec { kind, dest, attrs })
}

// ---------------------------------------------------------------------------------------------
// --cache-from / --cache-to
// ---------------------------------------------------------------------------------------------

/// One cache import or export entry, passed to the daemon as `CacheOptionsEntry{Type, Attrs}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// `registry`, `inline`, `local`, `gha`, `s3` or `azblob`.
    pub kind: String,
    /// Attributes sent to the daemon as they are. For `type=local`, the client-side keys
    /// (`src`/`dest`, `tag`, `digest`, `reset`) are not here but in [`CacheSpec::local`].
    pub attrs: BTreeMap<String, String>,
    /// `type=local`: the client-side directory the daemon reads or writes through the session.
    pub local: Option<LocalCacheDir>,
}

/// A `type=local` cache: an OCI image layout directory on the client (BuildKit README,
/// "Local directory"). The daemon reaches it through the session's content store; the client
/// picks the cache manifest to import from `index.json` and records the exported one there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCacheDir {
    /// `src=` (import) or `dest=` (export), as written (relative to the current directory).
    pub dir: PathBuf,
    /// `tag=`: the `index.json` entry to read or to write. Default `latest`.
    pub tag: String,
    /// `digest=` (import only): import this cache manifest instead of looking `tag` up.
    pub digest: Option<Digest>,
    /// `reset=true` (export only): after the export, delete the blobs that `index.json` no
    /// longer references, so the directory does not grow without bound. Like BuildKit's, this
    /// also deletes the blobs of another export to the same directory that is still running.
    pub reset: bool,
}

const CACHE_TYPES: &[&str] = &["registry", "inline", "local", "gha", "s3", "azblob"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheDir {
    Import,
    Export,
}

/// Parses `--cache-from`: CSV `type=…,…`, or one or more bare registry refs (`REF[,REF…]`).
pub fn parse_cache_from(s: &str) -> Result<Vec<CacheSpec>, OptionError> {
    parse_cache(s, CacheDir::Import)
}

/// Parses `--cache-to`: CSV `type=…,…`, or a bare registry ref.
pub fn parse_cache_to(s: &str) -> Result<Vec<CacheSpec>, OptionError> {
    parse_cache(s, CacheDir::Export)
}

fn parse_cache(s: &str, dir: CacheDir) -> Result<Vec<CacheSpec>, OptionError> {
    let (flag, example) = match dir {
        CacheDir::Import => (
            "--cache-from",
            "type=registry,ref=registry.example.com/app:cache",
        ),
        CacheDir::Export => (
            "--cache-to",
            "type=registry,ref=registry.example.com/app:cache,mode=max",
        ),
    };
    if s.trim().is_empty() {
        return Err(OptionError::new(flag, s, "empty value", example));
    }
    if !s.contains('=') {
        // buildx: with no `=` at all, every CSV field is its own registry ref.
        let fields = csv_fields(s).map_err(|r| OptionError::new(flag, s, r, example))?;
        return fields
            .into_iter()
            .map(|r| {
                let r = r.trim();
                if r.is_empty() {
                    return Err(OptionError::new(flag, s, "empty registry ref", example));
                }
                Ok(CacheSpec {
                    kind: "registry".into(),
                    attrs: BTreeMap::from([("ref".to_string(), r.to_string())]),
                    local: None,
                })
            })
            .collect();
    }

    let mut kind = None;
    let mut attrs = BTreeMap::new();
    for (k, v) in csv_attrs(flag, s, example)? {
        if k == "type" {
            kind = Some(v);
        } else {
            attrs.insert(k, v);
        }
    }
    let Some(kind) = kind else {
        return Err(OptionError::new(flag, s, "missing type=", example));
    };
    if !CACHE_TYPES.contains(&kind.as_str()) {
        return Err(OptionError::new(
            flag,
            s,
            format!(
                "unknown cache type {kind:?} (expected one of {})",
                CACHE_TYPES.join(", ")
            ),
            example,
        ));
    }
    let need = |key: &str, ex: &str| -> Result<(), OptionError> {
        match attrs.get(key) {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(OptionError::new(
                flag,
                s,
                format!("type={kind} needs {key}="),
                ex,
            )),
        }
    };
    match (kind.as_str(), dir) {
        ("registry", _) => need("ref", example)?,
        ("inline", CacheDir::Import) => {
            return Err(OptionError::new(
                flag,
                s,
                "type=inline is export-only; import inline cache from the image itself with type=registry,ref=IMAGE",
                "type=registry,ref=registry.example.com/app:latest",
            ))
        }
        ("local", CacheDir::Import) => need("src", "type=local,src=/tmp/cache")?,
        ("local", CacheDir::Export) => need("dest", "type=local,dest=/tmp/cache,mode=max")?,
        _ => {}
    }
    if dir == CacheDir::Export {
        // The daemon silently ignores an unknown mode and exports min, so catch typos here.
        if let Some(mode) = attrs.get("mode") {
            if mode != "min" && mode != "max" {
                return Err(OptionError::new(
                    flag,
                    s,
                    format!("mode={mode:?} must be min or max"),
                    example,
                ));
            }
        }
    }
    let local = if kind == "local" {
        Some(local_cache_dir(flag, s, dir, &mut attrs)?)
    } else {
        None
    };
    Ok(vec![CacheSpec { kind, attrs, local }])
}

/// Takes the client-side keys of a `type=local` cache out of `attrs` (BuildKit's client reads
/// the same keys: `src`, `dest`, `tag`, `digest`, `reset`).
fn local_cache_dir(
    flag: &str,
    input: &str,
    dir: CacheDir,
    attrs: &mut BTreeMap<String, String>,
) -> Result<LocalCacheDir, OptionError> {
    let (path_key, example) = match dir {
        CacheDir::Import => ("src", "type=local,src=/tmp/cache"),
        CacheDir::Export => ("dest", "type=local,dest=/tmp/cache,mode=max"),
    };
    let bad = |reason: String, ex: &str| OptionError::new(flag, input, reason, ex);
    // Presence was checked by the caller.
    let path = attrs.remove(path_key).unwrap_or_default();
    let tag = match attrs.remove("tag") {
        None => "latest".to_string(),
        Some(t) if t.trim().is_empty() => {
            return Err(bad(
                "tag= is empty (omit it for the default tag latest)".into(),
                &format!("{example},tag=main"),
            ))
        }
        Some(t) => t,
    };
    let digest = match (dir, attrs.remove("digest")) {
        (_, None) => None,
        (CacheDir::Import, Some(d)) => Some(Digest::parse(&d).map_err(|e| {
            bad(
                e.to_string(),
                "type=local,src=/tmp/cache,digest=sha256:<64 hex digits>",
            )
        })?),
        (CacheDir::Export, Some(_)) => return Err(bad(
            "digest= only selects what --cache-from imports; an export's digest is its content's"
                .into(),
            example,
        )),
    };
    let reset = match (dir, attrs.remove("reset")) {
        (_, None) => false,
        (CacheDir::Export, Some(v)) => parse_bool(&v).ok_or_else(|| {
            bad(
                format!("reset={v:?} is not a boolean"),
                "type=local,dest=/tmp/cache,reset=true",
            )
        })?,
        (CacheDir::Import, Some(_)) => {
            return Err(bad(
                "reset= belongs to --cache-to (it prunes the directory after an export)".into(),
                example,
            ))
        }
    };
    Ok(LocalCacheDir {
        dir: PathBuf::from(path),
        tag,
        digest,
        reset,
    })
}

// ---------------------------------------------------------------------------------------------
// --build-context
// ---------------------------------------------------------------------------------------------

/// `--build-context NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedContext {
    /// The name the Dockerfile uses (`FROM NAME`, `COPY --from=NAME`), in familiar form:
    /// `docker.io/library/alpine:latest` becomes `alpine`.
    pub name: String,
    pub source: ContextSource,
}

/// Where a named context comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A directory on the client, served through the session.
    Local(PathBuf),
    /// `docker-image://REF`: an image (the ref, without the scheme).
    DockerImage(String),
    /// `target:NAME`: the result of another target of the project (bake only).
    Target(String),
    /// `oci-layout://PATH[:TAG][@DIGEST]`: an image in an OCI layout directory on the client.
    OciLayout(OciLayoutRef),
    /// A git or HTTP(S) URL, passed to the daemon as it is.
    Remote(String),
}

const CONTEXT_EXAMPLE: &str = "shared=../shared";

/// Parses `--build-context NAME=VALUE`.
pub fn parse_build_context(s: &str) -> Result<NamedContext, OptionError> {
    const FLAG: &str = "--build-context";
    let Some((raw_name, value)) = s.split_once('=') else {
        return Err(OptionError::new(
            FLAG,
            s,
            "expected NAME=VALUE",
            CONTEXT_EXAMPLE,
        ));
    };
    let name =
        familiar_name(raw_name).map_err(|r| OptionError::new(FLAG, s, r, CONTEXT_EXAMPLE))?;
    let source = context_source(value)
        .map_err(|(r, ex)| OptionError::new(FLAG, s, r, &format!("{name}={ex}")))?;
    Ok(NamedContext { name, source })
}

/// Classifies the VALUE of a named context (also for the project file's `contexts` entries).
pub fn parse_context_source(value: &str) -> Result<ContextSource, OptionError> {
    context_source(value)
        .map_err(|(r, ex)| OptionError::new("--build-context", value, r, &format!("NAME={ex}")))
}

fn context_source(value: &str) -> Result<ContextSource, (String, &'static str)> {
    if value.is_empty() {
        return Err(("empty VALUE".into(), "./dir"));
    }
    let rest = |prefix: &str, ex: &'static str| -> Result<String, (String, &'static str)> {
        let r = &value[prefix.len()..];
        if r.is_empty() {
            Err((format!("nothing after {prefix:?}"), ex))
        } else {
            Ok(r.to_string())
        }
    };
    if value.starts_with("docker-image://") {
        return rest("docker-image://", "docker-image://alpine:3.20")
            .map(ContextSource::DockerImage);
    }
    if value.starts_with("target:") {
        return rest("target:", "target:base").map(ContextSource::Target);
    }
    if let Some(r) = value.strip_prefix(OCI_LAYOUT_SCHEME) {
        return OciLayoutRef::parse(r)
            .map(ContextSource::OciLayout)
            .map_err(|e| (e, "oci-layout://./layout:tag"));
    }
    if is_remote_url(value) {
        return Ok(ContextSource::Remote(value.to_string()));
    }
    Ok(ContextSource::Local(PathBuf::from(value)))
}

const OCI_LAYOUT_SCHEME: &str = "oci-layout://";

/// `oci-layout://PATH[:TAG][@DIGEST]`: which image of an OCI image layout directory a named
/// context uses. Parsed as buildx does (`util/ocilayout`): the last `@` starts a digest only
/// when a digest follows it, the last `:` starts a tag only when a tag follows it, so paths
/// may contain both characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLayoutRef {
    /// The layout directory, as written (relative paths are relative to the current directory,
    /// or in a project file to that file's directory).
    pub path: PathBuf,
    /// The `index.json` entry to use. With neither a tag nor a digest, `latest` is looked up
    /// (and a layout holding a single image uses that image).
    pub tag: Option<String>,
    /// The exact manifest or index to use; wins over `tag`.
    pub digest: Option<Digest>,
}

impl OciLayoutRef {
    /// Parses what follows `oci-layout://`.
    pub fn parse(s: &str) -> Result<OciLayoutRef, String> {
        let mut path = s;
        let mut digest = None;
        if let Some(i) = path.rfind('@') {
            let after = &path[i + 1..];
            if looks_like_digest(after) {
                digest = Some(Digest::parse(after).map_err(|e| e.to_string())?);
                path = &path[..i];
            }
        }
        let mut tag = None;
        if let Some(i) = path.rfind(':') {
            let after = &path[i + 1..];
            if is_tag(after) {
                tag = Some(after.to_string());
                path = &path[..i];
            }
        }
        if path.is_empty() {
            return Err(format!(
                "no layout directory in {:?}",
                format!("{OCI_LAYOUT_SCHEME}{s}")
            ));
        }
        Ok(OciLayoutRef {
            path: PathBuf::from(path),
            tag,
            digest,
        })
    }
}

impl fmt::Display for OciLayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OCI_LAYOUT_SCHEME}{}", self.path.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The shape of a digest in a reference (distribution/reference's `DigestRegexp`): an
/// algorithm name, `:`, at least 32 hex digits. Whether the algorithm is one we support is
/// [`Digest::parse`]'s business, so `@md5:…` is an error rather than part of the path.
fn looks_like_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        let mut b = part.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphabetic()) && b.all(|c| c.is_ascii_alphanumeric())
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A reference tag (distribution/reference's `TagRegexp`: `[\w][\w.-]{0,127}`).
fn is_tag(s: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// BuildKit's notion of a remote context: HTTP(S) URLs and the git forms it recognises.
pub(crate) fn is_remote_url(v: &str) -> bool {
    [
        "http://",
        "https://",
        "git://",
        "git@",
        "ssh://",
        "github.com/",
    ]
    .iter()
    .any(|p| v.starts_with(p))
}

/// Normalizes an image-like context name to its familiar form, the way buildx does, so that
/// `docker.io/library/alpine:latest=…` overrides `FROM alpine`.
fn familiar_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("empty NAME".into());
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:@".contains(*c)))
    {
        return Err(format!(
            "NAME {raw:?} contains {c:?}; names are image references or stage names: lowercase letters, digits and . _ - / : @"
        ));
    }
    let mut name = raw;
    for prefix in ["docker.io/library/", "index.docker.io/library/"] {
        if let Some(r) = name.strip_prefix(prefix) {
            name = r;
        }
    }
    for prefix in ["docker.io/", "index.docker.io/"] {
        if let Some(r) = name.strip_prefix(prefix) {
            name = r;
        }
    }
    let name = name.strip_suffix(":latest").unwrap_or(name);
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------------------------
// --secret
// ---------------------------------------------------------------------------------------------

/// `--secret id=ID[,src=PATH|,env=VAR][,type=file|env]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// Only `id=` was given: BuildKit uses the environment variable named ID when it is set,
    /// else the file named ID. Resolved when the secret store is built.
    FromId,
}

const SECRET_EXAMPLE: &str = "id=npmrc,src=$HOME/.npmrc";

/// Parses `--secret`. Keys: `id`, `type` (`file`|`env`), `src`/`source`, `env`.
pub fn parse_secret(s: &str) -> Result<SecretSpec, OptionError> {
    const FLAG: &str = "--secret";
    let mut id = None;
    let mut typ = None;
    let mut src = None;
    let mut env = None;
    for (k, v) in csv_attrs(FLAG, s, SECRET_EXAMPLE)? {
        match k.as_str() {
            "id" => id = Some(v),
            "type" => {
                if v != "file" && v != "env" {
                    return Err(OptionError::new(
                        FLAG,
                        s,
                        format!("type={v:?} must be file or env"),
                        "id=token,type=env,env=GITHUB_TOKEN",
                    ));
                }
                typ = Some(v)
            }
            "src" | "source" => src = Some(v),
            "env" => env = Some(v),
            other => {
                return Err(OptionError::new(
                    FLAG,
                    s,
                    format!("unknown key {other:?} (expected id, type, src, source or env)"),
                    SECRET_EXAMPLE,
                ))
            }
        }
    }
    let id = match id {
        Some(id) if !id.is_empty() => id,
        _ => {
            return Err(OptionError::new(
                FLAG,
                s,
                "missing id= (the ID that RUN --mount=type=secret,id=ID asks for)",
                SECRET_EXAMPLE,
            ))
        }
    };
    let src = src.filter(|v| !v.is_empty());
    let env = env.filter(|v| !v.is_empty());
    let source = match (typ.as_deref(), src, env) {
        (_, Some(_), Some(_)) => {
            return Err(OptionError::new(
                FLAG,
                s,
                "give either src= (a file) or env= (a variable), not both",
                SECRET_EXAMPLE,
            ))
        }
        // buildx: with type=env, src= names the variable.
        (Some("env"), Some(v), None) | (_, None, Some(v)) => SecretSource::Env(v),
        (_, Some(p), None) => SecretSource::File(PathBuf::from(p)),
        (Some("env"), None, None) => SecretSource::Env(id.clone()),
        (Some(_), None, None) => SecretSource::File(PathBuf::from(&id)),
        (None, None, None) => SecretSource::FromId,
    };
    Ok(SecretSpec { id, source })
}

// ---------------------------------------------------------------------------------------------
// --ssh
// ---------------------------------------------------------------------------------------------

/// `--ssh default` / `--ssh ID=PATH[,PATH…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// Agent ID that `RUN --mount=type=ssh,id=ID` asks for (`default` when omitted there).
    pub id: String,
    /// An agent socket, or private key files; empty means `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

/// Parses `--ssh`.
pub fn parse_ssh(s: &str) -> Result<SshSpec, OptionError> {
    const FLAG: &str = "--ssh";
    const EXAMPLE: &str = "default=$SSH_AUTH_SOCK";
    let (id, paths) = match s.split_once('=') {
        Some((id, p)) => {
            let paths: Vec<PathBuf> = p
                .split(',')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            if paths.is_empty() {
                return Err(OptionError::new(
                    FLAG,
                    s,
                    "empty PATH after '='; omit '=' to use $SSH_AUTH_SOCK",
                    EXAMPLE,
                ));
            }
            (id, paths)
        }
        None => (s, Vec::new()),
    };
    let id = if id.is_empty() { "default" } else { id };
    if id.contains(',') || id.chars().any(char::is_whitespace) {
        return Err(OptionError::new(
            FLAG,
            s,
            format!("ID {id:?} contains ',' or whitespace"),
            EXAMPLE,
        ));
    }
    Ok(SshSpec {
        id: id.to_string(),
        paths,
    })
}

// ---------------------------------------------------------------------------------------------
// --add-host, --platform, --network, --progress, --ulimit, --shm-size
// ---------------------------------------------------------------------------------------------

/// `--add-host HOST:IP` (or `HOST=IP`): an `/etc/hosts` entry for RUN steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddHost {
    pub host: String,
    /// An IP address, or the literal `host-gateway` which the daemon resolves.
    pub ip: String,
}

impl fmt::Display for AddHost {
    /// The `HOST=IP` form (`=` so IPv6 addresses need no brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.host, self.ip)
    }
}

/// Parses `--add-host`. `=` is tried first so IPv6 addresses need no brackets (`db=::1`).
pub fn parse_add_host(s: &str) -> Result<AddHost, OptionError> {
    const FLAG: &str = "--add-host";
    const EXAMPLE: &str = "db.internal:10.0.0.5";
    let Some((host, ip)) = s.split_once('=').or_else(|| s.split_once(':')) else {
        return Err(OptionError::new(FLAG, s, "expected HOST:IP", EXAMPLE));
    };
    let host = host.trim();
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(OptionError::new(
            FLAG,
            s,
            "HOST is empty or contains whitespace",
            EXAMPLE,
        ));
    }
    let ip = ip.trim();
    let bare = ip
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(ip);
    if bare != "host-gateway" && bare.parse::<IpAddr>().is_err() {
        return Err(OptionError::new(
            FLAG,
            s,
            format!("{ip:?} is not an IP address or host-gateway"),
            EXAMPLE,
        ));
    }
    Ok(AddHost {
        host: host.to_string(),
        ip: bare.to_string(),
    })
}

/// Splits one `--platform` value (`linux/amd64,linux/arm64`) into its platforms.
pub fn parse_platforms(s: &str) -> Result<Vec<String>, OptionError> {
    const FLAG: &str = "--platform";
    const EXAMPLE: &str = "linux/amd64,linux/arm64";
    let platforms: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if platforms.is_empty() {
        return Err(OptionError::new(FLAG, s, "no platform given", EXAMPLE));
    }
    for p in &platforms {
        let parts: Vec<&str> = p.split('/').collect();
        let ok_part = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        // `local` means the daemon's own platform (buildx accepts it).
        if p != "local"
            && !(parts.len() >= 2 && parts.len() <= 3 && parts.iter().all(|x| ok_part(x)))
        {
            return Err(OptionError::new(
                FLAG,
                s,
                format!("{p:?} is not OS/ARCH[/VARIANT]"),
                EXAMPLE,
            ));
        }
    }
    Ok(platforms)
}

/// `--network` for RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The daemon's default sandbox network.
    #[default]
    Default,
    None,
    /// Needs the `network.host` entitlement.
    Host,
}

impl Network {
    /// The value as `--network` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `--network default|none|host`.
pub fn parse_network(s: &str) -> Result<Network, OptionError> {
    match s {
        "default" | "" => Ok(Network::Default),
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        _ => Err(OptionError::new(
            "--network",
            s,
            "expected default, none or host",
            "host",
        )),
    }
}

/// `--progress` display mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal, else `plain`.
    #[default]
    Auto,
    Tty,
    Plain,
    RawJson,
}

/// Parses `--progress auto|tty|plain|rawjson`.
pub fn parse_progress(s: &str) -> Result<ProgressMode, OptionError> {
    match s {
        "auto" => Ok(ProgressMode::Auto),
        "tty" => Ok(ProgressMode::Tty),
        "plain" => Ok(ProgressMode::Plain),
        "rawjson" => Ok(ProgressMode::RawJson),
        _ => Err(OptionError::new(
            "--progress",
            s,
            "expected auto, tty, plain or rawjson",
            "plain",
        )),
    }
}

/// `--ulimit NAME=SOFT[:HARD]`; `-1` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

impl fmt::Display for Ulimit {
    /// The `NAME=SOFT:HARD` form the Dockerfile frontend's `ulimit` attribute expects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Parses `--ulimit`.
pub fn parse_ulimit(s: &str) -> Result<Ulimit, OptionError> {
    const FLAG: &str = "--ulimit";
    const EXAMPLE: &str = "nofile=1024:2048";
    let Some((name, limits)) = s.split_once('=') else {
        return Err(OptionError::new(
            FLAG,
            s,
            "expected NAME=SOFT[:HARD]",
            EXAMPLE,
        ));
    };
    if !ULIMIT_NAMES.contains(&name) {
        return Err(OptionError::new(
            FLAG,
            s,
            format!(
                "unknown limit {name:?} (expected one of {})",
                ULIMIT_NAMES.join(", ")
            ),
            EXAMPLE,
        ));
    }
    let num = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| OptionError::new(FLAG, s, format!("{v:?} is not an integer"), EXAMPLE))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let v = num(limits)?;
            (v, v)
        }
    };
    if hard != -1 && (soft == -1 || soft > hard) {
        return Err(OptionError::new(
            FLAG,
            s,
            format!("soft limit {soft} is above the hard limit {hard}"),
            EXAMPLE,
        ));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// Parses `--shm-size` (`64m`, `1g`, `1048576`; binary units as Docker uses) into bytes.
pub fn parse_shm_size(s: &str) -> Result<u64, OptionError> {
    const FLAG: &str = "--shm-size";
    const EXAMPLE: &str = "512m";
    let bad = || OptionError::new(FLAG, s, "expected a size like 64m or 2g", EXAMPLE);
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

// ---------------------------------------------------------------------------------------------
// --annotation, --allow
// ---------------------------------------------------------------------------------------------

/// Which descriptor or document of the exported image an annotation is written to (BuildKit
/// `exptypes`: the `annotation*` exporter attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnnotationKind {
    /// No type given: the image manifest (BuildKit reads `annotation.KEY` as a manifest one).
    Default,
    /// The image manifest of each platform, or of the one named.
    Manifest,
    /// The descriptor of each platform's manifest in the index.
    ManifestDescriptor,
    /// The image index (multi-platform images, or images with attestations).
    Index,
    /// The descriptor of the index (in an OCI layout's `index.json`).
    IndexDescriptor,
}

impl AnnotationKind {
    /// The type as `--annotation` and BuildKit spell it (`manifest-descriptor`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotationKind::Default => "",
            AnnotationKind::Manifest => "manifest",
            AnnotationKind::ManifestDescriptor => "manifest-descriptor",
            AnnotationKind::Index => "index",
            AnnotationKind::IndexDescriptor => "index-descriptor",
        }
    }
}

/// One image annotation, as `--annotation [TYPE[\[PLATFORM\]],…:]KEY=VALUE` gives it (buildx
/// `ParseAnnotations`); one flag with several types gives one per type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub kind: AnnotationKind,
    /// Only for `manifest` and `manifest-descriptor`: the platform whose manifest gets it,
    /// normalized as containerd's `platforms.Parse` + `FormatAll` write it (`linux/arm64`).
    pub platform: Option<String>,
    pub key: String,
    pub value: String,
}

impl Annotation {
    /// The image exporter attribute that carries it (BuildKit `AnnotationKey.String`):
    /// `annotation.KEY`, `annotation-manifest[linux/amd64].KEY`, `annotation-index.KEY`, ….
    pub fn exporter_attr(&self) -> String {
        let mut prefix = String::from("annotation");
        if self.kind != AnnotationKind::Default {
            prefix.push('-');
            prefix.push_str(self.kind.as_str());
        }
        if let Some(p) = &self.platform {
            prefix.push_str(&format!("[{p}]"));
        }
        format!("{prefix}.{}", self.key)
    }
}

/// Parses `--annotation` (and a bake target's `annotations` entry) as buildx does
/// (`util/buildflags/export.go` `ParseAnnotations`): `KEY=VALUE`, or `TYPES:KEY=VALUE` where
/// TYPES is a comma-separated list of `manifest`, `manifest-descriptor`, `index`,
/// `index-descriptor`, the manifest ones optionally with `[PLATFORM]`.
///
/// Stricter than buildx where buildx would let the annotation vanish without a word: an empty
/// key or one with whitespace (the daemon does not take it for an annotation at all) and a
/// platform on an `index` type (buildx drops the platform) are errors.
pub fn parse_annotation(s: &str) -> Result<Vec<Annotation>, OptionError> {
    const FLAG: &str = "--annotation";
    const EXAMPLE: &str = "\"index,manifest:org.opencontainers.image.title=app\"";
    let err = |why: String| OptionError::new(FLAG, s, why, EXAMPLE);
    let Some((k, value)) = s.split_once('=') else {
        return Err(err("expected KEY=VALUE".into()));
    };
    let (types, key) = match k.split_once(':') {
        Some((t, key)) => (Some(t), key),
        None => (None, k),
    };
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(err(format!(
            "annotation key {key:?} is empty or contains whitespace"
        )));
    }
    let Some(types) = types else {
        return Ok(vec![Annotation {
            kind: AnnotationKind::Default,
            platform: None,
            key: key.to_string(),
            value: value.to_string(),
        }]);
    };
    let mut out = Vec::new();
    for t in types.split(',') {
        let (name, platform) = match t.split_once('[') {
            Some((n, rest)) => match rest.strip_suffix(']') {
                Some(p) if !p.is_empty() && !p.contains(['[', ']']) => (n, Some(p)),
                _ => return Err(err(format!("type {t:?}: expected TYPE or TYPE[PLATFORM]"))),
            },
            None => (t, None),
        };
        let kind = match name {
            "manifest" => AnnotationKind::Manifest,
            "manifest-descriptor" => AnnotationKind::ManifestDescriptor,
            "index" => AnnotationKind::Index,
            "index-descriptor" => AnnotationKind::IndexDescriptor,
            other => {
                return Err(err(format!(
                    "unknown annotation type {other:?} (expected manifest, manifest-descriptor, index or index-descriptor)"
                )))
            }
        };
        let platform = match platform {
            None => None,
            Some(_)
                if matches!(
                    kind,
                    AnnotationKind::Index | AnnotationKind::IndexDescriptor
                ) =>
            {
                return Err(err(format!(
                    "{name} annotations belong to the whole index, not to a platform; remove [{}]",
                    platform.unwrap_or_default()
                )))
            }
            Some(p) => {
                Some(normalize_platform(p).map_err(|why| err(format!("platform {p:?}: {why}")))?)
            }
        };
        out.push(Annotation {
            kind,
            platform,
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// Operating systems containerd's `platforms.Parse` knows (a lone word is tried as one first).
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];
/// Architectures containerd's `platforms.Parse` knows.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// An architecture and variant (lower case) as containerd's `normalizeArch` (platforms
/// package) makes them: `x86_64` → `amd64` (its `v1` dropped), `aarch64` → `arm64` (`v8`
/// dropped), `arm` with no variant → `v7`, `armhf` → `arm` `v7`. BuildKit normalizes each
/// build platform this way before it sets `TARGETARCH` and `TARGETVARIANT`.
pub(crate) fn normalize_arch(a: &str, v: &str) -> (String, String) {
    let v = v.to_string();
    match a {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            ("amd64".into(), if v == "v1" { String::new() } else { v })
        }
        "aarch64" | "arm64" => (
            "arm64".into(),
            match v.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => v,
            },
        ),
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => (
            "arm".into(),
            match v.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{v}"),
                _ => v,
            },
        ),
        other => (other.to_string(), v),
    }
}

/// A platform specifier normalized as containerd's `platforms.Parse` then `Format` do it
/// (`x86_64` → `amd64`, `arm` → `arm/v7`, `arm64/v8` kept, a lone OS or architecture completed
/// with this machine's), so an annotation names the platform the way the daemon will match it.
fn normalize_platform(spec: &str) -> Result<String, String> {
    let parts: Vec<String> = spec.split('/').map(str::to_ascii_lowercase).collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if parts.len() > 3 || !parts.iter().all(|p| ok(p)) {
        return Err("expected OS/ARCH[/VARIANT]".into());
    }
    let os = |o: &str| {
        if o == "macos" {
            "darwin".to_string()
        } else {
            o.to_string()
        }
    };
    let arch = normalize_arch;
    let host = host_platform();
    let host_arch = host.split('/').nth(1).unwrap_or("amd64").to_string();
    let (o, a, v) = match parts.as_slice() {
        [one] if KNOWN_OS.contains(&os(one).as_str()) => (os(one), host_arch, String::new()),
        [one] => {
            let (a, mut v) = arch(one, "");
            if a == "arm" && v == "v7" {
                v.clear();
            }
            if !KNOWN_ARCH.contains(&a.as_str()) {
                return Err("unknown operating system or architecture".into());
            }
            ("linux".to_string(), a, v)
        }
        [o, a] => {
            let (a, mut v) = arch(a, "");
            if a == "arm" && v == "v7" {
                v.clear();
            }
            (os(o), a, v)
        }
        [o, a, v] => {
            let (a, mut v) = arch(a, v);
            if a == "arm64" && v.is_empty() {
                v = "v8".into();
            }
            (os(o), a, v)
        }
        _ => return Err("expected OS/ARCH[/VARIANT]".into()),
    };
    Ok([o, a, v]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/"))
}

/// Parses an entitlement BuildKit grants a build (`--allow`, bake `entitlements`), as its
/// `entitlements.Parse` does: `network.host`, `security.insecure`, `device`, or
/// `device=NAME[,alias=ALIAS]`. Returned as given: it is sent to the daemon as it is.
pub fn parse_entitlement(s: &str) -> Result<String, OptionError> {
    const FLAG: &str = "--allow";
    const EXAMPLE: &str = "network.host";
    match s.split_once('=') {
        None if matches!(s, "network.host" | "security.insecure" | "device") => Ok(s.to_string()),
        Some(("device", cfg)) => {
            let fields = csv_fields(cfg).map_err(|r| OptionError::new(FLAG, s, r, EXAMPLE))?;
            if fields.first().is_none_or(|n| n.is_empty()) {
                return Err(OptionError::new(
                    FLAG,
                    s,
                    "no device name after device=",
                    "device=nvidia.com/gpu=all",
                ));
            }
            for f in &fields[1..] {
                match f.split_once('=') {
                    Some(("alias", _)) => {}
                    _ => {
                        return Err(OptionError::new(
                            FLAG,
                            s,
                            format!("unknown device field {f:?} (only alias=NAME)"),
                            "device=nvidia.com/gpu=all",
                        ))
                    }
                }
            }
            Ok(s.to_string())
        }
        _ => Err(OptionError::new(
            FLAG,
            s,
            "unknown entitlement (expected network.host, security.insecure, device or device=NAME)",
            EXAMPLE,
        )),
    }
}

/// This machine's platform in BuildKit's spelling (`linux/amd64`): what an unset `platforms`
/// means in fingerprints. A daemon that builds for another one is noticed after the build,
/// and its result is not reused (`bake::execute`).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("linux/{arch}")
}

/// The single platform a build with these `platforms` is for, if it is one: the only entry,
/// or this machine's when none is given.
pub fn single_platform(platforms: &[String]) -> Option<String> {
    match platforms {
        [] => Some(host_platform()),
        [one] => Some(one.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// --attest (bake's `attest` key, --provenance, --sbom)
// ---------------------------------------------------------------------------------------------

/// One attestation request, as buildx's `--attest` / bake `attest` entry
/// (`type=provenance,mode=max`, `type=sbom,generator=IMAGE`, `type=sbom,disabled=true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestSpec {
    /// `provenance` or `sbom` (the daemon rejects other types).
    pub kind: String,
    /// `disabled=true`: ask for no attestation of this type.
    pub disabled: bool,
    /// The other fields, sent to BuildKit as the value of the `attest:TYPE` frontend attribute.
    pub attrs: BTreeMap<String, String>,
}

/// Writes one CSV field, quoted when Go's `encoding/csv` would need it to read it back.
fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\r', '\n']) || f.starts_with(' ') {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// `key=value` pairs as one CSV record (the inverse of [`csv_attrs`]).
pub(crate) fn csv_record<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| csv_field(&format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

impl AttestSpec {
    /// The value of BuildKit's `attest:TYPE` frontend attribute: the fields besides `type` and
    /// `disabled` (BuildKit `frontend/attestations`).
    pub fn frontend_value(&self) -> String {
        csv_record(self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl fmt::Display for AttestSpec {
    /// The canonical `type=…[,disabled=true],key=value…` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pairs = vec![("type", self.kind.as_str())];
        if self.disabled {
            pairs.push(("disabled", "true"));
        }
        pairs.extend(self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        f.write_str(&csv_record(pairs))
    }
}

/// A shorthand's value (`--provenance VALUE`, `--sbom VALUE`, compose's `build.provenance`) as
/// an `--attest` entry, as buildx's `CanonicalizeAttest`: `true`/`false` (Go booleans) enable
/// or disable the type, anything else is its options; empty is no entry.
pub fn canonical_attest(kind: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    Some(match parse_bool(value) {
        Some(b) => format!("type={kind},disabled={}", !b),
        None => format!("type={kind},{value}"),
    })
}

/// Parses an attestation entry as buildx does (`util/buildflags/attests.go`): CSV
/// `key=value` fields, `type` required, `disabled` a boolean.
pub fn parse_attest(s: &str) -> Result<AttestSpec, OptionError> {
    const FLAG: &str = "--attest";
    const EXAMPLE: &str = "type=provenance,mode=max";
    let mut kind = None;
    let mut disabled = false;
    let mut attrs = BTreeMap::new();
    let fields = csv_fields(s).map_err(|r| OptionError::new(FLAG, s, r, EXAMPLE))?;
    for field in fields {
        let Some((k, v)) = field.split_once('=') else {
            return Err(OptionError::new(
                FLAG,
                s,
                format!("field {field:?} is not KEY=VALUE"),
                EXAMPLE,
            ));
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "type" => kind = Some(v.to_string()),
            "disabled" => {
                disabled = parse_bool(v).ok_or_else(|| {
                    OptionError::new(
                        FLAG,
                        s,
                        format!("disabled={v:?} is not a boolean"),
                        "type=sbom,disabled=true",
                    )
                })?
            }
            _ => {
                attrs.insert(k.to_string(), v.to_string());
            }
        }
    }
    match kind {
        Some(kind) if !kind.is_empty() => Ok(AttestSpec {
            kind,
            disabled,
            attrs,
        }),
        _ => Err(OptionError::new(
            FLAG,
            s,
            "attestation type not specified (type=provenance or type=sbom)",
            EXAMPLE,
        )),
    }
}

/// `BUILDX_NO_DEFAULT_ATTESTATIONS` (the environment's value, if set): whether builds go without
/// buildx's default provenance. A boolean as Go's `strconv.ParseBool` reads it; anything else,
/// the empty string included, is an error, as in buildx (`build/opt.go`).
pub fn parse_no_default_attestations(value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| {
            format!(
                "invalid BUILDX_NO_DEFAULT_ATTESTATIONS={v:?}: not a boolean\n  fix: set it to 1 (no default provenance attestation) or 0, or unset it"
            )
        }),
    }
}

/// How much of a build's provenance a metadata file gets as `buildx.build.provenance`
/// (buildx `util/confutil/metadata.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetadataProvenance {
    /// None: the key is left out (also what a build without a metadata file asks for).
    #[default]
    Disabled,
    /// The SLSA predicate without its `buildConfig` and `metadata` (the default).
    Min,
    /// The whole predicate.
    Max,
}

/// `BUILDX_METADATA_PROVENANCE` as buildx reads it: `min`, `max`, `disabled`; a false boolean
/// also disables; anything else, or unset, is `min`.
pub fn parse_metadata_provenance(value: Option<&str>) -> MetadataProvenance {
    match value.unwrap_or_default() {
        "max" => MetadataProvenance::Max,
        "disabled" => MetadataProvenance::Disabled,
        v if parse_bool(v) == Some(false) => MetadataProvenance::Disabled,
        _ => MetadataProvenance::Min,
    }
}

// ---------------------------------------------------------------------------------------------
// --call, --check
// ---------------------------------------------------------------------------------------------

/// What `--call` asks the Dockerfile frontend for instead of a build (buildx `ParseCallFunc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFunc {
    /// The frontend subrequest, as BuildKit names it after `frontend.`: `lint` (buildx's
    /// `check`), `outline` or `targets`.
    pub name: String,
    /// `format=json`: print the frontend's JSON answer instead of text.
    pub json: bool,
    /// `ignorestatus=true`: exit 0 even when the answer carries a failing status (lint
    /// warnings).
    pub ignore_status: bool,
}

impl CallFunc {
    /// The name buildx shows (`check` for the `lint` subrequest).
    pub fn shown_name(&self) -> &str {
        match self.name.as_str() {
            "lint" => "check",
            n => n,
        }
    }
}

/// Parses `--call NAME[,format=json|text][,ignorestatus=BOOL]`. `None` for `build` (the
/// default: an ordinary build). `check` and `lint` are the same subrequest, as in buildx.
/// Unlike buildx, which passes any name to the frontend and accepts any format, only the
/// methods the Dockerfile frontend documents and the two formats are accepted.
pub fn parse_call(s: &str) -> Result<Option<CallFunc>, OptionError> {
    const FLAG: &str = "--call";
    const EXAMPLE: &str = "check,format=json";
    let fail = |why: String| OptionError::new(FLAG, s, why, EXAMPLE);
    let mut name: Option<String> = None;
    let mut json = false;
    let mut ignore_status = false;
    for field in csv_fields(s).map_err(fail)? {
        match field.split_once('=') {
            Some(("format", f)) => {
                json = match f {
                    "json" => true,
                    "text" | "" => false,
                    other => return Err(fail(format!("format={other:?}: use json or text"))),
                }
            }
            Some(("ignorestatus", b)) => {
                ignore_status = parse_bool(b)
                    .ok_or_else(|| fail(format!("ignorestatus={b:?} is not a boolean")))?;
            }
            Some(_) => {
                return Err(fail(format!(
                    "unknown field {field:?}; the fields are format= and ignorestatus="
                )))
            }
            None if name.is_some() => return Err(fail(format!("{s:?} names two methods"))),
            None => name = Some(field),
        }
    }
    let name = match name.as_deref() {
        None | Some("") | Some("build") => return Ok(None),
        Some("check" | "lint") => "lint",
        Some(n @ ("outline" | "targets")) => n,
        Some(n) => {
            return Err(fail(format!(
                "{n:?} is not a method: use build (the default), check, outline or targets"
            )))
        }
    };
    Ok(Some(CallFunc {
        name: name.to_string(),
        json,
        ignore_status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotation_attrs(s: &str) -> Vec<(String, String)> {
        parse_annotation(s)
            .unwrap()
            .into_iter()
            .map(|a| (a.exporter_attr(), a.value))
            .collect()
    }

    #[test]
    fn annotations_follow_buildx_and_buildkit_keys() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(annotation_attrs("a.b=c=d"), [kv("annotation.a.b", "c=d")]);
        assert_eq!(annotation_attrs("k="), [kv("annotation.k", "")]);
        assert_eq!(
            annotation_attrs("index,manifest-descriptor:k=v"),
            [
                kv("annotation-index.k", "v"),
                kv("annotation-manifest-descriptor.k", "v")
            ]
        );
        assert_eq!(
            annotation_attrs("manifest[linux/arm64],index-descriptor:k=v"),
            [
                kv("annotation-manifest[linux/arm64].k", "v"),
                kv("annotation-index-descriptor.k", "v")
            ]
        );
        // Platforms are normalized as containerd writes them.
        for (given, want) in [
            ("linux/x86_64", "linux/amd64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm", "linux/arm"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/armhf", "linux/arm"),
            ("linux/armel", "linux/arm/v6"),
            ("Linux/AMD64", "linux/amd64"),
            ("arm64", "linux/arm64"),
            ("windows/amd64", "windows/amd64"),
        ] {
            assert_eq!(
                annotation_attrs(&format!("manifest[{given}]:k=v"))[0].0,
                format!("annotation-manifest[{want}].k"),
                "{given}"
            );
        }
        assert_eq!(
            annotation_attrs("manifest[linux]:k=v")[0].0,
            format!("annotation-manifest[{}].k", host_platform())
        );
        for bad in [
            "novalue",
            "=v",
            "a b=c",
            "bogus:k=v",
            ":k=v",
            "manifest[]:k=v",
            "manifest[linux/amd64:k=v",
            "manifest[nope]:k=v",
            "manifest[a/b/c/d]:k=v",
            "index[linux/amd64]:k=v",
            "index,:k=v",
            "manifest:=v",
        ] {
            let e = parse_annotation(bad).unwrap_err();
            assert_eq!(e.flag, "--annotation", "{bad}");
        }
    }

    #[test]
    fn entitlements_are_buildkits() {
        for ok in [
            "network.host",
            "security.insecure",
            "device",
            "device=nvidia.com/gpu=all",
            "device=gpu0,alias=gpu",
        ] {
            assert_eq!(parse_entitlement(ok).unwrap(), ok);
        }
        for bad in ["ssh", "network", "device=", "device=x,size=1", "fs=/x", ""] {
            let e = parse_entitlement(bad).unwrap_err();
            assert!(e.to_string().contains("--allow"), "{e}");
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn csv_quoting_follows_go_encoding_csv() {
        assert_eq!(csv_fields("a,b").unwrap(), vec!["a", "b"]);
        assert_eq!(
            csv_fields("type=image,\"name=a,b\",push=true").unwrap(),
            vec!["type=image", "name=a,b", "push=true"]
        );
        assert_eq!(csv_fields("\"x\"\"y\"").unwrap(), vec!["x\"y"]);
        assert_eq!(csv_fields("a,").unwrap(), vec!["a", ""]);
        assert!(csv_fields("\"unterminated").is_err());
        assert!(csv_fields("name=\"a,b\"").is_err());
        assert!(csv_fields("\"a\"b").is_err());
    }

    #[test]
    fn build_arg_value_env_and_errors() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "envval".to_string());
        assert_eq!(
            parse_build_arg_with("A=b=c", env).unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert_eq!(
            parse_build_arg_with("A=", env).unwrap(),
            Some(("A".into(), String::new()))
        );
        assert_eq!(
            parse_build_arg_with("FROM_ENV", env).unwrap(),
            Some(("FROM_ENV".into(), "envval".into()))
        );
        assert_eq!(parse_build_arg_with("UNSET", env).unwrap(), None);
        let e = parse_build_arg_with("=bar", env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --build-arg \"=bar\": expected KEY=VALUE with a non-empty KEY, e.g. --build-arg FOO=bar"
        );
    }

    #[test]
    fn label_without_value_is_empty() {
        assert_eq!(parse_label("a").unwrap(), ("a".into(), String::new()));
        assert_eq!(parse_label("a=1").unwrap(), ("a".into(), "1".into()));
        assert!(parse_label("").unwrap_err().to_string().contains("--label"));
    }

    #[test]
    fn output_image_and_registry() {
        let o = parse_output("type=image,name=a,b,push=true").unwrap();
        assert_eq!(o.kind, OutputKind::Image);
        assert_eq!(o.dest, None);
        assert_eq!(o.names(), vec!["a", "b"]);
        assert!(o.push());

        let o = parse_output("type=image,\"name=x/a:1,x/b:2\",compression=zstd").unwrap();
        assert_eq!(
            o.attrs,
            attrs(&[("name", "x/a:1,x/b:2"), ("compression", "zstd")])
        );
        assert!(!o.push());

        let o = parse_output("type=registry,ref=localhost:5000/a").unwrap();
        assert_eq!(o.kind, OutputKind::Image);
        assert_eq!(
            o.attrs,
            attrs(&[("name", "localhost:5000/a"), ("push", "true")])
        );
    }

    #[test]
    fn output_file_types_and_shorthands() {
        let o = parse_output("type=oci,dest=out.tar").unwrap();
        assert_eq!(o.kind, OutputKind::Oci);
        assert_eq!(o.dest, Some(OutputDest::Path("out.tar".into())));
        assert!(o.attrs.is_empty(), "dest must not leak into daemon attrs");

        let o = parse_output("type=tar,dest=-").unwrap();
        assert_eq!(
            (o.kind, o.dest),
            (OutputKind::Tar, Some(OutputDest::Stdout))
        );

        let o = parse_output("type=docker").unwrap();
        assert_eq!((o.kind, o.dest), (OutputKind::Docker, None));

        let o = parse_output("type=local,dest=out,platform-split=false").unwrap();
        assert_eq!(o.dest, Some(OutputDest::Path("out".into())));
        assert_eq!(o.attrs, attrs(&[("platform-split", "false")]));

        let o = parse_output("./out").unwrap();
        assert_eq!(
            (o.kind, o.dest),
            (OutputKind::Local, Some(OutputDest::Path("./out".into())))
        );
        let o = parse_output("-").unwrap();
        assert_eq!(
            (o.kind, o.dest),
            (OutputKind::Tar, Some(OutputDest::Stdout))
        );

        assert_eq!(
            parse_output("type=cacheonly").unwrap().kind,
            OutputKind::CacheOnly
        );
    }

    #[test]
    fn output_errors_name_the_problem() {
        let e = parse_output("type=bogus").unwrap_err();
        assert!(e.reason.contains("unknown type \"bogus\""), "{e}");
        assert!(e
            .to_string()
            .starts_with("invalid --output \"type=bogus\":"));

        let e = parse_output("type=local").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --output \"type=local\": type=local needs dest=DIR, e.g. --output type=local,dest=out"
        );
        assert!(parse_output("type=oci")
            .unwrap_err()
            .reason
            .contains("dest=FILE"));
        assert!(parse_output("type=tar,dest=").is_err());
        assert!(parse_output("type=local,dest=-")
            .unwrap_err()
            .reason
            .contains("type=tar,dest=-"));
        assert!(parse_output("type=image,dest=x").is_err());
        assert!(parse_output("name=a")
            .unwrap_err()
            .reason
            .contains("missing type="));
        assert!(parse_output("type=image,push=maybe")
            .unwrap_err()
            .reason
            .contains("boolean"));
        assert!(parse_output("type=image,name=\"a,b\"")
            .unwrap_err()
            .reason
            .contains("quote"));
        assert!(parse_output("type=oci,junk,dest=x")
            .unwrap_err()
            .reason
            .contains("\"junk\""));
        assert!(parse_output("").is_err());
    }

    #[test]
    fn cache_specs() {
        let c = parse_cache_to("type=registry,ref=r/a:cache,mode=max").unwrap();
        assert_eq!(
            c,
            vec![CacheSpec {
                kind: "registry".into(),
                attrs: attrs(&[("ref", "r/a:cache"), ("mode", "max")]),
                local: None,
            }]
        );
        let c = parse_cache_from("r/a:cache,r/a:main").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].attrs["ref"], "r/a:main");
        assert_eq!(c[0].kind, "registry");

        assert_eq!(parse_cache_to("type=inline").unwrap()[0].kind, "inline");
        assert_eq!(
            parse_cache_to("type=gha,scope=x").unwrap()[0].attrs,
            attrs(&[("scope", "x")])
        );
    }

    #[test]
    fn oci_outputs_without_a_tarball_name_a_layout_directory() {
        let o = parse_output("type=oci,tar=false,dest=layout").unwrap();
        assert_eq!(o.layout_dir(), Some(std::path::Path::new("layout")));
        assert_eq!(o.attrs["tar"], "false", "the daemon needs tar=false too");
        let o = parse_output("type=docker,tar=false,dest=/l").unwrap();
        assert_eq!(o.layout_dir(), Some(std::path::Path::new("/l")));
        assert_eq!(
            parse_output("type=oci,dest=i.tar").unwrap().layout_dir(),
            None
        );
        assert_eq!(
            parse_output("type=oci,tar=true,dest=i.tar")
                .unwrap()
                .layout_dir(),
            None
        );
        for (bad, why) in [
            ("type=oci,tar=false,dest=-", "dest=DIR"),
            ("type=docker,tar=false", "dest=DIR"),
            ("type=oci,tar=maybe,dest=x", "not a boolean"),
        ] {
            let e = parse_output(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn local_cache_keys_are_typed_and_kept_from_the_daemon_attrs() {
        let c = &parse_cache_from("type=local,src=/c").unwrap()[0];
        assert_eq!(c.kind, "local");
        assert!(c.attrs.is_empty(), "{:?}", c.attrs);
        assert_eq!(
            c.local,
            Some(LocalCacheDir {
                dir: PathBuf::from("/c"),
                tag: "latest".into(),
                digest: None,
                reset: false,
            })
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let c = &parse_cache_from(&format!("type=local,src=c,tag=main,digest={d}")).unwrap()[0];
        let l = c.local.as_ref().unwrap();
        assert_eq!(
            (l.tag.as_str(), l.digest.as_ref().map(|d| d.to_string())),
            ("main", Some(d.to_string()))
        );
        let c =
            &parse_cache_to("type=local,dest=out,mode=max,reset=true,compression=zstd").unwrap()[0];
        assert_eq!(c.attrs, attrs(&[("mode", "max"), ("compression", "zstd")]));
        let l = c.local.as_ref().unwrap();
        assert_eq!(
            (l.dir.as_path(), l.reset),
            (std::path::Path::new("out"), true)
        );

        for (bad, why) in [
            ("type=local,src=c,digest=sha256:abc", "invalid digest"),
            ("type=local,src=c,tag=", "tag= is empty"),
            ("type=local,src=c,reset=true", "belongs to --cache-to"),
        ] {
            let e = parse_cache_from(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for (bad, why) in [
            ("type=local,dest=c,reset=yes", "not a boolean"),
            (
                &format!("type=local,dest=c,digest={d}"),
                "digest= only selects",
            ),
        ] {
            let e = parse_cache_to(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn oci_layout_refs_split_like_buildx() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let p = |s: &str| OciLayoutRef::parse(s).unwrap();
        let r = p("/path/to/layout");
        assert_eq!(
            (r.path, r.tag, r.digest),
            (PathBuf::from("/path/to/layout"), None, None)
        );
        let r = p("/path/to/layout:1.3");
        assert_eq!(
            (r.path, r.tag),
            (PathBuf::from("/path/to/layout"), Some("1.3".into()))
        );
        let r = p(&format!("/p/@/layout:v1@{d}"));
        assert_eq!(r.path, PathBuf::from("/p/@/layout"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), d);
        // ':' and '@' that start no tag or digest belong to the path.
        let r = p("/a:b/c@d/layout");
        assert_eq!(
            (r.path, r.tag, r.digest),
            (PathBuf::from("/a:b/c@d/layout"), None, None)
        );
        assert_eq!(
            p(&format!("rel:t@{d}")).to_string(),
            format!("oci-layout://rel:t@{d}")
        );
        // A digest-shaped suffix with an unsupported algorithm is an error, not a path.
        assert!(OciLayoutRef::parse("/l@md5:0123456789abcdef0123456789abcdef").is_err());
        assert!(OciLayoutRef::parse(":tag").is_err());
        let e = parse_build_context("x=oci-layout://")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no layout directory"), "{e}");
    }

    #[test]
    fn cache_errors() {
        assert!(parse_cache_to("type=registry")
            .unwrap_err()
            .reason
            .contains("ref="));
        assert!(parse_cache_to("type=registry,ref=a,mode=maxx")
            .unwrap_err()
            .reason
            .contains("min or max"));
        assert!(parse_cache_from("type=inline")
            .unwrap_err()
            .reason
            .contains("export-only"));
        assert!(parse_cache_from("type=local")
            .unwrap_err()
            .reason
            .contains("src="));
        assert!(parse_cache_to("type=local,src=x")
            .unwrap_err()
            .reason
            .contains("dest="));
        assert!(parse_cache_to("type=s4,ref=x")
            .unwrap_err()
            .reason
            .contains("unknown cache type"));
        let e = parse_cache_from("ref=x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --cache-from \"ref=x\": missing type=, e.g. --cache-from type=registry,ref=registry.example.com/app:cache"
        );
    }

    #[test]
    fn build_contexts() {
        let c = parse_build_context("shared=../shared").unwrap();
        assert_eq!(c.name, "shared");
        assert_eq!(c.source, ContextSource::Local("../shared".into()));
        let c = parse_build_context("docker.io/library/alpine:latest=docker-image://alpine:3.20")
            .unwrap();
        assert_eq!(c.name, "alpine");
        assert_eq!(c.source, ContextSource::DockerImage("alpine:3.20".into()));
        assert_eq!(
            parse_build_context("base=target:pybase").unwrap().source,
            ContextSource::Target("pybase".into())
        );
        assert_eq!(
            parse_build_context("x=oci-layout://./l:1").unwrap().source,
            ContextSource::OciLayout(OciLayoutRef {
                path: PathBuf::from("./l"),
                tag: Some("1".into()),
                digest: None
            })
        );
        for url in [
            "https://e.com/a.tar",
            "git@github.com:o/r.git",
            "github.com/o/r",
        ] {
            assert_eq!(
                parse_build_context(&format!("x={url}")).unwrap().source,
                ContextSource::Remote(url.into())
            );
        }
        assert!(parse_build_context("noequals")
            .unwrap_err()
            .reason
            .contains("NAME=VALUE"));
        assert!(parse_build_context("Upper=dir")
            .unwrap_err()
            .reason
            .contains("'U'"));
        assert!(parse_build_context("x=").is_err());
        let e = parse_build_context("x=docker-image://").unwrap_err();
        assert_eq!(e.example, "x=docker-image://alpine:3.20");
    }

    #[test]
    fn secrets_follow_buildx() {
        let s = |v| parse_secret(v).unwrap();
        assert_eq!(
            s("id=a,src=/p"),
            SecretSpec {
                id: "a".into(),
                source: SecretSource::File("/p".into())
            }
        );
        assert_eq!(s("id=a,source=/p").source, SecretSource::File("/p".into()));
        assert_eq!(
            s("id=a,env=TOKEN").source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            s("id=a,type=env,src=TOKEN").source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(s("id=a,type=env").source, SecretSource::Env("a".into()));
        assert_eq!(s("id=a,type=file").source, SecretSource::File("a".into()));
        assert_eq!(s("id=a").source, SecretSource::FromId);
        assert_eq!(s("\"id=a,b\",src=x").id, "a,b");

        assert!(parse_secret("src=/p")
            .unwrap_err()
            .reason
            .contains("missing id="));
        assert!(parse_secret("id=a,type=vault")
            .unwrap_err()
            .reason
            .contains("file or env"));
        assert!(parse_secret("id=a,target=/x")
            .unwrap_err()
            .reason
            .contains("unknown key"));
        assert!(parse_secret("id=a,src=x,env=Y")
            .unwrap_err()
            .reason
            .contains("not both"));
        assert!(parse_secret("a").unwrap_err().reason.contains("KEY=VALUE"));
    }

    #[test]
    fn ssh_specs() {
        assert_eq!(
            parse_ssh("default").unwrap(),
            SshSpec {
                id: "default".into(),
                paths: vec![]
            }
        );
        assert_eq!(
            parse_ssh("gh=/a.sock,/b").unwrap(),
            SshSpec {
                id: "gh".into(),
                paths: vec!["/a.sock".into(), "/b".into()]
            }
        );
        assert_eq!(parse_ssh("=/s").unwrap().id, "default");
        assert!(parse_ssh("x=")
            .unwrap_err()
            .reason
            .contains("SSH_AUTH_SOCK"));
        assert!(parse_ssh("a b").is_err());
    }

    #[test]
    fn add_hosts() {
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            AddHost {
                host: "db".into(),
                ip: "10.0.0.5".into()
            }
        );
        assert_eq!(parse_add_host("db=::1").unwrap().ip, "::1");
        assert_eq!(parse_add_host("db:[::1]").unwrap().ip, "::1");
        assert_eq!(
            parse_add_host("gw=host-gateway").unwrap().ip,
            "host-gateway"
        );
        assert!(parse_add_host("db").unwrap_err().reason.contains("HOST:IP"));
        assert!(parse_add_host("db:notanip")
            .unwrap_err()
            .reason
            .contains("not an IP"));
        assert!(parse_add_host(":1.2.3.4").is_err());
    }

    #[test]
    fn platforms_networks_progress() {
        assert_eq!(
            parse_platforms("linux/amd64, linux/arm64/v8,").unwrap(),
            vec!["linux/amd64", "linux/arm64/v8"]
        );
        assert_eq!(parse_platforms("local").unwrap(), vec!["local"]);
        assert!(parse_platforms("amd64")
            .unwrap_err()
            .reason
            .contains("OS/ARCH"));
        assert!(parse_platforms(",").is_err());

        assert_eq!(parse_network("host").unwrap(), Network::Host);
        assert_eq!(parse_network("none").unwrap(), Network::None);
        assert_eq!(parse_network("default").unwrap(), Network::Default);
        assert!(parse_network("bridge").is_err());

        assert_eq!(parse_progress("rawjson").unwrap(), ProgressMode::RawJson);
        assert_eq!(parse_progress("auto").unwrap(), ProgressMode::Auto);
        let e = parse_progress("fancy").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --progress \"fancy\": expected auto, tty, plain or rawjson, e.g. --progress plain"
        );
    }

    #[test]
    fn ulimits_and_shm() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!(u.to_string(), "nofile=1024:2048");
        assert_eq!(parse_ulimit("nproc=10").unwrap().to_string(), "nproc=10:10");
        assert_eq!(parse_ulimit("core=-1").unwrap().hard, -1);
        assert!(parse_ulimit("nofile=2:1")
            .unwrap_err()
            .reason
            .contains("above"));
        assert!(parse_ulimit("files=1")
            .unwrap_err()
            .reason
            .contains("unknown limit"));
        assert!(parse_ulimit("nofile=x").is_err());

        assert_eq!(parse_shm_size("1024").unwrap(), 1024);
        assert_eq!(parse_shm_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_shm_size("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_shm_size("1.5k").unwrap(), 1536);
        assert!(parse_shm_size("lots").is_err());
        assert!(parse_shm_size("5q").is_err());
    }

    #[test]
    fn call_methods_parse_as_buildx_names_them() {
        assert_eq!(parse_call("build").unwrap(), None);
        assert_eq!(parse_call("").unwrap(), None);
        let c = parse_call("check").unwrap().unwrap();
        assert_eq!(
            (c.name.as_str(), c.json, c.ignore_status),
            ("lint", false, false)
        );
        assert_eq!(c.shown_name(), "check");
        let c = parse_call("outline,format=json,ignorestatus=true")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.name.as_str(), c.json, c.ignore_status),
            ("outline", true, true)
        );
        assert_eq!(parse_call("lint").unwrap().unwrap().name, "lint");
        for bad in [
            "nope",
            "check,outline",
            "check,format=yaml",
            "check,x=1",
            "check,ignorestatus=maybe",
        ] {
            let e = parse_call(bad).unwrap_err().to_string();
            assert!(e.contains("--call") && e.contains("e.g."), "{bad}: {e}");
        }
    }
}
