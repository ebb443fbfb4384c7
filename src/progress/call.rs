//! What `--call check|outline|targets` prints: the Dockerfile frontend's answer to a
//! subrequest, shown as `docker buildx build --call` shows it (buildx `commands/build.go`
//! `printResult`), and the exit status it asks for.
//!
//! The frontend answers in result metadata: `result.json` (the structured answer),
//! `result.txt` (the frontend's own text rendering), `result.statuscode` and `version`. With
//! `format=json` the JSON is printed as it came. As text, `outline` and `targets` are the
//! frontend's `result.txt` (buildx renders the same JSON with the same BuildKit printers), and
//! `check` is rendered here from the lint results (BuildKit `frontend/subrequests/lint`): a
//! count line, each warning with its rule, link, detail and an excerpt of the Dockerfile
//! under the name the user gave it, then the check's build error, if any, as the run's error.
//!
//! Knows the lint results' JSON shape; does not know how the answer was obtained.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::options::CallFunc;

/// The lint result format this renderer knows (BuildKit `SubrequestLintDefinition.Version`).
/// A newer answer with a text rendering is shown as that text, as buildx does.
const LINT_VERSION: (u64, u64, u64) = (1, 0, 0);

/// What one subrequest's answer prints and how the run ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallReport {
    /// For standard output.
    pub text: String,
    /// The check's own build error (the Dockerfile cannot be evaluated), rendered with its
    /// location; the run fails with it.
    pub error: Option<String>,
    /// The exit status the answer asks for (`result.statuscode`: 1 when a check found
    /// warnings), or 0 with `ignorestatus=true`.
    pub status: i32,
}

/// Renders the answer in `response` (a build's exporter response with the subrequest's
/// metadata) for `call`. `dockerfile` is the Dockerfile's name as the user gave it (buildx
/// shows that in excerpts instead of the name the daemon saw).
///
/// # Errors
/// The answer's `result.json` is not what the frontend documents.
pub fn call_report(
    call: &CallFunc,
    response: &BTreeMap<String, String>,
    dockerfile: Option<&str>,
) -> Result<CallReport, String> {
    let json = response.get("result.json").map(String::as_str);
    let txt = response.get("result.txt").map(String::as_str);
    let mut report = CallReport::default();
    if call.name == "lint" {
        let results: LintResults = match json {
            Some(j) => serde_json::from_str(j)
                .map_err(|e| format!("the frontend's lint result is not valid: {e}"))?,
            None => LintResults::default(),
        };
        let warnings = results.warnings.as_deref().unwrap_or_default();
        if !call.json && !warnings.is_empty() {
            let count = match warnings.len() {
                1 => "1 warning has".to_string(),
                n => format!("{n} warnings have"),
            };
            report
                .text
                .push_str(&format!("Check complete, {count} been found!\n"));
        }
        if call.json {
            report.text.push_str(json.unwrap_or_default());
            report.text.push('\n');
        } else if newer(response.get("version"), LINT_VERSION) && txt.is_some_and(|t| !t.is_empty())
        {
            report.text.push_str(txt.unwrap_or_default());
        } else {
            report.text.push_str(&results.warnings_text(dockerfile)?);
        }
        if let Some(e) = &results.build_error {
            if !call.json && !warnings.is_empty() {
                report.text.push('\n');
            }
            report.error = Some(results.error_text(e, dockerfile));
        } else if warnings.is_empty() && !call.json {
            report.text.push_str("Check complete, no warnings found.\n");
        }
    } else if call.json {
        report.text.push_str(json.unwrap_or_default());
        report.text.push('\n');
    } else {
        match (txt, json) {
            (Some(t), _) => report.text.push_str(t),
            (None, Some(j)) => {
                report.text.push_str(j);
                report.text.push('\n');
            }
            (None, None) => {}
        }
    }
    if !call.ignore_status {
        if let Some(code) = response
            .get("result.statuscode")
            .and_then(|v| v.trim().parse::<i32>().ok())
        {
            report.status = code;
        }
    }
    Ok(report)
}

/// Whether `version` (`MAJOR.MINOR.PATCH`) is newer than `known`.
fn newer(version: Option<&String>, known: (u64, u64, u64)) -> bool {
    let Some(v) = version else {
        return false;
    };
    let mut parts = v.trim().trim_start_matches('v').split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .unwrap_or(0)
    });
    let got = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    got > known
}

/// BuildKit's lint results (`frontend/subrequests/lint` `LintResults`), as JSON.
#[derive(Debug, Default, Deserialize)]
struct LintResults {
    #[serde(default)]
    warnings: Option<Vec<LintWarning>>,
    #[serde(default)]
    sources: Option<Vec<SourceInfo>>,
    #[serde(default, rename = "buildError")]
    build_error: Option<LintError>,
}

