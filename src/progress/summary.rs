//! The end-of-run table of a multi-target run: what happened to each target, how long it took,
//! how much context was sent, and the image digest it produced; and the same as Markdown for a
//! CI job summary page (`$GITHUB_STEP_SUMMARY`).

use std::fmt;
use std::time::Duration;

use super::units::{format_bytes, format_duration};

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetOutcome {
    Built,
    /// Unchanged since the last build, so no Solve was made.
    Skipped,
    /// Its image was already built from the same inputs; only new tags were added to it.
    Retagged,
    Failed,
    /// Never run, e.g. because something it depends on failed.
    NotStarted,
}

impl fmt::Display for TargetOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetOutcome::Built => "built",
            TargetOutcome::Skipped => "skipped",
            TargetOutcome::Retagged => "retagged",
            TargetOutcome::Failed => "failed",
            TargetOutcome::NotStarted => "not started",
        })
    }
}

/// One row of [`summary_table`]; unknown values are shown as `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub target: String,
    pub outcome: TargetOutcome,
    pub duration: Option<Duration>,
    /// Build-context bytes the daemon received (see `ProgressReport::transferred_context_bytes`).
    pub bytes_sent: Option<u64>,
    /// Image or manifest digest, e.g. `sha256:…`; shown shortened to 12 hex digits in the
    /// table, whole in Markdown.
    pub digest: Option<String>,
    /// What the plan decided: `build`, `retag` or `skip` (Markdown only).
    pub action: Option<String>,
    /// Why (the plan's reasons; Markdown only).
    pub reason: Option<String>,
    /// The target's error, shown in full under the Markdown table.
    pub error: Option<String>,
}

