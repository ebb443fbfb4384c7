//! Showing what builds are doing: BuildKit's Status stream rendered as a redrawn terminal view,
//! plain CI-friendly text, or raw JSON, plus the end-of-run numbers and the error/summary text.
//!
//! One printer serves every build of a run: each build sends its Status messages through a
//! cloned [`Progress`] handle, tagged with its target name in multi-target runs, and a single
//! printer thread owns the output, so lines of different targets never mix mid-line.
//! This module knows the Status protocol and terminals; it must not know how builds are
//! started, scheduled or skipped — callers tell it with [`Progress::note`].
//!
//! Plain output of a multi-target run keeps each target's lines together: they are held back
//! (`block`) and written as one block when the caller says the target is done
//! ([`Progress::target_done`]), like `make --output-sync`, with a short heartbeat line while
//! blocks are held and nothing was written for a while. In GitHub Actions and GitLab CI (`ci`)
//! each block, and the single build of `bk-build build`, becomes a collapsible section. A step
//! BuildKit shares between builds (identical vertices are solved once) reaches every sharing
//! build's Status stream, so it shows in each of their blocks: a block is complete on its own.
//!
//! Layout: `trace` folds messages into per-build state; `plain`, `tty` and `json` render it;
//! `error` explains a failed Solve ([`describe_build_error`]); `summary` draws the multi-target
//! table ([`summary_table`]) and its Markdown form ([`summary_markdown`]); `call` shows the
//! frontend's answer to `--call` ([`call_report`]).

mod block;
mod call;
mod ci;
mod error;
mod json;
mod plain;
mod summary;
mod trace;
mod tty;
mod units;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::control::StatusResponse;

pub use call::{bake_call_report, call_report, CallReport};
pub use ci::{append_step_summary, CiSystem};
pub use error::describe_build_error;
pub use summary::{summary_markdown, summary_table, SummaryRow, TargetOutcome};
pub use units::{format_bytes, format_duration};

use block::{Block, Spool};
use plain::PlainPrinter;
use trace::{Nanos, Trace};
use tty::{FrameSpec, TargetView, TtyWriter};

/// How often the terminal view is redrawn while nothing arrives (running timers still move).
const TTY_TICK: Duration = Duration::from_millis(150);
/// The least time between two redraws caused by incoming messages.
const TTY_MIN_REDRAW: Duration = Duration::from_millis(100);
/// How often plain output checks whether a heartbeat is due.
const PLAIN_TICK: Duration = Duration::from_secs(1);
/// Plain output held back in blocks prints a heartbeat line after this long without output,
/// so a CI log (and a CI job's no-output timeout) sees that the run is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Longest step name a heartbeat line shows.
const HEARTBEAT_STEP_CHARS: usize = 60;

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `Tty` when stderr is a terminal, else `Plain`.
    #[default]
    Auto,
    Tty,
    Plain,
    RawJson,
    Quiet,
    /// Shown as `Quiet`; for `build`, also no image ID at the end (buildx's `none`, added
    /// because its `quiet` prints one).
    None,
}

impl Mode {
    const CHOICES: &'static str = "auto, tty, plain, rawjson, quiet, none";

    /// `Auto` decided for this process's stderr; other modes are returned unchanged.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto => {
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                if std::io::stderr().is_terminal() && !dumb {
                    Mode::Tty
                } else {
                    Mode::Plain
                }
            }
            m => m,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Tty => "tty",
            Mode::Plain => "plain",
            Mode::RawJson => "rawjson",
            Mode::Quiet => "quiet",
            Mode::None => "none",
        })
    }
}

/// An unknown `--progress` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown progress mode {given:?}: use one of {}", Mode::CHOICES)]
pub struct ParseModeError {
    pub given: String,
}

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Mode, ParseModeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Mode::Auto),
            "tty" => Ok(Mode::Tty),
            "plain" => Ok(Mode::Plain),
            "rawjson" => Ok(Mode::RawJson),
            "quiet" => Ok(Mode::Quiet),
            "none" => Ok(Mode::None),
            _ => Err(ParseModeError {
                given: s.to_string(),
            }),
        }
    }
}

/// Totals of one run, computed in every mode (also `Quiet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgressReport {
    /// Every warning of every build, `[target] ` prefixed in multi-target runs, with the
    /// `file:line` it points at when the daemon said (e.g. `JSONArgsRecommended: … (Dockerfile:5)`).
    pub warnings: Vec<String>,
    pub vertices_total: usize,
    pub vertices_cached: usize,
    /// Bytes of local sources (build context, Dockerfile) the daemon reported receiving: the sum,
    /// over vertices, of the largest `current` of each `transferring <name>:` status.
    pub transferred_context_bytes: u64,
    /// The same numbers per build, in the order builds first reported.
    pub targets: Vec<TargetReport>,
}

/// One build's share of a [`ProgressReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetReport {
    /// `None` for the single build of `bk-build build`.
    pub target: Option<String>,
    pub warnings: Vec<String>,
    pub vertices_total: usize,
    pub vertices_cached: usize,
    pub transferred_context_bytes: u64,
    /// `"<step name>: <error>"` for every step that failed (cancellations are not failures).
    pub failed_steps: Vec<String>,
}

