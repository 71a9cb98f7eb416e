//! The one clock that deadlines are measured on.
//!
//! A [`Clock`] runs in one of three modes:
//!
//! - **Real-time** ([`Clock::real_time`]): wall time since the clock was made, minus every span
//!   during which the game paused it ([`Clock::set_paused`], driven by `Time<Virtual>` in the
//!   plugin). A paused game therefore extends every deadline by the length of the pause.
//! - **Lockstep** ([`Clock::lockstep`]): time moves only when the simulation calls
//!   [`Clock::advance`] (once per fixed tick), and the time at which a worker produced something
//!   is not read from any watch: it is computed from the job's own token counts at the configured
//!   [`Throughput`] ([`Clock::stamp`]). The outcome of a run then depends only on its inputs and
//!   seed, never on how fast the machine happened to be.
//! - **Manual** ([`Clock::manual`]): like lockstep, for unit tests that set time by hand.
//!
//! The clock is cheap to clone and shared by the game thread and the workers.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{ClockConfig, ClockMode, Throughput};

/// A moment on a [`Clock`]: the time since the clock started, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The clock's start.
    pub const ZERO: Timestamp = Timestamp(0);

    /// The timestamp `d` after the clock's start.
    pub fn from_duration(d: Duration) -> Self {
        Timestamp(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// The time since the clock's start.
    pub fn as_duration(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// This moment plus `d`, saturating.
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(Timestamp::from_duration(d).0))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}ms", self.0 as f64 / 1000.0)
    }
}

/// Which of the three modes a clock runs in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClockKind {
    /// Wall time while the game runs.
    RealTime,
    /// Virtual time from token counts, advanced by the simulation.
    Lockstep(Throughput),
    /// Virtual time set by hand.
    Manual(Throughput),
}

#[derive(Debug)]
enum State {
    Real {
        origin: Instant,
        paused_total: Duration,
        paused_since: Option<Instant>,
    },
    Virtual {
        now: Timestamp,
    },
}

/// The shared clock. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Clock {
    kind: ClockKind,
    state: Arc<Mutex<State>>,
}

impl Clock {
    /// A real-time clock starting now.
    pub fn real_time() -> Self {
        Clock {
            kind: ClockKind::RealTime,
            state: Arc::new(Mutex::new(State::Real {
                origin: Instant::now(),
                paused_total: Duration::ZERO,
                paused_since: None,
            })),
        }
    }

    /// A lockstep clock at zero that charges jobs at `throughput`.
    pub fn lockstep(throughput: Throughput) -> Self {
        Clock::virtual_clock(ClockKind::Lockstep(throughput))
    }

    /// A manual clock at zero, for tests; jobs are charged at the default throughput.
    pub fn manual() -> Self {
        Clock::virtual_clock(ClockKind::Manual(Throughput::default()))
    }

    /// A manual clock at zero that charges jobs at `throughput`.
    pub fn manual_with(throughput: Throughput) -> Self {
        Clock::virtual_clock(ClockKind::Manual(throughput))
    }

    /// The clock `config` describes.
    pub fn from_config(config: &ClockConfig) -> Self {
        match config.mode {
            ClockMode::RealTime => Clock::real_time(),
            ClockMode::Lockstep => Clock::lockstep(config.throughput),
        }
    }