/// ```text
/// TARGET   RESULT    TIME   SENT     DIGEST
/// pybase   built     12.3s  2.35kB   3f2a9c1b7d4e
/// web      skipped   -      -        9c1b7d4e3f2a
/// ```
/// Columns are separated by at least three spaces; no line has trailing spaces.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let header = ["TARGET", "RESULT", "TIME", "SENT", "DIGEST"].map(str::to_string);
    let mut table: Vec<[String; 5]> = vec![header];
    for r in rows {
        table.push([
            r.target.clone(),
            r.outcome.to_string(),
            r.duration.map_or_else(dash, format_duration),
            r.bytes_sent
                .map_or_else(dash, |b| format_bytes(i64::try_from(b).unwrap_or(i64::MAX))),
            r.digest.as_deref().map_or_else(dash, short_digest),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(console::measure_text_width(cell));
        }
    }
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - console::measure_text_width(cell) + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The rows as a Markdown section for a CI job summary (GitHub-flavoured: a table, then each
/// failed target's error in a folded `<details>` block):
///
/// ```text
/// ### bk-build bake
///
/// | Target | Action | Result | Digest | Time | Reason |
/// | --- | --- | --- | --- | --- | --- |
/// | api | build | built | `sha256:3f2a…` | 12.3s | Dockerfile changed |
/// ```
///
/// Text from files and errors is escaped, so it cannot break the table or inject markup.
pub fn summary_markdown(title: &str, rows: &[SummaryRow]) -> String {
    let mut out = format!("### {}\n\n", md_text(title));
    out.push_str("| Target | Action | Result | Digest | Time | Reason |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let digest = match r.digest.as_deref() {
            Some(d) if d.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') => {
                format!("`{d}`")
            }
            Some(d) => md_text(d),
            None => "-".into(),
        };
        let cells = [
            md_text(&r.target),
            r.action.as_deref().map_or_else(dash, md_text),
            md_text(&r.outcome.to_string()),
            digest,
            r.duration.map_or_else(dash, format_duration),
            r.reason
                .as_deref()
                .filter(|s| !s.is_empty())
                .map_or_else(dash, md_text),
        ];
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    for r in rows {
        let Some(e) = r.error.as_deref() else {
            continue;
        };
        // A fence longer than any run of backticks in the text, so the text cannot close it.
        let longest = e.split(|c| c != '`').map(str::len).max().unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        out.push_str(&format!(
            "\n<details><summary>{}: {}</summary>\n\n{fence}text\n{}\n{fence}\n\n</details>\n",
            md_text(&r.target),
            md_text(&r.outcome.to_string()),
            e.trim_end_matches('\n')
        ));
    }
    out.push('\n');
    out
}

/// Text for a table cell or heading: one line, Markdown and HTML punctuation escaped.
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn dash() -> String {
    "-".to_string()
}

/// `sha256:3f2a9c1b7d4e…` → `3f2a9c1b7d4e`; other strings are kept whole.
fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_shortens_digests() {
        let rows = [
            SummaryRow {
                target: "pybase".into(),
                outcome: TargetOutcome::Built,
                duration: Some(Duration::from_millis(12_340)),
                bytes_sent: Some(2_346),
                digest: Some(
                    "sha256:3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd"
                        .into(),
                ),
                ..row()
            },
            SummaryRow {
                target: "web".into(),
                outcome: TargetOutcome::Skipped,
                duration: None,
                bytes_sent: None,
                digest: Some("sha256:9c1b7d4e3f2a".into()),
                ..row()
            },
            SummaryRow {
                target: "api-server".into(),
                outcome: TargetOutcome::Failed,
                duration: Some(Duration::from_secs(75)),
                bytes_sent: Some(0),
                digest: None,
                ..row()
            },
            SummaryRow {
                target: "worker".into(),
                outcome: TargetOutcome::NotStarted,
                duration: None,
                bytes_sent: None,
                digest: None,
                ..row()
            },
        ];
        assert_eq!(
            summary_table(&rows),
            "TARGET       RESULT        TIME    SENT     DIGEST\n\
             pybase       built         12.3s   2.35kB   3f2a9c1b7d4e\n\
             web          skipped       -       -        9c1b7d4e3f2a\n\
             api-server   failed        1m15s   0B       -\n\
             worker       not started   -       -        -\n"
        );
    }

    fn row() -> SummaryRow {
        SummaryRow {
            target: String::new(),
            outcome: TargetOutcome::Built,
            duration: None,
            bytes_sent: None,
            digest: None,
            action: None,
            reason: None,
            error: None,
        }
    }

    #[test]
    fn markdown_has_one_escaped_row_per_target_and_failures_in_full() {
        let rows = [
            SummaryRow {
                target: "api".into(),
                outcome: TargetOutcome::Built,
                duration: Some(Duration::from_millis(12_340)),
                digest: Some("sha256:3f2a".into()),
                action: Some("build".into()),
                reason: Some("src/__init__.py changed | <b>".into()),
                ..row()
            },
            SummaryRow {
                target: "web".into(),
                outcome: TargetOutcome::Skipped,
                digest: Some("sha256:9c1b".into()),
                action: Some("skip".into()),
                reason: Some("unchanged".into()),
                ..row()
            },
            SummaryRow {
                target: "bad".into(),
                outcome: TargetOutcome::Failed,
                action: Some("build".into()),
                error: Some("Dockerfile:2\n```\nERROR: exit code: 1\n".into()),
                ..row()
            },
        ];
        assert_eq!(
            summary_markdown("bk-build bake", &rows),
            "### bk-build bake\n\n\
             | Target | Action | Result | Digest | Time | Reason |\n\
             | --- | --- | --- | --- | --- | --- |\n\
             | api | build | built | `sha256:3f2a` | 12.3s | src/\\_\\_init\\_\\_.py changed \\| &lt;b&gt; |\n\
             | web | skip | skipped | `sha256:9c1b` | - | unchanged |\n\
             | bad | build | failed | - | - | - |\n\
             \n<details><summary>bad: failed</summary>\n\n\
             ````text\nDockerfile:2\n```\nERROR: exit code: 1\n````\n\n</details>\n\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(
            summary_table(&[]),
            "TARGET   RESULT   TIME   SENT   DIGEST\n"
        );
    }
}
