//! Evaluating HCL expressions (as parsed by `hcl-edit`) to [`Value`]s, with the semantics of
//! HashiCorp HCL and go-cty that buildx's bake evaluator has: templates with `%{if}`/`%{for}`
//! and strip markers, a single-interpolation template keeping its value's type, `for`
//! expressions, splats, conditionals, and automatic string/number/bool conversions.
//!
//! Names that are not local (function parameters, `for` and `matrix` variables) are asked of a
//! [`Host`], which owns the file's variables, user `function` blocks and the blocks an
//! expression can reference (`target.NAME.ATTR`). Errors carry the byte span of the
//! sub-expression at fault, so the loader can name the line.
//!
//! Parsing is `hcl-edit`'s (the parser of the maintained hcl-rs project, which keeps source
//! spans). hcl-rs's own evaluator (`hcl::eval`) is not used: its functions are plain `fn`
//! pointers, so user `function` blocks (a body and parameters known only at load) cannot be
//! declared to it; it is strictly typed where cty converts (`"true"` as a condition, a number
//! where a string is wanted, which bake files rely on); lazy, cycle-checked variable and
//! block references are not its model; and its expressions carry no positions for errors.

use std::collections::BTreeMap;
use std::ops::Range;

use hcl_edit::expr::{
    BinaryOperator, Expression, FuncCall, ObjectKey, TraversalOperator, UnaryOperator,
};
use hcl_edit::template::{Directive, Element, Template};
use hcl_edit::Span;

use super::funcs;
use super::value::Value;

/// An evaluation error at a place in a file.
#[derive(Debug, Clone)]
pub(crate) struct EvalError {
    /// Index of the file (in the loader's list) the span is in.
    pub file: usize,
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// A user-defined `function` block.
pub(crate) struct UserFunc<'a> {
    pub params: Vec<String>,
    pub variadic: Option<String>,
    pub result: &'a Expression,
    /// The file that defines it (its errors point there).
    pub file: usize,
}

/// What an expression can name beyond its local variables.
pub(crate) trait Host {
    /// A global name: a variable, a top-level attribute, a built-in. `Ok(None)`: no such name.
    fn variable(&self, name: &str) -> Result<Option<Value>, EvalError>;
    /// Names the host knows, for "did you mean" hints.
    fn variable_names(&self) -> Vec<String>;
    /// `KIND.NAME.ATTR` for block kinds (`target`, `group`); `None` when `kind` is not one.
    fn block_attr(&self, kind: &str, name: &str, attr: &str) -> Option<Result<Value, EvalError>>;
    fn function(&self, name: &str) -> Option<UserFunc<'_>>;
    fn function_names(&self) -> Vec<String>;
    /// The text of an HCL file, for `<<-` heredocs (see [`flush_heredoc`]); `None` for JSON.
    fn source(&self, file: usize) -> Option<&str>;
}

/// Deepest nesting of user function calls; a deeper one is a recursion buildx rejects too.
const MAX_CALL_DEPTH: usize = 64;

/// Evaluates expressions of one file with a stack of local variables.
pub(crate) struct Evaluator<'h> {
    host: &'h dyn Host,
    file: usize,
    locals: Vec<(String, Value)>,
    depth: usize,
}

type R = Result<Value, EvalError>;

impl<'h> Evaluator<'h> {
    pub(crate) fn new(host: &'h dyn Host, file: usize, locals: Vec<(String, Value)>) -> Self {
        Evaluator {
            host,
            file,
            locals,
            depth: 0,
        }
    }

    fn err(&self, span: Option<Range<usize>>, message: impl Into<String>) -> EvalError {
        EvalError {
            file: self.file,
            span,
            message: message.into(),
        }
    }

