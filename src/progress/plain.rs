//! Plain, append-only progress text for CI logs, in the shape of `buildx --progress=plain`.
//!
//! Output of one build looks like
//! ```text
//! #3 [2/3] RUN make
//! #3 0.154 compiling
//! #3 DONE 1.2s
//! ```
//! Nodes are numbered in the order they are first printed, so numbers have no gaps. Unlike
//! buildx, an unfinished log line is never printed: lines are held until their newline (or the
//! vertex's end), because with several builds sharing one stream a half line would be split by
//! another build's output. Throttling of progress counters uses the daemon's timestamps only.

use std::collections::HashMap;

use super::trace::{Nanos, NodeUpdate, Signature, StatusState, Trace, Updates};
use super::units::format_bytes;

/// Reprint a progress counter only after this much progress (fraction of its total)…
const MIN_PROGRESS_DELTA: f64 = 0.05;
/// …or after this much daemon time since it was last printed.
const MIN_TIME_DELTA: Nanos = 5_000_000_000;

#[derive(Debug, Clone, Copy)]
struct StatusMark {
    current: i64,
    at: Option<Nanos>,
    done: bool,
}

/// Turns each message's changes into text lines (without target prefix or newline).
#[derive(Debug, Default)]
pub(crate) struct PlainPrinter {
    /// The node whose block is open: its lines need no new header.
    current: Option<usize>,
    numbers: HashMap<usize, usize>,
    printed_any: bool,
    completion_printed: HashMap<usize, Signature>,
    last_status: HashMap<(usize, usize), StatusMark>,
}

impl PlainPrinter {
    pub fn render(&mut self, trace: &Trace, up: &Updates) -> Vec<String> {
        let visible: Vec<usize> = up
            .order
            .iter()
            .copied()
            .filter(|&i| trace.nodes[i].visible())
            .collect();
        let (mut completed, running): (Vec<usize>, Vec<usize>) = visible
            .into_iter()
            .partition(|&i| trace.nodes[i].is_completed());
        // Finished work first, in the order it finished; the open block goes first in each
        // half so that fewer `#N ...` switches are needed.
        completed.sort_by_key(|&i| trace.nodes[i].completed_at());
        let mut order = Vec::with_capacity(completed.len() + running.len());
        for half in [completed, running] {
            if let Some(c) = self.current.filter(|c| half.contains(c)) {
                order.push(c);
            }
            order.extend(half.into_iter().filter(|&i| Some(i) != self.current));
        }

        let mut out = Vec::new();
        for idx in order {
            if let Some(u) = up.per.get(&idx) {
                self.render_node(trace, idx, u, &mut out);
            }
        }
        out
    }

    fn number(&mut self, idx: usize) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(idx).or_insert(next)
    }

    fn render_node(&mut self, trace: &Trace, idx: usize, up: &NodeUpdate, out: &mut Vec<String>) {
        let node = &trace.nodes[idx];
        let mut body: Vec<String> = Vec::new();
        body.extend(up.warnings.iter().map(|w| format!("WARN: {w}")));
        for &si in &up.statuses {
            let st = &node.statuses[si];
            if self.status_due(idx, si, st) {
                body.push(status_line(st));
            }
        }
        body.extend(up.lines.iter().map(|l| l.plain()));

        let completion = if node.is_completed() {
            let sig = node.signature();
            if self.completion_printed.get(&idx) != Some(&sig) {
                self.completion_printed.insert(idx, sig);
                Some(completion_line(node))
            } else {
                None
            }
        } else {
            None
        };

        let switching = self.current != Some(idx);
        if body.is_empty() && completion.is_none() && !(switching && up.vertex) {
            return;
        }
        if switching {
            if let Some(prev) = self.current {
                if !trace.nodes[prev].is_completed() {
                    let n = self.number(prev);
                    out.push(format!("#{n} ..."));
                }
            }
            if self.printed_any {
                out.push(String::new());
            }
            let n = self.number(idx);
            out.push(format!("#{n} {}", node.name));
        }
        self.printed_any = true;
        let n = self.number(idx);
        out.extend(body.into_iter().map(|l| format!("#{n} {l}")));
        if let Some(c) = completion {
            out.push(format!("#{n} {c}"));
        }
        self.current = if node.is_completed() { None } else { Some(idx) };
    }

    /// Whether a counter moved enough to be worth a line (always true for its first and last).
    fn status_due(&mut self, idx: usize, si: usize, st: &StatusState) -> bool {
        let key = (idx, si);
        let done = st.completed.is_some();
        if let Some(last) = self.last_status.get(&key) {
            if done {
                if last.done && last.current == st.current {
                    return false;
                }
            } else {
                let progress = if st.total > 0 {
                    (st.current - last.current) as f64 / st.total as f64
                } else {
                    0.0
                };
                let elapsed = match (st.timestamp, last.at) {
                    (Some(now), Some(then)) => now - then,
                    _ => 0,
                };
                if progress < MIN_PROGRESS_DELTA && elapsed < MIN_TIME_DELTA {
                    return false;
                }
            }
        }
        self.last_status.insert(
            key,
            StatusMark {
                current: st.current,
                at: st.timestamp,
                done,
            },
        );
        true
    }
}

