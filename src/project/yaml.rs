//! YAML documents as a plain tree for the compose loader: every node keeps its line, anchors
//! and aliases are expanded, merge keys (`<<`) are applied, and the two tags the compose spec
//! gives a meaning (`!reset`, `!override`) are kept on the node they mark.
//!
//! Parsing (tokens, events, YAML 1.2 syntax) is `saphyr-parser`'s; this module builds the tree
//! from its events. It owns:
//! - **merge keys** as YAML 1.1's merge type describes them (which compose-go, through go-yaml,
//!   implements): `<<: *a` or `<<: [*a, *b]` copies the keys of those mappings that the mapping
//!   does not set itself, explicit keys winning whatever their order, earlier sources winning
//!   over later ones. Because a mapping's merges are applied when the mapping is complete, an
//!   anchored mapping that itself merges another carries the merged keys wherever it is used,
//!   to any depth;
//! - **bounds**: nesting deeper than [`MAX_DEPTH`] and documents that expand (through aliases)
//!   to more than [`MAX_NODES`] nodes are errors, so a "billion laughs" file cannot exhaust
//!   memory;
//! - **scalars stay text**: compose interpolates values before it types them, so the tree keeps
//!   each scalar as written and whether it was quoted; only null is decided here.
//!
//! It must not know what compose keys mean.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag as EventTag};

/// How deep mappings and sequences may nest. Compose files nest about eight levels.
pub(crate) const MAX_DEPTH: usize = 128;
/// How many nodes one document may hold once aliases are expanded.
pub(crate) const MAX_NODES: usize = 1_000_000;

/// The tags the compose spec gives a meaning to; other tags are kept only as "some tag".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Tag {
    #[default]
    None,
    /// `!reset`: remove the value an earlier file (or an extended service) set here.
    Reset,
    /// `!override`: replace the earlier value instead of merging with it.
    Override,
    /// Any other tag (kept so that a quoted `!!str` stays a string).
    Other,
}

/// One node. `line` is 1-based; `src` is the caller's number for the file it came from
/// (see [`Node::set_src`]; 0 after parsing).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: usize,
    pub tag: Tag,
    pub src: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    /// A scalar as written, and whether it was plain (unquoted, not a block scalar).
    Scalar(String, bool),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub line: usize,
}

/// A document that could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub message: String,
}

impl Node {
    pub fn new(value: Value, line: usize) -> Node {
        Node {
            value,
            line,
            tag: Tag::None,
            src: 0,
        }
    }

