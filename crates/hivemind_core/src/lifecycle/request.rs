//! One request in flight: its phase, what the model has written so far, and its prepared
//! fallback.

use std::sync::Arc;

use crate::backend::JobId;
use crate::cache::CacheKey;
use crate::clock::{Deadline, Timestamp};
use crate::hooks::{CopyCheck, FallbackPlanner, LineFilter, LineVerdict};
use crate::metrics::Metrics;
use crate::plan::{BackendId, PlanStep, RequestKind};
use crate::prompt::IntentOption;
use crate::snapshot::WorldSnapshot;
use crate::templates::{Slots, TemplateBook};

use super::RequestSlot;

/// Where a request is in its life. See the [module docs](super) for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Queued or being written; nothing has reached the game, and the deadline is armed.
    Waiting,
    /// The deadline passed in a frame whose drain stopped at its budget, so an in-time answer
    /// may still be unread: the request gets one more frame before its fallback answers.
    Overdue,
    /// The model's first step or words reached the game in time; the rest streams until the
    /// completion.
    Streaming,
    /// A reply to the player whose model words could not begin by the dialogue deadline: a
    /// bridge was spoken then, and the model's words may follow it until the reply deadline.
    Bridged,
    /// The game has its completion. Whatever the model still writes only fills the cache (or,
    /// for a line written in idle time, the banter pool).
    CacheOnly,
}

/// A fallback answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A plan's steps (empty: the registry's idle verb answers).
    Plan(Vec<PlanStep>),
    /// A line.
    Line(String),
}

/// The fallback answers of one frame's requests being prepared, as a [`FallbackExecutor`] runs
/// them.
pub trait PendingAnswer: Send + Sync {
    /// The answers, in the order of the work; blocks until they are ready, which planners that
    /// take microseconds practically never make happen.
    fn take(&mut self) -> Vec<Answer>;
}

/// Runs the work of preparing fallback answers: on a task pool, or at once.
///
/// The lifecycle hands it each frame's work as one batch (at [`Lifecycle::dispatch`]), so a
/// task pool is woken once a frame, not once a request.
///
/// [`Lifecycle::dispatch`]: super::Lifecycle::dispatch
pub trait FallbackExecutor: Send + Sync {
    /// Starts `work` and returns a handle to its answers.
    fn spawn(&self, work: Vec<FallbackWork>) -> Box<dyn PendingAnswer>;
}

/// Prepares every fallback at once on the caller's thread: for tests and for games without a
/// task pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineExecutor;

impl FallbackExecutor for InlineExecutor {
    fn spawn(&self, work: Vec<FallbackWork>) -> Box<dyn PendingAnswer> {
        Box::new(Some(run_all(work)))
    }
}

impl PendingAnswer for Option<Vec<Answer>> {
    fn take(&mut self) -> Vec<Answer> {
        Option::take(self).unwrap_or_default()
    }
}

/// Makes each answer of a batch, in order.
pub fn run_all(work: Vec<FallbackWork>) -> Vec<Answer> {
    work.into_iter().map(FallbackWork::run).collect()
}

/// What it takes to make one request's fallback answer: the game's planner for a plan, the
/// templates for a line.
pub struct FallbackWork {
    pub(super) kind: RequestKind,
    pub(super) planner: Arc<dyn FallbackPlanner>,
    pub(super) templates: Arc<TemplateBook>,
    pub(super) snapshot: Arc<WorldSnapshot>,
    pub(super) persona: String,
    pub(super) situation: String,
    pub(super) slots: Vec<(String, String)>,
    pub(super) seed: u64,
}

impl FallbackWork {
    /// Makes the answer.
    pub fn run(self) -> Answer {
        match self.kind {
            RequestKind::Plan => Answer::Plan(self.planner.plan(&self.snapshot)),
            RequestKind::Dialogue | RequestKind::Banter => Answer::Line(template_line(
                &self.templates,
                &self.persona,
                &self.situation,
                &self.slots,
                self.seed,
            )),
        }
    }
}

/// A frame's fallbacks being prepared, shared by its requests.
#[derive(Default)]
pub(super) struct Batch {
    /// The executor's handle, until the answers are taken from it.
    pub(super) pending: Option<Box<dyn PendingAnswer>>,
    answers: Vec<Answer>,
}

/// A fallback, as the request holds it.
pub(super) enum Prepared {
    /// Not handed to the executor yet (it is, at the next dispatch).
    Unsent(Box<FallbackWork>),
    /// Answer `index` of a batch being prepared.
    Batched(Arc<std::sync::Mutex<Batch>>, usize),
    Ready(Answer),
}

impl Prepared {
    pub(super) fn take(&mut self) -> Answer {
        let answer = match std::mem::replace(self, Prepared::Ready(Answer::Line(String::new()))) {
            Prepared::Ready(answer) => answer,
            // Needed before the frame's dispatch: made here, at once.
            Prepared::Unsent(work) => work.run(),
            Prepared::Batched(batch, index) => {
                let mut batch = batch
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(mut pending) = batch.pending.take() {
                    batch.answers = pending.take();
                }
                batch
                    .answers
                    .get(index)
                    .cloned()
                    .unwrap_or(Answer::Line(String::new()))
            }
        };
        *self = Prepared::Ready(answer.clone());
        answer
    }
}

