//! The state of one build's Status stream, folded from `StatusResponse` messages.
//!
//! BuildKit re-sends a vertex every time it changes, sends logs in arbitrary chunks and reports
//! progress items ("statuses") by ID per vertex. This module merges all of that into display
//! nodes (a vertex, or several vertices that share a non-weak progress group) and tells the
//! renderers what changed in each message. It does no I/O and never reads a clock: every time it
//! computes comes from the daemon's timestamps, which keeps rendering reproducible in tests.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost_types::Timestamp;

use crate::proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning};

/// Nanoseconds since the Unix epoch on the daemon's clock.
pub(crate) type Nanos = i64;

/// How many complete log lines each node keeps for the error summary and the tty view.
pub(crate) const LOG_TAIL: usize = 20;

/// A single unfinished line longer than this is emitted as if it had ended, so a process that
/// never prints a newline cannot make us buffer without bound.
const MAX_PARTIAL: usize = 64 * 1024;

/// The suffix BuildKit gives errors of vertices that were stopped rather than failed.
const CANCELED_SUFFIX: &str = "context canceled";

pub(crate) fn nanos(ts: Option<&Timestamp>) -> Option<Nanos> {
    ts.map(|t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

/// Seconds for log-line offsets: more decimals for short offsets, as buildx prints them.
pub(crate) fn format_offset(d: Nanos) -> String {
    let secs = d.max(0) as f64 / 1e9;
    if secs < 10.0 {
        format!("{secs:.3}")
    } else if secs < 100.0 {
        format!("{secs:.2}")
    } else {
        format!("{secs:.1}")
    }
}

/// One complete log line: `offset` is the time since the node started, already formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    pub offset: String,
    pub text: String,
}

impl LogLine {
    pub fn plain(&self) -> String {
        format!("{} {}", self.offset, self.text)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct StatusState {
    pub id: String,
    pub current: i64,
    pub total: i64,
    pub timestamp: Option<Nanos>,
    pub started: Option<Nanos>,
    pub completed: Option<Nanos>,
}

/// One BuildKit vertex as last reported (a node holds one, or several for a progress group).
#[derive(Debug, Clone, Default)]
struct Member {
    cached: bool,
    error: String,
    weak: bool,
    started: Option<Nanos>,
    /// Every (start → stop) the vertex reported; a vertex can run more than once.
    intervals: BTreeMap<Nanos, Option<Nanos>>,
}

#[derive(Debug, Default)]
struct Partial {
    offset: String,
    bytes: Vec<u8>,
}

/// What gets shown as one line: a vertex, or a progress group collapsing several.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub name: String,
    is_group: bool,
    members: BTreeMap<String, Member>,
    pub statuses: Vec<StatusState>,
    status_index: HashMap<String, usize>,
    pub tail: VecDeque<LogLine>,
    partial: Option<Partial>,
    pub warnings: Vec<String>,
}

/// The bits of a node whose change makes it worth printing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    visible: bool,
    name: String,
    intervals: Vec<(Nanos, Option<Nanos>)>,
    cached: bool,
    error: String,
}

impl Node {
    /// Merged run intervals, ordered; an open interval swallows everything after it.
    pub fn intervals(&self) -> Vec<(Nanos, Option<Nanos>)> {
        let mut all: Vec<(Nanos, Option<Nanos>)> = self
            .members
            .values()
            .flat_map(|m| m.intervals.iter().map(|(s, e)| (*s, *e)))
            .collect();
        all.sort_by_key(|(s, _)| *s);
        let mut merged: Vec<(Nanos, Option<Nanos>)> = Vec::new();
        for (start, stop) in all {
            if let Some(last) = merged.last_mut() {
                match last.1 {
                    None => break,
                    Some(prev) if start <= prev => {
                        last.1 = stop.map(|s| s.max(prev));
                        continue;
                    }
                    Some(_) => {}
                }
            }
            merged.push((start, stop));
        }
        merged
    }

    /// Vertices appear once they start; a group only once a non-weak member starts (or fails),
    /// because weak members alone are implementation detail BuildKit asks us to hide.
    pub fn visible(&self) -> bool {
        if self.is_group {
            self.members
                .values()
                .any(|m| (!m.weak && m.started.is_some()) || !m.error.is_empty())
        } else {
            self.members
                .values()
                .any(|m| m.started.is_some() || !m.intervals.is_empty())
        }
    }

    pub fn is_group(&self) -> bool {
        self.is_group
    }

    pub fn is_completed(&self) -> bool {
        let iv = self.intervals();
        !iv.is_empty() && iv.iter().all(|(_, stop)| stop.is_some())
    }

    pub fn completed_at(&self) -> Option<Nanos> {
        if self.is_completed() {
            self.intervals().last().and_then(|(_, stop)| *stop)
        } else {
            None
        }
    }

    /// Start of the most recent run: log offsets are measured from it.
    pub fn latest_start(&self) -> Option<Nanos> {
        self.intervals().last().map(|(s, _)| *s)
    }

    /// Total run time; open intervals count up to `now` (the daemon's clock), or not at all.
    pub fn duration(&self, now: Option<Nanos>) -> Nanos {
        self.intervals()
            .iter()
            .map(|(s, e)| match e.or(now) {
                Some(e) => (e - s).max(0),
                None => 0,
            })
            .sum()
    }

    pub fn cached(&self) -> bool {
        !self.members.is_empty() && self.members.values().all(|m| m.cached)
    }

    pub fn error(&self) -> Option<&str> {
        self.members
            .values()
            .map(|m| m.error.as_str())
            .find(|e| !e.is_empty())
    }

    pub fn canceled(&self) -> bool {
        self.error().is_some_and(|e| e.ends_with(CANCELED_SUFFIX))
    }

    /// A real failure (not a cancellation caused by another failure or by the user).
    pub fn failed(&self) -> bool {
        self.error().is_some() && !self.canceled()
    }

    /// The text of the unfinished last line, as a terminal would show it right now.
    pub fn partial_text(&self) -> Option<String> {
        self.partial
            .as_ref()
            .filter(|p| !p.bytes.is_empty())
            .map(|p| clean_line(&p.bytes))
    }

    pub fn signature(&self) -> Signature {
        Signature {
            visible: self.visible(),
            name: self.name.clone(),
            intervals: self.intervals(),
            cached: self.cached(),
            error: self.error().unwrap_or_default().to_string(),
        }
    }

    fn push_line(&mut self, line: LogLine) {
        if self.tail.len() == LOG_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn flush_partial(&mut self) -> Option<LogLine> {
        let p = self.partial.take()?;
        let line = LogLine {
            offset: p.offset,
            text: clean_line(&p.bytes),
        };
        self.push_line(line.clone());
        Some(line)
    }
}

/// Turns raw log bytes into one displayable line: lossy UTF-8, no CR of a CRLF ending.
fn clean_line(bytes: &[u8]) -> String {
    let b = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(b).into_owned()
}

/// What one message changed on one node, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct NodeUpdate {
    /// The vertex (or group) itself changed: started, finished, cached, failed or renamed.
    pub vertex: bool,
    /// Indices into `Node::statuses`, each at most once.
    pub statuses: Vec<usize>,
    pub lines: Vec<LogLine>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Updates {
    /// Touched node indices, first touch first, each at most once.
    pub order: Vec<usize>,
    pub per: HashMap<usize, NodeUpdate>,
}

impl Updates {
    fn entry(&mut self, node: usize) -> &mut NodeUpdate {
        if !self.per.contains_key(&node) {
            self.order.push(node);
        }
        self.per.entry(node).or_default()
    }
}

/// A warning kept for the end-of-run report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WarningRecord {
    pub short: String,
    pub location: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub nodes: Vec<Node>,
    node_by_key: HashMap<String, usize>,
    node_of_vertex: HashMap<String, usize>,
    /// Nodes in the order they became visible (the tty shows them in this order).
    pub shown: Vec<usize>,
    /// Largest `current` of each `transferring <name>:` status, keyed by (vertex, status ID).
    transfers: HashMap<(String, String), i64>,
    pub warnings: Vec<WarningRecord>,
}

impl Trace {
    pub fn apply(&mut self, msg: &StatusResponse) -> Updates {
        let mut up = Updates::default();
        for v in &msg.vertexes {
            self.apply_vertex(v, &mut up);
        }
        for s in &msg.statuses {
            self.apply_status(s, &mut up);
        }
        for w in &msg.warnings {
            self.apply_warning(w, &mut up);
        }
        for l in &msg.logs {
            self.apply_log(l, &mut up);
        }
        // A finished vertex prints no more output, so its unterminated last line is complete.
        // Done after the logs so that output arriving with the completion keeps its order.
        for &idx in &up.order.clone() {
            if self.nodes[idx].is_completed() {
                if let Some(line) = self.nodes[idx].flush_partial() {
                    up.entry(idx).lines.push(line);
                }
            }
        }
        up
    }

    /// Ends every unfinished line (the stream is over).
    pub fn flush_all(&mut self) -> Updates {
        let mut up = Updates::default();
        for idx in 0..self.nodes.len() {
            if let Some(line) = self.nodes[idx].flush_partial() {
                up.entry(idx).lines.push(line);
            }
        }
        up
    }

    fn apply_vertex(&mut self, v: &Vertex, up: &mut Updates) {
        if v.digest.is_empty() {
            return;
        }
        let group = v.progress_group.as_ref().filter(|g| !g.id.is_empty());
        let key = match group {
            Some(g) => format!("group:{}", g.id),
            None => v.digest.clone(),
        };
        let idx = match self.node_by_key.get(&key) {
            Some(&i) => i,
            None => {
                self.nodes.push(Node {
                    is_group: group.is_some(),
                    ..Node::default()
                });
                let i = self.nodes.len() - 1;
                self.node_by_key.insert(key, i);
                i
            }
        };
        self.node_of_vertex.insert(v.digest.clone(), idx);
        let node = &mut self.nodes[idx];
        let before = node.signature();
        let was_visible = before.visible;

        match group {
            Some(g) if !g.name.is_empty() => node.name = g.name.clone(),
            None if !v.name.is_empty() => node.name = v.name.clone(),
            _ => {}
        }
        let member = node.members.entry(v.digest.clone()).or_default();
        let started = nanos(v.started.as_ref());
        // BuildKit may repeat a vertex's initial (not started) form after it started; that
        // copy carries no news and must not reset the state.
        if !(started.is_none() && member.started.is_some()) {
            member.cached = v.cached;
            member.error = v.error.clone();
            member.started = started;
            member.weak = group.is_some_and(|g| g.weak);
            if let Some(s) = started {
                member.intervals.insert(s, nanos(v.completed.as_ref()));
            }
        }

        let after = node.signature();
        if after.visible && !was_visible {
            self.shown.push(idx);
        }
        if after != before && after.visible {
            up.entry(idx).vertex = true;
        }
    }

    fn apply_status(&mut self, s: &VertexStatus, up: &mut Updates) {
        if s.id.starts_with("transferring ") && s.id.ends_with(':') {
            let e = self
                .transfers
                .entry((s.vertex.clone(), s.id.clone()))
                .or_insert(0);
            *e = (*e).max(s.current);
        }
        let Some(&idx) = self.node_of_vertex.get(&s.vertex) else {
            return;
        };
        let node = &mut self.nodes[idx];
        let si = match node.status_index.get(&s.id) {
            Some(&i) => i,
            None => {
                node.statuses.push(StatusState {
                    id: s.id.clone(),
                    ..StatusState::default()
                });
                node.status_index
                    .insert(s.id.clone(), node.statuses.len() - 1);
                node.statuses.len() - 1
            }
        };
        let st = &mut node.statuses[si];
        st.current = s.current;
        st.total = s.total;
        st.timestamp = nanos(s.timestamp.as_ref());
        st.started = nanos(s.started.as_ref());
        st.completed = nanos(s.completed.as_ref());
        let visible = node.visible();
        if visible {
            let e = up.entry(idx);
            if !e.statuses.contains(&si) {
                e.statuses.push(si);
            }
        }
    }

    fn apply_warning(&mut self, w: &VertexWarning, up: &mut Updates) {
        let short = String::from_utf8_lossy(&w.short).trim().to_string();
        let location = w.info.as_ref().and_then(|info| {
            let line = w.ranges.first()?.start.as_ref()?.line;
            (!info.filename.is_empty()).then(|| format!("{}:{line}", info.filename))
        });
        self.warnings.push(WarningRecord {
            short: short.clone(),
            location,
        });
        let Some(&idx) = self.node_of_vertex.get(&w.vertex) else {
            return;
        };
        self.nodes[idx].warnings.push(short.clone());
        up.entry(idx).warnings.push(short);
    }

    fn apply_log(&mut self, l: &VertexLog, up: &mut Updates) {
        let Some(&idx) = self.node_of_vertex.get(&l.vertex) else {
            return;
        };
        if l.msg.is_empty() {
            return;
        }
        let node = &mut self.nodes[idx];
        let offset = match (nanos(l.timestamp.as_ref()), node.latest_start()) {
            (Some(t), Some(s)) => format_offset(t - s),
            _ => format_offset(0),
        };
        let mut done = Vec::new();
        let mut rest: &[u8] = &l.msg;
        loop {
            let (chunk, ended) = match rest.iter().position(|&b| b == b'\n') {
                Some(p) => (&rest[..p], true),
                None => (rest, false),
            };
            let partial = node.partial.get_or_insert_with(|| Partial {
                offset: offset.clone(),
                bytes: Vec::new(),
            });
            partial.bytes.extend_from_slice(chunk);
            if ended || partial.bytes.len() >= MAX_PARTIAL {
                done.extend(node.flush_partial());
            }
            if !ended {
                break;
            }
            rest = &rest[chunk.len() + 1..];
            if rest.is_empty() {
                break;
            }
        }
        let e = up.entry(idx);
        e.lines.extend(done);
    }

    /// Sum of bytes the daemon reported receiving for local sources (context, dockerfile, …).
    pub fn transferred_bytes(&self) -> u64 {
        self.transfers.values().map(|&b| b.max(0) as u64).sum()
    }

    pub fn vertex_count(&self) -> usize {
        self.nodes.iter().map(|n| n.members.len()).sum()
    }

    pub fn cached_count(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| n.members.values())
            .filter(|m| m.cached)
            .count()
    }

    /// The name of the step that started last and is still running, if any.
    pub fn running_step(&self) -> Option<&str> {
        self.nodes
            .iter()
            .filter(|n| n.visible() && !n.is_completed())
            .filter_map(|n| n.latest_start().map(|s| (s, n.name.as_str())))
            .max_by_key(|(s, _)| *s)
            .map(|(_, name)| name)
    }

    /// Earliest start of anything, on the daemon's clock.
    pub fn first_start(&self) -> Option<Nanos> {
        self.nodes
            .iter()
            .filter_map(|n| n.intervals().first().map(|(s, _)| *s))
            .min()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::control::{Vertex, VertexLog, VertexStatus};
    use crate::proto::pb::ProgressGroup;

    /// A timestamp `ms` milliseconds after an arbitrary fixed epoch.
    pub fn ts(ms: i64) -> Option<Timestamp> {
        let base = 1_700_000_000_000i64 + ms;
        Some(Timestamp {
            seconds: base.div_euclid(1000),
            nanos: (base.rem_euclid(1000) * 1_000_000) as i32,
        })
    }

    pub fn vtx(d: &str, name: &str, started: Option<i64>, completed: Option<i64>) -> Vertex {
        Vertex {
            digest: d.into(),
            name: name.into(),
            started: started.and_then(ts),
            completed: completed.and_then(ts),
            ..Vertex::default()
        }
    }

    pub fn log(d: &str, at: i64, msg: &str) -> VertexLog {
        VertexLog {
            vertex: d.into(),
            timestamp: ts(at),
            stream: 1,
            msg: msg.as_bytes().to_vec(),
        }
    }

    pub fn status(d: &str, id: &str, cur: i64, total: i64, at: i64, done: bool) -> VertexStatus {
        VertexStatus {
            id: id.into(),
            vertex: d.into(),
            current: cur,
            total,
            timestamp: ts(at),
            started: ts(0),
            completed: if done { ts(at) } else { None },
            ..VertexStatus::default()
        }
    }

    pub fn msg(
        vertexes: Vec<Vertex>,
        statuses: Vec<VertexStatus>,
        logs: Vec<VertexLog>,
    ) -> StatusResponse {
        StatusResponse {
            vertexes,
            statuses,
            logs,
            warnings: vec![],
        }
    }

    #[test]
    fn partial_lines_are_joined_and_flushed_on_completion() {
        let mut t = Trace::default();
        t.apply(&msg(vec![vtx("a", "A", Some(0), None)], vec![], vec![]));
        let up = t.apply(&msg(vec![], vec![], vec![log("a", 10, "hel")]));
        assert!(up.per[&0].lines.is_empty());
        let up = t.apply(&msg(vec![], vec![], vec![log("a", 20, "lo\nwor")]));
        assert_eq!(up.per[&0].lines[0].plain(), "0.010 hello");
        assert_eq!(t.nodes[0].partial_text().as_deref(), Some("wor"));
        let up = t.apply(&msg(
            vec![vtx("a", "A", Some(0), Some(50))],
            vec![],
            vec![log("a", 30, "ld")],
        ));
        assert_eq!(up.per[&0].lines[0].plain(), "0.020 world");
        assert_eq!(t.nodes[0].tail.len(), 2);
    }

    #[test]
    fn restarted_vertex_sums_merged_intervals() {
        let mut t = Trace::default();
        t.apply(&msg(
            vec![vtx("a", "A", Some(0), Some(1000))],
            vec![],
            vec![],
        ));
        t.apply(&msg(
            vec![vtx("a", "A", Some(500), Some(1500))],
            vec![],
            vec![],
        ));
        t.apply(&msg(
            vec![vtx("a", "A", Some(3000), Some(3500))],
            vec![],
            vec![],
        ));
        assert_eq!(t.nodes[0].duration(None), 2_000_000_000);
        // A repeated not-started copy does not reset anything.
        t.apply(&msg(vec![vtx("a", "A", None, None)], vec![], vec![]));
        assert!(t.nodes[0].is_completed());
    }

    #[test]
    fn weak_group_members_stay_hidden_until_a_strong_one_starts() {
        let mut t = Trace::default();
        let grouped = |d: &str, weak: bool, s: Option<i64>, c: Option<i64>| Vertex {
            progress_group: Some(ProgressGroup {
                id: "g1".into(),
                name: "copy layers".into(),
                weak,
            }),
            ..vtx(d, d, s, c)
        };
        let up = t.apply(&msg(
            vec![grouped("w", true, Some(0), None)],
            vec![],
            vec![],
        ));
        assert!(up.order.is_empty());
        assert!(!t.nodes[0].visible());
        let up = t.apply(&msg(
            vec![grouped("s", false, Some(10), None)],
            vec![],
            vec![],
        ));
        assert_eq!(up.order, vec![0]);
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(t.nodes[0].name, "copy layers");
        t.apply(&msg(
            vec![
                grouped("w", true, Some(0), Some(100)),
                grouped("s", false, Some(10), Some(200)),
            ],
            vec![],
            vec![],
        ));
        assert!(t.nodes[0].is_completed());
        assert_eq!(t.vertex_count(), 2);
    }

    #[test]
    fn transfer_bytes_take_the_largest_current_per_vertex_and_id() {
        let mut t = Trace::default();
        t.apply(&msg(
            vec![vtx("ctx", "load context", Some(0), None)],
            vec![
                status("ctx", "transferring context:", 100, 0, 10, false),
                status("ctx", "transferring context:", 700, 0, 20, true),
                status("df", "transferring dockerfile:", 42, 0, 20, true),
                status("ctx", "sha256:abc", 9999, 9999, 20, true),
            ],
            vec![],
        ));
        assert_eq!(t.transferred_bytes(), 742);
    }

    #[test]
    fn long_unterminated_output_is_cut_into_lines() {
        let mut t = Trace::default();
        t.apply(&msg(vec![vtx("a", "A", Some(0), None)], vec![], vec![]));
        let big = "x".repeat(MAX_PARTIAL + 10);
        let up = t.apply(&msg(vec![], vec![], vec![log("a", 1, &big)]));
        assert_eq!(up.per[&0].lines.len(), 1);
        assert_eq!(up.per[&0].lines[0].text.len(), MAX_PARTIAL + 10);
    }
}