    /// Marks this subtree as coming from file number `src`.
    pub fn set_src(&mut self, src: usize) {
        self.src = src;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|i| i.set_src(src)),
            Value::Map(m) => m.iter_mut().for_each(|(_, v)| v.set_src(src)),
            _ => {}
        }
    }

    pub fn map(entries: Vec<(Key, Node)>, line: usize) -> Node {
        Node::new(Value::Map(entries), line)
    }

    pub fn string(s: impl Into<String>, line: usize) -> Node {
        Node::new(Value::Scalar(s.into(), false), line)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(m) => m.iter_mut().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in a mapping (replacing its value, or appending it).
    pub fn insert(&mut self, key: Key, value: Node) {
        if let Value::Map(m) = &mut self.value {
            match m.iter_mut().find(|(k, _)| k.name == key.name) {
                Some(slot) => slot.1 = value,
                None => m.push((key, value)),
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Node> {
        match &mut self.value {
            Value::Map(m) => {
                let i = m.iter().position(|(k, _)| k.name == key)?;
                Some(m.remove(i).1)
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(Key, Node)] {
        match &self.value {
            Value::Map(m) => m,
            _ => &[],
        }
    }

    /// Number of nodes in this subtree, counting no further than `limit`.
    fn size(&self, limit: usize) -> usize {
        let mut n = 1;
        match &self.value {
            Value::Seq(items) => {
                for i in items {
                    if n > limit {
                        break;
                    }
                    n += i.size(limit - n);
                }
            }
            Value::Map(m) => {
                for (_, v) in m {
                    if n > limit {
                        break;
                    }
                    n += 1 + v.size(limit - n);
                }
            }
            _ => {}
        }
        n
    }
}

/// Reads every document of a YAML stream (`---` separated). An empty stream is no document.
pub(crate) fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: std::collections::HashMap::new(),
        nodes: 0,
    };
    let mut docs = Vec::new();
    loop {
        let (ev, span) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart(_) => {
                b.anchors.clear();
                b.nodes = 0;
                let (ev, span) = b.next()?;
                let node = match ev {
                    Event::DocumentEnd => Node::new(Value::Null, line(&span)),
                    other => b.node(other, span, 0)?,
                };
                docs.push(node);
            }
            other => {
                return Err(YamlError {
                    line: line(&span),
                    message: format!("unexpected {other:?}"),
                })
            }
        }
    }
}

fn line(span: &Span) -> usize {
    span.start.line().max(1)
}

struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: std::collections::HashMap<usize, Node>,
    nodes: usize,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(YamlError {
                line: e.marker().line().max(1),
                message: format!("{} (column {})", e.info(), e.marker().col() + 1),
            }),
            None => Err(YamlError {
                line: 1,
                message: "unexpected end of input".into(),
            }),
        }
    }

    fn count(&mut self, n: usize, at: usize) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                line: at,
                message: format!(
                    "the document expands to more than {MAX_NODES} values (aliases of aliases?)"
                ),
            });
        }
        Ok(())
    }

    fn anchor(&mut self, id: usize, node: &Node) {
        if id != 0 {
            self.anchors.insert(id, node.clone());
        }
    }

    /// Builds the node that starts with `ev`.
    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlError> {
        let at = line(&span);
        if depth > MAX_DEPTH {
            return Err(YamlError {
                line: at,
                message: format!("values nested more than {MAX_DEPTH} levels deep"),
            });
        }
        self.count(1, at)?;
        match ev {
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    line: at,
                    message: "alias to an anchor that is not defined before it".into(),
                })?;
                self.count(node.size(MAX_NODES), at)?;
                Ok(node)
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = scalar(text, style, tag.as_deref(), at);
                self.anchor(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span, depth + 1)?);
                }
                let node = Node {
                    value: Value::Seq(items),
                    line: at,
                    tag: tag_of(tag.as_deref()),
                    src: 0,
                };
                self.anchor(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                let mut entries: Vec<(Key, Node)> = Vec::new();
                let mut merges: Vec<(Node, usize)> = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key_line = line(&span);
                    let is_merge = matches!(
                        &ev,
                        Event::Scalar(k, ScalarStyle::Plain, _, None) if k == "<<"
                    ) || matches!(
                        &ev,
                        Event::Scalar(_, _, _, Some(t)) if t.is_yaml_core_schema() && t.suffix == "merge"
                    );
                    let key = self.node(ev, span, depth + 1)?;
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span, depth + 1)?;
                    if is_merge {
                        merges.push((value, key_line));
                        continue;
                    }
                    let name = match key.value {
                        Value::Scalar(s, _) => s,
                        Value::Null => "null".to_string(),
                        _ => {
                            return Err(YamlError {
                                line: key_line,
                                message:
                                    "a mapping key must be a plain value, not a list or mapping"
                                        .into(),
                            })
                        }
                    };
                    if let Some((k, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(YamlError {
                            line: key_line,
                            message: format!("key {name:?} is already defined at line {}", k.line),
                        });
                    }
                    entries.push((
                        Key {
                            name,
                            line: key_line,
                        },
                        value,
                    ));
                }
                for (source, merge_line) in merges {
                    let sources = match source.value {
                        Value::Map(m) => vec![m],
                        Value::Seq(items) => items
                            .into_iter()
                            .map(|i| match i.value {
                                Value::Map(m) => Ok(m),
                                _ => Err(()),
                            })
                            .collect::<Result<Vec<_>, ()>>()
                            .map_err(|()| merge_error(merge_line))?,
                        _ => return Err(merge_error(merge_line)),
                    };
                    for m in sources {
                        for (k, v) in m {
                            if !entries.iter().any(|(e, _)| e.name == k.name) {
                                entries.push((k, v));
                            }
                        }
                    }
                }
                let node = Node {
                    value: Value::Map(entries),
                    line: at,
                    tag: tag_of(tag.as_deref()),
                    src: 0,
                };
                self.anchor(anchor, &node);
                Ok(node)
            }
            other => Err(YamlError {
                line: at,
                message: format!("unexpected {other:?}"),
            }),
        }
    }
}

fn merge_error(line: usize) -> YamlError {
    YamlError {
        line,
        message: "a merge key (<<) takes a mapping or a list of mappings (`<<: *anchor`)".into(),
    }
}

fn tag_of(tag: Option<&EventTag>) -> Tag {
    match tag {
        None => Tag::None,
        Some(t) if t.handle == "!" && t.suffix == "reset" => Tag::Reset,
        Some(t) if t.handle == "!" && t.suffix == "override" => Tag::Override,
        Some(_) => Tag::Other,
    }
}

fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&EventTag>, line: usize) -> Node {
    let plain = style == ScalarStyle::Plain;
    let tag = tag_of(tag);
    // YAML 1.2 core schema nulls; a tagged scalar (`!!str ~`) is never null.
    let value =
        if plain && tag == Tag::None && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
            Value::Null
        } else {
            Value::Scalar(text.into_owned(), plain && tag == Tag::None)
        };
    Node {
        value,
        line,
        tag,
        src: 0,
    }
}

/// What compose-go makes of a plain (unquoted, untagged) scalar where the compose schema
/// takes "string, number or boolean" (build `args`, `labels`): go-yaml v3 types the scalar
/// first (its `resolve`: YAML 1.2 core booleans and numbers, plus `_` separators, `0777` and
/// `0o` octals and `0b` binaries), and compose-go turns a non-string back into text with Go's
/// `fmt.Sprint` (types `mappingValue`). So `3.10` becomes `3.1`, `True` `true`, `0x10` `16`,
/// `1e3` `1000`, `.inf` `+Inf`. Text that is not typed comes back as it is.
///
/// Errors (with the name of what it would be) when go-yaml would read a timestamp, whose Go
/// text (`2024-01-02 00:00:00 +0000 UTC`) is never what was meant: quoting it is the fix.
pub(crate) fn plain_scalar_as_compose_text(text: &str) -> Result<Cow<'_, str>, &'static str> {
    match text {
        "true" | "True" | "TRUE" => return Ok("true".into()),
        "false" | "False" | "FALSE" => return Ok("false".into()),
        ".nan" | ".NaN" | ".NAN" => return Ok("NaN".into()),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Ok("+Inf".into()),
        "-.inf" | "-.Inf" | "-.INF" => return Ok("-Inf".into()),
        _ => {}
    }
    let Some(first) = text.bytes().next() else {
        return Ok(text.into());
    };
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Ok(text.into());
    }
    if looks_like_timestamp(text) {
        return Err("a date");
    }
    let plain = text.replace('_', "");
    if let Some(n) = go_parse_int(&plain) {
        return Ok(n.to_string().into());
    }
    if yaml_style_float(&plain) {
        if let Ok(f) = plain.parse::<f64>() {
            return Ok(go_float_text(f).into());
        }
    }
    let (neg, digits) = match plain.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, plain.as_str()),
    };
    for (prefix, radix) in [("0b", 2), ("0o", 8)] {
        if let Some(d) = digits.strip_prefix(prefix) {
            if let Ok(v) = i128::from_str_radix(d, radix) {
                let v = if neg { -v } else { v };
                if i64::try_from(v).is_ok() || (!neg && u64::try_from(v).is_ok()) {
                    return Ok(v.to_string().into());
                }
            }
        }
    }
    Ok(text.into())
}

/// go-yaml's quick check before `time.Parse`: four digits, then `-`, and one of the formats
/// `2006-1-2`, `2006-1-2 15:4:5…`, `2006-1-2T15:4:5…Z07:00` (leniently: any text that passes
/// the quick check and has a day counts, so nothing that might be a date slips through).
fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let mut parts = s[5..].splitn(2, '-');
    let month = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    let day: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (1..=2).contains(&month.len())
        && month.bytes().all(|c| c.is_ascii_digit())
        && (1..=2).contains(&day.len())
}

/// Go's `strconv.ParseInt(s, 0, 64)`, else `ParseUint(s, 0, 64)`: an optional sign, then
/// decimal, `0x` hex, `0o`/`0` octal or `0b` binary (base prefixes as Go reads them).
fn go_parse_int(s: &str) -> Option<i128> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -v } else { v };
    // ParseInt's range, or ParseUint's for an unsigned text.
    if i64::try_from(v).is_ok() || (!neg && !s.starts_with('+') && u64::try_from(v).is_ok()) {
        Some(v)
    } else {
        None
    }
}