/// Whether the line filter let a model's text through so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Gate {
    /// Every word so far may reach the player.
    #[default]
    Open,
    /// The filter ended the line: later words are dropped.
    Cut,
    /// The filter rejected the line before any of it was said.
    Rejected,
}

/// Where the line filter and the copy check leave a model's text so far.
pub(super) struct Checked {
    pub(super) verdict: LineVerdict,
    /// The copy check, not the game's filter, decided the verdict.
    pub(super) copy: bool,
}

/// What is particular to a plan.
#[derive(Default)]
pub(super) struct PlanState {
    /// The model's steps so far (after repair, the planner's from the failed one on).
    pub(super) steps: Vec<PlanStep>,
    /// A step failed the planner's check, or the model failed mid-plan, and the planner's steps
    /// replaced the rest.
    pub(super) repaired: bool,
    /// The intent a guided answer chose (its goal), once it has; empty when the choice could
    /// not be carried out.
    pub(super) intent: Option<String>,
    /// The goal of the option the model named, whether or not it could be carried out.
    pub(super) chosen: Option<String>,
    /// The intents a guided prompt offered, in the prompt's order; empty for a free plan.
    pub(super) options: Vec<IntentOption>,
    pub(super) cache_key: Option<CacheKey>,
}

/// One request in flight.
pub(super) struct Request<K> {
    /// `None` for a line the worker writes in idle time for the banter pool.
    pub(super) agent: Option<K>,
    pub(super) kind: RequestKind,
    pub(super) phase: Phase,
    pub(super) persona: String,
    pub(super) snapshot: Arc<WorldSnapshot>,
    pub(super) situation: String,
    pub(super) player_said: Option<String>,
    pub(super) submitted: Timestamp,
    pub(super) deadline: Deadline,
    /// The worker's job, until it ends.
    pub(super) job: Option<JobId>,
    pub(super) fallback: Prepared,
    /// The backend that took the job.
    pub(super) backend: Option<BackendId>,
    /// The text the model wrote: a line, or a plan's `say`.
    pub(super) text: String,
    pub(super) gate: Gate,
    /// Steps (or bytes of text) already given to the game.
    pub(super) delivered: usize,
    pub(super) first_at: Option<Timestamp>,
    /// `Some` for a plan.
    pub(super) plan: Option<PlanState>,
    /// The acknowledgement a bridged reply began with.
    pub(super) bridge: Option<String>,
    /// The copy check stopped some of the model's text.
    pub(super) copied: bool,
    /// The worker skipped the plan's line for waiting work: a template says it instead.
    pub(super) line_skipped: bool,
    /// What the model's line must not copy besides the prompt: what the player said, and the
    /// options a guided prompt showed; built once, checked on every piece of text.
    pub(super) shown: CopyCheck,
}

impl<K> Request<K> {
    pub(super) fn slot(&self) -> Option<RequestSlot> {
        RequestSlot::of(self.kind)
    }

    /// Whether the game has its completion.
    pub(super) fn is_answered(&self) -> bool {
        self.phase == Phase::CacheOnly
    }

    /// Whether the worker's job has ended.
    pub(super) fn job_over(&self) -> bool {
        self.job.is_none()
    }

    /// Whether something produced at `at` may reach the game: while streaming, or in time (for
    /// a bridged reply, by the reply deadline).
    pub(super) fn in_time(&self, at: Timestamp) -> bool {
        self.phase == Phase::Streaming || self.deadline.is_met_by(at)
    }

    /// The backend's name for metrics and sources.
    pub(super) fn backend(&self) -> BackendId {
        self.backend
            .clone()
            .unwrap_or_else(|| BackendId::new("unknown"))
    }

    /// **First output.** Its first step or words reach the game at `at`: `Waiting`/`Overdue`
    /// → `Streaming`, and the time to first output is recorded.
    pub(super) fn first_delivered(&mut self, at: Timestamp, metrics: &mut Metrics) {
        self.first_at = Some(at);
        if self.phase != Phase::CacheOnly {
            self.phase = Phase::Streaming;
        }
        metrics.record_first(self.kind, self.backend(), at.since(self.submitted));
    }

    /// The line filter's and the copy check's verdict on `text`, the model's text so far.
    pub(super) fn check(&self, filter: &dyn LineFilter, copies: &CopyCheck, text: &str) -> Checked {
        let copy = copies.verdict_with(text, &self.shown);
        let verdict = filter.check(text).and(copy);
        Checked {
            copy: copy != LineVerdict::Pass && verdict == copy,
            verdict,
        }
    }