enum Event {
    Status(Option<String>, Box<StatusResponse>),
    Note(Option<String>, String),
    Warning(Option<String>, String),
    Done(String, TargetOutcome, Option<String>),
    /// The end of the run; `true` when it was interrupted (a signal), not finished.
    Finish(bool),
}

/// A printer that has not finished, so that an interrupted run can still end it.
struct Running {
    id: u64,
    tx: mpsc::Sender<Event>,
    /// Says (or hangs up) once the printer has written everything.
    ended: mpsc::Receiver<()>,
}

/// Every printer started and not finished yet (see [`finish_interrupted`]).
static RUNNING: std::sync::Mutex<Vec<Running>> = std::sync::Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Ends every printer still running, for a run stopped by a signal: each writes what it holds
/// (in plain output the held blocks of unfinished targets, titled `TARGET: interrupted`), as
/// at a normal end. Waits at most `wait` for them.
pub fn finish_interrupted(wait: Duration) {
    let running = match RUNNING.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(_) => return,
    };
    for r in &running {
        let _ = r.tx.send(Event::Finish(true));
    }
    let deadline = Instant::now() + wait;
    for r in running {
        let _ = r
            .ended
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Where builds send their progress. Cheap to clone; sending never blocks and is a no-op once
/// the printer has finished.
#[derive(Clone)]
pub struct Progress {
    tx: mpsc::Sender<Event>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

/// The running printer; [`ProgressTask::finish`] ends it and returns the report.
pub struct ProgressTask {
    tx: mpsc::Sender<Event>,
    done: tokio::sync::oneshot::Receiver<ProgressReport>,
    id: u64,
}

impl fmt::Debug for ProgressTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressTask").finish_non_exhaustive()
    }
}

/// Test seams: the clock and the terminal size are injected so output is reproducible.
struct Env {
    now: Box<dyn Fn() -> SystemTime + Send>,
    size: Box<dyn Fn() -> (usize, usize) + Send>,
    color: bool,
    log_lines: usize,
    /// The CI system whose sections plain output uses.
    ci: Option<CiSystem>,
    /// Bytes of a held block kept in memory (see `block`), and where the rest goes (`None`:
    /// the system's temporary directory).
    spool_limit: usize,
    spool_dir: Option<std::path::PathBuf>,
    heartbeat: Duration,
}

impl Env {
    fn real() -> Env {
        let log_lines = std::env::var("BUILDKIT_TTY_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(tty::DEFAULT_LOG_LINES);
        Env {
            now: Box::new(SystemTime::now),
            size: Box::new(|| {
                let (rows, cols) = console::Term::stderr().size_checked().unwrap_or((24, 80));
                (usize::from(cols), usize::from(rows))
            }),
            color: console::colors_enabled_stderr() && std::env::var_os("NO_COLOR").is_none(),
            log_lines,
            ci: CiSystem::detect(|k| std::env::var(k).ok()),
            spool_limit: block::SPOOL_MEMORY,
            spool_dir: None,
            heartbeat: HEARTBEAT,
        }
    }
}

impl Progress {
    /// Starts the printer writing to `out` (stderr in the CLI). The printer runs on its own
    /// thread, so it works with or without a Tokio runtime and a slow terminal never stalls
    /// a build.
    pub fn start(mode: Mode, out: Box<dyn Write + Send>) -> (Progress, ProgressTask) {
        Progress::start_with(mode.resolve(), out, Env::real())
    }

    fn start_with(mode: Mode, out: Box<dyn Write + Send>, env: Env) -> (Progress, ProgressTask) {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (ended_tx, ended) = mpsc::channel();
        let printer = Printer::new(mode, out, env);
        // If the thread cannot be started the builds still run; they just show no progress
        // and `finish` returns an empty report.
        let _ = std::thread::Builder::new()
            .name("bk-build-progress".into())
            .spawn(move || {
                let report = printer.run(rx);
                let _ = done_tx.send(report);
                let _ = ended_tx.send(());
            });
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut r) = RUNNING.lock() {
            r.push(Running {
                id,
                tx: tx.clone(),
                ended,
            });
        }
        (Progress { tx: tx.clone() }, ProgressTask { tx, done, id })
    }

    /// One Status message of a build. `target` is `None` for a single `bk-build build` and the
    /// target's name in multi-target runs, where every plain line is then prefixed `[name] `.
    pub fn status(&self, target: Option<&str>, msg: StatusResponse) {
        let _ = self
            .tx
            .send(Event::Status(target.map(str::to_string), Box::new(msg)));
    }

    /// A line of bk-build's own (e.g. `skip pybase (unchanged)`), shown in the same stream.
    pub fn note(&self, target: Option<&str>, text: &str) {
        let _ = self
            .tx
            .send(Event::Note(target.map(str::to_string), text.to_string()));
    }

    /// A warning of bk-build's own (e.g. a `--cache-from` that is skipped), shown as a note
    /// `warning: TEXT` in every mode, also `Quiet`: buildx prints its client-side warnings
    /// whatever the progress mode (they are log lines, not progress).
    pub fn warning(&self, target: Option<&str>, text: &str) {
        let _ = self
            .tx
            .send(Event::Warning(target.map(str::to_string), text.to_string()));
    }

