//! [`Hivemind`]: the request lifecycle of `hivemind_core` keyed by `Entity`, as a resource, and
//! the executor that prepares fallbacks on Bevy's task pool.

use bevy::prelude::*;
use bevy::tasks::{AsyncComputeTaskPool, Task, TaskPool, block_on, futures::check_ready};
use hivemind_core::lifecycle::{
    Answer, FallbackExecutor, FallbackWork, Lifecycle, PendingAnswer, run_all,
};

/// The state of hivemind in a running game: a resource around the core's
/// [`Lifecycle`], keyed by the agents' entities.
///
/// Systems and the console use its methods (through `Deref`); games rarely need it except to
/// switch backends ([`Lifecycle::set_backend`]) or read its status.
#[derive(Resource, Deref, DerefMut)]
pub struct Hivemind(pub Lifecycle<Entity>);

/// Prepares fallback answers on Bevy's [`AsyncComputeTaskPool`], off the main thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskPoolExecutor;

struct PendingTask(Option<Task<Vec<Answer>>>);

impl PendingAnswer for PendingTask {
    fn take(&mut self) -> Vec<Answer> {
        let Some(mut task) = self.0.take() else {
            return Vec::new();
        };
        check_ready(&mut task).unwrap_or_else(|| block_on(task))
    }
}

impl FallbackExecutor for TaskPoolExecutor {
    /// One task for the frame's batch: the pool is woken once a frame.
    fn spawn(&self, work: Vec<FallbackWork>) -> Box<dyn PendingAnswer> {
        let pool = AsyncComputeTaskPool::get_or_init(TaskPool::default);
        Box::new(PendingTask(Some(pool.spawn(async move { run_all(work) }))))
    }
}