    pub(crate) fn eval(&mut self, e: &Expression) -> R {
        let span = e.span();
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => n
                .value()
                .as_f64()
                .map(Value::Number)
                .ok_or_else(|| self.err(span, "number out of range")),
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(a) => a
                .iter()
                .map(|x| self.eval(x))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            Expression::Object(o) => {
                let mut out = BTreeMap::new();
                for (k, v) in o.iter() {
                    let key = match k {
                        ObjectKey::Ident(i) => i.as_str().to_string(),
                        ObjectKey::Expression(ke) => {
                            let kv = self.eval(ke)?;
                            kv.to_str()
                                .map_err(|m| self.err(ke.span(), format!("object key: {m}")))?
                        }
                    };
                    let val = self.eval(v.expr())?;
                    out.insert(key, val);
                }
                Ok(Value::Object(out))
            }
            Expression::StringTemplate(t) => self.template_value(t, span),
            Expression::HeredocTemplate(h) => {
                let flushed = span.as_ref().and_then(|sp| {
                    let raw = self.host.source(self.file)?.get(sp.clone())?;
                    flush_heredoc(raw)
                });
                let mut out = String::new();
                match flushed {
                    Some(body) => {
                        let t = hcl_edit::parser::parse_template(&body).map_err(|e| {
                            self.err(span.clone(), format!("heredoc: {}", e.message()))
                        })?;
                        // Positions inside the re-read body are not the file's.
                        self.template(&t, false, false, &mut out).map_err(|mut e| {
                            e.span = span.clone();
                            e
                        })?;
                    }
                    None => self.template(&h.template, false, false, &mut out)?,
                }
                Ok(Value::String(out))
            }
            Expression::Parenthesis(p) => self.eval(p.inner()),
            Expression::Variable(v) => self.variable(v.as_str(), span),
            Expression::Conditional(c) => {
                let cond = self.eval(&c.cond_expr)?;
                let b = cond
                    .to_bool()
                    .map_err(|m| self.err(c.cond_expr.span(), format!("condition: {m}")))?;
                if b {
                    self.eval(&c.true_expr)
                } else {
                    self.eval(&c.false_expr)
                }
            }
            Expression::FuncCall(f) => self.call(f, span),
            Expression::Traversal(t) => self.traversal(&t.expr, &t.operators, span),
            Expression::UnaryOp(u) => {
                let v = self.eval(&u.expr)?;
                match u.operator.value() {
                    UnaryOperator::Neg => v
                        .to_number()
                        .map(|n| Value::Number(-n))
                        .map_err(|m| self.err(span, m)),
                    UnaryOperator::Not => v
                        .to_bool()
                        .map(|b| Value::Bool(!b))
                        .map_err(|m| self.err(span, m)),
                }
            }
            Expression::BinaryOp(b) => {
                self.binary(&b.lhs_expr, *b.operator.value(), &b.rhs_expr, span)
            }
            Expression::ForExpr(f) => self.for_expr(f, span),
        }
    }

    fn variable(&mut self, name: &str, span: Option<Range<usize>>) -> R {
        if let Some((_, v)) = self.locals.iter().rev().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        match self.host.variable(name)? {
            Some(v) => Ok(v),
            None => {
                let mut names: Vec<String> = self.locals.iter().map(|(n, _)| n.clone()).collect();
                names.extend(self.host.variable_names());
                let hint = crate::project::suggest(name, names.iter().map(String::as_str))
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                Err(self.err(
                    span,
                    format!("there is no variable named {name:?}{hint} (declare it with variable \"{name}\" {{ default = \"...\" }})"),
                ))
            }
        }
    }

    fn template_value(&mut self, t: &Template, _span: Option<Range<usize>>) -> R {
        // HCL: a template that is one interpolation and nothing else keeps the value's type.
        let elements: Vec<&Element> = t.iter().collect();
        if let [Element::Interpolation(i)] = elements.as_slice() {
            return self.eval(&i.expr);
        }
        let mut out = String::new();
        self.template(t, false, false, &mut out)?;
        Ok(Value::String(out))
    }

    /// Appends `t` to `out`. `trim_first`/`trim_last`: strip markers of the enclosing directive
    /// that remove whitespace at the start of the first literal / end of the last one.
    fn template(
        &mut self,
        t: &Template,
        trim_first: bool,
        trim_last: bool,
        out: &mut String,
    ) -> Result<(), EvalError> {
        let elements: Vec<&Element> = t.iter().collect();
        let n = elements.len();
        // Whether the next literal loses its leading whitespace (a `~}` before it).
        let mut strip_next = trim_first;
        for (i, el) in elements.iter().enumerate() {
            // Whether a `{~` right after this element strips this literal's end.
            let strip_this_end = match elements.get(i + 1) {
                Some(Element::Interpolation(x)) => x.strip.strip_start(),
                Some(Element::Directive(d)) => match d.as_ref() {
                    Directive::If(d) => d.if_expr.strip.strip_start(),
                    Directive::For(d) => d.for_expr.strip.strip_start(),
                },
                Some(Element::Literal(_)) => false,
                None => trim_last,
            } || (i + 1 == n && trim_last);
            match el {
                Element::Literal(s) => {
                    let mut s: &str = s.value();
                    if strip_next {
                        s = s.trim_start();
                    }
                    if strip_this_end {
                        s = s.trim_end();
                    }
                    out.push_str(s);
                    strip_next = false;
                }
                Element::Interpolation(x) => {
                    let v = self.eval(&x.expr)?;
                    out.push_str(&self.interpolated(&v, x.expr.span())?);
                    strip_next = x.strip.strip_end();
                }
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => {
                        let cond = self.eval(&d.if_expr.cond_expr)?;
                        let b = cond.to_bool().map_err(|m| {
                            self.err(
                                d.if_expr.cond_expr.span(),
                                format!("%{{if}} condition: {m}"),
                            )
                        })?;
                        let else_strip = d.else_expr.as_ref().map(|e| e.strip);
                        if b {
                            let end = match else_strip {
                                Some(s) => s.strip_start(),
                                None => d.endif_expr.strip.strip_start(),
                            };
                            self.template(
                                &d.if_expr.template,
                                d.if_expr.strip.strip_end(),
                                end,
                                out,
                            )?;
                        } else if let Some(e) = &d.else_expr {
                            self.template(
                                &e.template,
                                e.strip.strip_end(),
                                d.endif_expr.strip.strip_start(),
                                out,
                            )?;
                        }
                        strip_next = d.endif_expr.strip.strip_end();
                    }
                    Directive::For(d) => {
                        let f = &d.for_expr;
                        let coll = self.eval(&f.collection_expr)?;
                        let pairs = self.iterate(&coll, f.collection_expr.span())?;
                        for (k, v) in pairs {
                            let mark = self.locals.len();
                            if let Some(kv) = &f.key_var {
                                self.locals.push((kv.as_str().to_string(), k));
                            }
                            self.locals.push((f.value_var.as_str().to_string(), v));
                            let r = self.template(
                                &f.template,
                                f.strip.strip_end(),
                                d.endfor_expr.strip.strip_start(),
                                out,
                            );
                            self.locals.truncate(mark);
                            r?;
                        }
                        strip_next = d.endfor_expr.strip.strip_end();
                    }
                },
            }
        }
        Ok(())
    }

    fn interpolated(&self, v: &Value, span: Option<Range<usize>>) -> Result<String, EvalError> {
        match v {
            Value::Null => Err(self.err(
                span,
                "a null value cannot be part of a string (the expression in ${...} is null)",
            )),
            other => other.to_str().map_err(|m| self.err(span, m)),
        }
    }

    /// A collection's (key, value) pairs: lists by index, objects by key.
    fn iterate(
        &self,
        coll: &Value,
        span: Option<Range<usize>>,
    ) -> Result<Vec<(Value, Value)>, EvalError> {
        match coll {
            Value::List(l) => Ok(l
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v.clone()))
                .collect()),
            Value::Object(m) => Ok(m
                .iter()
                .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                .collect()),
            other => Err(self.err(
                span,
                format!(
                    "cannot iterate over a {}; a list or map is required",
                    other.type_name()
                ),
            )),
        }
    }

    fn for_expr(&mut self, f: &hcl_edit::expr::ForExpr, span: Option<Range<usize>>) -> R {
        let coll = self.eval(&f.intro.collection_expr)?;
        let pairs = self.iterate(&coll, f.intro.collection_expr.span())?;
        let mut list = Vec::new();
        let mut obj: BTreeMap<String, Value> = BTreeMap::new();
        let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (k, v) in pairs {
            let mark = self.locals.len();
            if let Some(kv) = &f.intro.key_var {
                self.locals.push((kv.as_str().to_string(), k));
            }
            self.locals
                .push((f.intro.value_var.as_str().to_string(), v));
            let r = (|| -> Result<(), EvalError> {
                if let Some(c) = &f.cond {
                    let keep = self
                        .eval(&c.expr)?
                        .to_bool()
                        .map_err(|m| self.err(c.expr.span(), format!("for condition: {m}")))?;
                    if !keep {
                        return Ok(());
                    }
                }
                let value = self.eval(&f.value_expr)?;
                match &f.key_expr {
                    None => list.push(value),
                    Some(ke) => {
                        let key = self
                            .eval(ke)?
                            .to_str()
                            .map_err(|m| self.err(ke.span(), format!("for key: {m}")))?;
                        if f.grouping {
                            grouped.entry(key).or_default().push(value);
                        } else if obj.insert(key.clone(), value).is_some() {
                            return Err(self.err(
                                ke.span(),
                                format!("duplicate object key {key:?} (add ... after the value to group them)"),
                            ));
                        }
                    }
                }
                Ok(())
            })();
            self.locals.truncate(mark);
            r?;
        }
        let _ = span;
        Ok(match &f.key_expr {
            None => Value::List(list),
            Some(_) if f.grouping => Value::Object(
                grouped
                    .into_iter()
                    .map(|(k, v)| (k, Value::List(v)))
                    .collect(),
            ),
            Some(_) => Value::Object(obj),
        })
    }

    fn traversal(
        &mut self,
        base: &Expression,
        ops: &[hcl_edit::Decorated<TraversalOperator>],
        span: Option<Range<usize>>,
    ) -> R {
        // `target.NAME.ATTR`: another block's attribute, unless a local shadows the kind.
        if let Expression::Variable(root) = base {
            let kind = root.as_str();
            let is_local = self.locals.iter().any(|(n, _)| n == kind);
            if !is_local {
                if let (
                    Some(TraversalOperator::GetAttr(name)),
                    Some(TraversalOperator::GetAttr(attr)),
                ) = (
                    ops.first().map(|o| o.value()),
                    ops.get(1).map(|o| o.value()),
                ) {
                    if let Some(r) = self.host.block_attr(kind, name.as_str(), attr.as_str()) {
                        let v = r?;
                        return self.apply_ops(v, &ops[2..], span);
                    }
                } else if matches!(kind, "target" | "group") && self.host.variable(kind)?.is_none()
                {
                    return Err(self.err(
                        span,
                        format!("write {kind}.NAME.ATTRIBUTE to use another {kind}'s attribute"),
                    ));
                }
            }
        }
        let v = self.eval(base)?;
        self.apply_ops(v, ops, span)
    }

    fn apply_ops(
        &mut self,
        mut v: Value,
        ops: &[hcl_edit::Decorated<TraversalOperator>],
        span: Option<Range<usize>>,
    ) -> R {
        let mut i = 0;
        while i < ops.len() {
            let op = ops[i].value();
            let op_span = ops[i].span().or_else(|| span.clone());
            match op {
                TraversalOperator::GetAttr(name) => {
                    v = self.get_attr(&v, name.as_str(), op_span)?;
                }
                TraversalOperator::Index(ie) => {
                    let key = self.eval(ie)?;
                    v = self.index(&v, &key, ie.span())?;
                }
                TraversalOperator::LegacyIndex(n) => {
                    v = self.index(&v, &Value::Number(*n.value() as f64), op_span)?;
                }
                TraversalOperator::FullSplat(_) | TraversalOperator::AttrSplat(_) => {
                    let items = match v {
                        Value::Null => Vec::new(),
                        Value::List(l) => l,
                        other => vec![other],
                    };
                    // `[*]` applies everything after it to each element; `.*` only the
                    // attribute accesses that directly follow it.
                    let rest_end = if matches!(op, TraversalOperator::FullSplat(_)) {
                        ops.len()
                    } else {
                        let mut j = i + 1;
                        while j < ops.len()
                            && matches!(ops[j].value(), TraversalOperator::GetAttr(_))
                        {
                            j += 1;
                        }
                        j
                    };
                    let rest = &ops[i + 1..rest_end];
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(self.apply_ops(item, rest, span.clone())?);
                    }
                    v = Value::List(out);
                    i = rest_end;
                    continue;
                }
            }
            i += 1;
        }
        Ok(v)
    }

    fn get_attr(&self, v: &Value, name: &str, span: Option<Range<usize>>) -> R {
        match v {
            Value::Object(m) => m.get(name).cloned().ok_or_else(|| {
                let hint = crate::project::suggest(name, m.keys().map(String::as_str))
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                self.err(span, format!("the object has no attribute {name:?}{hint}"))
            }),
            Value::Null => Err(self.err(span, format!("cannot read attribute {name:?} of null"))),
            other => Err(self.err(
                span,
                format!("cannot read attribute {name:?} of a {}", other.type_name()),
            )),
        }
    }

    fn index(&self, v: &Value, key: &Value, span: Option<Range<usize>>) -> R {
        match v {
            Value::List(l) => {
                let n = key
                    .to_number()
                    .map_err(|m| self.err(span.clone(), format!("index: {m}")))?;
                if n.fract() != 0.0 || n < 0.0 || n as usize >= l.len() {
                    return Err(self.err(
                        span,
                        format!(
                            "index {} is out of range for a list of {} elements",
                            super::value::fmt_number(n),
                            l.len()
                        ),
                    ));
                }
                Ok(l[n as usize].clone())
            }
            Value::Object(m) => {
                let k = key
                    .to_str()
                    .map_err(|e| self.err(span.clone(), format!("key: {e}")))?;
                m.get(&k)
                    .cloned()
                    .ok_or_else(|| self.err(span, format!("the map has no element {k:?}")))
            }
            other => Err(self.err(span, format!("cannot index a {}", other.type_name()))),
        }
    }

    fn binary(
        &mut self,
        lhs: &Expression,
        op: BinaryOperator,
        rhs: &Expression,
        span: Option<Range<usize>>,
    ) -> R {
        use BinaryOperator as B;
        let a = self.eval(lhs)?;
        // `&&` and `||` need the right side only when the left does not decide.
        match op {
            B::And | B::Or => {
                let l = a.to_bool().map_err(|m| self.err(lhs.span(), m))?;
                if (op == B::And && !l) || (op == B::Or && l) {
                    return Ok(Value::Bool(l));
                }
                let r = self.eval(rhs)?;
                return r
                    .to_bool()
                    .map(Value::Bool)
                    .map_err(|m| self.err(rhs.span(), m));
            }
            _ => {}
        }
        let b = self.eval(rhs)?;
        match op {
            B::Eq => return Ok(Value::Bool(a.equals(&b))),
            B::NotEq => return Ok(Value::Bool(!a.equals(&b))),
            _ => {}
        }
        let x = a.to_number().map_err(|m| self.err(lhs.span(), m))?;
        let y = b.to_number().map_err(|m| self.err(rhs.span(), m))?;
        Ok(match op {
            B::Less => Value::Bool(x < y),
            B::LessEq => Value::Bool(x <= y),
            B::Greater => Value::Bool(x > y),
            B::GreaterEq => Value::Bool(x >= y),
            B::Plus => Value::Number(x + y),
            B::Minus => Value::Number(x - y),
            B::Mul => Value::Number(x * y),
            B::Div => {
                if y == 0.0 {
                    return Err(self.err(span, "division by zero"));
                }
                Value::Number(x / y)
            }
            B::Mod => {
                if y == 0.0 {
                    return Err(self.err(span, "modulo by zero"));
                }
                Value::Number(x % y)
            }
            B::Eq | B::NotEq | B::And | B::Or => unreachable!("handled above"),
        })
    }

    fn call(&mut self, f: &FuncCall, span: Option<Range<usize>>) -> R {
        if f.name.is_namespaced() {
            return Err(self.err(
                span,
                "namespaced functions (a::b) do not exist in bake files",
            ));
        }
        let name = f.name.name.as_str();
        // try() and can() look at errors, so they evaluate their arguments themselves.
        match name {
            "try" => {
                let mut last = None;
                for a in f.args.iter() {
                    match self.eval(a) {
                        Ok(v) => return Ok(v),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(
                    last.unwrap_or_else(|| self.err(span, "try() needs at least one argument"))
                );
            }
            "can" => {
                if f.args.len() != 1 {
                    return Err(self.err(span, "can() takes exactly one argument"));
                }
                let ok = f.args.iter().all(|a| self.eval(a).is_ok());
                return Ok(Value::Bool(ok));
            }
            _ => {}
        }
        let mut args = Vec::with_capacity(f.args.len());
        for a in f.args.iter() {
            args.push(self.eval(a)?);
        }
        if f.args.expand_final() {
            match args.pop() {
                Some(Value::List(l)) => args.extend(l),
                Some(other) => {
                    return Err(self.err(
                        span,
                        format!(
                            "the last argument before ... must be a list, found a {}",
                            other.type_name()
                        ),
                    ))
                }
                None => {}
            }
        }
        if let Some(r) = funcs::call(name, args.clone()) {
            return r.map_err(|m| self.err(span, format!("{name}(): {m}")));
        }
        if let Some(uf) = self.host.function(name) {
            return self.call_user(name, &uf, args, span);
        }
        if let Some(why) = funcs::unsupported(name) {
            return Err(self.err(
                span,
                format!("function {name}() is not supported by bk-build: {why}"),
            ));
        }
        let mut names: Vec<String> = funcs::NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(self.host.function_names());
        let hint = crate::project::suggest(name, names.iter().map(String::as_str))
            .map(|s| format!("; did you mean {s}()?"))
            .unwrap_or_default();
        Err(self.err(span, format!("there is no function named {name:?}{hint}")))
    }

    fn call_user(
        &mut self,
        name: &str,
        uf: &UserFunc<'_>,
        mut args: Vec<Value>,
        span: Option<Range<usize>>,
    ) -> R {
        let n = uf.params.len();
        if args.len() < n || (uf.variadic.is_none() && args.len() > n) {
            return Err(self.err(
                span,
                format!(
                    "function {name}() takes {}{} arguments, {} given",
                    if uf.variadic.is_some() {
                        "at least "
                    } else {
                        ""
                    },
                    n,
                    args.len()
                ),
            ));
        }
        if self.depth >= MAX_CALL_DEPTH {
            return Err(self.err(
                span,
                format!("function {name}() calls itself (directly or through others): function cycles are not allowed"),
            ));
        }
        let rest = args.split_off(n);
        let mut locals: Vec<(String, Value)> = uf.params.iter().cloned().zip(args).collect();
        if let Some(v) = &uf.variadic {
            locals.push((v.clone(), Value::List(rest)));
        }
        let mut inner = Evaluator {
            host: self.host,
            file: uf.file,
            locals,
            depth: self.depth + 1,
        };
        inner.eval(uf.result)
    }
}

/// The body of a `<<-` heredoc (`raw` is its source, from `<<-` to the closing delimiter)
/// with HCL's indentation removal ("flush" heredocs, hclsyntax `flushHeredocTemplateParts`):
/// the smallest leading whitespace of its non-blank lines is removed from each of them,
/// inside `%{for}`/`%{if}` bodies too; whitespace-only lines are left as they are. `None` for
/// a `<<` heredoc. (hcl-edit's own dedent skips lines inside directives.)
pub(crate) fn flush_heredoc(raw: &str) -> Option<String> {
    let rest = raw.strip_prefix("<<-")?;
    let body_start = rest.find('\n')? + 1;
    let body = &rest[body_start..];
    // The closing delimiter is on the last line.
    let body = match body.trim_end_matches([' ', '\t']).rfind('\n') {
        Some(i) => &body[..=i],
        None => "",
    };
    let blank = |l: &str| l.trim().is_empty();
    let indent = |l: &str| {
        l.chars()
            .take_while(|c| c.is_whitespace() && *c != '\n')
            .count()
    };
    let min = body
        .split_inclusive('\n')
        .filter(|l| !blank(l))
        .map(indent)
        .min()
        .unwrap_or(0);
    Some(
        body.split_inclusive('\n')
            .map(|l| {
                if blank(l) {
                    l.to_string()
                } else {
                    l.chars().skip(min).collect()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHost;
    impl Host for NoHost {
        fn variable(&self, name: &str) -> Result<Option<Value>, EvalError> {
            Ok(match name {
                "N" => Some(Value::Number(3.0)),
                "L" => Some(Value::List(vec![Value::str("a"), Value::str("b")])),
                _ => None,
            })
        }
        fn variable_names(&self) -> Vec<String> {
            vec!["N".into(), "L".into()]
        }
        fn block_attr(&self, _: &str, _: &str, _: &str) -> Option<Result<Value, EvalError>> {
            None
        }
        fn function(&self, _: &str) -> Option<UserFunc<'_>> {
            None
        }
        fn function_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn source(&self, _: usize) -> Option<&str> {
            None
        }
    }

    fn ev(src: &str) -> Result<Value, String> {
        let e = hcl_edit::parser::parse_expr(src).map_err(|e| e.to_string())?;
        Evaluator::new(&NoHost, 0, Vec::new())
            .eval(&e)
            .map_err(|e| e.message)
    }

    fn s(src: &str) -> String {
        match ev(src) {
            Ok(Value::String(s)) => s,
            other => panic!("{src}: {other:?}"),
        }
    }

    #[test]
    fn templates_interpolate_and_keep_single_values_typed() {
        assert_eq!(s(r#""v${N}""#), "v3");
        assert_eq!(ev(r#""${N}""#).unwrap(), Value::Number(3.0));
        assert_eq!(s(r#""%{ for x in L }[${x}]%{ endfor }""#), "[a][b]");
        assert_eq!(s(r#""%{ if N > 2 }big%{ else }small%{ endif }""#), "big");
        assert_eq!(s("\"a  ${~ \"b\" ~}  c\""), "abc");
        assert_eq!(s("<<-EOT\n    x ${N}\n    EOT"), "x 3\n");
        assert!(ev(r#""x${null}""#).unwrap_err().contains("null"));
        assert_eq!(ev(r#""${null}""#).unwrap(), Value::Null);
    }

    #[test]
    fn flush_heredocs_dedent_inside_directives() {
        let raw = "<<-EOT\n      %{ for n in L }\n        [${n}]\n      %{ endfor }\n\n    EOT";
        assert_eq!(
            flush_heredoc(raw).unwrap(),
            "%{ for n in L }\n  [${n}]\n%{ endfor }\n\n"
        );
        assert_eq!(flush_heredoc("<<EOT\n  x\nEOT"), None);
    }

    #[test]
    fn operators_for_and_splat() {
        assert_eq!(ev("1 + 2 * 3").unwrap(), Value::Number(7.0));
        assert_eq!(ev("\"2\" + 1").unwrap(), Value::Number(3.0));
        assert_eq!(ev("1 == \"1\"").unwrap(), Value::Bool(false));
        assert_eq!(ev("N > 2 ? \"y\" : \"n\"").unwrap(), Value::str("y"));
        assert_eq!(
            ev("[for x in L : upper(x) if x != \"b\"]").unwrap(),
            Value::List(vec![Value::str("A")])
        );
        assert_eq!(
            ev("{for i, x in L : x => i}").unwrap(),
            Value::Object(
                [
                    ("a".into(), Value::Number(0.0)),
                    ("b".into(), Value::Number(1.0))
                ]
                .into()
            )
        );
        assert_eq!(
            ev("[{a = 1}, {a = 2}][*].a").unwrap(),
            Value::List(vec![Value::Number(1.0), Value::Number(2.0)])
        );
        assert_eq!(ev("L[1]").unwrap(), Value::str("b"));
        assert_eq!(ev("try(L[5], \"d\")").unwrap(), Value::str("d"));
        assert_eq!(ev("can(L[5])").unwrap(), Value::Bool(false));
        assert_eq!(ev("join(\"-\", [L]...)").unwrap(), Value::str("a-b"));
    }

    #[test]
    fn unknown_names_are_errors_with_hints() {
        let e = ev("\"${NN}\"").unwrap_err();
        assert!(e.contains("\"NN\"") && e.contains("did you mean N"), "{e}");
        let e = ev("uper(\"x\")").unwrap_err();
        assert!(e.contains("did you mean upper()"), "{e}");
    }
}