    /// Says that `target` is finished and nothing more will be sent for it: in plain output
    /// its held lines are written now as one block (a collapsible section in CI, titled
    /// `TARGET: OUTCOME`, folded unless it failed), ending with the failing steps' output and
    /// `error`, the target's error as the run reports it.
    pub fn target_done(&self, target: &str, outcome: TargetOutcome, error: Option<&str>) {
        let _ = self.tx.send(Event::Done(
            target.to_string(),
            outcome,
            error.map(str::to_string),
        ));
    }
}

impl ProgressTask {
    /// Shows everything still pending (unfinished output lines, the final terminal frame, the
    /// failing steps' last output), flushes, and returns the totals. Messages sent afterwards
    /// are dropped.
    pub async fn finish(self) -> ProgressReport {
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|r| r.id != self.id);
        }
        let _ = self.tx.send(Event::Finish(false));
        self.done.await.unwrap_or_default()
    }
}

struct TargetState {
    name: Option<String>,
    trace: Trace,
    plain: PlainPrinter,
    notes: Vec<String>,
    /// Our clock minus the daemon's, measured when the first step started.
    skew: Option<Nanos>,
    /// Plain output of a named target, held until it is done.
    block: Option<Block>,
    /// Holding failed (no temporary file): this target's lines are written as they come.
    live: bool,
    /// The failing steps' output was already shown (in the target's block).
    errors_shown: bool,
}

struct Printer {
    mode: Mode,
    out: Box<dyn Write + Send>,
    /// Cleared at the first write error (e.g. a closed pipe): the report is still computed.
    out_ok: bool,
    env: Env,
    targets: Vec<TargetState>,
    index: HashMap<Option<String>, usize>,
    tty: TtyWriter,
    first_local: Option<Nanos>,
    last_draw: Option<Instant>,
    dirty: bool,
    /// When the printer started, for the heartbeat's elapsed time.
    started: SystemTime,
    last_write: Instant,
    /// CI section IDs used so far (GitLab pairs start and end by ID, so each is used once).
    section_ids: HashSet<String>,
    /// The open CI section of the unnamed build (`bk-build build`): its ID.
    single_section: Option<String>,
    /// The run was stopped by a signal (the titles of blocks written at the end say so).
    interrupted: bool,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn system_nanos(t: SystemTime) -> Nanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

impl Printer {
    fn new(mode: Mode, out: Box<dyn Write + Send>, env: Env) -> Printer {
        let color = env.color;
        let started = (env.now)();
        Printer {
            mode,
            out,
            out_ok: true,
            env,
            targets: Vec::new(),
            index: HashMap::new(),
            tty: TtyWriter::new(color),
            first_local: None,
            last_draw: None,
            dirty: false,
            started,
            last_write: Instant::now(),
            section_ids: HashSet::new(),
            single_section: None,
            interrupted: false,
        }
    }

    fn plain(&self) -> bool {
        matches!(self.mode, Mode::Plain | Mode::Auto)
    }

    fn run(mut self, rx: mpsc::Receiver<Event>) -> ProgressReport {
        loop {
            let tick = match self.mode {
                Mode::Tty => Some(TTY_TICK),
                Mode::Plain | Mode::Auto => Some(PLAIN_TICK),
                _ => None,
            };
            let event = if let Some(tick) = tick {
                match rx.recv_timeout(tick) {
                    Ok(e) => Some(e),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(e) => Some(e),
                    Err(_) => break,
                }
            };
            match event {
                None => {
                    self.redraw(true);
                    self.heartbeat();
                }
                Some(Event::Finish(interrupted)) => {
                    self.interrupted = interrupted;
                    break;
                }
                Some(Event::Status(target, msg)) => self.on_status(target, &msg),
                Some(Event::Note(target, text)) => self.on_note(target, text),
                Some(Event::Warning(target, text)) => self.on_warning(target, text),
                Some(Event::Done(target, outcome, error)) => self.on_done(target, outcome, error),
            }
        }
        self.finish()
    }

    fn target(&mut self, name: Option<String>) -> usize {
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        self.targets.push(TargetState {
            name: name.clone(),
            trace: Trace::default(),
            plain: PlainPrinter::default(),
            notes: Vec::new(),
            skew: None,
            block: None,
            live: false,
            errors_shown: false,
        });
        self.index.insert(name, self.targets.len() - 1);
        self.targets.len() - 1
    }

    fn on_status(&mut self, target: Option<String>, msg: &StatusResponse) {
        let ti = self.target(target);
        let updates = self.targets[ti].trace.apply(msg);
        if self.targets[ti].skew.is_none() {
            if let Some(first) = self.targets[ti].trace.first_start() {
                let local = system_nanos((self.env.now)());
                self.targets[ti].skew = Some(local - first);
                self.first_local.get_or_insert(local);
            }
        }
        match self.mode {
            Mode::Plain | Mode::Auto => {
                let t = &mut self.targets[ti];
                let lines = t.plain.render(&t.trace, &updates);
                self.emit(ti, &lines);
            }
            Mode::RawJson => {
                let line = json::status_line(self.targets[ti].name.as_deref(), msg);
                self.write_raw(&line);
            }
            Mode::Tty => {
                self.dirty = true;
                self.redraw(false);
            }
            Mode::Quiet | Mode::None => {}
        }
    }