/// `transferring context: 2.35kB / 4.00kB 0.3s done`: sizes when known, time when measurable.
pub(crate) fn status_line(st: &StatusState) -> String {
    let mut s = st.id.clone();
    if let Some(sizes) = status_line_sizes(st) {
        s.push(' ');
        s.push_str(&sizes);
    }
    if let (Some(start), Some(end)) = (st.started, st.completed.or(st.timestamp)) {
        let secs = (end - start) as f64 / 1e9;
        if secs > 0.01 {
            s.push_str(&format!(" {secs:.1}s"));
        }
    }
    if st.completed.is_some() {
        s.push_str(" done");
    }
    s
}

/// `2.35kB / 4.00kB` when the total is known, `2.35kB` when only progress is.
pub(crate) fn status_line_sizes(st: &StatusState) -> Option<String> {
    if st.total != 0 {
        Some(format!(
            "{} / {}",
            format_bytes(st.current),
            format_bytes(st.total)
        ))
    } else if st.current != 0 {
        Some(format_bytes(st.current))
    } else {
        None
    }
}

fn completion_line(node: &super::trace::Node) -> String {
    match node.error() {
        Some(_) if node.canceled() => "CANCELED".to_string(),
        Some(e) => format!("ERROR: {e}"),
        None if node.cached() => "CACHED".to_string(),
        None => format!("DONE {:.1}s", node.duration(None) as f64 / 1e9),
    }
}

