//! The end-of-run table of a multi-target run: what happened to each target, how long it took,
//! how much context was sent, and the image digest it produced.

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
    /// Image or manifest digest, e.g. `sha256:…`; shown shortened to 12 hex digits.
    pub digest: Option<String>,
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
            },
            SummaryRow {
                target: "web".into(),
                outcome: TargetOutcome::Skipped,
                duration: None,
                bytes_sent: None,
                digest: Some("sha256:9c1b7d4e3f2a".into()),
            },
            SummaryRow {
                target: "api-server".into(),
                outcome: TargetOutcome::Failed,
                duration: Some(Duration::from_secs(75)),
                bytes_sent: Some(0),
                digest: None,
            },
            SummaryRow {
                target: "worker".into(),
                outcome: TargetOutcome::NotStarted,
                duration: None,
                bytes_sent: None,
                digest: None,
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

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(
            summary_table(&[]),
            "TARGET   RESULT   TIME   SENT   DIGEST\n"
        );
    }
}