    fn virtual_clock(kind: ClockKind) -> Self {
        Clock {
            kind,
            state: Arc::new(Mutex::new(State::Virtual {
                now: Timestamp::ZERO,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain values that no panic can leave half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock's mode.
    pub fn kind(&self) -> ClockKind {
        self.kind
    }

    /// Whether time is computed from token counts (lockstep or manual) rather than read from a
    /// watch. Drain waits for the worker at a deadline only on such a clock.
    pub fn is_virtual(&self) -> bool {
        !matches!(self.kind, ClockKind::RealTime)
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match &*self.state() {
            State::Real {
                origin,
                paused_total,
                paused_since,
            } => {
                // One reading of the watch, so that a paused clock reads exactly the same twice.
                let t = Instant::now();
                let wall = t.saturating_duration_since(*origin);
                let paused_now =
                    paused_since.map_or(Duration::ZERO, |since| t.saturating_duration_since(since));
                Timestamp::from_duration(wall.saturating_sub(*paused_total + paused_now))
            }
            State::Virtual { now } => *now,
        }
    }

    /// Pauses or resumes a real-time clock; paused spans do not count toward any deadline. A
    /// virtual clock only moves by [`Clock::advance`], so this does nothing to it.
    pub fn set_paused(&self, paused: bool) {
        if let State::Real {
            paused_total,
            paused_since,
            ..
        } = &mut *self.state()
        {
            match (paused, *paused_since) {
                (true, None) => *paused_since = Some(Instant::now()),
                (false, Some(since)) => {
                    *paused_total += since.elapsed();
                    *paused_since = None;
                }
                _ => {}
            }
        }
    }

    /// Whether a real-time clock is paused.
    pub fn is_paused(&self) -> bool {
        matches!(
            &*self.state(),
            State::Real {
                paused_since: Some(_),
                ..
            }
        )
    }

    /// Moves a virtual clock forward by `dt`. A real-time clock moves by itself, so this does
    /// nothing to it.
    pub fn advance(&self, dt: Duration) {
        if let State::Virtual { now } = &mut *self.state() {
            *now = now.after(dt);
        }
    }

    /// Sets a virtual clock to `to`, if that is not in its past.
    pub fn advance_to(&self, to: Timestamp) {
        if let State::Virtual { now } = &mut *self.state() {
            *now = (*now).max(to);
        }
    }

    /// When a worker produced something, for deciding whether it was in time.
    ///
    /// On a real-time clock this is simply [`Clock::now`]. On a virtual clock it is the job's
    /// start plus the time its token counts cost at the configured throughput: the moment the
    /// output would have existed, which does not depend on how fast this machine ran the job.
    pub fn stamp(
        &self,
        job_start: Timestamp,
        prompt_tokens: u64,
        generated_tokens: u64,
    ) -> Timestamp {
        self.stamp_at(job_start, prompt_tokens, generated_tokens, None)
    }

    /// [`Clock::stamp`] for a backend whose tokens a virtual clock charges at `rate` instead of
    /// its own (`None`).
    pub fn stamp_at(
        &self,
        job_start: Timestamp,
        prompt_tokens: u64,
        generated_tokens: u64,
        rate: Option<Throughput>,
    ) -> Timestamp {
        match self.kind {
            ClockKind::RealTime => self.now(),
            ClockKind::Lockstep(t) | ClockKind::Manual(t) => {
                job_start.after(rate.unwrap_or(t).duration(prompt_tokens, generated_tokens))
            }
        }
    }

    /// The rate a virtual clock charges tokens at; `None` on a real-time clock.
    pub fn throughput(&self) -> Option<Throughput> {
        match self.kind {
            ClockKind::RealTime => None,
            ClockKind::Lockstep(t) | ClockKind::Manual(t) => Some(t),
        }
    }
}

/// When an answer is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline {
    /// The moment the first step (plan), first words (dialogue) or whole line (banter) is due.
    pub due: Timestamp,
}

impl Deadline {
    /// A deadline `budget` after `start`.
    pub fn after(start: Timestamp, budget: Duration) -> Self {
        Deadline {
            due: start.after(budget),
        }
    }

    /// Whether something produced at `produced` is in time. Exactly at the deadline counts.
    pub fn is_met_by(self, produced: Timestamp) -> bool {
        produced <= self.due
    }

    /// Whether the deadline has passed at `now`.
    pub fn has_passed(self, now: Timestamp) -> bool {
        now > self.due
    }

    /// Time left at `now` (zero once passed).
    pub fn remaining(self, now: Timestamp) -> Duration {
        self.due.since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_clock_moves_only_when_told() {
        let clock = Clock::manual();
        assert_eq!(clock.now(), Timestamp::ZERO);
        clock.advance(Duration::from_millis(16));
        clock.advance(Duration::from_millis(16));
        assert_eq!(clock.now(), Timestamp(32_000));
        clock.advance_to(Timestamp(10));
        assert_eq!(clock.now(), Timestamp(32_000), "advance_to never goes back");
        clock.set_paused(true);
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now(), Timestamp(33_000));
    }

    #[test]
    fn clones_share_one_time() {
        let clock = Clock::lockstep(Throughput::default());
        let worker = clock.clone();
        clock.advance(Duration::from_millis(5));
        assert_eq!(worker.now(), Timestamp(5_000));
    }

    #[test]
    fn lockstep_stamps_come_from_token_counts() {
        let t = Throughput {
            prompt_tokens_per_sec: 1000.0,
            generated_tokens_per_sec: 100.0,
        };
        let clock = Clock::lockstep(t);
        let start = Timestamp(1_000_000);
        // 200 prompt tokens at 1000/s and 10 generated at 100/s: 0.2 s + 0.1 s.
        assert_eq!(clock.stamp(start, 200, 10), Timestamp(1_300_000));
        // However long the machine took, the stamp is the same.
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.stamp(start, 200, 10), Timestamp(1_300_000));
    }

    #[test]
    fn deadlines_compare_production_times() {
        let deadline = Deadline::after(Timestamp(1_000), Duration::from_micros(500));
        assert!(deadline.is_met_by(Timestamp(1_500)));
        assert!(!deadline.is_met_by(Timestamp(1_501)));
        assert!(!deadline.has_passed(Timestamp(1_500)));
        assert!(deadline.has_passed(Timestamp(1_501)));
        assert_eq!(
            deadline.remaining(Timestamp(1_200)),
            Duration::from_micros(300)
        );
        assert_eq!(deadline.remaining(Timestamp(9_999)), Duration::ZERO);
    }

    #[test]
    fn a_paused_real_clock_reads_the_same_before_and_after_the_pause_holds() {
        // No wall-clock assertion: only that a paused clock does not move while paused, which
        // holds however slow the machine is.
        let clock = Clock::real_time();
        clock.set_paused(true);
        assert!(clock.is_paused());
        let a = clock.now();
        std::thread::yield_now();
        let b = clock.now();
        assert_eq!(a, b);
        clock.set_paused(false);
        assert!(!clock.is_paused());
        assert!(clock.now() >= b);
    }

    #[test]
    fn the_mode_comes_from_config() {
        let config = ClockConfig {
            mode: ClockMode::Lockstep,
            ..Default::default()
        };
        assert!(Clock::from_config(&config).is_virtual());
        assert!(!Clock::from_config(&ClockConfig::default()).is_virtual());
    }
}