/// go-yaml's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.strip_prefix(['-', '+']).unwrap_or(s).as_bytes();
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i;
    if b.first() == Some(&b'.') {
        let n = digits(b, 1);
        if n == 0 {
            return false;
        }
        i = 1 + n;
    } else {
        let n = digits(b, 0);
        if n == 0 {
            return false;
        }
        i = n;
        if b.get(i) == Some(&b'.') {
            i += 1 + digits(b, i + 1);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let n = digits(b, i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == b.len()
}

/// Go's `fmt.Sprint` of a float64 (`%v`: `strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// digits that read back the same, in exponent form (`1e+06`, `1.5e-05`) when the exponent is
/// below -4 or at least 6 (Go's rule for the shortest form), else plain (`3.1`, `1000`,
/// `0.0001`).
fn go_float_text(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: `d.ddde±x`.
    let e = format!("{:e}", f.abs());
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let es = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{frac}e{es}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    let body = if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else if exp + 1 >= n {
        format!("{digits}{}", "0".repeat((exp + 1 - n) as usize))
    } else {
        let (a, b) = digits.split_at((exp + 1) as usize);
        format!("{a}.{b}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go-yaml's typing and Go's printing (the oracle test in tests/compose_oracle.rs checks
    /// these against buildx); a date is refused rather than turned into Go's time text.
    #[test]
    fn plain_scalars_read_as_compose_prints_them() {
        for (given, want) in [
            ("3.10", "3.1".to_string()),
            ("True", "true".into()),
            ("0x10", "16".into()),
            ("010", "8".into()),
            ("08", "8".into()),
            ("1_000", "1000".into()),
            ("1e6", "1e+06".into()),
            ("1234567.0", "1.234567e+06".into()),
            ("0.00001", "1e-05".into()),
            ("-0.0", "-0".into()),
            ("-9223372036854775809", "-9.223372036854776e+18".into()),
            ("18446744073709551615", "18446744073709551615".into()),
            (".inf", "+Inf".into()),
            ("yes", "yes".into()),
            ("1.2.3", "1.2.3".into()),
            ("-", "-".into()),
            ("v1.0", "v1.0".into()),
        ] {
            assert_eq!(
                plain_scalar_as_compose_text(given).unwrap(),
                want,
                "{given}"
            );
        }
        for date in ["2024-01-02", "2024-1-2", "2001-12-14t21:59:43.10-05:00"] {
            assert!(plain_scalar_as_compose_text(date).is_err(), "{date}");
        }
        assert_eq!(plain_scalar_as_compose_text("2024-01").unwrap(), "2024-01");
    }

    fn one(text: &str) -> Node {
        let mut d = parse(text).unwrap();
        assert_eq!(d.len(), 1);
        d.remove(0)
    }

    fn s<'a>(n: &'a Node, path: &[&str]) -> Option<&'a str> {
        let mut n = n;
        for p in path {
            n = n.get(p)?;
        }
        n.as_str()
    }

    #[test]
    fn nested_merges_reach_every_level() {
        let d = one("x-a: &a {build: {context: app}}\nx-b: &b {<<: *a, image: reg/x}\nservices: {s: {<<: *b}}\n");
        assert_eq!(s(&d, &["services", "s", "build", "context"]), Some("app"));
        assert_eq!(s(&d, &["services", "s", "image"]), Some("reg/x"));
        assert!(d
            .get("services")
            .unwrap()
            .get("s")
            .unwrap()
            .get("<<")
            .is_none());
    }

    #[test]
    fn explicit_keys_win_and_earlier_sources_win() {
        let d = one("a: &a {k: a, only_a: 1}\nb: &b {k: b, only_b: 2}\nm:\n  k: mine\n  <<: [*a, *b]\nn:\n  <<: [*b, *a]\n");
        assert_eq!(s(&d, &["m", "k"]), Some("mine"));
        assert_eq!(s(&d, &["m", "only_a"]), Some("1"));
        assert_eq!(s(&d, &["m", "only_b"]), Some("2"));
        assert_eq!(s(&d, &["n", "k"]), Some("b"));
    }

    #[test]
    fn tags_lines_nulls_and_quoting_are_kept() {
        let d = one("a: !reset []\nb: !override {x: 1}\nc: ~\nd: 'null'\ne:\n");
        assert_eq!(d.get("a").unwrap().tag, Tag::Reset);
        assert_eq!(d.get("b").unwrap().tag, Tag::Override);
        assert_eq!(d.get("b").unwrap().line, 2);
        assert!(d.get("c").unwrap().is_null());
        assert_eq!(
            d.get("d").unwrap().value,
            Value::Scalar("null".into(), false)
        );
        assert!(d.get("e").unwrap().is_null());
    }

    #[test]
    fn bad_input_is_an_error_with_a_line() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("already defined at line 1"), "{e:?}");
        let e = parse("a: [1\nb: 2\n").unwrap_err();
        assert!(e.line >= 1);
        let e = parse("a: &a 1\nb: {<<: *a}\n").unwrap_err();
        assert!(e.message.contains("merge key"), "{e:?}");
        let e = parse("a: *nope\n").unwrap_err();
        assert!(e.message.contains("anchor"), "{e:?}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_bounded() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(e.message.contains("more than"), "{e:?}");
        let deep = "[".repeat(MAX_DEPTH + 10) + &"]".repeat(MAX_DEPTH + 10);
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nested"), "{e:?}");
    }

    #[test]
    fn several_documents_and_empty_streams() {
        assert!(parse("").unwrap().is_empty());
        assert_eq!(parse("a: 1\n---\nb: 2\n").unwrap().len(), 2);
    }
}