#[derive(Debug, Deserialize)]
struct LintWarning {
    #[serde(default, rename = "ruleName")]
    rule_name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    location: Location,
}

#[derive(Debug, Deserialize)]
struct LintError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    location: Location,
}

/// Protobuf JSON of BuildKit's `pb.Location`: zero values are left out.
#[derive(Debug, Default, Deserialize)]
struct Location {
    #[serde(default, rename = "sourceIndex")]
    source_index: i32,
    #[serde(default)]
    ranges: Vec<Range>,
}

#[derive(Debug, Default, Deserialize)]
struct Range {
    #[serde(default)]
    start: Position,
    #[serde(default)]
    end: Position,
}

#[derive(Debug, Default, Deserialize)]
struct Position {
    #[serde(default)]
    line: i32,
}

#[derive(Debug, Default, Deserialize)]
struct SourceInfo {
    #[serde(default)]
    filename: String,
    #[serde(default, with = "super::json::b64")]
    data: Vec<u8>,
}

impl LintResults {
    fn source(&self, index: i32) -> Option<&SourceInfo> {
        let i = usize::try_from(index).ok()?;
        self.sources.as_deref()?.get(i)
    }

    /// Every warning, in BuildKit's order: those without a source first (by rule name), then
    /// by file name, those without a line first, then by first line.
    fn warnings_text(&self, dockerfile: Option<&str>) -> Result<String, String> {
        let mut warnings: Vec<&LintWarning> = self.warnings.iter().flatten().collect();
        let sources = self.sources.as_deref().unwrap_or_default().len();
        if warnings
            .iter()
            .any(|w| usize::try_from(w.location.source_index).is_ok_and(|i| i >= sources))
        {
            return Err("the frontend's lint result names a source it does not have".into());
        }
        let name = |w: &LintWarning| self.source(w.location.source_index).map(|s| &s.filename);
        warnings.sort_by(|a, b| {
            let (ia, ib) = (a.location.source_index, b.location.source_index);
            if ia < 0 || ib < 0 {
                return (ia >= 0)
                    .cmp(&(ib >= 0))
                    .then_with(|| a.rule_name.cmp(&b.rule_name));
            }
            name(a).cmp(&name(b)).then_with(|| {
                match (a.location.ranges.first(), b.location.ranges.first()) {
                    (None, None) => a.rule_name.cmp(&b.rule_name),
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => x.start.line.cmp(&y.start.line),
                }
            })
        });
        let mut out = String::new();
        for w in warnings {
            out.push_str(&format!("\nWARNING: {}", w.rule_name));
            if !w.url.is_empty() {
                out.push_str(&format!(" - {}", w.url));
            }
            out.push_str(&format!("\n{}\n", w.detail));
            if let Some(src) = self.source(w.location.source_index) {
                out.push_str(&excerpt(src, &w.location.ranges, dockerfile));
            }
        }
        Ok(out)
    }

    /// The check's build error: its message, then the excerpt it points at.
    fn error_text(&self, e: &LintError, dockerfile: Option<&str>) -> String {
        let mut out = format!("{}\n", e.message);
        if let Some(src) = self.source(e.location.source_index) {
            out.push_str(&excerpt(src, &e.location.ranges, dockerfile));
        }
        out
    }
}

/// The lines `ranges` cover, marked `>>>`, with up to two lines of context around a single
/// line and one around several, framed as BuildKit frames source excerpts
/// (`solver/errdefs` `Source.Print`); nothing when the ranges fall outside the file.
fn excerpt(src: &SourceInfo, ranges: &[Range], dockerfile: Option<&str>) -> String {
    let text = String::from_utf8_lossy(&src.data);
    // Split as Go's strings.Split does: a final newline leaves an empty last line.
    let lines: Vec<&str> = text.split('\n').collect();
    let span = |r: &Range| (r.start.line, r.end.line.max(r.start.line));
    let (Some(first), Some(last)) = (
        ranges.iter().map(|r| span(r).0).min(),
        ranges.iter().map(|r| span(r).1).max(),
    ) else {
        return String::new();
    };
    let count = lines.len() as i64;
    let (mut start, mut end) = (i64::from(first), i64::from(last));
    if start < 1 || start > count {
        return String::new();
    }
    end = end.min(count);
    let shown_at = start;
    // BuildKit widens the excerpt one step at a time on both sides until `pad` is spent.
    let pad = if start == end { 4 } else { 2 };
    let mut spent = 0;
    while spent < pad {
        if start > 1 {
            start -= 1;
            spent += 1;
        }
        if end != count {
            end += 1;
            spent += 1;
        }
        spent += 1;
    }
    let filename = dockerfile.unwrap_or(&src.filename);
    let rule = "--------------------\n";
    let mut out = format!("{filename}:{shown_at}\n{rule}");
    for n in start..=end {
        let marked = ranges.iter().any(|r| {
            let (s, e) = span(r);
            i64::from(s) <= n && n <= i64::from(e)
        });
        let marker = if marked { ">>>" } else { "   " };
        out.push_str(&format!(" {n:>3} | {marker} {}\n", lines[(n - 1) as usize]));
    }
    out.push_str(rule);
    out
}