    fn on_note(&mut self, target: Option<String>, text: String) {
        let ti = self.target(target);
        match self.mode {
            Mode::Plain | Mode::Auto => self.emit(ti, &[text]),
            Mode::RawJson => {
                let line = json::note_line(self.targets[ti].name.as_deref(), &text);
                self.write_raw(&line);
            }
            Mode::Tty => {
                self.targets[ti].notes.push(text);
                self.dirty = true;
                self.redraw(false);
            }
            Mode::Quiet | Mode::None => {}
        }
    }

    fn on_warning(&mut self, target: Option<String>, text: String) {
        let text = format!("warning: {text}");
        if matches!(self.mode, Mode::Quiet | Mode::None) {
            let ti = self.target(target);
            let name = self.targets[ti].name.clone();
            self.write_lines(name.as_deref(), &[text]);
        } else {
            self.on_note(target, text);
        }
    }

    /// Redraws when due: on a tick (`tick`), or for news at most every `TTY_MIN_REDRAW`.
    fn redraw(&mut self, tick: bool) {
        if self.mode != Mode::Tty || self.targets.is_empty() {
            return;
        }
        let due = self.last_draw.is_none_or(|t| t.elapsed() >= TTY_MIN_REDRAW);
        if !(tick || (self.dirty && due)) {
            return;
        }
        let frame = self.frame(false);
        let bytes = self.tty.draw(&frame);
        self.write_raw_bytes(bytes.as_bytes());
        self.last_draw = Some(Instant::now());
        self.dirty = false;
    }

    fn frame(&self, final_frame: bool) -> Vec<tty::Line> {
        let local = system_nanos((self.env.now)());
        let views: Vec<TargetView<'_>> = self
            .targets
            .iter()
            .map(|t| TargetView {
                name: t.name.as_deref(),
                trace: &t.trace,
                notes: &t.notes,
                remote_now: t.skew.map(|s| local - s),
            })
            .collect();
        let (width, height) = (self.env.size)();
        let spec = FrameSpec {
            elapsed_secs: self
                .first_local
                .map_or(0.0, |f| (local - f).max(0) as f64 / 1e9),
            width,
            height,
            final_frame,
            log_lines: self.env.log_lines,
        };
        tty::render_frame(&views, &spec)
    }

    /// A target is done: its pending lines, the failing steps' output and its error go into
    /// its block, which is written now.
    fn on_done(&mut self, target: String, outcome: TargetOutcome, error: Option<String>) {
        if !self.plain() {
            return;
        }
        let ti = self.target(Some(target.clone()));
        let t = &mut self.targets[ti];
        let updates = t.trace.flush_all();
        let mut lines = t.plain.render(&t.trace, &updates);
        lines.extend(plain::error_logs(&t.trace));
        t.errors_shown = true;
        lines.extend(error);
        self.emit(ti, &lines);
        let title = format!("{target}: {outcome}");
        self.flush_block(ti, &title, outcome != TargetOutcome::Failed);
    }

    /// Plain (and tty end-of-run) lines of one target: held in its block when the target has
    /// a name and output is plain, else written now (inside the single build's CI section).
    fn emit(&mut self, ti: usize, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let name = self.targets[ti].name.clone();
        let text = prefixed(name.as_deref(), lines);
        if self.plain() && name.is_some() && !self.targets[ti].live {
            let now = (self.env.now)();
            let (limit, dir) = (self.env.spool_limit, self.env.spool_dir.clone());
            let block = self.targets[ti].block.get_or_insert_with(|| Block {
                started: now,
                spool: Spool::new(limit, dir),
            });
            let Err(e) = block.spool.push(text.as_bytes()) else {
                return;
            };
            // Nothing may be lost: what is held goes out now with these lines, and the rest of
            // this target's output follows as it comes.
            self.targets[ti].live = true;
            let mut text = text;
            text.push_str(&prefixed(
                name.as_deref(),
                &[format!(
                    "(bk-build: cannot hold this target's log back any longer: no temporary file ({e}); the rest of it follows as it comes, between other targets' lines)"
                )],
            ));
            let title = format!("{}: log so far", name.unwrap_or_default());
            self.flush_block_with(ti, &title, false, text.as_bytes());
            return;
        }
        if self.plain() && name.is_none() {
            self.open_single_section();
        }
        self.write_raw_bytes(text.as_bytes());
    }

    /// Writes a target's held block (if it has one) inside a CI section.
    fn flush_block(&mut self, ti: usize, title: &str, collapsed: bool) {
        self.flush_block_with(ti, title, collapsed, &[]);
    }