/// The failing steps' last output, repeated at the end where a reader of a long log looks:
/// ```text
/// ------
///  > [2/3] RUN false:
/// 0.120 some output
/// ------
/// ```
pub(crate) fn error_logs(trace: &Trace) -> Vec<String> {
    let mut out = Vec::new();
    for &idx in &trace.shown {
        let node = &trace.nodes[idx];
        if !node.failed() {
            continue;
        }
        out.push("------".to_string());
        out.push(format!(" > {}:", node.name));
        out.extend(node.tail.iter().map(|l| l.plain()));
        out.push("------".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::trace::tests::{log, msg, status, vtx};
    use super::*;
    use crate::proto::control::{StatusResponse, Vertex, VertexWarning};

    fn feed(msgs: &[StatusResponse]) -> Vec<String> {
        let mut t = Trace::default();
        let mut p = PlainPrinter::default();
        let mut out = Vec::new();
        for m in msgs {
            let up = t.apply(m);
            out.extend(p.render(&t, &up));
        }
        let up = t.flush_all();
        out.extend(p.render(&t, &up));
        out.extend(error_logs(&t));
        out
    }

    #[test]
    fn a_simple_build_prints_numbered_blocks() {
        let out = feed(&[
            msg(
                vec![vtx("d1", "[internal] load build definition", Some(0), None)],
                vec![],
                vec![],
            ),
            msg(
                vec![vtx(
                    "d1",
                    "[internal] load build definition",
                    Some(0),
                    Some(40),
                )],
                vec![status("d1", "transferring dockerfile:", 75, 0, 30, true)],
                vec![],
            ),
            msg(
                vec![vtx("b1", "[1/2] FROM busybox", Some(50), Some(60))],
                vec![],
                vec![],
            ),
            msg(
                vec![vtx("r1", "[2/2] RUN make", Some(100), None)],
                vec![],
                vec![],
            ),
            msg(
                vec![],
                vec![],
                vec![log("r1", 223, "comp"), log("r1", 300, "iling\nlinking\n")],
            ),
            msg(
                vec![vtx("r1", "[2/2] RUN make", Some(100), Some(1340))],
                vec![],
                vec![],
            ),
        ]);
        assert_eq!(
            out,
            vec![
                "#1 [internal] load build definition",
                "#1 transferring dockerfile: 75B 0.0s done",
                "#1 DONE 0.0s",
                "",
                "#2 [1/2] FROM busybox",
                "#2 DONE 0.0s",
                "",
                "#3 [2/2] RUN make",
                "#3 0.123 compiling",
                "#3 0.200 linking",
                "#3 DONE 1.2s",
            ]
        );
    }

    #[test]
    fn cached_failed_and_canceled_vertices_are_marked() {
        let cached = Vertex {
            cached: true,
            ..vtx("c", "[1/3] FROM alpine", Some(0), Some(0))
        };
        let failed = Vertex {
            error: "process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
                .into(),
            ..vtx("f", "[2/3] RUN false", Some(10), Some(900))
        };
        let canceled = Vertex {
            error: "failed: context canceled".into(),
            ..vtx("x", "[3/3] RUN sleep 9", Some(10), Some(900))
        };
        let out = feed(&[
            msg(vec![cached], vec![], vec![]),
            msg(
                vec![vtx("f", "[2/3] RUN false", Some(10), None)],
                vec![],
                vec![],
            ),
            msg(
                vec![],
                vec![],
                vec![log("f", 20, "about to fail\nno newline")],
            ),
            msg(vec![failed, canceled], vec![], vec![]),
        ]);
        assert_eq!(
            out,
            vec![
                "#1 [1/3] FROM alpine",
                "#1 CACHED",
                "",
                "#2 [2/3] RUN false",
                "#2 0.010 about to fail",
                "#2 0.010 no newline",
                "#2 ERROR: process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
                "",
                "#3 [3/3] RUN sleep 9",
                "#3 CANCELED",
                "------",
                " > [2/3] RUN false:",
                "0.010 about to fail",
                "0.010 no newline",
                "------",
            ]
        );
    }

    #[test]
    fn switching_between_running_vertices_marks_the_open_one() {
        let out = feed(&[
            msg(
                vec![vtx("a", "A", Some(0), None), vtx("b", "B", Some(0), None)],
                vec![],
                vec![log("a", 100, "a1\n")],
            ),
            msg(vec![], vec![], vec![log("b", 200, "b1\n")]),
            msg(vec![], vec![], vec![log("a", 300, "a2\n")]),
            msg(vec![vtx("a", "A", Some(0), Some(400))], vec![], vec![]),
        ]);
        assert_eq!(
            out,
            vec![
                "#1 A",
                "#1 0.100 a1",
                "#1 ...",
                "",
                "#2 B",
                "#2 0.200 b1",
                "#2 ...",
                "",
                "#1 A",
                "#1 0.300 a2",
                "#1 DONE 0.4s",
            ]
        );
    }

    #[test]
    fn progress_counters_are_throttled_by_daemon_time() {
        let d = "pull";
        let out = feed(&[
            msg(
                vec![vtx(d, "[1/1] FROM big", Some(0), None)],
                vec![],
                vec![],
            ),
            msg(
                vec![],
                vec![status(d, "sha256:aa", 0, 1_000_000, 100, false)],
                vec![],
            ),
            // +1%: too little, too soon.
            msg(
                vec![],
                vec![status(d, "sha256:aa", 10_000, 1_000_000, 200, false)],
                vec![],
            ),
            // +6% since the last printed line.
            msg(
                vec![],
                vec![status(d, "sha256:aa", 60_000, 1_000_000, 300, false)],
                vec![],
            ),
            // barely moved, but 5 s later.
            msg(
                vec![],
                vec![status(d, "sha256:aa", 61_000, 1_000_000, 5_300, false)],
                vec![],
            ),
            msg(
                vec![],
                vec![status(d, "sha256:aa", 1_000_000, 1_000_000, 5_400, true)],
                vec![],
            ),
            msg(
                vec![vtx(d, "[1/1] FROM big", Some(0), Some(5_500))],
                vec![],
                vec![],
            ),
        ]);
        assert_eq!(
            out,
            vec![
                "#1 [1/1] FROM big",
                "#1 sha256:aa 0B / 1.00MB 0.1s",
                "#1 sha256:aa 60.00kB / 1.00MB 0.3s",
                "#1 sha256:aa 61.00kB / 1.00MB 5.3s",
                "#1 sha256:aa 1.00MB / 1.00MB 5.4s done",
                "#1 DONE 5.5s",
            ]
        );
    }

    #[test]
    fn warnings_are_printed_in_the_block() {
        let mut m = msg(
            vec![vtx("a", "[1/1] FROM x", Some(0), None)],
            vec![],
            vec![],
        );
        m.warnings.push(VertexWarning {
            vertex: "a".into(),
            short: b"FromAsCasing: 'as' and 'FROM' keywords' casing do not match".to_vec(),
            ..VertexWarning::default()
        });
        let out = feed(&[m]);
        assert_eq!(
            out,
            vec![
                "#1 [1/1] FROM x",
                "#1 WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
            ]
        );
    }

    #[test]
    fn unstarted_vertices_print_nothing() {
        let out = feed(&[msg(
            vec![vtx("a", "A", None, None)],
            vec![],
            vec![log("a", 0, "x\n")],
        )]);
        assert!(out.is_empty(), "{out:?}");
    }
}
