//! The redrawn terminal view: a header, one line per step with its time on the right, the
//! progress items of each step, and the last few output lines of steps still running.
//!
//! ```text
//! [+] Building 3.4s (5/7)
//!  => [internal] load build definition from Dockerfile              0.0s
//!  => => transferring dockerfile: 75B                               0.0s
//!  => CACHED [1/3] FROM docker.io/library/busybox                   0.0s
//!  => [2/3] RUN make                                                3.1s
//!  => => # compiling foo.c
//! ```
//! [`render_frame`] is a pure function of the traces, the time and the terminal size (tests call
//! it directly); [`TtyWriter`] turns frames into escape sequences that overwrite the last one.

use std::borrow::Cow;

use super::plain::status_line_sizes;
use super::trace::{Nanos, Node, Trace};

/// Output lines of a running step shown under it (buildx's `BUILDKIT_TTY_LOG_LINES` default).
pub(crate) const DEFAULT_LOG_LINES: usize = 6;

/// Below this many columns for the step name a line is left out rather than shown mangled.
const MIN_NAME_ROOM: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    Plain,
    Done,
    Error,
    Canceled,
    Warn,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub text: String,
    pub tone: Tone,
    /// Belongs to running work: the last thing to go when the terminal is too short.
    keep: bool,
}

impl Line {
    fn new(text: String, tone: Tone, keep: bool) -> Line {
        Line { text, tone, keep }
    }
}

/// One build's part of the frame.
pub(crate) struct TargetView<'a> {
    pub name: Option<&'a str>,
    pub trace: &'a Trace,
    pub notes: &'a [String],
    /// "Now" on the daemon's clock (our clock corrected by the skew seen at the first start),
    /// used to time steps that are still running.
    pub remote_now: Option<Nanos>,
}

pub(crate) struct FrameSpec {
    /// Seconds since the first step started, on our clock.
    pub elapsed_secs: f64,
    pub width: usize,
    pub height: usize,
    /// The last frame: everything is shown, nothing is cut for height.
    pub final_frame: bool,
    pub log_lines: usize,
}

