//! buildx bake files — `docker-bake.hcl`, `docker-bake.json` and their `.override` files — as a
//! project, evaluated and merged the way `docker buildx bake` does (buildx `bake/bake.go` and
//! `bake/hclparser`), on top of the targets of any compose files given with them.
//!
//! Rules followed here, all buildx's:
//! - Files merge in order: a later `variable`, `function` or top-level attribute replaces an
//!   earlier one of the same name; `target` blocks of the same name (in one file or several,
//!   and a compose service of that name) merge attribute by attribute (see [`Raw::merge`]); a
//!   later `group` replaces an earlier one. Compose files always come first.
//! - `variable "X"` takes its value from the environment variable `X` when set (typed
//!   variables parse it as their type: CSV for lists, sets, tuples and maps, `X_JSON` as
//!   JSON); a top-level attribute `X = ...` is a variable the environment cannot override;
//!   `BAKE_CMD_CONTEXT` and `BAKE_LOCAL_PLATFORM` are built in.
//! - `matrix` forks a target into one target per combination, named by `name`; a group with
//!   the block's own label then lists them. `inherits` merges the named targets (each resolved
//!   with its own parents) in order, then the target's own attributes.
//! - Relative paths (`context`, local `contexts`, `secret` `src`, `ssh` paths, local cache and
//!   output `dest`/`src`) are relative to the current directory, not to the file; `dockerfile`
//!   is relative to the context.
//!
//! Where bk-build differs, it says so: a missing context or Dockerfile, a remote context and `call` other
//! than `build` make only that target unavailable (it fails when built, as compose services
//! do); an `inherits` cycle is an error (buildx silently cuts it), and so is a name used by
//! both a group and a target. The expression language lives in [`eval`] and [`funcs`].

mod eval;
mod funcs;
mod value;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{BlockLabel, Body, Structure};
use hcl_edit::Span;

use self::eval::{EvalError, Evaluator, Host, UserFunc};
use self::value::{Type, Value};
use super::{
    context_source_string, normalize, option_invalid, suggest, ContextSource, OptionList, Project,
    ProjectError, SourceFile, Target,
};

/// The syntax of one bake file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Syntax {
    Hcl,
    Json,
}

impl Syntax {
    /// By extension (`.hcl`, `.json`), as buildx decides.
    pub(super) fn of(path: &Path) -> Option<Syntax> {
        match path.extension()?.to_str()? {
            "hcl" => Some(Syntax::Hcl),
            "json" => Some(Syntax::Json),
            _ => None,
        }
    }

    /// For a file without a telling extension: HCL if it parses as HCL, JSON if it is a JSON
    /// object (buildx tries the same two after compose).
    pub(super) fn sniff(text: &str) -> Option<Syntax> {
        if text.trim_start().starts_with('{') {
            if serde_json::from_str::<serde_json::Value>(text).is_ok() {
                return Some(Syntax::Json);
            }
            return None;
        }
        let body = hcl_edit::parser::parse_body(text).ok()?;
        let is_bake = body.iter().any(|s| match s {
            Structure::Block(b) => {
                matches!(
                    b.ident.as_str(),
                    "target" | "group" | "variable" | "function"
                )
            }
            Structure::Attribute(_) => false,
        });
        is_bake.then_some(Syntax::Hcl)
    }
}

/// File names `docker buildx bake` reads without `-f`, after the compose ones, in order.
pub(super) const DEFAULT_FILES: &[&str] = &[
    "docker-bake.json",
    "docker-bake.hcl",
    "docker-bake.override.json",
    "docker-bake.override.hcl",
];

/// Built-in variables (buildx `commands/bake.go`).
const BAKE_CMD_CONTEXT: &str = "BAKE_CMD_CONTEXT";
const BAKE_LOCAL_PLATFORM: &str = "BAKE_LOCAL_PLATFORM";

/// Target attributes, as buildx's `Target` struct names them.
const TARGET_KEYS: &[&str] = &[
    "annotations",
    "args",
    "attest",
    "cache-from",
    "cache-to",
    "call",
    "context",
    "contexts",
    "description",
    "dockerfile",
    "dockerfile-inline",
    "entitlements",
    "extra-hosts",
    "inherits",
    "labels",
    "matrix",
    "name",
    "network",
    "no-cache",
    "no-cache-filter",
    "output",
    "platforms",
    "pull",
    "secret",
    "shm-size",
    "ssh",
    "tags",
    "target",
    "ulimits",
];
const STRING_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile-inline",
    "target",
    "call",
    "network",
    "shm-size",
    "description",
];
const MAP_KEYS: &[&str] = &["args", "labels", "contexts", "extra-hosts"];
const LIST_KEYS: &[&str] = &[
    "tags",
    "platforms",
    "cache-from",
    "cache-to",
    "secret",
    "ssh",
    "output",
    "attest",
    "annotations",
    "entitlements",
    "no-cache-filter",
    "ulimits",
    "inherits",
];
/// List attributes whose elements may also be written as objects (`{type = "registry", ref
/// = "..."}`), as buildx accepts since 0.18.
const OBJECT_LIST_KEYS: &[&str] = &["cache-from", "cache-to", "secret", "output", "attest"];
const BOOL_KEYS: &[&str] = &["pull", "no-cache"];

/// Most targets one `matrix` may make: far beyond real use, small enough that a typo cannot
/// exhaust memory.
const MAX_MATRIX: usize = 10_000;

/// buildx's `validTargetNameChars`.
fn valid_bake_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// ---------------------------------------------------------------------------------------------
// Parsed files: blocks and attributes with their places
// ---------------------------------------------------------------------------------------------

enum Doc {
    Hcl(Body),
    Json(Expression),
}

/// An attribute as written: its expression and where.
struct Attr<'a> {
    name: String,
    expr: &'a Expression,
    file: usize,
    /// Byte offset of the attribute (its name) in the file.
    at: usize,
}

/// A block (`target "x" { ... }`) of either syntax.
struct BlockDef<'a> {
    kind: String,
    label: String,
    attrs: Vec<Attr<'a>>,
    blocks: Vec<BlockDef<'a>>,
    file: usize,
    at: usize,
}

impl<'a> BlockDef<'a> {
    fn attr(&self, name: &str) -> Option<&Attr<'a>> {
        self.attrs.iter().rev().find(|a| a.name == name)
    }
}

/// One loader error before it is tied to a file's text.
struct Fail {
    file: usize,
    at: Option<usize>,
    /// The attribute's own offset, for errors inside an expression whose spans do not point
    /// into the file (templates in JSON strings).
    fallback: Option<usize>,
    key: String,
    problem: String,
    fix: String,
}

fn fail(
    file: usize,
    at: Option<usize>,
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Fail {
    Fail {
        file,
        at,
        fallback: None,
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn parse_doc(f: &SourceFile, syntax: Syntax, idx: usize) -> Result<Doc, Fail> {
    match syntax {
        Syntax::Hcl => hcl_edit::parser::parse_body(&f.text)
            .map(Doc::Hcl)
            .map_err(|e| {
                fail(
                idx,
                Some(e.location().offset()),
                "",
                format!("not valid HCL: {}", e.message()),
                "correct the HCL syntax at that line (attributes are NAME = VALUE, one per line)",
            )
            }),
        Syntax::Json => {
            let v: serde_json::Value = serde_json::from_str(&f.text).map_err(|e| {
                let at = f
                    .text
                    .split_inclusive('\n')
                    .take(e.line().saturating_sub(1))
                    .map(str::len)
                    .sum::<usize>();
                fail(
                    idx,
                    Some(at),
                    "",
                    format!("not valid JSON: {e}"),
                    "correct the JSON syntax at that line",
                )
            })?;
            json_to_expr(&v).map(Doc::Json).map_err(|(path, m)| {
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                fail(
                    idx,
                    Some(json_offset(&f.text, &parts)),
                    path.join("."),
                    m,
                    "write ${...} and %{...} as in HCL; a literal ${ is written $${",
                )
            })
        }
    }
}

/// A JSON value as an HCL expression, following the HCL JSON specification: every string is
/// a template (so `"${TAG}"` interpolates). Errors carry the key path of the bad string.
fn json_to_expr(v: &serde_json::Value) -> Result<Expression, (Vec<String>, String)> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Expression::null(),
        J::Bool(b) => Expression::from(*b),
        J::Number(n) => Expression::from(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => {
            let t = hcl_edit::parser::parse_template(s).map_err(|e| {
                (
                    Vec::new(),
                    format!("{s:?} is not a valid template: {}", e.message()),
                )
            })?;
            let elements: Vec<hcl_edit::template::Element> = t.iter().cloned().collect();
            Expression::from(hcl_edit::template::StringTemplate::from(elements))
        }
        J::Array(a) => {
            let mut out = hcl_edit::expr::Array::new();
            for (i, x) in a.iter().enumerate() {
                out.push(json_to_expr(x).map_err(|(mut p, m)| {
                    p.insert(0, i.to_string());
                    (p, m)
                })?);
            }
            Expression::from(out)
        }
        J::Object(o) => {
            let mut out = hcl_edit::expr::Object::new();
            for (k, x) in o {
                let e = json_to_expr(x).map_err(|(mut p, m)| {
                    p.insert(0, k.clone());
                    (p, m)
                })?;
                out.insert(
                    ObjectKey::from(Expression::from(k.as_str())),
                    hcl_edit::expr::ObjectValue::new(e),
                );
            }
            Expression::from(out)
        }
    })
}

/// Where the key `path` (`["target", "app", "tags"]`) is written in a JSON text: each key
/// searched after the previous one. Good enough to name the line of an error.
fn json_offset(text: &str, path: &[&str]) -> usize {
    let mut pos = 0;
    let mut found = 0;
    for key in path {
        let quoted = serde_json::to_string(key).unwrap_or_default();
        let mut from = pos;
        loop {
            let Some(i) = text[from..].find(&quoted) else {
                return found;
            };
            let at = from + i;
            let rest = text[at + quoted.len()..].trim_start();
            if rest.starts_with(':') {
                found = at;
                pos = at + quoted.len();
                break;
            }
            from = at + quoted.len();
        }
    }
    found
}

fn span_start(e: &impl Span) -> usize {
    e.span().map_or(0, |r| r.start)
}

/// Blocks and top-level attributes of one document.
fn collect<'a>(
    doc: &'a Doc,
    text: &str,
    file: usize,
    blocks: &mut Vec<BlockDef<'a>>,
    attrs: &mut Vec<Attr<'a>>,
) -> Result<(), Fail> {
    match doc {
        Doc::Hcl(body) => {
            for s in body.iter() {
                match s {
                    Structure::Attribute(a) => attrs.push(Attr {
                        name: a.key.as_str().to_string(),
                        expr: &a.value,
                        file,
                        at: span_start(a),
                    }),
                    Structure::Block(b) => blocks.push(hcl_block(b, file)?),
                }
            }
        }
        Doc::Json(expr) => {
            let Expression::Object(o) = expr else {
                return Err(fail(
                    file,
                    Some(span_start(expr)),
                    "",
                    "a JSON bake file must be an object at the top",
                    "write {\"target\": {\"NAME\": {...}}}",
                ));
            };
            for (k, v) in o.iter() {
                let key = object_key(k);
                match key.as_str() {
                    "target" | "group" | "variable" | "function" => {
                        json_blocks(&key, v.expr(), text, file, blocks)?
                    }
                    _ => attrs.push(Attr {
                        at: json_offset(text, &[&key]),
                        name: key,
                        expr: v.expr(),
                        file,
                    }),
                }
            }
        }
    }
    Ok(())
}