    fn flush_block_with(&mut self, ti: usize, title: &str, collapsed: bool, extra: &[u8]) {
        let Some(mut block) = self.targets[ti].block.take() else {
            self.write_raw_bytes(extra);
            return;
        };
        let name = self.targets[ti].name.clone().unwrap_or_default();
        let ci = self.env.ci;
        let id = self.section_id(&name);
        if let Some(ci) = ci {
            let start = ci.start(&id, title, unix_secs(block.started), collapsed);
            self.write_raw_bytes(start.as_bytes());
        }
        if self.out_ok && block.spool.drain_into(&mut *self.out).is_err() {
            self.out_ok = false;
        }
        self.write_raw_bytes(extra);
        if let Some(ci) = ci {
            let end = ci.end(&id, unix_secs((self.env.now)()));
            self.write_raw_bytes(end.as_bytes());
        }
    }

    /// A CI section ID for a target, unique in this run.
    fn section_id(&mut self, name: &str) -> String {
        let base = ci::gitlab_section_name(&format!("bk-build.{name}"));
        let mut id = base.clone();
        let mut n = 1;
        while !self.section_ids.insert(id.clone()) {
            n += 1;
            id = format!("{base}.{n}");
        }
        id
    }

    /// In CI, the unnamed build's output (`bk-build build`) is one section, streamed live.
    fn open_single_section(&mut self) {
        let Some(ci) = self.env.ci else {
            return;
        };
        if self.single_section.is_some() {
            return;
        }
        let id = self.section_id("build");
        let start = ci.start(&id, "bk-build build", unix_secs((self.env.now)()), true);
        self.single_section = Some(id);
        self.write_raw_bytes(start.as_bytes());
    }

    fn close_single_section(&mut self) {
        if let (Some(ci), Some(id)) = (self.env.ci, self.single_section.take()) {
            let end = ci.end(&id, unix_secs((self.env.now)()));
            self.write_raw_bytes(end.as_bytes());
        }
    }

    /// While blocks are held and nothing was written for a while: one line saying what runs.
    fn heartbeat(&mut self) {
        if !self.plain() || self.last_write.elapsed() < self.env.heartbeat {
            return;
        }
        if let Some(line) = self.heartbeat_line() {
            self.write_raw(&line);
        }
    }

    /// `[+] 1m30s: waiting for api ([2/3] RUN make), web`: the targets whose blocks are held,
    /// each with its most recently started step that is still running.
    fn heartbeat_line(&self) -> Option<String> {
        let held: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.block.is_some())
            .filter_map(|t| {
                let name = t.name.as_deref()?;
                Some(match t.trace.running_step() {
                    Some(step) => format!("{name} ({})", shorten(step, HEARTBEAT_STEP_CHARS)),
                    None => name.to_string(),
                })
            })
            .collect();
        if held.is_empty() {
            return None;
        }
        let elapsed = (self.env.now)()
            .duration_since(self.started)
            .unwrap_or_default();
        Some(format!(
            "[+] {}: waiting for {}",
            format_duration(elapsed),
            held.join(", ")
        ))
    }

    fn finish(mut self) -> ProgressReport {
        let plain = self.plain();
        for ti in 0..self.targets.len() {
            let t = &mut self.targets[ti];
            let updates = t.trace.flush_all();
            if plain {
                let lines = t.plain.render(&t.trace, &updates);
                self.emit(ti, &lines);
            }
        }
        if self.mode == Mode::Tty && !self.targets.is_empty() {
            let frame = self.frame(true);
            let bytes = self.tty.draw(&frame);
            self.write_raw_bytes(bytes.as_bytes());
            self.tty.release();
        }
        if matches!(self.mode, Mode::Plain | Mode::Auto | Mode::Tty) {
            for ti in 0..self.targets.len() {
                if self.targets[ti].errors_shown {
                    continue;
                }
                let lines = plain::error_logs(&self.targets[ti].trace);
                self.emit(ti, &lines);
            }
        }
        // Targets nobody said were done (a run that ended early): their blocks as they are.
        for ti in 0..self.targets.len() {
            let mut title = self.targets[ti].name.clone().unwrap_or_default();
            if self.interrupted {
                title.push_str(": interrupted");
            }
            self.flush_block(ti, &title, false);
        }
        self.close_single_section();
        if self.out_ok {
            let _ = self.out.flush();
        }
        self.report()
    }

    fn report(&self) -> ProgressReport {
        let mut report = ProgressReport::default();
        for t in &self.targets {
            let prefix = t
                .name
                .as_ref()
                .map(|n| format!("[{n}] "))
                .unwrap_or_default();
            let warnings: Vec<String> = t
                .trace
                .warnings
                .iter()
                .map(|w| match &w.location {
                    Some(loc) => format!("{prefix}{} ({loc})", w.short),
                    None => format!("{prefix}{}", w.short),
                })
                .collect();
            let tr = TargetReport {
                target: t.name.clone(),
                warnings: warnings.clone(),
                vertices_total: t.trace.vertex_count(),
                vertices_cached: t.trace.cached_count(),
                transferred_context_bytes: t.trace.transferred_bytes(),
                failed_steps: t
                    .trace
                    .nodes
                    .iter()
                    .filter(|n| n.failed())
                    .map(|n| format!("{}: {}", n.name, n.error().unwrap_or_default()))
                    .collect(),
            };
            report.warnings.extend(warnings);
            report.vertices_total += tr.vertices_total;
            report.vertices_cached += tr.vertices_cached;
            report.transferred_context_bytes += tr.transferred_context_bytes;
            report.targets.push(tr);
        }
        report
    }