pub(crate) fn render_frame(targets: &[TargetView<'_>], spec: &FrameSpec) -> Vec<Line> {
    // Never write the last column: some terminals wrap there and the line count would drift.
    let avail = spec.width.saturating_sub(1).max(1);
    let (mut done, mut total) = (0, 0);
    let mut body = Vec::new();
    for t in targets {
        let (d, n) = counts(t.trace);
        done += d;
        total += n;
        render_target(t, spec, avail, &mut body);
    }

    let mut header = format!(
        "[+] Building {:.1}s ({done}/{total})",
        spec.elapsed_secs.max(0.0)
    );
    if spec.final_frame && total > 0 && done == total {
        header.push_str(" FINISHED");
    }
    let mut frame = vec![Line::new(fit(&header, avail), Tone::Plain, true)];

    if !spec.final_frame {
        let budget = spec.height.saturating_sub(2).max(1);
        limit_height(&mut body, budget);
    }
    frame.extend(body);
    frame
}

/// (completed, total) steps; a hidden progress group is not a step yet.
fn counts(trace: &Trace) -> (usize, usize) {
    let mut done = 0;
    let mut total = 0;
    for node in &trace.nodes {
        if node.is_group() && !node.visible() {
            continue;
        }
        total += 1;
        if node.is_completed() {
            done += 1;
        }
    }
    (done, total)
}

fn render_target(t: &TargetView<'_>, spec: &FrameSpec, avail: usize, out: &mut Vec<Line>) {
    let running = t
        .trace
        .shown
        .iter()
        .any(|&i| !t.trace.nodes[i].is_completed());
    if let Some(name) = t.name {
        let (d, n) = counts(t.trace);
        let mut text = format!("[{name}] ({d}/{n})");
        if t.trace.nodes.iter().any(Node::failed) {
            text.push_str(" FAILED");
        }
        out.push(Line::new(fit(&text, avail), Tone::Plain, running));
    }
    for note in t.notes {
        out.push(Line::new(
            fit(&format!(" => {note}"), avail),
            Tone::Plain,
            false,
        ));
    }
    for &idx in &t.trace.shown {
        render_node(&t.trace.nodes[idx], t.remote_now, spec, avail, out);
    }
}

fn render_node(
    node: &Node,
    now: Option<Nanos>,
    spec: &FrameSpec,
    avail: usize,
    out: &mut Vec<Line>,
) {
    let completed = node.is_completed();
    let mut label = node.name.replace('\t', " ");
    if node.canceled() {
        label = format!("CANCELED {label}");
    } else if node.error().is_some() {
        label = format!("ERROR {label}");
    }
    if node.cached() {
        label = format!("CACHED {label}");
    }
    let tone = if !completed {
        Tone::Plain
    } else if node.canceled() {
        Tone::Canceled
    } else if node.failed() {
        Tone::Error
    } else {
        Tone::Done
    };
    let secs = node.duration(now) as f64 / 1e9;
    if let Some(text) = job_line(avail, " => ", &label, None, secs) {
        out.push(Line::new(text, tone, !completed));
    }

    for st in &node.statuses {
        let end = st.completed.or(now).or(st.timestamp);
        let secs = match (st.started, end) {
            (Some(s), Some(e)) => (e - s).max(0) as f64 / 1e9,
            _ => 0.0,
        };
        let sizes = status_line_sizes(st);
        let label = format!("=> {}", st.id);
        let st_tone = if st.completed.is_some() {
            Tone::Done
        } else {
            Tone::Plain
        };
        if let Some(text) = job_line(avail, " => ", &label, sizes.as_deref(), secs) {
            out.push(Line::new(text, st_tone, !completed));
        }
    }

    for w in &node.warnings {
        out.push(Line::new(
            fit(&format!(" => WARN: {w}"), avail),
            Tone::Warn,
            false,
        ));
    }

    if !completed && !spec.final_frame && spec.log_lines > 0 {
        let mut lines: Vec<String> = node.tail.iter().map(|l| l.text.clone()).collect();
        lines.extend(node.partial_text());
        let skip = lines.len().saturating_sub(spec.log_lines);
        for l in &lines[skip..] {
            let text = format!(" => => # {}", terminal_safe(l));
            out.push(Line::new(fit(&text, avail), Tone::Log, true));
        }
    }
}

/// `prefix label [sizes]` padded so that the time ends at the right edge; `None` when the
/// terminal is too narrow to say anything useful.
fn job_line(
    avail: usize,
    prefix: &str,
    label: &str,
    sizes: Option<&str>,
    secs: f64,
) -> Option<String> {
    let secs = if secs < 0.05 { 0.0 } else { secs };
    let timer = format!("{secs:.1}s");
    let room = avail.checked_sub(prefix.len() + 1 + timer.len())?;
    if room < MIN_NAME_ROOM {
        return None;
    }
    let label_w = console::measure_text_width(label);
    let mut left = String::from(prefix);
    match sizes {
        // Sizes are worth more than the tail of a long name, but not more than its start.
        Some(s) if room >= s.len() + 1 + label_w.min(20) => {
            left.push_str(&console::truncate_str(label, room - s.len() - 1, ""));
            left.push(' ');
            left.push_str(s);
        }
        _ => left.push_str(&console::truncate_str(label, room, "")),
    }
    let pad = avail.saturating_sub(console::measure_text_width(&left) + timer.len());
    Some(format!("{left}{}{timer}", " ".repeat(pad)))
}

fn fit(s: &str, avail: usize) -> String {
    console::truncate_str(s, avail, "").into_owned()
}

/// What a terminal would leave visible of a raw output line: the text after the last carriage
/// return (progress bars redraw that way), without escape sequences or control characters.
fn terminal_safe(s: &str) -> String {
    let last = s.rsplit('\r').find(|p| !p.is_empty()).unwrap_or("");
    let plain: Cow<'_, str> = console::strip_ansi_codes(last);
    plain
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

/// Drops lines until `body` fits: finished work first (oldest first), then the output of
/// running steps, and finally whatever is at the top.
fn limit_height(body: &mut Vec<Line>, budget: usize) {
    let drop_where = |body: &mut Vec<Line>, pred: &dyn Fn(&Line) -> bool| {
        let mut excess = body.len().saturating_sub(budget);
        body.retain(|l| {
            if excess > 0 && pred(l) {
                excess -= 1;
                false
            } else {
                true
            }
        });
    };
    drop_where(body, &|l| !l.keep);
    drop_where(body, &|l| l.tone == Tone::Log);
    if body.len() > budget {
        body.drain(..body.len() - budget);
    }
}

/// Overwrites the previous frame in place.
#[derive(Debug, Default)]
pub(crate) struct TtyWriter {
    drawn: usize,
    pub color: bool,
}

impl TtyWriter {
    pub fn new(color: bool) -> TtyWriter {
        TtyWriter { drawn: 0, color }
    }

    /// The bytes that replace the last frame with `frame`.
    pub fn draw(&mut self, frame: &[Line]) -> String {
        let mut buf = String::from("\x1b[?25l");
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A\r", self.drawn));
        }
        for line in frame {
            buf.push_str("\x1b[2K");
            buf.push_str(&self.paint(line));
            buf.push('\n');
        }
        if frame.len() < self.drawn {
            buf.push_str("\x1b[J");
        }
        buf.push_str("\x1b[?25h");
        self.drawn = frame.len();
        buf
    }

    /// Forget the frame: text written after this stays below it for good.
    pub fn release(&mut self) {
        self.drawn = 0;
    }

    fn paint(&self, line: &Line) -> String {
        if !self.color {
            return line.text.clone();
        }
        let style = console::Style::new().force_styling(true);
        let style = match line.tone {
            Tone::Plain => return line.text.clone(),
            Tone::Done => style.blue(),
            Tone::Error => style.red(),
            Tone::Canceled | Tone::Warn => style.yellow(),
            Tone::Log => style.dim(),
        };
        style.apply_to(&line.text).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::trace::nanos;
    use super::super::trace::tests::{log, msg, status, ts, vtx};
    use super::*;
    use crate::proto::control::Vertex;

    fn spec(width: usize, height: usize, final_frame: bool) -> FrameSpec {
        FrameSpec {
            elapsed_secs: 3.44,
            width,
            height,
            final_frame,
            log_lines: DEFAULT_LOG_LINES,
        }
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.text.trim_end().to_string())
            .collect()
    }

    fn sample() -> Trace {
        let mut t = Trace::default();
        t.apply(&msg(
            vec![
                vtx(
                    "d",
                    "[internal] load build definition from Dockerfile",
                    Some(0),
                    Some(30),
                ),
                Vertex {
                    cached: true,
                    ..vtx(
                        "b",
                        "[1/2] FROM docker.io/library/busybox",
                        Some(40),
                        Some(40),
                    )
                },
                vtx("r", "[2/2] RUN make", Some(100), None),
                vtx("p", "[2/2] RUN pending", None, None),
            ],
            vec![status("d", "transferring dockerfile:", 75, 0, 30, true)],
            vec![
                log("r", 200, "one\ntwo\r\nthree"),
                log("r", 300, "\x1b[32mgreen\x1b[0m\n"),
            ],
        ));
        t
    }

    #[test]
    fn frame_lists_steps_statuses_and_running_output() {
        let t = sample();
        let now = nanos(ts(3100).as_ref());
        let view = TargetView {
            name: None,
            trace: &t,
            notes: &[],
            remote_now: now,
        };
        let frame = render_frame(&[view], &spec(60, 30, false));
        assert_eq!(
            texts(&frame),
            vec![
                "[+] Building 3.4s (2/4)",
                " => [internal] load build definition from Dockerfile   0.0s",
                " => => transferring dockerfile: 75B                    0.0s",
                " => CACHED [1/2] FROM docker.io/library/busybox        0.0s",
                " => [2/2] RUN make                                     3.0s",
                " => => # one",
                " => => # two",
                " => => # threegreen",
            ]
        );
        assert!(frame
            .iter()
            .all(|l| console::measure_text_width(&l.text) <= 59));
        assert_eq!(frame[1].tone, Tone::Done);
        assert_eq!(frame[4].tone, Tone::Plain);
        assert_eq!(frame[5].tone, Tone::Log);
    }

    #[test]
    fn final_frame_says_finished_and_drops_logs() {
        let mut t = sample();
        t.apply(&msg(
            vec![
                vtx("r", "[2/2] RUN make", Some(100), Some(2100)),
                vtx("p", "[2/2] RUN pending", Some(2100), Some(2100)),
            ],
            vec![],
            vec![],
        ));
        let view = TargetView {
            name: None,
            trace: &t,
            notes: &[],
            remote_now: None,
        };
        let frame = render_frame(&[view], &spec(60, 30, true));
        let texts = texts(&frame);
        assert_eq!(texts[0], "[+] Building 3.4s (4/4) FINISHED");
        assert_eq!(
            texts[4],
            " => [2/2] RUN make                                     2.0s"
        );
        assert!(!texts.iter().any(|l| l.contains('#')));
    }

    #[test]
    fn short_terminals_keep_running_work_in_view() {
        let t = sample();
        let view = TargetView {
            name: None,
            trace: &t,
            notes: &[],
            remote_now: None,
        };
        let frame = render_frame(&[view], &spec(60, 5, false));
        assert_eq!(
            texts(&frame),
            vec![
                "[+] Building 3.4s (2/4)",
                " => [2/2] RUN make                                     0.0s",
                " => => # two",
                " => => # threegreen",
            ]
        );
    }

    #[test]
    fn targets_get_their_own_sections() {
        let a = sample();
        let b = Trace::default();
        let notes = vec!["skip pybase (unchanged)".to_string()];
        let views = [
            TargetView {
                name: Some("app"),
                trace: &a,
                notes: &[],
                remote_now: None,
            },
            TargetView {
                name: Some("pybase"),
                trace: &b,
                notes: &notes,
                remote_now: None,
            },
        ];
        let frame = render_frame(&views, &spec(60, 40, true));
        let texts = texts(&frame);
        assert_eq!(texts[1], "[app] (2/4)");
        assert_eq!(
            &texts[texts.len() - 2..],
            ["[pybase] (0/0)", " => skip pybase (unchanged)"]
        );
    }

    #[test]
    fn narrow_terminals_truncate_names_and_hide_hopeless_lines() {
        let t = sample();
        let view = TargetView {
            name: None,
            trace: &t,
            notes: &[],
            remote_now: None,
        };
        let frame = render_frame(&[view], &spec(30, 30, true));
        assert!(frame
            .iter()
            .all(|l| console::measure_text_width(&l.text) <= 29));
        assert_eq!(frame[1].text, " => [internal] load buil 0.0s");
        let frame = render_frame(
            &[TargetView {
                name: None,
                trace: &t,
                notes: &[],
                remote_now: None,
            }],
            &spec(15, 30, true),
        );
        assert_eq!(frame.len(), 1, "{frame:?}");
    }

    #[test]
    fn writer_moves_up_over_the_previous_frame() {
        let mut w = TtyWriter::new(false);
        let a = vec![
            Line::new("a".into(), Tone::Plain, true),
            Line::new("b".into(), Tone::Done, true),
        ];
        let first = w.draw(&a);
        assert_eq!(first, "\x1b[?25l\x1b[2Ka\n\x1b[2Kb\n\x1b[?25h");
        let second = w.draw(&a[..1]);
        assert_eq!(second, "\x1b[?25l\x1b[2A\r\x1b[2Ka\n\x1b[J\x1b[?25h");
        let mut c = TtyWriter::new(true);
        assert!(c.draw(&a).contains("\x1b[34mb\x1b[0m"));
    }
}
