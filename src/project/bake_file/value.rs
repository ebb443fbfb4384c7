//! Values of the bake-file expression language, with the conversions buildx's evaluator
//! (go-cty) applies between them, and HCL type constraints (`variable "X" { type = ... }`).
//!
//! cty distinguishes lists, tuples and sets, and maps and objects; a bake file only ever turns
//! them into strings, lists of strings and maps of strings, so one sequence and one mapping
//! kind are enough here, and a `set(...)` constraint is applied by sorting and de-duplicating.
//! Numbers are `f64` (cty uses arbitrary precision: only non-integral results of arithmetic
//! can print differently, see [`fmt_number`]).

use std::collections::BTreeMap;

/// One evaluated value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// cty's list, tuple and set.
    List(Vec<Value>),
    /// cty's map and object; attributes sorted by name, as cty keeps them.
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// The type's name as messages use it.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Object(_) => "object",
        }
    }

    pub(crate) fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// cty's conversion to string: numbers and bools convert, null and collections do not.
    pub(crate) fn to_str(&self) -> Result<String, String> {
        match self {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(fmt_number(*n)),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Err("a null value where a string is required".into()),
            Value::List(_) => Err("a list where a string is required".into()),
            Value::Object(_) => Err("an object where a string is required".into()),
        }
    }

    /// cty's conversion to bool: `true`/`false` (and `1`/`0`) strings convert.
    pub(crate) fn to_bool(&self) -> Result<bool, String> {
        match self {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => match s.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!("{s:?} is not a bool (true or false)")),
            },
            other => Err(format!("a {} where a bool is required", other.type_name())),
        }
    }

    /// cty's conversion to number: decimal strings convert.
    pub(crate) fn to_number(&self) -> Result<f64, String> {
        match self {
            Value::Number(n) => Ok(*n),
            Value::String(s) => parse_number(s).ok_or_else(|| format!("{s:?} is not a number")),
            other => Err(format!(
                "a {} where a number is required",
                other.type_name()
            )),
        }
    }

    pub(crate) fn as_list(&self) -> Result<&[Value], String> {
        match self {
            Value::List(l) => Ok(l),
            other => Err(format!("a {} where a list is required", other.type_name())),
        }
    }

    pub(crate) fn as_object(&self) -> Result<&BTreeMap<String, Value>, String> {
        match self {
            Value::Object(m) => Ok(m),
            other => Err(format!(
                "a {} where a map or object is required",
                other.type_name()
            )),
        }
    }

    /// HCL's `==`: same kind and same content; numbers compare numerically.
    pub(crate) fn equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => a == b,
            (Value::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.equals(vb))
            }
            (a, b) => a == b,
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    J::from(*n as i64)
                } else {
                    serde_json::Number::from_f64(*n).map_or(J::Null, J::Number)
                }
            }
            Value::String(s) => J::String(s.clone()),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Object(m) => {
                J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    pub(crate) fn from_json(v: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// A decimal number as cty reads one (`1`, `-2.5`, `1e3`; no hex, no `inf`).
pub(crate) fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && t.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A number as cty prints one: integers without a decimal point, others in the shortest
/// decimal form that reads back as the same `f64`, never in exponent form.
pub(crate) fn fmt_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1.0e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// An HCL type constraint (`string`, `list(number)`, `map(string)`, `object({...})`, `any`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Tuple(Vec<Type>),
    Object(BTreeMap<String, Type>),
}

impl Type {
    /// The name cty's `FriendlyNameForConstraint` gives (used in `--list variables` and in
    /// messages).
    pub(crate) fn name(&self) -> String {
        match self {
            Type::Any => "any".into(),
            Type::String => "string".into(),
            Type::Number => "number".into(),
            Type::Bool => "bool".into(),
            Type::List(t) => format!("list of {}", t.name()),
            Type::Set(t) => format!("set of {}", t.name()),
            Type::Map(t) => format!("map of {}", t.name()),
            Type::Tuple(_) => "tuple".into(),
            Type::Object(_) => "object".into(),
        }
    }

    pub(crate) fn is_primitive(&self) -> bool {
        matches!(self, Type::String | Type::Number | Type::Bool)
    }

    /// Converts `v` to this type as cty's `convert.Convert` does for the cases bake files
    /// meet; null converts to any type.
    pub(crate) fn convert(&self, v: Value) -> Result<Value, String> {
        if v == Value::Null {
            return Ok(v);
        }
        match self {
            Type::Any => Ok(v),
            Type::String => v.to_str().map(Value::String),
            Type::Number => v.to_number().map(Value::Number),
            Type::Bool => v.to_bool().map(Value::Bool),
            Type::List(t) | Type::Set(t) => {
                let Value::List(items) = v else {
                    return Err(format!(
                        "a {} where a {} is required",
                        v.type_name(),
                        self.name()
                    ));
                };
                let mut out = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| t.convert(x).map_err(|e| format!("element {i}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                if matches!(self, Type::Set(_)) {
                    set_normalize(&mut out);
                }
                Ok(Value::List(out))
            }
            Type::Map(t) => {
                let Value::Object(m) = v else {
                    return Err(format!(
                        "a {} where a {} is required",
                        v.type_name(),
                        self.name()
                    ));
                };
                m.into_iter()
                    .map(|(k, x)| {
                        let x = t.convert(x).map_err(|e| format!("element {k:?}: {e}"))?;
                        Ok((k, x))
                    })
                    .collect::<Result<BTreeMap<_, _>, String>>()
                    .map(Value::Object)
            }
            Type::Tuple(ts) => {
                let Value::List(items) = v else {
                    return Err(format!("a {} where a tuple is required", v.type_name()));
                };
                if items.len() != ts.len() {
                    return Err(format!(
                        "a tuple of {} elements is required, found {}",
                        ts.len(),
                        items.len()
                    ));
                }
                items
                    .into_iter()
                    .zip(ts)
                    .enumerate()
                    .map(|(i, (x, t))| t.convert(x).map_err(|e| format!("element {i}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::List)
            }
            Type::Object(attrs) => {
                let Value::Object(mut m) = v else {
                    return Err(format!("a {} where an object is required", v.type_name()));
                };
                let mut out = BTreeMap::new();
                for (k, t) in attrs {
                    let x = m
                        .remove(k)
                        .ok_or_else(|| format!("attribute {k:?} is required"))?;
                    out.insert(
                        k.clone(),
                        t.convert(x).map_err(|e| format!("attribute {k:?}: {e}"))?,
                    );
                }
                Ok(Value::Object(out))
            }
        }
    }
}

/// A set's elements as cty orders them: strings lexically, numbers ascending; duplicates
/// removed.
pub(crate) fn set_normalize(items: &mut Vec<Value>) {
    items.sort_by(|a, b| match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.total_cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.type_name().cmp(b.type_name()),
    });
    items.dedup_by(|a, b| a.equals(b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_cty_prints_them() {
        assert_eq!(fmt_number(3.0), "3");
        assert_eq!(fmt_number(-2.0), "-2");
        assert_eq!(fmt_number(2.5), "2.5");
        assert_eq!(fmt_number(0.1), "0.1");
        assert_eq!(parse_number("1e3"), Some(1000.0));
        assert_eq!(parse_number("0x10"), None);
        assert_eq!(parse_number("inf"), None);
    }

    #[test]
    fn conversions_follow_cty() {
        assert_eq!(Value::Number(1.0).to_str().unwrap(), "1");
        assert!(Value::str("true").to_bool().unwrap());
        assert!(Value::str("yes").to_bool().is_err());
        assert!(Value::Null.to_str().is_err());
        let set = Type::Set(Box::new(Type::String));
        assert_eq!(
            set.convert(Value::List(vec![
                Value::str("b"),
                Value::str("a"),
                Value::str("b")
            ]))
            .unwrap(),
            Value::List(vec![Value::str("a"), Value::str("b")])
        );
        let list = Type::List(Box::new(Type::Number));
        assert_eq!(
            list.convert(Value::List(vec![Value::str("2")])).unwrap(),
            Value::List(vec![Value::Number(2.0)])
        );
        assert!(list.convert(Value::str("2")).is_err());
    }
}