    /// Applies the verdict on the whole text so far to a text no player hears while it streams
    /// (a plan's line, a line for the banter pool). Returns whether the copy check stopped it
    /// just now.
    pub(super) fn close_if_filtered(
        &mut self,
        filter: &dyn LineFilter,
        copies: &CopyCheck,
    ) -> bool {
        let checked = self.check(filter, copies, &self.text);
        match checked.verdict {
            LineVerdict::Pass => return false,
            LineVerdict::Cut(n) => {
                cut_at(&mut self.text, n);
                self.gate = Gate::Cut;
            }
            LineVerdict::Reject => self.gate = Gate::Rejected,
        }
        let first = checked.copy && !self.copied;
        self.copied |= checked.copy;
        first
    }

    /// The line a plan's answer says, after the filter and the copy check: `None` if it wrote
    /// none or they rejected it.
    pub(super) fn plan_line(&self, filter: &dyn LineFilter, copies: &CopyCheck) -> Option<String> {
        if self.gate == Gate::Rejected || self.line_skipped {
            return None;
        }
        self.checked_line(filter, copies, &self.text)
    }

    /// `text`, a line of this request's that a player will hear, after the filter and the copy
    /// check: `None` if they rejected it or it says nothing.
    pub(super) fn checked_line(
        &self,
        filter: &dyn LineFilter,
        copies: &CopyCheck,
        text: &str,
    ) -> Option<String> {
        let mut line = text.trim().to_owned();
        match self.check(filter, copies, &line).verdict {
            LineVerdict::Pass => {}
            LineVerdict::Cut(n) => cut_at(&mut line, n),
            LineVerdict::Reject => line.clear(),
        }
        is_speech(&line).then_some(line)
    }
}

/// Whether a finished line says something: it has a word of two letters or more. A small model
/// sometimes fills a line with digits and punctuation ("12,6"), which no player should hear.
pub(super) fn is_speech(line: &str) -> bool {
    line.split(|c: char| !c.is_alphabetic())
        .any(|w| w.chars().count() >= 2)
}

/// The copy check of a request's own texts: `player_said`, and each option as `label: reason`.
pub(super) fn shown_check(
    copies: &CopyCheck,
    player_said: Option<&str>,
    options: &[IntentOption],
) -> CopyCheck {
    let options: Vec<String> = options
        .iter()
        .map(|o| format!("{}: {}", o.label, o.reason))
        .collect();
    let texts: Vec<&str> = player_said
        .into_iter()
        .chain(options.iter().map(String::as_str))
        .collect();
    copies.for_line(&texts)
}

/// `text` after the filter: cut, or empty if rejected.
pub(super) fn filtered(filter: &dyn LineFilter, mut text: String) -> String {
    match filter.check(&text) {
        LineVerdict::Pass => text,
        LineVerdict::Cut(n) => {
            cut_at(&mut text, n);
            text
        }
        LineVerdict::Reject => String::new(),
    }
}

/// Shortens `text` to at most `n` bytes, at a char boundary: a filter's cut never panics, even
/// one that is not on a boundary.
pub(super) fn cut_at(text: &mut String, n: usize) {
    if n < text.len() {
        let end = text.floor_char_boundary(n);
        text.truncate(end);
    }
}

/// A template line for `persona` in `situation`, or its idle line, or nothing.
pub(super) fn template_line(
    templates: &TemplateBook,
    persona: &str,
    situation: &str,
    slots: &[(String, String)],
    seed: u64,
) -> String {
    let slots: Slots = slots.iter().cloned().collect();
    templates
        .line(Some(persona), situation, &slots, seed)
        .or_else(|_| templates.line(Some(persona), "idle", &slots, seed))
        .unwrap_or_default()
}

/// The template situation a bridge is drawn from: a persona's short acknowledgements.
pub const BRIDGE_SITUATION: &str = "bridge";

/// The bridge when the templates have none for the persona.
pub(super) const DEFAULT_BRIDGE: &str = "Hm.";

/// A bridge for `persona`: a line of its [`BRIDGE_SITUATION`] (or the shared one), never another
/// situation's; empty if there is none.
pub(super) fn bridge_line(templates: &TemplateBook, persona: &str, seed: u64) -> String {
    // A template book falls back to idle lines for a situation it lacks; a bridge must not.
    let has_bridges = templates.situations().any(|s| s == BRIDGE_SITUATION)
        || templates
            .persona_situations(persona)
            .any(|s| s == BRIDGE_SITUATION);
    if !has_bridges {
        return String::new();
    }
    templates
        .line(Some(persona), BRIDGE_SITUATION, &Slots::new(), seed)
        .unwrap_or_default()
}

/// Keeps the first `keep` of a model's `steps` and appends the planner's completion from there;
/// the idle step if that leaves no step at all.
pub(super) fn complete_after(
    planner: &dyn FallbackPlanner,
    snapshot: &WorldSnapshot,
    steps: &mut Vec<PlanStep>,
    keep: usize,
    idle: PlanStep,
) {
    steps.truncate(keep);
    let rest = planner.complete(snapshot, steps);
    steps.extend(rest);
    if steps.is_empty() {
        steps.push(idle);
    }
}
