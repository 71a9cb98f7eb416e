//! What the workers need to turn jobs into a batch: prompt trees, the registry, grammar limits.

use std::sync::Arc;

use crate::action::ActionRegistry;
use crate::backend::{Batch, BatchAgent, SharedStream};
use crate::clock::{Clock, Timestamp};
use crate::config::{Budgets, HivemindConfig, PromptLayout, SamplingConfig};
use crate::grammar::{Grammar, GrammarAgent, GrammarError, GrammarLimits};
use crate::plan::{OutputFormat, RequestKind};
use crate::prompt::{AgentRequest, AgentTask, ChatTemplate, Persona, PrefixTree, PromptRules};
use crate::snapshot::WorldSnapshot;

use super::JobRequest;
use crate::backend::JobId;

/// Everything a worker needs to build prompts and grammars, shared by all workers and swapped
/// whole when the game reloads its assets ([`WorkerPool::set_context`](super::WorkerPool::set_context)).
#[derive(Clone, Debug)]
pub struct PromptContext {
    /// The verbs plans may use.
    pub registry: Arc<ActionRegistry>,
    /// How prompts are laid out.
    pub layout: PromptLayout,
    /// Bounds for grammars.
    pub limits: GrammarLimits,
    /// How tokens are chosen per kind, and the seed.
    pub sampling: SamplingConfig,
    /// Size limits: of an agent's snapshot in its prompt, and of its answer, which every batch
    /// carries to the backend (a reload that changes the grammar changes the token budget with
    /// it).
    pub budgets: Budgets,
    trees: Vec<PrefixTree>,
}

impl PromptContext {
    /// A context with one prefix tree per output format, each holding `personas`.
    pub fn new(
        template: &ChatTemplate,
        rules: &PromptRules,
        registry: Arc<ActionRegistry>,
        personas: &[Persona],
        config: &HivemindConfig,
    ) -> Self {
        let trees = [
            OutputFormat::FreePlan,
            OutputFormat::Guided,
            OutputFormat::Line,
        ]
        .into_iter()
        .map(|format| {
            let mut tree = PrefixTree::with_intents(
                template.clone(),
                format,
                rules,
                &registry,
                config.model.intents,
            );
            for p in personas {
                tree.insert_persona(p);
            }
            tree
        })
        .collect();
        PromptContext {
            registry,
            layout: config.model.layout,
            limits: GrammarLimits {
                max_steps: config.budgets.max_plan_steps,
                max_say_chars: config.budgets.max_say_chars,
                intents: config.model.intents,
            },
            sampling: config.sampling,
            budgets: config.budgets,
            trees,
        }
    }

    /// The prefix tree of `format`.
    pub fn tree(&self, format: OutputFormat) -> &PrefixTree {
        // `new` builds one tree per format, in this order.
        let index = match format {
            OutputFormat::FreePlan => 0,
            OutputFormat::Guided => 1,
            OutputFormat::Line => 2,
        };
        &self.trees[index]
    }

    /// Builds the batch `id` of `tick` for `jobs`, exactly as a worker does: snapshots fitted to
    /// the budget, prompts, grammars and the seed. The jobs must be of one kind (`kind`) and
    /// output format, in batch order (ascending agent id). The batch is on a manual clock at
    /// zero; a worker puts it on the pool's. A job whose grammar cannot be built
    /// is left out and returned apart, by index, with the reason.
    pub fn build_batch(
        &self,
        id: u64,
        tick: u64,
        kind: RequestKind,
        jobs: &[(JobId, &JobRequest)],
    ) -> (Batch, Vec<(usize, GrammarError)>) {
        let format = jobs
            .first()
            .map_or(OutputFormat::FreePlan, |(_, j)| j.task.format());
        let tree = self.tree(format);
        let mut failed = Vec::new();
        let mut agents = Vec::with_capacity(jobs.len());
        for (i, &(job_id, job)) in jobs.iter().enumerate() {
            let snapshot = Arc::new(job.snapshot.fit_to_budget(self.budgets.snapshot_tokens));
            let grammar = match self.grammar(format, &[(&snapshot, &job.task)]) {
                Ok(g) => g.text,
                Err(e) => {
                    failed.push((i, e));
                    continue;
                }
            };
            let request = AgentRequest {
                agent: job.agent,
                persona: &job.persona,
                snapshot: &snapshot,
                task: job.task.clone(),
            };
            agents.push(BatchAgent {
                job: job_id,
                agent: job.agent,
                persona: job.persona.clone(),
                task: job.task.clone(),
                prompt: tree.sequence(&request),
                grammar,
                snapshot,
                deadline: job.deadline,
                spotlight: job.spotlight,
            });
        }
        let shared = match self.layout {
            PromptLayout::SharedPrompt if !agents.is_empty() => {
                let requests: Vec<AgentRequest<'_>> = agents
                    .iter()
                    .map(|a| AgentRequest {
                        agent: a.agent,
                        persona: &a.persona,
                        snapshot: &a.snapshot,
                        task: a.task.clone(),
                    })
                    .collect();
                let pairs: Vec<(&WorldSnapshot, &AgentTask)> =
                    agents.iter().map(|a| (&*a.snapshot, &a.task)).collect();
                // Every agent's own grammar built, so the joint one builds too.
                self.grammar(format, &pairs).ok().map(|g| SharedStream {
                    prompt: tree.shared(&requests),
                    grammar: g.text,
                })
            }
            _ => None,
        };
        let mut seed = crate::prompt::Fnv64::new();
        seed.write(&self.sampling.seed.to_le_bytes());
        seed.write(&tick.to_le_bytes());
        for a in &agents {
            seed.write(&a.agent.0.to_le_bytes());
        }
        let batch = Batch {
            id,
            tick,
            kind,
            format,
            layout: if shared.is_some() {
                PromptLayout::SharedPrompt
            } else {
                PromptLayout::ParallelSequences
            },
            sampling: self.sampling.for_kind(kind),
            say_sampling: self.sampling.say,
            seed: seed.finish(),
            agents,
            shared,
            registry: Arc::clone(&self.registry),
            budgets: self.budgets,
            clock: Clock::manual(),
            start: Timestamp::ZERO,
        };
        (batch, failed)
    }

    fn grammar(
        &self,
        format: OutputFormat,
        agents: &[(&WorldSnapshot, &AgentTask)],
    ) -> Result<Grammar, GrammarError> {
        let agents: Vec<GrammarAgent<'_>> = agents
            .iter()
            .map(|(snapshot, task)| GrammarAgent::new(snapshot).with_labels(task.options()))
            .collect();
        Grammar::build(format, &self.registry, &agents, self.limits)
    }
}