fn object_key(k: &ObjectKey) -> String {
    match k {
        ObjectKey::Ident(i) => i.as_str().to_string(),
        ObjectKey::Expression(e) => {
            literal_string(e).unwrap_or_else(|| e.to_string().trim().trim_matches('"').to_string())
        }
    }
}

/// A string with no interpolation: a plain HCL string, or a JSON string (a template of
/// literals only).
fn literal_string(e: &Expression) -> Option<String> {
    match e {
        Expression::String(s) => Some(s.value().clone()),
        Expression::StringTemplate(t) => t
            .iter()
            .map(|el| el.as_literal().map(|l| l.value().clone()))
            .collect(),
        _ => None,
    }
}

fn hcl_block(b: &hcl_edit::structure::Block, file: usize) -> Result<BlockDef<'_>, Fail> {
    let kind = b.ident.as_str().to_string();
    let labels: Vec<String> = b
        .labels
        .iter()
        .map(|l| match l {
            BlockLabel::Ident(i) => i.as_str().to_string(),
            BlockLabel::String(s) => s.value().clone(),
        })
        .collect();
    let at = span_start(b);
    let nested = kind == "validation";
    let label = match (nested, labels.as_slice()) {
        (true, []) => String::new(),
        (false, [one]) => one.clone(),
        _ => {
            return Err(fail(
                file,
                Some(at),
                kind.clone(),
                format!(
                    "a {kind} block takes {} label, found {}",
                    if nested { "no" } else { "one" },
                    labels.len()
                ),
                format!("write {kind} \"NAME\" {{ ... }}"),
            ))
        }
    };
    let mut def = BlockDef {
        kind,
        label,
        attrs: Vec::new(),
        blocks: Vec::new(),
        file,
        at,
    };
    for s in b.body.iter() {
        match s {
            Structure::Attribute(a) => def.attrs.push(Attr {
                name: a.key.as_str().to_string(),
                expr: &a.value,
                file,
                at: span_start(a),
            }),
            Structure::Block(inner) => def.blocks.push(hcl_block(inner, file)?),
        }
    }
    Ok(def)
}

/// `"target": {"NAME": {...}}` (or `{"NAME": [{...}, {...}]}` for repeated blocks).
fn json_blocks<'a>(
    kind: &str,
    v: &'a Expression,
    text: &str,
    file: usize,
    out: &mut Vec<BlockDef<'a>>,
) -> Result<(), Fail> {
    let Expression::Object(labels) = v else {
        return Err(fail(
            file,
            Some(json_offset(text, &[kind])),
            kind,
            format!("\"{kind}\" must be an object of {kind}s by name"),
            format!("write \"{kind}\": {{\"NAME\": {{...}}}}"),
        ));
    };
    for (k, body) in labels.iter() {
        let label = object_key(k);
        let bodies: Vec<&Expression> = match body.expr() {
            Expression::Array(a) => a.iter().collect(),
            e => vec![e],
        };
        for b in bodies {
            out.push(json_body(kind, label.clone(), b, text, file)?);
        }
    }
    Ok(())
}

fn json_body<'a>(
    kind: &str,
    label: String,
    b: &'a Expression,
    text: &str,
    file: usize,
) -> Result<BlockDef<'a>, Fail> {
    let label_copy = label.clone();
    let path: Vec<&str> = if kind == "validation" {
        vec!["validation"]
    } else {
        vec![kind, label_copy.as_str()]
    };
    let block_at = json_offset(text, &path);
    let Expression::Object(o) = b else {
        return Err(fail(
            file,
            Some(block_at),
            format!("{kind}.{label}"),
            format!("a {kind} must be an object of attributes"),
            format!("write \"{label}\": {{\"ATTRIBUTE\": VALUE}}"),
        ));
    };
    let mut def = BlockDef {
        kind: kind.to_string(),
        label,
        attrs: Vec::new(),
        blocks: Vec::new(),
        file,
        at: block_at,
    };
    for (k, v) in o.iter() {
        let name = object_key(k);
        let mut attr_path = path.clone();
        attr_path.push(&name);
        let at = json_offset(text, &attr_path);
        if kind == "variable" && name == "validation" {
            let items: Vec<&Expression> = match v.expr() {
                Expression::Array(a) => a.iter().collect(),
                e => vec![e],
            };
            for item in items {
                def.blocks
                    .push(json_body("validation", String::new(), item, text, file)?);
            }
            continue;
        }
        def.attrs.push(Attr {
            name,
            expr: v.expr(),
            file,
            at,
        });
    }
    Ok(def)
}

// ---------------------------------------------------------------------------------------------
// Globals: variables, top-level attributes, functions, block references
// ---------------------------------------------------------------------------------------------

struct FuncDef<'a> {
    params: Vec<String>,
    variadic: Option<String>,
    result: &'a Expression,
    file: usize,
    /// Offset of `result`.
    at: usize,
}

/// One target a block produces (a block with a `matrix` produces several).
struct Instance<'a> {
    block: &'a BlockDef<'a>,
    name: String,
    locals: Vec<(String, Value)>,
}

struct Globals<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Each file's text when it is HCL (heredocs are re-read from it).
    sources: Vec<Option<&'a str>>,
    builtins: BTreeMap<&'static str, String>,
    variables: BTreeMap<String, &'a BlockDef<'a>>,
    attrs: BTreeMap<String, &'a Attr<'a>>,
    functions: BTreeMap<String, FuncDef<'a>>,
    values: RefCell<BTreeMap<String, Value>>,
    resolving: RefCell<Vec<String>>,
    /// Set once every block's names are known; `target.NAME.ATTR` needs them.
    instances: RefCell<Option<Vec<(String, Instance<'a>)>>>,
    block_values: RefCell<BTreeMap<(usize, String), Value>>,
    block_resolving: RefCell<Vec<(usize, String)>>,
}

fn eval_err(file: usize, at: usize, message: impl Into<String>) -> EvalError {
    EvalError {
        file,
        span: Some(at..at),
        message: message.into(),
    }
}

impl<'a> Globals<'a> {
    fn eval_global(&self, expr: &Expression, file: usize) -> Result<Value, EvalError> {
        Evaluator::new(self, file, Vec::new()).eval(expr)
    }

    /// A variable's value as buildx's `resolveValue` computes it.
    fn resolve(&self, name: &str) -> Result<Option<Value>, EvalError> {
        if let Some(v) = self.values.borrow().get(name) {
            return Ok(Some(v.clone()));
        }
        if let Some(v) = self.builtins.get(name) {
            return Ok(Some(Value::String(v.clone())));
        }
        let (file, at) = if let Some(a) = self.attrs.get(name) {
            (a.file, a.at)
        } else if let Some(b) = self.variables.get(name) {
            (b.file, b.at)
        } else {
            return Ok(None);
        };
        if self.resolving.borrow().iter().any(|n| n == name) {
            let chain = self.resolving.borrow().join(" -> ");
            return Err(eval_err(
                file,
                at,
                format!("variable cycle: {chain} -> {name}"),
            ));
        }
        self.resolving.borrow_mut().push(name.to_string());
        let r = self.compute(name);
        self.resolving.borrow_mut().pop();
        let v = r?;
        self.values.borrow_mut().insert(name.to_string(), v.clone());
        Ok(Some(v))
    }