/// `bake --call`: every evaluated target's answer, grouped as `docker buildx bake --call`
/// prints them (buildx `commands/bake.go`): as text, per target in name order its name, a
/// blank line and its answer, targets separated by a blank line (a check's build error is
/// printed as `error: …`); as JSON, one document with the groups and, per target, its
/// definition under `build` and the answer's fields under the method's name.
/// `printed` is the `--print` document of the evaluated targets; `dockerfiles` the name each
/// target's Dockerfile is shown under. Returns the text and the exit status (the first
/// failing target's).
pub fn bake_call_report(
    call: &CallFunc,
    answers: &BTreeMap<String, BTreeMap<String, String>>,
    dockerfiles: &BTreeMap<String, String>,
    printed: &serde_json::Value,
) -> (String, i32) {
    use serde_json::{Map, Value};
    let mut status = 0;
    let mut fail = |code: i32| {
        if status == 0 {
            status = code;
        }
    };
    if !call.json {
        let mut out = String::new();
        for (i, (name, response)) in answers.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("{name}\n\n"));
            match call_report(call, response, dockerfiles.get(name).map(String::as_str)) {
                Ok(r) => {
                    out.push_str(&r.text);
                    if let Some(e) = r.error {
                        out.push_str(&format!("error: {e}\n"));
                        fail(1);
                    } else if r.status != 0 {
                        fail(r.status);
                    }
                }
                Err(e) => {
                    out.push_str(&format!("error: {e}\n"));
                    fail(1);
                }
            }
        }
        return (out, status);
    }
    let mut targets = Map::new();
    if let Some(Value::Object(defs)) = printed.get("target") {
        for (name, def) in defs {
            let mut entry = Map::new();
            entry.insert("build".into(), def.clone());
            if let Some(response) = answers.get(name) {
                let mut answer = Map::new();
                match call_report(call, response, dockerfiles.get(name).map(String::as_str)) {
                    Ok(r) => {
                        if let Some(e) = r.error {
                            answer.insert("error".into(), Value::String(e));
                            fail(1);
                        } else if r.status != 0 {
                            fail(r.status);
                        }
                    }
                    Err(e) => {
                        answer.insert("error".into(), Value::String(e));
                        fail(1);
                    }
                }
                match response
                    .get("result.json")
                    .and_then(|j| serde_json::from_str::<Value>(j).ok())
                {
                    Some(Value::Object(fields)) => answer.extend(fields),
                    Some(other) => {
                        answer.insert(call.name.clone(), other);
                    }
                    None => {}
                }
                entry.insert(call.shown_name().to_string(), Value::Object(answer));
            }
            targets.insert(name.clone(), Value::Object(entry));
        }
    }
    let mut doc = Map::new();
    if let Some(Value::Object(groups)) = printed.get("group") {
        if !groups.is_empty() {
            doc.insert("group".into(), Value::Object(groups.clone()));
        }
    }
    doc.insert("target".into(), Value::Object(targets));
    let text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
    (format!("{text}\n"), status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn check(json: bool, ignore_status: bool) -> CallFunc {
        CallFunc {
            name: "lint".into(),
            json,
            ignore_status,
        }
    }

    fn response(result: &serde_json::Value, status: &str) -> BTreeMap<String, String> {
        [
            ("result.json", result.to_string()),
            ("result.txt", "frontend text\n".to_string()),
            ("result.statuscode", status.to_string()),
            ("version", "1.0.0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    const DOCKERFILE: &str = "from busybox as base\nENV A=$UNDEF\nFROM base\nCOPY $NOPE /z\n";

    fn lint(warnings: serde_json::Value, error: Option<serde_json::Value>) -> serde_json::Value {
        let data = base64::engine::general_purpose::STANDARD.encode(DOCKERFILE);
        let mut v = serde_json::json!({
            "warnings": warnings,
            "sources": [{"filename": "Dockerfile", "data": data, "language": "Dockerfile"}],
        });
        if let Some(e) = error {
            v["buildError"] = e;
        }
        v
    }

    fn warning(rule: &str, line: i32) -> serde_json::Value {
        serde_json::json!({
            "ruleName": rule,
            "url": format!("https://docs.docker.com/go/dockerfile/rule/{rule}/"),
            "detail": format!("detail of {rule}"),
            "location": {"ranges": [{"start": {"line": line}, "end": {"line": line}}]},
        })
    }

    #[test]
    fn warnings_are_counted_sorted_by_line_and_shown_under_the_users_file_name() {
        let r = lint(
            serde_json::json!([warning("UndefinedVar", 4), warning("FromAsCasing", 1)]),
            None,
        );
        let out = call_report(
            &check(false, false),
            &response(&r, "1"),
            Some("app/Dockerfile"),
        )
        .unwrap();
        let want = "Check complete, 2 warnings have been found!\n\
            \nWARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/FromAsCasing/\n\
            detail of FromAsCasing\n\
            app/Dockerfile:1\n\
            --------------------\n\
            \x20  1 | >>> from busybox as base\n\
            \x20  2 |     ENV A=$UNDEF\n\
            \x20  3 |     FROM base\n\
            --------------------\n\
            \nWARNING: UndefinedVar - https://docs.docker.com/go/dockerfile/rule/UndefinedVar/\n\
            detail of UndefinedVar\n\
            app/Dockerfile:4\n\
            --------------------\n\
            \x20  2 |     ENV A=$UNDEF\n\
            \x20  3 |     FROM base\n\
            \x20  4 | >>> COPY $NOPE /z\n\
            \x20  5 |     \n\
            --------------------\n";
        assert_eq!(out.text, want);
        assert_eq!((out.status, out.error), (1, None));
        let ignored = call_report(&check(false, true), &response(&r, "1"), None).unwrap();
        assert_eq!(ignored.status, 0);
        assert!(
            ignored.text.contains("\nDockerfile:1\n"),
            "{}",
            ignored.text
        );
    }

    #[test]
    fn a_clean_check_says_so_and_json_is_passed_through() {
        let r = lint(serde_json::Value::Null, None);
        let out = call_report(&check(false, false), &response(&r, "0"), None).unwrap();
        assert_eq!(out.text, "Check complete, no warnings found.\n");
        assert_eq!(out.status, 0);
        let out = call_report(&check(true, false), &response(&r, "0"), None).unwrap();
        assert_eq!(out.text, format!("{r}\n"));
    }

    #[test]
    fn a_build_error_becomes_the_runs_error_with_its_excerpt() {
        let e = serde_json::json!({
            "message": "dockerfile parse error on line 2: unknown instruction: BOGUS",
            "location": {"ranges": [{"start": {"line": 2}, "end": {"line": 2}}]},
        });
        let r = lint(serde_json::json!([warning("FromAsCasing", 1)]), Some(e));
        let out = call_report(&check(false, false), &response(&r, "1"), None).unwrap();
        assert!(
            out.text.ends_with("--------------------\n\n"),
            "{}",
            out.text
        );
        let err = out.error.unwrap();
        assert!(
            err.starts_with(
                "dockerfile parse error on line 2: unknown instruction: BOGUS\nDockerfile:2\n"
            ),
            "{err}"
        );
        assert!(err.contains("   2 | >>> ENV A=$UNDEF\n"), "{err}");
    }

    #[test]
    fn outline_prints_the_frontends_text_and_a_newer_lint_format_too() {
        let outline = CallFunc {
            name: "outline".into(),
            json: false,
            ignore_status: false,
        };
        let mut resp = response(&serde_json::json!({}), "0");
        resp.remove("result.statuscode");
        assert_eq!(
            call_report(&outline, &resp, None).unwrap().text,
            "frontend text\n"
        );
        let r = lint(serde_json::json!([warning("X", 1)]), None);
        let mut resp = response(&r, "1");
        resp.insert("version".into(), "1.1.0".into());
        let out = call_report(&check(false, false), &resp, None).unwrap();
        assert_eq!(
            out.text,
            "Check complete, 1 warning has been found!\nfrontend text\n"
        );
    }

    #[test]
    fn excerpts_clip_at_the_file_edges_and_skip_ranges_outside_it() {
        let src = SourceInfo {
            filename: "Dockerfile".into(),
            data: b"A\nB\nC".to_vec(),
        };
        let r = |s: i32, e: i32| Range {
            start: Position { line: s },
            end: Position { line: e },
        };
        assert_eq!(
            excerpt(&src, &[r(1, 2)], None),
            "Dockerfile:1\n--------------------\n   1 | >>> A\n   2 | >>> B\n   3 |     C\n--------------------\n"
        );
        assert_eq!(excerpt(&src, &[r(9, 9)], None), "");
        assert_eq!(excerpt(&src, &[], None), "");
    }
}