    /// Writes whole lines in one go, each prefixed `[target] ` when there is a target; text
    /// containing newlines becomes several prefixed lines. Empty lines stay empty.
    fn write_lines(&mut self, target: Option<&str>, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let text = prefixed(target, lines);
        self.write_raw_bytes(text.as_bytes());
    }

    fn write_raw(&mut self, line: &str) {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        self.write_raw_bytes(buf.as_bytes());
    }

    fn write_raw_bytes(&mut self, bytes: &[u8]) {
        if !self.out_ok || bytes.is_empty() {
            return;
        }
        // Flushed each time: stderr users expect to see progress as it happens.
        if self
            .out
            .write_all(bytes)
            .and_then(|_| self.out.flush())
            .is_err()
        {
            self.out_ok = false;
        }
        self.last_write = Instant::now();
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Lines as written: each prefixed `[target] ` when there is a target, text containing
/// newlines split into several prefixed lines, empty lines left empty.
fn prefixed(target: Option<&str>, lines: &[String]) -> String {
    let prefix = target.map(|n| format!("[{n}] ")).unwrap_or_default();
    let mut buf = String::new();
    for line in lines {
        for part in line.split('\n') {
            if !part.is_empty() {
                buf.push_str(&prefix);
                buf.push_str(part);
            }
            buf.push('\n');
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::trace::tests::{log, msg, status, vtx};
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn test_env() -> Env {
        Env {
            now: Box::new(|| UNIX_EPOCH + Duration::from_secs(1_700_000_010)),
            size: Box::new(|| (60, 20)),
            color: false,
            log_lines: tty::DEFAULT_LOG_LINES,
            ci: None,
            spool_limit: block::SPOOL_MEMORY,
            spool_dir: None,
            heartbeat: HEARTBEAT,
        }
    }

    fn start(mode: Mode) -> (Progress, ProgressTask, Buf) {
        let buf = Buf::default();
        let (p, t) = Progress::start_with(mode, Box::new(buf.clone()), test_env());
        (p, t, buf)
    }

    #[test]
    fn modes_parse_and_list_the_choices_on_error() {
        assert_eq!("plain".parse::<Mode>(), Ok(Mode::Plain));
        assert_eq!("RawJSON".parse::<Mode>(), Ok(Mode::RawJson));
        assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
        let err = "fancy".parse::<Mode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown progress mode \"fancy\": use one of auto, tty, plain, rawjson, quiet, none"
        );
        for m in [
            Mode::Auto,
            Mode::Tty,
            Mode::Plain,
            Mode::RawJson,
            Mode::Quiet,
            Mode::None,
        ] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert_eq!(Mode::Plain.resolve(), Mode::Plain);
    }

    fn start_in(mode: Mode, env: Env) -> (Progress, ProgressTask, Buf) {
        let buf = Buf::default();
        let (p, t) = Progress::start_with(mode, Box::new(buf.clone()), env);
        (p, t, buf)
    }

    /// Two builds whose messages interleave, and a target with only a note.
    fn interleaved(p: &Progress) {
        let run = |t: &str, done: Option<i64>| {
            msg(
                vec![vtx("x", &format!("[1/1] RUN build-{t}"), Some(0), done)],
                vec![],
                vec![],
            )
        };
        p.status(Some("api"), run("api", None));
        p.status(Some("web"), run("web", None));
        p.status(
            Some("api"),
            msg(vec![], vec![], vec![log("x", 100, "compiling ap")]),
        );
        p.status(
            Some("web"),
            msg(vec![], vec![], vec![log("x", 150, "bundling\nminify")]),
        );
        p.status(
            Some("api"),
            msg(vec![], vec![], vec![log("x", 200, "i.rs\n")]),
        );
        p.note(Some("base"), "skip base (unchanged)");
        p.status(Some("web"), run("web", Some(900)));
        p.status(Some("api"), run("api", Some(1000)));
    }

    /// A build whose step fails with output.
    fn failing(p: &Progress) {
        p.status(
            Some("bad"),
            msg(
                vec![crate::proto::control::Vertex {
                    error: "exit code: 3".into(),
                    ..vtx("f", "[1/1] RUN false", Some(0), Some(20))
                }],
                vec![],
                vec![log("f", 10, "oops\n")],
            ),
        );
    }

    const WEB: &str = "[web] #1 [1/1] RUN build-web\n\
                       [web] #1 0.150 bundling\n\
                       [web] #1 0.150 minify\n\
                       [web] #1 DONE 0.9s\n";
    const API: &str = "[api] #1 [1/1] RUN build-api\n\
                       [api] #1 0.100 compiling api.rs\n\
                       [api] #1 DONE 1.0s\n";
    const BAD: &str = "[bad] #1 [1/1] RUN false\n\
                       [bad] #1 0.010 oops\n\
                       [bad] #1 ERROR: exit code: 3\n\
                       [bad] ------\n\
                       [bad]  > [1/1] RUN false:\n\
                       [bad] 0.010 oops\n\
                       [bad] ------\n\
                       [bad] ERROR: failed to solve: exit code: 3\n\
                       [bad] Dockerfile:2\n";

    #[tokio::test]
    async fn each_targets_lines_come_out_together_when_it_is_done() {
        for limit in [block::SPOOL_MEMORY, 16] {
            let (p, task, buf) = start_in(
                Mode::Plain,
                Env {
                    spool_limit: limit,
                    ..test_env()
                },
            );
            interleaved(&p);
            p.target_done("web", TargetOutcome::Built, None);
            p.target_done("base", TargetOutcome::Skipped, None);
            // `api` is never said to be done: the end of the run writes its block.
            let report = task.finish().await;
            assert_eq!(
                buf.text(),
                format!("{WEB}[base] skip base (unchanged)\n{API}"),
                "spool limit {limit}"
            );
            assert_eq!(report.targets.len(), 3);
            assert_eq!(report.vertices_total, 2);
            assert_eq!(report.targets[0].target.as_deref(), Some("api"));
        }
    }

    #[tokio::test]
    async fn a_block_that_cannot_be_held_is_written_whole_and_then_live() {
        let (p, task, buf) = start_in(
            Mode::Plain,
            Env {
                ci: Some(CiSystem::GitHubActions),
                spool_limit: 40,
                spool_dir: Some("/nonexistent/bk-build-spool".into()),
                ..test_env()
            },
        );
        interleaved(&p);
        p.target_done("web", TargetOutcome::Built, None);
        task.finish().await;
        let text = buf.text();
        let web: Vec<&str> = text.lines().filter(|l| l.starts_with("[web] #")).collect();
        assert_eq!(web, WEB.lines().collect::<Vec<_>>(), "{text}");
        let api: Vec<&str> = text.lines().filter(|l| l.starts_with("[api] #")).collect();
        assert_eq!(api, API.lines().collect::<Vec<_>>(), "{text}");
        assert!(
            text.contains("::group::api: log so far\n[api] #1 [1/1] RUN build-api\n"),
            "{text}"
        );
        assert!(
            text.contains("[api] (bk-build: cannot hold this target's log back any longer"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn github_actions_gets_one_group_per_target_with_its_error_inside() {
        let (p, task, buf) = start_in(
            Mode::Plain,
            Env {
                ci: Some(CiSystem::GitHubActions),
                ..test_env()
            },
        );
        interleaved(&p);
        failing(&p);
        p.target_done("web", TargetOutcome::Built, None);
        p.target_done(
            "bad",
            TargetOutcome::Failed,
            Some("ERROR: failed to solve: exit code: 3\nDockerfile:2"),
        );
        task.finish().await;
        assert_eq!(
            buf.text(),
            format!(
                "::group::web: built\n{WEB}::endgroup::\n\
                 ::group::bad: failed\n{BAD}::endgroup::\n\
                 ::group::api\n{API}::endgroup::\n\
                 ::group::base\n[base] skip base (unchanged)\n::endgroup::\n"
            )
        );
    }

    #[tokio::test]
    async fn gitlab_sections_are_timed_named_once_and_folded_unless_failed() {
        let (p, task, buf) = start_in(
            Mode::Plain,
            Env {
                ci: Some(CiSystem::GitLab),
                ..test_env()
            },
        );
        failing(&p);
        p.note(Some("web"), "first");
        p.target_done("web", TargetOutcome::Skipped, None);
        // A target that reports again after its block gets a section of its own.
        p.note(Some("web"), "late");
        p.target_done("web", TargetOutcome::Skipped, None);
        p.target_done(
            "bad",
            TargetOutcome::Failed,
            Some("ERROR: failed to solve: exit code: 3\nDockerfile:2"),
        );
        task.finish().await;
        let (start, end) = (
            "\x1b[0Ksection_start:1700000010:",
            "\x1b[0Ksection_end:1700000010:",
        );
        assert_eq!(
            buf.text(),
            format!(
                "{start}bk-build.web[collapsed=true]\r\x1b[0Kweb: skipped\n[web] first\n{end}bk-build.web\r\x1b[0K\n\
                 {start}bk-build.web.2[collapsed=true]\r\x1b[0Kweb: skipped\n[web] late\n{end}bk-build.web.2\r\x1b[0K\n\
                 {start}bk-build.bad\r\x1b[0Kbad: failed\n{BAD}{end}bk-build.bad\r\x1b[0K\n"
            )
        );
    }

    #[tokio::test]
    async fn a_single_build_in_ci_is_one_live_section() {
        let (p, task, buf) = start_in(
            Mode::Plain,
            Env {
                ci: Some(CiSystem::GitHubActions),
                ..test_env()
            },
        );
        p.status(
            None,
            msg(vec![vtx("a", "A", Some(0), Some(100))], vec![], vec![]),
        );
        task.finish().await;
        assert_eq!(
            buf.text(),
            "::group::bk-build build\n#1 A\n#1 DONE 0.1s\n::endgroup::\n"
        );
    }

    #[tokio::test]
    async fn quiet_and_tty_runs_write_no_blocks() {
        let (p, task, buf) = start_in(
            Mode::Quiet,
            Env {
                ci: Some(CiSystem::GitHubActions),
                ..test_env()
            },
        );
        interleaved(&p);
        p.target_done("web", TargetOutcome::Built, None);
        task.finish().await;
        assert_eq!(buf.text(), "");
    }

    #[test]
    fn the_heartbeat_names_held_targets_and_their_running_step() {
        let mut printer = Printer::new(Mode::Plain, Box::new(Buf::default()), test_env());
        assert_eq!(printer.heartbeat_line(), None);
        printer.on_status(
            Some("api".into()),
            &msg(
                vec![
                    vtx("a", "[1/2] FROM busybox", Some(0), Some(10)),
                    vtx(
                        "b",
                        &format!("[2/2] RUN {}", "x".repeat(80)),
                        Some(20),
                        None,
                    ),
                ],
                vec![],
                vec![],
            ),
        );
        printer.on_note(Some("base".into()), "waiting for nothing".into());
        assert_eq!(
            printer.heartbeat_line().as_deref(),
            Some(
                format!(
                    "[+] 0.0s: waiting for api ([2/2] RUN {}…), base",
                    "x".repeat(49)
                )
                .as_str()
            )
        );
    }

    #[tokio::test]
    async fn warnings_show_in_every_mode_notes_not_in_quiet() {
        for mode in [Mode::Quiet, Mode::Plain] {
            let (p, task, buf) = start(mode);
            p.note(None, "building: inputs changed");
            p.warning(
                Some("web"),
                "--cache-from type=local,src=c skipped: no index.json",
            );
            drop(p);
            task.finish().await;
            let text = buf.text();
            assert!(
                text.contains(
                    "[web] warning: --cache-from type=local,src=c skipped: no index.json\n"
                ),
                "{mode}: {text:?}"
            );
            assert_eq!(
                text.contains("building:"),
                mode != Mode::Quiet,
                "{mode}: {text:?}"
            );
        }
    }

    #[tokio::test]
    async fn report_counts_cache_transfers_warnings_and_failures() {
        let (p, task, buf) = start(Mode::Quiet);
        let mut first = msg(
            vec![
                vtx("ctx", "[internal] load build context", Some(0), Some(500)),
                crate::proto::control::Vertex {
                    cached: true,
                    ..vtx("base", "[1/2] FROM busybox", Some(0), Some(0))
                },
                crate::proto::control::Vertex {
                    error: "exit code: 1".into(),
                    ..vtx("run", "[2/2] RUN false", Some(600), Some(700))
                },
            ],
            vec![
                status("ctx", "transferring context:", 1_000, 0, 100, false),
                status("ctx", "transferring context:", 4_096, 0, 400, true),
            ],
            vec![],
        );
        first.warnings.push(crate::proto::control::VertexWarning {
            vertex: "base".into(),
            short: b"FromAsCasing: mismatch\n".to_vec(),
            info: Some(crate::proto::pb::SourceInfo {
                filename: "Dockerfile".into(),
                ..Default::default()
            }),
            ranges: vec![crate::proto::pb::Range {
                start: Some(crate::proto::pb::Position {
                    line: 1,
                    character: 0,
                }),
                end: None,
            }],
            ..Default::default()
        });
        p.status(None, first);
        let report = task.finish().await;
        assert_eq!(buf.text(), "");
        assert_eq!(report.vertices_total, 3);
        assert_eq!(report.vertices_cached, 1);
        assert_eq!(report.transferred_context_bytes, 4_096);
        assert_eq!(
            report.warnings,
            vec!["FromAsCasing: mismatch (Dockerfile:1)"]
        );
        assert_eq!(
            report.targets[0].failed_steps,
            vec!["[2/2] RUN false: exit code: 1"]
        );
    }

    #[tokio::test]
    async fn rawjson_prints_one_object_per_message() {
        let (p, task, buf) = start(Mode::RawJson);
        p.status(
            None,
            msg(
                vec![vtx("a", "A", Some(0), None)],
                vec![],
                vec![log("a", 5, "hi\n")],
            ),
        );
        p.note(None, "hello");
        task.finish().await;
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["vertexes"][0]["name"], "A");
        assert_eq!(first["logs"][0]["data"], "aGkK");
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["note"], "hello");
    }

    #[tokio::test]
    async fn tty_draws_a_final_frame_and_the_failure_output() {
        let (p, task, buf) = start(Mode::Tty);
        p.status(
            None,
            msg(
                vec![crate::proto::control::Vertex {
                    error: "exit code: 2".into(),
                    ..vtx("r", "[1/1] RUN false", Some(0), Some(1_500))
                }],
                vec![],
                vec![log("r", 10, "oops\n")],
            ),
        );
        task.finish().await;
        let text = buf.text();
        let visible = console::strip_ansi_codes(&text).to_string();
        // The final frame is the last one drawn, followed by the failing step's output.
        let tail = visible.rsplit("[+] Building").next().unwrap();
        assert_eq!(
            tail,
            " 0.0s (1/1) FINISHED\n\
             \x20=> ERROR [1/1] RUN false                              1.5s\n\
             ------\n \
             > [1/1] RUN false:\n\
             0.010 oops\n\
             ------\n"
        );
    }

    #[tokio::test]
    async fn sending_after_finish_is_harmless() {
        let (p, task, _buf) = start(Mode::Plain);
        task.finish().await;
        p.status(None, StatusResponse::default());
        p.note(None, "late");
    }
}