    fn compute(&self, name: &str) -> Result<Value, EvalError> {
        if let Some(a) = self.attrs.get(name) {
            return self.eval_global(a.expr, a.file);
        }
        let var = self.variables[name];
        let (ty, typed) = match var.attr("type") {
            Some(t) => (
                parse_type(t.expr).map_err(|m| eval_err(t.file, t.at, m))?,
                true,
            ),
            None => (Type::Any, false),
        };
        let default = var.attr("default");
        let (env_value, json) = self.env_override(name, typed);
        if default.is_none() && env_value.is_none() && !typed {
            return Ok(Value::str(""));
        }
        let mut v = Value::Null;
        if let Some(d) = default {
            v = self.eval_global(d.expr, d.file)?;
            v = ty.convert(v).map_err(|m| {
                eval_err(
                    d.file,
                    d.at,
                    format!("the default of variable {name} is not a {}: {m}", ty.name()),
                )
            })?;
        }
        let Some(raw) = env_value else {
            return Ok(v);
        };
        let from = if json {
            format!("{name}_JSON")
        } else {
            name.to_string()
        };
        let bad = |m: String| {
            eval_err(
                var.file,
                var.at,
                format!("environment variable {from}={raw:?} does not fit variable {name}: {m}"),
            )
        };
        let csv_type = matches!(
            ty,
            Type::List(_) | Type::Set(_) | Type::Tuple(_) | Type::Map(_)
        );
        if typed && json {
            let j: serde_json::Value =
                serde_json::from_str(&raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            return ty.convert(Value::from_json(&j)).map_err(bad);
        }
        if csv_type {
            return from_csv(&raw, &ty).map_err(bad);
        }
        if typed && ty.is_primitive() {
            return convert_primitive(&raw, &ty).map_err(bad);
        }
        if typed {
            return Err(bad(format!(
                "a {} variable can only be set from the environment as JSON, in {name}_JSON",
                ty.name()
            )));
        }
        match &v {
            Value::Null => Ok(Value::String(raw)),
            Value::String(_) => Ok(Value::String(raw)),
            Value::Bool(_) => convert_primitive(&raw, &Type::Bool).map_err(bad),
            Value::Number(_) => convert_primitive(&raw, &Type::Number).map_err(bad),
            other => Err(bad(format!(
                "its default is a {}; give the variable a type (e.g. type = list(string)) to set it from the environment",
                other.type_name()
            ))),
        }
    }

    /// buildx's `valueHasOverride`: `NAME`, or `NAME_JSON` (preferred for typed variables).
    fn env_override(&self, name: &str, favor_json: bool) -> (Option<String>, bool) {
        let plain = (self.env)(name);
        if plain.is_none() || favor_json {
            let json_name = format!("{name}_JSON");
            let shadowed = self.variables.contains_key(&json_name)
                || self.builtins.contains_key(json_name.as_str());
            if !shadowed {
                if let Some(j) = (self.env)(&json_name) {
                    return (Some(j), true);
                }
            }
        }
        (plain, false)
    }
}

impl<'a> Host for Globals<'a> {
    fn variable(&self, name: &str) -> Result<Option<Value>, EvalError> {
        self.resolve(name)
    }

    fn variable_names(&self) -> Vec<String> {
        self.variables
            .keys()
            .chain(self.attrs.keys())
            .cloned()
            .chain(self.builtins.keys().map(|k| k.to_string()))
            .collect()
    }

    fn block_attr(&self, kind: &str, name: &str, attr: &str) -> Option<Result<Value, EvalError>> {
        if kind != "target" && kind != "group" {
            return None;
        }
        let instances = self.instances.borrow();
        let Some(list) = instances.as_ref() else {
            return Some(Err(EvalError {
                file: 0,
                span: None,
                message: format!("{kind}.{name}.{attr} cannot be used in a matrix or name"),
            }));
        };
        // The last block of that name wins, as in buildx's evaluation context.
        let Some(idx) = list.iter().rposition(|(k, i)| k == kind && i.name == name) else {
            let names: Vec<&str> = list
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, i)| i.name.as_str())
                .collect();
            let hint = suggest(name, names.iter().copied())
                .map(|s| format!("; did you mean {s}?"))
                .unwrap_or_default();
            return Some(Err(EvalError {
                file: 0,
                span: None,
                message: format!("there is no {kind} named {name:?}{hint}"),
            }));
        };
        let key = (idx, attr.to_string());
        if let Some(v) = self.block_values.borrow().get(&key) {
            return Some(Ok(v.clone()));
        }
        let (block, locals): (&'a BlockDef<'a>, Vec<(String, Value)>) =
            (list[idx].1.block, list[idx].1.locals.clone());
        drop(instances);
        let Some(a) = block.attr(attr) else {
            return Some(Ok(Value::Null));
        };
        if self.block_resolving.borrow().contains(&key) {
            return Some(Err(eval_err(
                a.file,
                a.at,
                format!("reference cycle through {kind}.{name}.{attr}"),
            )));
        }
        self.block_resolving.borrow_mut().push(key.clone());
        let r = Evaluator::new(self, a.file, locals).eval(a.expr);
        self.block_resolving.borrow_mut().pop();
        if let Ok(v) = &r {
            self.block_values.borrow_mut().insert(key, v.clone());
        }
        Some(r)
    }

    fn function(&self, name: &str) -> Option<UserFunc<'_>> {
        self.functions.get(name).map(|f| UserFunc {
            params: f.params.clone(),
            variadic: f.variadic.clone(),
            result: f.result,
            file: f.file,
        })
    }

    fn function_names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    fn source(&self, file: usize) -> Option<&str> {
        self.sources.get(file).copied().flatten()
    }
}

/// A type constraint expression: `string`, `list(string)`, `map(number)`, `tuple([...])`,
/// `object({...})`, `any`; in JSON files written as a string.
fn parse_type(e: &Expression) -> Result<Type, String> {
    let bad = |what: &str| {
        format!("{what} is not a type (use string, number, bool, list(T), set(T), map(T), tuple([...]), object({{...}}) or any)")
    };
    if let Some(s) = literal_string(e) {
        let inner = hcl_edit::parser::parse_expr(&s).map_err(|_| bad(&s))?;
        return parse_type(&inner);
    }
    match e {
        Expression::Variable(v) => match v.as_str() {
            "string" => Ok(Type::String),
            "number" => Ok(Type::Number),
            "bool" => Ok(Type::Bool),
            "any" => Ok(Type::Any),
            other => Err(bad(other)),
        },
        Expression::FuncCall(f) => {
            let name = f.name.name.as_str();
            let args: Vec<&Expression> = f.args.iter().collect();
            match (name, args.as_slice()) {
                ("list", [t]) => Ok(Type::List(Box::new(parse_type(t)?))),
                ("set", [t]) => Ok(Type::Set(Box::new(parse_type(t)?))),
                ("map", [t]) => Ok(Type::Map(Box::new(parse_type(t)?))),
                ("optional", [t]) => parse_type(t),
                ("tuple", [Expression::Array(a)]) => a
                    .iter()
                    .map(parse_type)
                    .collect::<Result<_, _>>()
                    .map(Type::Tuple),
                ("object", [Expression::Object(o)]) => o
                    .iter()
                    .map(|(k, v)| Ok((object_key(k), parse_type(v.expr())?)))
                    .collect::<Result<BTreeMap<_, _>, String>>()
                    .map(Type::Object),
                _ => Err(bad(&format!("{name}(...)"))),
            }
        }
        other => Err(bad(other.to_string().trim())),
    }
}

/// buildx's `convertPrimitive`: Go's `strconv.ParseBool` / `ParseFloat` rules.
fn convert_primitive(raw: &str, ty: &Type) -> Result<Value, String> {
    match ty {
        Type::Bool => match raw {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a bool")),
        },
        // buildx converts with Go's strconv, which takes no surrounding spaces.
        Type::Number => value::parse_number(raw)
            .filter(|_| raw.trim() == raw)
            .map(Value::Number)
            .ok_or_else(|| format!("{raw:?} is not a number")),
        _ => Ok(Value::str(raw)),
    }
}

