//! A frame-rate cap, so that drawing leaves a local model the CPU it needs.
//!
//! [`FrameCapPlugin`] adds [`FrameCap`] and, last in every frame, waits out the rest of the
//! frame's share of time. A capped frame rate changes only how often the scene is drawn: a game
//! whose rules run in `FixedUpdate` (as the arena's do) moves at the same speed, each frame
//! running as many fixed steps as the time since the last one holds. For that, the cap raises
//! the virtual clock's largest step (`Time<Virtual>::max_delta`, 250 ms by default) to two
//! capped frames, so a slow frame is not cut short and the game does not fall behind the clock
//! on the wall.
//!
//! # Design
//!
//! The model runs on worker threads and the renderer on the main and render threads, all on the
//! same cores. A GPU draws the arena in a fraction of a millisecond of CPU time, but a software
//! renderer (Mesa's llvmpipe, as under Xvfb in CI) rasterises every pixel on the CPU, with a
//! thread per core: uncapped, it takes every cycle it can, and on a two-core machine the model
//! misses its deadlines and every plan is a fallback. Sleeping at the end of the frame, rather
//! than asking winit to wake less often, holds the rate however many window and input events
//! arrive.

use std::time::{Duration, Instant};

use bevy::prelude::*;

/// The longest time between the starts of two frames, or `None` for no cap.
#[derive(Resource, Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameCap {
    /// The frame time the cap holds, at least.
    pub frame: Option<Duration>,
    /// When the last frame's wait ended.
    last: Option<Instant>,
}

impl FrameCap {
    /// A cap of `fps` frames a second; `0` or less is no cap.
    pub fn fps(fps: f64) -> Self {
        FrameCap {
            frame: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            last: None,
        }
    }

    /// No cap.
    pub fn none() -> Self {
        FrameCap::default()
    }

    /// Frames a second at most, if capped.
    pub fn rate(&self) -> Option<f64> {
        self.frame.map(|f| 1.0 / f.as_secs_f64())
    }
}

/// Adds [`FrameCap`] (no cap until it is set) and the system that holds it, in `Last`.
pub struct FrameCapPlugin;

impl Plugin for FrameCapPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<FrameCap>()
            .add_systems(Last, hold_frame_rate);
    }
}

/// Sleeps until a frame's time has passed since the last frame ended its wait.
fn hold_frame_rate(mut cap: ResMut<FrameCap>, virtual_time: Option<ResMut<Time<Virtual>>>) {
    if let (Some(frame), Some(mut virtual_time)) = (cap.frame, virtual_time)
        && virtual_time.max_delta() < frame * 2
    {
        virtual_time.set_max_delta(frame * 2);
    }
    let now = Instant::now();
    if let (Some(frame), Some(last)) = (cap.frame, cap.last) {
        let rest = frame.saturating_sub(now.duration_since(last));
        if !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
    cap.last = Some(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_app_keeps_the_clock_on_the_wall_at_frames_longer_than_the_largest_step() {
        let mut app = App::new();
        app.add_plugins((bevy::time::TimePlugin, FrameCapPlugin))
            .insert_resource(FrameCap::fps(3.0));
        for _ in 0..5 {
            app.update();
        }
        // The clock has seen three capped frames of a third of a second (the first frame waits
        // for none, and the last one's wait is seen by the next): a second, of which the default
        // largest step, 250 ms, would have kept 750 ms.
        let elapsed = app.world().resource::<Time<Virtual>>().elapsed();
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    }

    #[test]
    fn a_capped_app_takes_at_least_its_frame_time_per_frame() {
        let mut app = App::new();
        app.add_plugins(FrameCapPlugin)
            .insert_resource(FrameCap::fps(50.0));
        let started = Instant::now();
        for _ in 0..6 {
            app.update();
        }
        // The first frame has no earlier one to wait for.
        assert!(started.elapsed() >= Duration::from_millis(5 * 20));
        assert_eq!(FrameCap::fps(0.0), FrameCap::none());
        assert_eq!(FrameCap::fps(4.0).rate(), Some(4.0));
    }
}