/// buildx's `valueFromCSV`: lists, sets and tuples of primitives from `a,b,c`; maps from
/// `k1:v1,k2:v2`.
fn from_csv(raw: &str, ty: &Type) -> Result<Value, String> {
    // An empty value holds no CSV record (buildx: "failed to convert variable … from CSV"),
    // not one empty item: a CI job passing an unset variable must not build a `svc-` target.
    if raw.is_empty() {
        return Err(format!(
            "an empty value is not a {}; unset the variable to use its default, or write the value as JSON in the _JSON variable (e.g. [])",
            ty.name()
        ));
    }
    let fields = funcs::csv_fields(raw)?;
    let prim = |t: &Type| -> Result<(), String> {
        if t.is_primitive() {
            Ok(())
        } else {
            Err(format!(
                "{} cannot be written as CSV; use the _JSON variable",
                ty.name()
            ))
        }
    };
    match ty {
        Type::List(t) | Type::Set(t) => {
            prim(t)?;
            let items = fields
                .iter()
                .map(|f| convert_primitive(f, t))
                .collect::<Result<Vec<_>, _>>()?;
            ty.convert(Value::List(items))
        }
        Type::Tuple(ts) => {
            if ts.len() != fields.len() {
                return Err(format!(
                    "{} values are required, {} given",
                    ts.len(),
                    fields.len()
                ));
            }
            ts.iter()
                .zip(&fields)
                .map(|(t, f)| {
                    prim(t)?;
                    convert_primitive(f, t)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List)
        }
        Type::Map(t) => {
            prim(t)?;
            let mut m = BTreeMap::new();
            for f in &fields {
                let (k, v) = f
                    .split_once(':')
                    .ok_or_else(|| format!("{f:?} is not a KEY:VALUE pair"))?;
                m.insert(k.to_string(), convert_primitive(v, t)?);
            }
            Ok(Value::Object(m))
        }
        _ => Err(format!("{} cannot be written as CSV", ty.name())),
    }
}

/// buildx's `BAKE_LOCAL_PLATFORM` (containerd's default platform spec, formatted).
fn local_platform() -> String {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64/v8".to_string(),
        "arm" => "linux/arm/v7".to_string(),
        _ => crate::options::host_platform(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw targets: buildx's Target with unset fields, merged and inherited
// ---------------------------------------------------------------------------------------------

/// Where an attribute was last set: file index (in the loader's combined list) and byte
/// offset, `None` for compose targets (their loader already checked them).
type Origin = Option<(usize, usize)>;

#[derive(Debug, Clone, Default)]
struct Raw {
    strings: BTreeMap<&'static str, String>,
    /// `None` values are `null` map entries: they unset nothing and are left out.
    maps: BTreeMap<&'static str, BTreeMap<String, Option<String>>>,
    lists: BTreeMap<&'static str, Vec<String>>,
    bools: BTreeMap<&'static str, bool>,
    inherits: Vec<String>,
    origins: BTreeMap<&'static str, Origin>,
    /// Set for targets that came from a compose file: paths in it are already absolute.
    from_compose: bool,
    /// A compose target's reason it cannot be built, while no bake block changes where its
    /// context or Dockerfile is.
    unavailable: Option<String>,
}

fn static_key(k: &str) -> &'static str {
    TARGET_KEYS
        .iter()
        .copied()
        .find(|t| *t == k)
        .unwrap_or("unknown")
}

impl Raw {
    /// buildx's `Target.Merge`: scalars and replace-lists (`tags`, `platforms`, `cache-to`,
    /// `output`) are replaced when `o` sets them; maps merge entry by entry (null entries do
    /// not count, except in `contexts`); `secret`, `ssh`, `cache-from` merge without
    /// duplicates; `annotations`, `attest`, `entitlements`, `no-cache-filter`, `ulimits`
    /// append.
    fn merge(&mut self, o: &Raw) {
        for (k, v) in &o.strings {
            self.strings.insert(k, v.clone());
        }
        for (k, m) in &o.maps {
            let dst = self.maps.entry(k).or_default();
            for (mk, mv) in m {
                if mv.is_none() && *k != "contexts" {
                    continue;
                }
                dst.insert(mk.clone(), mv.clone());
            }
        }
        for (k, l) in &o.lists {
            match *k {
                "tags" | "platforms" | "cache-to" | "output" => {
                    self.lists.insert(k, l.clone());
                }
                "secret" | "ssh" => {
                    let dst = self.lists.entry(k).or_default();
                    dst.extend(l.iter().cloned());
                    *dst = dedupe_by_id(std::mem::take(dst), *k == "ssh");
                }
                "cache-from" => {
                    let dst = self.lists.entry(k).or_default();
                    for x in l {
                        if !dst.contains(x) {
                            dst.push(x.clone());
                        }
                    }
                }
                "inherits" => {}
                _ => self.lists.entry(k).or_default().extend(l.iter().cloned()),
            }
        }
        for (k, v) in &o.bools {
            self.bools.insert(k, *v);
        }
        for (k, v) in &o.origins {
            self.origins.insert(k, *v);
        }
        self.inherits.extend(o.inherits.iter().cloned());
        self.from_compose |= o.from_compose;
        let moves = ["context", "dockerfile", "dockerfile-inline"]
            .iter()
            .any(|k| o.strings.contains_key(k));
        if moves {
            self.unavailable = None;
        }
        if o.unavailable.is_some() {
            self.unavailable = o.unavailable.clone();
        }
    }
}

/// buildx keeps one secret (or ssh entry) per id, the later one in the earlier one's place.
fn dedupe_by_id(items: Vec<String>, ssh: bool) -> Vec<String> {
    let id_of = |s: &str| -> String {
        if ssh {
            s.split_once('=').map_or(s, |(id, _)| id).to_string()
        } else {
            s.split(',')
                .find_map(|f| f.strip_prefix("id="))
                .unwrap_or("")
                .to_string()
        }
    };
    let mut out: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for s in items {
        let id = id_of(&s);
        match ids.iter().position(|i| *i == id) {
            Some(p) => out[p] = s,
            None => {
                ids.push(id);
                out.push(s);
            }
        }
    }
    out
}

/// A compose target in raw form, so bake blocks of the same name merge into it.
fn raw_from_target(t: &Target) -> Raw {
    let mut r = Raw {
        from_compose: true,
        ..Raw::default()
    };
    r.strings
        .insert("context", t.context.to_string_lossy().into_owned());
    let df = t
        .dockerfile
        .strip_prefix(&t.context)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| t.dockerfile.clone());
    r.strings
        .insert("dockerfile", df.to_string_lossy().into_owned());
    if let Some(s) = &t.target {
        r.strings.insert("target", s.clone());
    }
    let some = |m: &BTreeMap<String, String>| -> BTreeMap<String, Option<String>> {
        m.iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect()
    };
    r.maps.insert("args", some(&t.args));
    r.maps.insert("labels", some(&t.labels));
    r.maps.insert(
        "contexts",
        t.contexts
            .iter()
            .map(|(k, v)| (k.clone(), Some(context_source_string(v))))
            .collect(),
    );
    fn shown<T: std::fmt::Display>(v: &[T]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }
    let mut outputs = shown(&t.outputs);
    if t.push {
        outputs.push("type=registry".into());
    }
    if t.load {
        outputs.push("type=docker".into());
    }
    for (k, v) in [
        ("tags", &t.tags),
        ("platforms", &t.platforms),
        ("secret", &shown(&t.secrets)),
        ("ssh", &shown(&t.ssh)),
        ("cache-from", &shown(&t.cache_from)),
        ("cache-to", &shown(&t.cache_to)),
        ("output", &outputs),
    ] {
        if !v.is_empty() {
            r.lists.insert(k, v.clone());
        }
    }
    if t.pull {
        r.bools.insert("pull", true);
    }
    if t.no_cache {
        r.bools.insert("no-cache", true);
    }
    if let Some(n) = t.network {
        r.strings.insert("network", n.to_string());
    }
    if let Some(n) = t.shm_size {
        r.strings.insert("shm-size", n.to_string());
    }
    if let Some(d) = &t.dockerfile_inline {
        r.strings.insert("dockerfile-inline", d.clone());
    }
    if !t.extra_hosts.is_empty() {
        r.maps.insert(
            "extra-hosts",
            t.extra_hosts
                .iter()
                .map(|h| (h.host.clone(), Some(h.ip.clone())))
                .collect(),
        );
    }
    for (k, v) in [
        ("ulimits", &shown(&t.ulimits)),
        ("attest", &shown(&t.attest)),
        ("annotations", &shown(&t.annotations)),
        ("entitlements", &t.entitlements),
        ("no-cache-filter", &t.no_cache_filter),
    ] {
        if !v.is_empty() {
            r.lists.insert(k, v.clone());
        }
    }
    r.unavailable = t.unavailable.clone();
    r
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads bake `files` (with their syntax) on top of `compose` (the project the compose files
/// given with them make, if any). `cwd` is what relative paths are relative to.
pub(super) fn load(
    compose: Option<Project>,
    files: &[(SourceFile, Syntax)],
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Project, ProjectError> {
    let to_err = |f: Fail| -> ProjectError {
        let (src, syntax) = &files[f.file];
        // Spans inside JSON strings are relative to the string: name the attribute's line.
        let at = match (syntax, f.fallback) {
            (Syntax::Json, Some(fb)) => Some(fb),
            _ => f.at.or(f.fallback),
        };
        ProjectError::Invalid {
            file: src.shown.clone(),
            line: at.map(|o| line_of(&src.text, o)),
            key: f.key,
            problem: f.problem,
            fix: f.fix,
        }
    };
    let docs: Vec<Doc> = files
        .iter()
        .enumerate()
        .map(|(i, (f, syntax))| parse_doc(f, *syntax, i))
        .collect::<Result<_, _>>()
        .map_err(to_err)?;
    let root = compose
        .as_ref()
        .map(|p| p.root.clone())
        .unwrap_or_else(|| files[0].0.dir.clone());
    Loader {
        files,
        env,
        cwd,
        root,
        warnings: Vec::new(),
    }
    .run(compose, &docs)
    .map_err(to_err)
}

struct Loader<'a> {
    files: &'a [(SourceFile, Syntax)],
    env: &'a dyn Fn(&str) -> Option<String>,
    cwd: &'a Path,
    /// The project root (where inline Dockerfiles are written).
    root: PathBuf,
    warnings: Vec<String>,
}

/// An evaluation error of the attribute at `at` (file, offset) named `key`.
fn from_eval(e: EvalError, key: &str, at: (usize, usize)) -> Fail {
    let mut f = fail(
        e.file,
        e.span.as_ref().map(|s| s.start),
        key,
        e.message,
        "correct the expression at that line",
    );
    if e.file == at.0 {
        f.fallback = Some(at.1);
    } else if e.span.is_none() {
        f.file = at.0;
        f.at = Some(at.1);
    }
    f
}

impl<'a> Loader<'a> {
    /// `f` as the complete message a deferred problem carries (file, line, key, fix).
    fn rendered(&self, f: Fail) -> String {
        let src = &self.files[f.file].0;
        ProjectError::Invalid {
            file: src.shown.clone(),
            line: f.at.map(|o| line_of(&src.text, o)),
            key: f.key,
            problem: f.problem,
            fix: f.fix,
        }
        .to_string()
    }

    fn warn(&mut self, file: usize, at: usize, key: &str, what: &str) {
        let src = &self.files[file].0;
        self.warnings.push(format!(
            "{}:{}: {key}: {what}",
            src.shown.display(),
            line_of(&src.text, at)
        ));
    }

    fn run(mut self, compose: Option<Project>, docs: &[Doc]) -> Result<Project, Fail> {
        let mut blocks = Vec::new();
        let mut attrs = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            collect(d, &self.files[i].0.text, i, &mut blocks, &mut attrs)?;
        }

        let mut builtins = BTreeMap::new();
        builtins.insert(BAKE_CMD_CONTEXT, "cwd://".to_string());
        builtins.insert(BAKE_LOCAL_PLATFORM, local_platform());
        let reserved = |n: &str| n == "target" || n == "group" || builtins.contains_key(n);

        let mut variables = BTreeMap::new();
        let mut functions = BTreeMap::new();
        for b in &blocks {
            match b.kind.as_str() {
                "variable" => {
                    if reserved(&b.label) {
                        self.warn(
                            b.file,
                            b.at,
                            &format!("variable.{}", b.label),
                            "this name is reserved and the variable is ignored, as buildx does",
                        );
                        continue;
                    }
                    for a in &b.attrs {
                        // buildx ignores other attributes of a variable (`sensitive`, ...):
                        // said, not refused, so such files keep working.
                        if !["default", "type", "description"].contains(&a.name.as_str()) {
                            self.warn(
                                a.file,
                                a.at,
                                &format!("variable.{}.{}", b.label, a.name),
                                "unknown variable attribute; ignored (a variable has default, type, description and validation)",
                            );
                        }
                    }
                    variables.insert(b.label.clone(), b);
                }
                "function" => {
                    let key = format!("function.{}", b.label);
                    let f = function_def(b, &key)?;
                    if !reserved(&b.label) {
                        functions.insert(b.label.clone(), f);
                    }
                }
                "target" | "group" => {}
                other => {
                    return Err(fail(
                        b.file,
                        Some(b.at),
                        other,
                        format!("unknown block type `{other}`"),
                        "a bake file has target, group, variable and function blocks",
                    ))
                }
            }
        }
        let mut top = BTreeMap::new();
        for a in &attrs {
            if reserved(&a.name) || a.name == "variable" || a.name == "function" {
                continue;
            }
            top.insert(a.name.clone(), a);
        }
        let g = Globals {
            env: self.env,
            sources: self
                .files
                .iter()
                .map(|(f, syntax)| (*syntax == Syntax::Hcl).then_some(f.text.as_str()))
                .collect(),
            builtins,
            variables,
            attrs: top,
            functions,
            values: RefCell::new(BTreeMap::new()),
            resolving: RefCell::new(Vec::new()),
            instances: RefCell::new(None),
            block_values: RefCell::new(BTreeMap::new()),
            block_resolving: RefCell::new(Vec::new()),
        };

        // Every variable is evaluated (and validated), used or not, as buildx does.
        let names: Vec<String> = g.variables.keys().chain(g.attrs.keys()).cloned().collect();
        for n in &names {
            let (key, at) = match (g.attrs.get(n), g.variables.get(n)) {
                (Some(a), _) => (n.clone(), (a.file, a.at)),
                (None, Some(b)) => (
                    format!("variable.{n}"),
                    b.attr("default").map_or((b.file, b.at), |d| (d.file, d.at)),
                ),
                (None, None) => continue,
            };
            g.resolve(n).map_err(|e| from_eval(e, &key, at))?;
        }
        for (n, b) in &g.variables {
            for v in &b.blocks {
                if v.kind != "validation" {
                    return Err(fail(v.file, Some(v.at), format!("variable.{n}"), format!("unknown block `{}` in a variable", v.kind), "a variable may contain validation { condition = ..., error_message = ... } blocks"));
                }
                validate(&g, n, v)?;
            }
        }
        // For `bake --list variables`: each variable's value in effect, declared type (as cty
        // names it: `list of string`) and description.
        let mut variables: Vec<super::Variable> = Vec::new();
        for (n, b) in &g.variables {
            let shown = |v: Value| v.to_str().unwrap_or_else(|_| v.to_json().to_string());
            let value = g.resolve(n).ok().flatten().map(shown);
            let type_name = b
                .attr("type")
                .and_then(|t| parse_type(t.expr).ok())
                .map(|t| t.name());
            let description = b
                .attr("description")
                .and_then(|d| g.eval_global(d.expr, d.file).ok())
                .filter(|v| *v != Value::Null)
                .map(shown);
            variables.push(super::Variable {
                name: n.clone(),
                value,
                type_name,
                description,
            });
        }
        // Function bodies are checked for unknown names only when called; buildx checks
        // them up front, so a broken function fails here too.
        for (name, f) in &g.functions {
            check_function(&g, name, f)?;
        }

        // Names of every target (matrix expanded) and group.
        let mut instances: Vec<(String, Instance)> = Vec::new();
        let mut renamed: Vec<(String, Vec<String>)> = Vec::new();
        for b in &blocks {
            match b.kind.as_str() {
                "target" => {
                    let list = expand(&g, b)?;
                    let names: Vec<String> = list.iter().map(|i| i.name.clone()).collect();
                    if names.len() != 1 || names[0] != b.label {
                        match renamed.iter_mut().find(|(l, _)| *l == b.label) {
                            Some((_, n)) => n.extend(names),
                            None => renamed.push((b.label.clone(), names)),
                        }
                    }
                    instances.extend(list.into_iter().map(|i| ("target".to_string(), i)));
                }
                "group" => {
                    let key = format!("group.{}", b.label);
                    if !valid_bake_name(&b.label) {
                        return Err(bad_name(b.file, b.at, &key, &b.label));
                    }
                    for a in &b.attrs {
                        match a.name.as_str() {
                            "targets" | "description" => {}
                            "matrix" | "name" => {
                                return Err(fail(
                                    a.file,
                                    Some(a.at),
                                    format!("{key}.{}", a.name),
                                    format!("{} is not supported for groups", a.name),
                                    "put the matrix on the targets",
                                ))
                            }
                            _ => return Err(unknown_key(a, &key, &["targets", "description"])),
                        }
                    }
                    instances.push((
                        "group".into(),
                        Instance {
                            block: b,
                            name: b.label.clone(),
                            locals: Vec::new(),
                        },
                    ));
                }
                _ => {}
            }
        }
        *g.instances.borrow_mut() = Some(instances);

        // Targets: compose ones first, then blocks in order, same names merged.
        let mut order: Vec<String> = Vec::new();
        let mut raws: BTreeMap<String, Raw> = BTreeMap::new();
        let mut groups: Vec<(String, Vec<String>, Origin)> = Vec::new();
        let compose_root = compose.as_ref().map(|p| p.root.clone());
        let compose_warnings = compose
            .as_ref()
            .map(|p| p.warnings.clone())
            .unwrap_or_default();
        if let Some(p) = &compose {
            for (name, t) in &p.targets {
                order.push(name.clone());
                raws.insert(name.clone(), raw_from_target(t));
            }
            // buildx's compose loader makes a `default` group of every service.
            if !p.targets.is_empty() {
                groups.push(("default".into(), p.targets.keys().cloned().collect(), None));
            }
            for (gname, members) in &p.groups {
                groups.retain(|(n, _, _)| n != gname);
                groups.push((gname.clone(), members.clone(), None));
            }
        }
        let count = g.instances.borrow().as_ref().map_or(0, Vec::len);
        for idx in 0..count {
            let (kind, name, block, locals) = {
                let list = g.instances.borrow();
                let (k, i) = &list.as_ref().expect("set above")[idx];
                (k.clone(), i.name.clone(), i.block, i.locals.clone())
            };
            let key = format!("{kind}.{name}");
            if kind == "group" {
                let members = match block.attr("targets") {
                    Some(a) => {
                        let v = Evaluator::new(&g, a.file, Vec::new())
                            .eval(a.expr)
                            .map_err(|e| from_eval(e, &format!("{key}.targets"), (a.file, a.at)))?;
                        string_list(&v).map_err(|m| {
                            fail(
                                a.file,
                                Some(a.at),
                                format!("{key}.targets"),
                                m,
                                "write targets = [\"NAME\", ...]",
                            )
                        })?
                    }
                    None => {
                        return Err(fail(
                            block.file,
                            Some(block.at),
                            &key,
                            "group has no `targets`",
                            "add targets = [\"NAME\", ...]",
                        ))
                    }
                };
                let at = block.attr("targets").map(|a| (a.file, a.at));
                groups.retain(|(n, _, _)| *n != name);
                groups.push((name, dedup(members), at));
                continue;
            }
            let raw = self.evaluate_target(&g, block, &name, locals)?;
            match raws.get_mut(&name) {
                Some(existing) => existing.merge(&raw),
                None => {
                    order.push(name.clone());
                    raws.insert(name, raw);
                }
            }
        }
        // A matrix target's label names the group of its forks, unless a group has the name.
        for (label, names) in renamed {
            if !groups.iter().any(|(n, _, _)| *n == label) {
                groups.push((label, dedup(names), None));
            }
        }

        // inherits, then the typed targets.
        let mut resolved: BTreeMap<String, Raw> = BTreeMap::new();
        for name in &order {
            let r = self.inherit(name, &raws, &mut Vec::new(), &mut resolved)?;
            resolved.insert(name.clone(), r);
        }
        let mut targets = BTreeMap::new();
        for name in &order {
            let t = self.typed_target(name, &resolved[name])?;
            targets.insert(name.clone(), t);
        }

        // Cross references, once every target is known.
        let target_names: Vec<&str> = targets.keys().map(String::as_str).collect();
        for (name, t) in &targets {
            for (cname, src) in &t.contexts {
                if let ContextSource::Target(other) = src {
                    let key = format!("target.{name}.contexts.{cname}");
                    let (file, at) = origin_of(&resolved[name], "contexts");
                    if other == name {
                        return Err(fail(
                            file,
                            at,
                            key,
                            format!("target {name} cannot use itself as a context"),
                            "point it at another target, a directory or docker-image://REF",
                        ));
                    }
                    if !targets.contains_key(other) {
                        let hint = suggest(other, target_names.iter().copied())
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        return Err(fail(
                            file,
                            at,
                            key,
                            format!("`target:{other}`: there is no target {other:?}"),
                            format!("{hint}targets: {}", target_names.join(", ")),
                        ));
                    }
                }
            }
        }
        let mut group_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut group_problems: BTreeMap<String, String> = BTreeMap::new();
        for (gname, members, origin) in &groups {
            let (file, at) = origin.map_or((0, None), |(f, a)| (f, Some(a)));
            if targets.contains_key(gname) {
                return Err(fail(
                    file,
                    at,
                    format!("group.{gname}"),
                    format!("`{gname}` is both a group and a target"),
                    "rename the group or the target so a name means one thing",
                ));
            }
            for m in members {
                if group_problems.contains_key(gname) {
                    break;
                }
                if !targets.contains_key(m) && !groups.iter().any(|(n, _, _)| n == m) {
                    let known: Vec<&str> = target_names
                        .iter()
                        .copied()
                        .chain(groups.iter().map(|(n, _, _)| n.as_str()))
                        .collect();
                    let hint = suggest(m, known.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    let problem = fail(
                        file,
                        at,
                        format!("group.{gname}.targets"),
                        format!("`{m}` is neither a target nor a group"),
                        format!("{hint}define target \"{m}\" or remove it"),
                    );
                    group_problems.insert(gname.clone(), self.rendered(problem));
                }
            }
            group_map.insert(gname.clone(), members.clone());
        }

        let first = &self.files[0].0;
        let mut warnings = compose_warnings;
        warnings.append(&mut self.warnings);
        Ok(Project {
            root: compose_root.unwrap_or_else(|| first.dir.clone()),
            files: compose
                .map(|p| p.files)
                .unwrap_or_default()
                .into_iter()
                .chain(self.files.iter().map(|(f, _)| f.abs.clone()))
                .collect(),
            targets,
            groups: group_map,
            default_must_exist: true,
            group_problems,
            warnings,
            variables,
            builders: Vec::new(),
        })
    }

    /// One target block (one matrix combination) evaluated into raw form.
    fn evaluate_target(
        &mut self,
        g: &Globals,
        b: &BlockDef,
        name: &str,
        locals: Vec<(String, Value)>,
    ) -> Result<Raw, Fail> {
        let mut r = Raw::default();
        if let Some(blk) = b.blocks.first() {
            return Err(fail(
                blk.file,
                Some(blk.at),
                format!("target.{name}"),
                format!("blocks (`{}`) are not allowed in a target", blk.kind),
                "write attributes: NAME = VALUE",
            ));
        }
        for a in &b.attrs {
            let k = a.name.as_str();
            let key = format!("target.{name}.{k}");
            if !TARGET_KEYS.contains(&k) {
                return Err(unknown_key(a, &format!("target.{name}"), TARGET_KEYS));
            }
            if k == "matrix" || k == "name" {
                continue;
            }
            let sk = static_key(k);
            let v = Evaluator::new(g, a.file, locals.clone())
                .eval(a.expr)
                .map_err(|e| from_eval(e, &key, (a.file, a.at)))?;
            let bad = |m: String, fix: &str| fail(a.file, Some(a.at), &key, m, fix);
            r.origins.insert(sk, Some((a.file, a.at)));
            if v == Value::Null {
                // An attribute set to null is not set (buildx decodes null as "absent").
                continue;
            }
            if STRING_KEYS.contains(&k) {
                let s = v.to_str().map_err(|m| bad(m, "write a string"))?;
                r.strings.insert(sk, s);
            } else if BOOL_KEYS.contains(&k) {
                let b = v.to_bool().map_err(|m| bad(m, "write true or false"))?;
                r.bools.insert(sk, b);
            } else if MAP_KEYS.contains(&k) {
                let m = v
                    .as_object()
                    .map_err(|m| bad(m, "write { NAME = \"value\" }"))?;
                let mut out = BTreeMap::new();
                for (mk, mv) in m {
                    let s = match mv {
                        Value::Null => None,
                        other => Some(other.to_str().map_err(|m| {
                            bad(format!("{mk}: {m}"), "write { NAME = \"value\" }")
                        })?),
                    };
                    out.insert(mk.clone(), s);
                }
                r.maps.insert(sk, out);
            } else if k == "inherits" {
                r.inherits =
                    string_list(&v).map_err(|m| bad(m, "write inherits = [\"NAME\", ...]"))?;
            } else if LIST_KEYS.contains(&k) {
                let items = v
                    .as_list()
                    .map_err(|m| bad(m, "write a list: [\"...\", ...]"))?;
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let s = match item {
                        Value::Object(m) if OBJECT_LIST_KEYS.contains(&k) => object_entry(m).map_err(|m| bad(format!("[{i}]: {m}"), "write \"type=...,key=value\" or { type = \"...\", key = \"value\" }"))?,
                        Value::Null => continue,
                        other => other.to_str().map_err(|m| bad(format!("[{i}]: {m}"), "write a list of strings"))?,
                    };
                    out.push(s);
                }
                r.lists.insert(sk, out);
            }
        }
        Ok(r)
    }

    /// buildx's `Config.target`: parents (each with its own parents) merged in order, then the
    /// target itself.
    fn inherit(
        &self,
        name: &str,
        raws: &BTreeMap<String, Raw>,
        stack: &mut Vec<String>,
        done: &mut BTreeMap<String, Raw>,
    ) -> Result<Raw, Fail> {
        if let Some(r) = done.get(name) {
            return Ok(r.clone());
        }
        let own = &raws[name];
        let (file, at) = origin_of(own, "inherits");
        stack.push(name.to_string());
        let mut acc = Raw::default();
        for parent in &own.inherits {
            let key = format!("target.{name}.inherits");
            if stack.contains(parent) {
                return Err(fail(file, at, key, format!("inherits cycle: {} -> {parent}", stack.join(" -> ")), "remove one of the inherits in the cycle (buildx drops the repeated target silently)"));
            }
            if !raws.contains_key(parent) {
                let names: Vec<&str> = raws.keys().map(String::as_str).collect();
                let hint = suggest(parent, names.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                return Err(fail(
                    file,
                    at,
                    key,
                    format!("there is no target {parent:?} to inherit from"),
                    format!("{hint}targets: {}", names.join(", ")),
                ));
            }
            let p = self.inherit(parent, raws, stack, done)?;
            done.insert(parent.clone(), p.clone());
            acc.merge(&p);
        }
        stack.pop();
        let mut own = own.clone();
        // The parents' origins must not hide the target's own ones.
        let own_origins = own.origins.clone();
        own.origins = acc.origins.clone();
        own.origins.extend(own_origins);
        acc.merge(&own);
        acc.inherits.clear();
        Ok(acc)
    }

    /// The typed target: buildx's defaults and normalisation, paths resolved against the
    /// current directory, option strings checked, keys bk-build cannot honour reported.
    fn typed_target(&mut self, name: &str, r: &Raw) -> Result<Target, Fail> {
        let key = |k: &str| format!("target.{name}.{k}");
        let at = |k: &str| origin_of(r, k);
        let base = self.cwd.to_path_buf();
        let mut t = Target {
            name: name.to_string(),
            ..Target::default()
        };
        if !valid_bake_name(name) {
            let (f, a) = at("name");
            return Err(bad_name(f, a.unwrap_or(0), &format!("target.{name}"), name));
        }

        // Problems that only matter when this target is built (a context that is not there,
        // a target that only exists to be inherited from): the first one is kept, and only
        // planning or building this target fails with it, as with compose services.
        let mut unavailable = r.unavailable.clone();
        let defer = |u: &mut Option<String>, f: Fail| {
            if u.is_none() {
                *u = Some(self.rendered(f));
            }
        };
        if let Some(call) = r.strings.get("call").filter(|c| *c != "build") {
            let (f, a) = at("call");
            defer(
                &mut unavailable,
                fail(
                    f,
                    a,
                    key("call"),
                    format!("call = {call:?} is not supported by bk-build: it only builds"),
                    "remove call, or run `docker buildx bake --call` for checks",
                ),
            );
        }

        let (cf, ca) = at("context");
        let ctx_raw = r
            .strings
            .get("context")
            .cloned()
            .unwrap_or_else(|| ".".into());
        let ctx_raw = ctx_raw
            .strip_prefix("cwd://")
            .unwrap_or(&ctx_raw)
            .to_string();
        t.context = normalize(&base.join(&ctx_raw));
        if ctx_raw == "-"
            || crate::options::parse_context_source(&ctx_raw)
                .is_ok_and(|s| matches!(s, ContextSource::Remote(_)))
            || ctx_raw.starts_with("git@")
        {
            t.context = PathBuf::from(&ctx_raw);
            defer(
                &mut unavailable,
                fail(
                    cf,
                    ca,
                    key("context"),
                    format!(
                        "remote or stdin build context {ctx_raw:?} is not supported by bk-build"
                    ),
                    "check the repository out and point context at the directory",
                ),
            );
        } else if !t.context.is_dir() {
            defer(
                &mut unavailable,
                fail(
                    cf,
                    ca,
                    key("context"),
                    format!("context directory {} does not exist", t.context.display()),
                    format!("bake paths are relative to the current directory ({}), not to the bake file; correct the path", base.display()),
                ),
            );
        }
        if let Some(text) = r.strings.get("dockerfile-inline") {
            t.dockerfile = super::inline_dockerfile_path(&self.root, text);
            t.dockerfile_inline = Some(text.clone());
        } else {
            let df_raw = r
                .strings
                .get("dockerfile")
                .cloned()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "Dockerfile".into());
            t.dockerfile = match df_raw.strip_prefix("cwd://") {
                Some(p) => normalize(&base.join(p)),
                None => normalize(&t.context.join(&df_raw)),
            };
            if !t.dockerfile.is_file() {
                let (f, a) = if r.strings.contains_key("dockerfile") {
                    at("dockerfile")
                } else {
                    (cf, ca)
                };
                defer(
                    &mut unavailable,
                    fail(
                        f,
                        a,
                        key("dockerfile"),
                        format!("Dockerfile {} does not exist", t.dockerfile.display()),
                        "dockerfile is relative to the context; correct the path or add the file",
                    ),
                );
            }
        }
        t.target = r.strings.get("target").cloned().filter(|s| !s.is_empty());
        for (m, out) in [("args", &mut t.args), ("labels", &mut t.labels)] {
            if let Some(entries) = r.maps.get(m) {
                for (k, v) in entries {
                    if let Some(v) = v {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if let Some(entries) = r.maps.get("contexts") {
            let (f, a) = at("contexts");
            for (cname, v) in entries {
                let Some(v) = v.as_ref().filter(|v| !v.is_empty()) else {
                    continue;
                };
                let ckey = format!("target.{name}.contexts.{cname}");
                let raw = v.strip_prefix("cwd://").unwrap_or(v);
                let src = crate::options::parse_context_source(raw)
                    .map_err(|e| self.option_fail(f, a, &ckey, e))?;
                let src = match src {
                    ContextSource::Local(p) => {
                        let abs = normalize(&base.join(p));
                        if !abs.is_dir() {
                            defer(&mut unavailable, fail(f, a, ckey, format!("named context directory {} does not exist", abs.display()), format!("bake paths are relative to the current directory ({}); or use docker-image://REF or target:NAME", base.display())));
                        }
                        ContextSource::Local(abs)
                    }
                    ContextSource::OciLayout(mut l) => {
                        l.path = normalize(&base.join(&l.path));
                        ContextSource::OciLayout(l)
                    }
                    other => other,
                };
                t.contexts.insert(cname.clone(), src);
            }
        }
        let list = |k: &str| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for s in r.lists.get(k).into_iter().flatten() {
                if !s.is_empty() && !out.contains(s) {
                    out.push(s.clone());
                }
            }
            out
        };
        t.tags = list("tags");
        // Option strings are parsed here, where a bad one can still be reported at its key.
        macro_rules! options {
            ($k:literal, $out:expr, |$s:ident| $parse:expr) => {
                let (f, a) = at($k);
                for $s in list($k) {
                    let value = $parse.map_err(|e| self.option_fail(f, a, &key($k), e))?;
                    if !$out.contains(&value) {
                        $out.push(value);
                    }
                }
            };
        }
        options!("platforms", t.platforms, |s| OptionList::platform(&s));
        options!("secret", t.secrets, |s| OptionList::secret(&s, &base));
        options!("ssh", t.ssh, |s| OptionList::ssh(&s, &base));
        options!("cache-from", t.cache_from, |s| OptionList::CacheFrom
            .cache(&s, &base));
        options!("cache-to", t.cache_to, |s| OptionList::CacheTo
            .cache(&s, &base));
        options!("annotations", t.annotations, |s| {
            crate::options::Spelled::parse(s, crate::options::parse_annotation)
        });
        let (f, a) = at("output");
        let outputs = list("output");
        let mut specs = Vec::with_capacity(outputs.len());
        for s in &outputs {
            specs.push(
                OptionList::output(s, &base)
                    .map_err(|e| self.option_fail(f, a, &key("output"), e))?,
            );
        }
        // `type=registry` / `type=image,push=true` and `type=docker` alone are the target's
        // push and load, so the registry ledger and the Docker Engine checks apply to them as
        // to --push/--load; anything more specific stays an output.
        let plain = |s: &crate::options::OutputSpec| -> Option<bool> {
            use crate::options::OutputKind as K;
            match s.kind {
                K::Image if s.push() && s.attrs.keys().all(|k| k == "push") => Some(true),
                K::Docker if s.dest.is_none() && s.attrs.is_empty() => Some(false),
                _ => None,
            }
        };
        if !specs.is_empty() && specs.iter().all(|s| plain(s.value()).is_some()) {
            for s in &specs {
                match plain(s.value()) {
                    Some(true) => t.push = true,
                    _ => t.load = true,
                }
            }
        } else {
            t.outputs = specs;
        }
        t.pull = r.bools.get("pull").copied().unwrap_or(false);
        t.no_cache = r.bools.get("no-cache").copied().unwrap_or(false);

        // What RUN steps see and may do.
        if let Some(n) = r.strings.get("network").filter(|n| !n.is_empty()) {
            match n.as_str() {
                "default" | "none" | "host" => {
                    let (f, a) = at("network");
                    t.network = Some(
                        crate::options::parse_network(n)
                            .map_err(|e| self.option_fail(f, a, &key("network"), e))?,
                    );
                }
                other => {
                    let (f, a) = at("network");
                    defer(
                        &mut unavailable,
                        fail(
                            f,
                            a,
                            key("network"),
                            format!("network {other:?} is not supported by BuildKit (only default, none and host)"),
                            "remove it, or use network = \"host\"",
                        ),
                    );
                }
            }
        }
        if let Some(hosts) = r.maps.get("extra-hosts") {
            let (f, a) = at("extra-hosts");
            for (host, ip) in hosts {
                let Some(ip) = ip else { continue };
                // buildx joins several addresses of one host with commas.
                for ip in ip.split(',') {
                    let h = crate::options::parse_add_host(&format!("{host}={ip}"))
                        .map_err(|e| self.option_fail(f, a, &key("extra-hosts"), e))?;
                    if !t.extra_hosts.contains(&h) {
                        t.extra_hosts.push(h);
                    }
                }
            }
        }
        if let Some(raw) = r.strings.get("shm-size") {
            let (f, a) = at("shm-size");
            let bytes = crate::options::parse_shm_size(raw)
                .map_err(|e| self.option_fail(f, a, &key("shm-size"), e))?;
            t.shm_size = (bytes > 0).then_some(bytes);
        }
        let (f, a) = at("ulimits");
        for raw in list("ulimits") {
            let u = crate::options::parse_ulimit(&raw)
                .map_err(|e| self.option_fail(f, a, &key("ulimits"), e))?;
            if !t.ulimits.contains(&u) {
                t.ulimits.push(u);
            }
        }
        t.entitlements = list("entitlements");
        if t.network == Some(crate::options::Network::Host)
            && !t.entitlements.iter().any(|e| e == "network.host")
        {
            t.entitlements.push("network.host".to_string());
        }
        t.no_cache_filter = list("no-cache-filter");
        // One attestation per type; a later entry of a type replaces an earlier one (buildx).
        let (f, a) = at("attest");
        for raw in list("attest") {
            let spec = crate::options::parse_attest(&raw)
                .map_err(|e| self.option_fail(f, a, &key("attest"), e))?;
            match t.attest.iter().position(|x| x.kind == spec.kind) {
                Some(i) => t.attest[i] = spec,
                None => t.attest.push(spec),
            }
        }
        t.unavailable = unavailable;
        Ok(t)
    }

    fn option_fail(
        &self,
        file: usize,
        at: Option<usize>,
        key: &str,
        e: crate::options::OptionError,
    ) -> Fail {
        let src = &self.files[file].0;
        match option_invalid(src, at.map(|a| line_of(&src.text, a)), key, e) {
            ProjectError::Invalid { problem, fix, .. } => fail(file, at, key, problem, fix),
            other => fail(file, at, key, other.to_string(), ""),
        }
    }
}

/// Where `key` of `r` was set: (file index, byte offset); compose values have no place in a
/// bake file.
fn origin_of(r: &Raw, key: &str) -> (usize, Option<usize>) {
    match r.origins.get(key).copied().flatten() {
        Some((f, a)) => (f, Some(a)),
        None => (0, None),
    }
}

/// A target block's instances: one, or one per `matrix` combination named by `name`.
fn expand<'a>(g: &Globals<'a>, b: &'a BlockDef<'a>) -> Result<Vec<Instance<'a>>, Fail> {
    let key = format!("target.{}", b.label);
    if !valid_bake_name(&b.label) {
        return Err(bad_name(b.file, b.at, &key, &b.label));
    }
    let matrix = b.attr("matrix");
    let name_attr = b.attr("name");
    let Some(m) = matrix else {
        if let Some(n) = name_attr {
            return Err(fail(
                n.file,
                Some(n.at),
                format!("{key}.name"),
                "name requires matrix",
                "add a matrix, or rename the block itself",
            ));
        }
        return Ok(vec![Instance {
            block: b,
            name: b.label.clone(),
            locals: Vec::new(),
        }]);
    };
    let mkey = format!("{key}.matrix");
    let v = Evaluator::new(g, m.file, Vec::new())
        .eval(m.expr)
        .map_err(|e| from_eval(e, &mkey, (m.file, m.at)))?;
    let Value::Object(axes) = v else {
        return Err(fail(
            m.file,
            Some(m.at),
            mkey,
            "matrix must be a map",
            "write matrix = { NAME = [\"a\", \"b\"] }",
        ));
    };
    // buildx's GetEvalContexts: each axis multiplies the combinations so far, the later
    // axis varying slowest.
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (axis, values) in &axes {
        let vals: Vec<Value> = match values {
            Value::List(l) => l.clone(),
            Value::Object(o) => o.values().cloned().collect(),
            other => {
                return Err(fail(
                    m.file,
                    Some(m.at),
                    format!("{mkey}.{axis}"),
                    format!(
                        "matrix values must be a list, found a {}",
                        other.type_name()
                    ),
                    "write NAME = [\"a\", \"b\"]",
                ))
            }
        };
        if combos.len().saturating_mul(vals.len()) > MAX_MATRIX {
            return Err(fail(
                m.file,
                Some(m.at),
                mkey,
                format!("the matrix makes more than {MAX_MATRIX} targets"),
                "split the target, or use fewer values",
            ));
        }
        let mut next = Vec::new();
        for val in &vals {
            for c in &combos {
                let mut c2 = c.clone();
                c2.push((axis.clone(), val.clone()));
                next.push(c2);
            }
        }
        combos = next;
    }
    let mut out: Vec<Instance> = Vec::new();
    for locals in combos {
        let name = match name_attr {
            Some(n) => {
                let v = Evaluator::new(g, n.file, locals.clone())
                    .eval(n.expr)
                    .map_err(|e| from_eval(e, &format!("{key}.name"), (n.file, n.at)))?;
                let s = v.to_str().map_err(|msg| {
                    fail(
                        n.file,
                        Some(n.at),
                        format!("{key}.name"),
                        msg,
                        "name must be a string",
                    )
                })?;
                if !valid_bake_name(&s) {
                    return Err(bad_name(n.file, n.at, &format!("{key}.name"), &s));
                }
                s
            }
            None => b.label.clone(),
        };
        if out.iter().any(|i| i.name == name) {
            let at = name_attr.map_or(m.at, |n| n.at);
            return Err(fail(
                b.file,
                Some(at),
                format!("{key}.name"),
                format!("duplicate name {name:?}"),
                "give each matrix combination its own name, e.g. name = \"app-${VALUE}\"",
            ));
        }
        out.push(Instance {
            block: b,
            name,
            locals,
        });
    }
    Ok(out)
}

fn function_def<'a>(b: &'a BlockDef<'a>, key: &str) -> Result<FuncDef<'a>, Fail> {
    let mut params = Vec::new();
    let mut variadic = None;
    let mut result: Option<&Attr> = None;
    let names = |e: &Expression| -> Option<Vec<String>> {
        match e {
            Expression::Array(a) => a
                .iter()
                .map(|x| match x {
                    Expression::Variable(v) => Some(v.as_str().to_string()),
                    other => literal_string(other),
                })
                .collect(),
            _ => None,
        }
    };
    for a in &b.attrs {
        match a.name.as_str() {
            "params" => {
                params = names(a.expr).ok_or_else(|| {
                    fail(
                        a.file,
                        Some(a.at),
                        format!("{key}.params"),
                        "params must be a list of names",
                        "write params = [a, b]",
                    )
                })?;
            }
            "variadic_params" => {
                variadic = Some(match (a.expr, literal_string(a.expr)) {
                    (Expression::Variable(v), _) => v.as_str().to_string(),
                    (_, Some(s)) => s,
                    _ => {
                        return Err(fail(
                            a.file,
                            Some(a.at),
                            format!("{key}.variadic_params"),
                            "variadic_params must be a name",
                            "write variadic_params = rest",
                        ))
                    }
                });
            }
            "result" => result = Some(a),
            _ => {
                return Err(unknown_key(
                    a,
                    key,
                    &["params", "variadic_params", "result"],
                ))
            }
        }
    }
    if b.attr("params").is_none() {
        return Err(fail(
            b.file,
            Some(b.at),
            key,
            "a function needs params (an empty list is fine)",
            "add params = []",
        ));
    }
    let Some(result) = result else {
        return Err(fail(
            b.file,
            Some(b.at),
            key,
            "a function needs a result",
            "add result = EXPRESSION",
        ));
    };
    Ok(FuncDef {
        params,
        variadic,
        result: result.expr,
        file: b.file,
        at: result.at,
    })
}

/// A function body may only name its parameters, variables and functions; this evaluates it
/// with placeholder arguments just far enough to find unknown names, as buildx does when it
/// loads the file.
fn check_function(g: &Globals, name: &str, f: &FuncDef) -> Result<(), Fail> {
    let mut locals: Vec<(String, Value)> =
        f.params.iter().map(|p| (p.clone(), Value::Null)).collect();
    if let Some(v) = &f.variadic {
        locals.push((v.clone(), Value::List(Vec::new())));
    }
    match Evaluator::new(g, f.file, locals).eval(f.result) {
        Err(e)
            if e.message.starts_with("there is no variable")
                || e.message.starts_with("there is no function") =>
        {
            Err(from_eval(
                e,
                &format!("function.{name}.result"),
                (f.file, f.at),
            ))
        }
        _ => Ok(()),
    }
}

fn validate(g: &Globals, name: &str, v: &BlockDef) -> Result<(), Fail> {
    let key = format!("variable.{name}.validation");
    let Some(cond) = v.attr("condition") else {
        return Err(fail(
            v.file,
            Some(v.at),
            key,
            "validation needs a condition",
            "add condition = EXPRESSION",
        ));
    };
    let ok = g
        .eval_global(cond.expr, cond.file)
        .map_err(|e| from_eval(e, &key, (cond.file, cond.at)))?;
    if ok == Value::Null {
        return Err(fail(
            cond.file,
            Some(cond.at),
            key,
            "the condition is null; it must be true or false",
            "correct the condition",
        ));
    }
    let ok = ok.to_bool().map_err(|m| {
        fail(
            cond.file,
            Some(cond.at),
            &key,
            m,
            "the condition must be true or false",
        )
    })?;
    if !ok {
        let msg = match v.attr("error_message") {
            Some(m) => g
                .eval_global(m.expr, m.file)
                .ok()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| "This check failed, but has an invalid error message.".into()),
            None => "the validation failed".into(),
        };
        return Err(fail(
            cond.file,
            Some(cond.at),
            key,
            format!("variable {name}: {msg}"),
            format!("set {name} to a value the validation accepts"),
        ));
    }
    Ok(())
}

/// `{type = "registry", ref = "x"}` as the CSV string buildx would also accept.
fn object_entry(m: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut fields = Vec::new();
    if let Some(t) = m.get("type") {
        fields.push(format!("type={}", t.to_str()?));
    }
    for (k, v) in m {
        if k == "type" || *v == Value::Null {
            continue;
        }
        let s = v.to_str()?;
        let f = format!("{k}={s}");
        fields.push(if f.contains(',') || f.contains('"') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f
        });
    }
    Ok(fields.join(","))
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    v.as_list()?
        .iter()
        .enumerate()
        .map(|(i, x)| x.to_str().map_err(|m| format!("[{i}]: {m}")))
        .collect()
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn unknown_key(a: &Attr, prefix: &str, known: &[&str]) -> Fail {
    let hint = suggest(&a.name, known.iter().copied())
        .map(|s| format!("did you mean `{s}`? "))
        .unwrap_or_default();
    fail(
        a.file,
        Some(a.at),
        format!("{prefix}.{}", a.name),
        format!("unknown attribute `{}`", a.name),
        format!("{hint}known: {}", known.join(", ")),
    )
}

fn bad_name(file: usize, at: usize, key: &str, name: &str) -> Fail {
    fail(
        file,
        Some(at),
        key,
        format!("{name:?} is not a valid target or group name"),
        "use only letters, digits, '_' and '-' (buildx's rule)",
    )
}

/// The current directory, for relative bake paths.
pub(super) fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_default()
}

#[cfg(test)]
mod tests;
