//! The arena's state: agents, pickups, scores, the clock and the random generator.
//!
//! [`ArenaWorld`] is changed in only two ways during play: [`ArenaWorld::begin_step`] gives an
//! agent its next order (see [`crate::orders`]) and [`ArenaWorld::tick`] advances everyone by one
//! tick (see [`crate::tick`]). The setters at the bottom ([`ArenaWorld::place`],
//! [`ArenaWorld::set_health`] …) exist for tests and scenarios that need a particular situation.

use std::fmt;

use hivemind_core::plan::PlanStep;
use hivemind_core::prompt::Fnv64;
use hivemind_core::snapshot::{AgentId, Health, Point};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

use crate::config::ArenaConfig;
use crate::grid::{Grid, Team};
use crate::orders::Command;

/// One agent of either team, as the rules see it. Read it through [`ArenaWorld::agent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub(crate) id: AgentId,
    pub(crate) team: Team,
    pub(crate) position: Point,
    pub(crate) hp: u32,
    pub(crate) max_hp: u32,
    pub(crate) ammo: u32,
    pub(crate) medkits: u32,
    pub(crate) alive: bool,
    /// Ticks until a dead agent respawns.
    pub(crate) respawn_in: u32,
    pub(crate) order: Option<Order>,
    pub(crate) kills: u32,
    pub(crate) deaths: u32,
    /// Kills in a row since the last death (positive) or deaths in a row since the last kill
    /// (negative).
    pub(crate) streak: i32,
    pub(crate) died_at: Option<u64>,
    pub(crate) last_killer: Option<AgentId>,
}

impl Agent {
    /// The agent's id, which is also its entity id in other agents' snapshots.
    pub fn id(&self) -> AgentId {
        self.id
    }

    /// The agent's team.
    pub fn team(&self) -> Team {
        self.team
    }

    /// Where the agent stands, or where it fell if it is dead.
    pub fn position(&self) -> Point {
        self.position
    }

    /// Current and maximum health; zero while dead.
    pub fn health(&self) -> Health {
        Health::new(self.hp, self.max_hp)
    }

    /// Shots left in the magazine.
    pub fn ammo(&self) -> u32 {
        self.ammo
    }

    /// Medkits carried.
    pub fn medkits(&self) -> u32 {
        self.medkits
    }

    /// Whether the agent is alive (dead agents wait to respawn and take no orders).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Ticks until a dead agent respawns; `None` while alive.
    pub fn respawn_in(&self) -> Option<u32> {
        (!self.alive).then_some(self.respawn_in)
    }

    /// The step the agent is carrying out, if any.
    pub fn step(&self) -> Option<&PlanStep> {
        self.order.as_ref().map(|o| &o.step)
    }

    /// Enemies this agent has killed.
    pub fn kills(&self) -> u32 {
        self.kills
    }

    /// Times this agent has died.
    pub fn deaths(&self) -> u32 {
        self.deaths
    }

    /// Kills in a row since the last death (positive), or deaths in a row since the last kill
    /// (negative); zero before either.
    pub fn streak(&self) -> i32 {
        self.streak
    }

    /// The tick of the agent's last death.
    pub fn died_at(&self) -> Option<u64> {
        self.died_at
    }

    /// Who killed the agent last.
    pub fn last_killer(&self) -> Option<AgentId> {
        self.last_killer
    }

    /// Whether the agent's health is below `percent` of its maximum.
    pub fn is_below(&self, percent: u32) -> bool {
        u64::from(self.hp) * 100 < u64::from(self.max_hp) * u64::from(percent)
    }
}

/// A step being carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Order {
    /// The step as given, for [`Agent::step`].
    pub(crate) step: PlanStep,
    /// The step checked and resolved.
    pub(crate) command: Command,
    /// Ticks spent on it so far.
    pub(crate) elapsed: u32,
    /// Ticks in a row in which a move made no progress.
    pub(crate) stuck: u32,
}

/// A medkit pickup spot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pickup {
    pub(crate) at: Point,
    /// Ticks until it reappears; zero while it lies there.
    pub(crate) respawn_in: u32,
}

/// The whole arena. See the [module docs](self) and the [crate docs](crate).
///
/// Named apart from Bevy's `World`, so a game can import both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaWorld {
    pub(crate) config: ArenaConfig,
    pub(crate) grid: Grid,
    /// Indexed by agent id: Red is `0..team_size`, Blue follows.
    pub(crate) agents: Vec<Agent>,
    pub(crate) pickups: Vec<Pickup>,
    /// Indexed by [`Team::index`].
    pub(crate) scores: [u32; 2],
    pub(crate) now: u64,
    /// The one source of randomness: hit rolls.
    pub(crate) rng: Xoshiro256PlusPlus,
}

impl ArenaWorld {
    /// A fresh game: every agent at its base with full health, a full magazine and its starting
    /// medkits; scores at zero. The config is [sanitized](ArenaConfig::sanitized) first.
    pub fn new(config: ArenaConfig) -> ArenaWorld {
        let config = config.sanitized();
        let grid = Grid::new(config.width, config.height);
        let team_size = config.team_size as usize;
        let mut agents = Vec::with_capacity(2 * team_size);
        for team in Team::ALL {
            for slot in 0..team_size {
                let id = AgentId(u32::try_from(agents.len()).unwrap_or(u32::MAX));
                let position = grid
                    .spawns(team)
                    .get(slot)
                    .copied()
                    .unwrap_or_else(|| grid.base(team).min);
                agents.push(Agent {
                    id,
                    team,
                    position,
                    hp: config.max_health,
                    max_hp: config.max_health,
                    ammo: config.magazine,
                    medkits: config.start_medkits,
                    alive: true,
                    respawn_in: 0,
                    order: None,
                    kills: 0,
                    deaths: 0,
                    streak: 0,
                    died_at: None,
                    last_killer: None,
                });
            }
        }
        let pickups = if config.medkit_pickups {
            grid.medkit_spots()
                .iter()
                .map(|&at| Pickup { at, respawn_in: 0 })
                .collect()
        } else {
            Vec::new()
        };
        ArenaWorld {
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            config,
            grid,
            agents,
            pickups,
            scores: [0; 2],
            now: 0,
        }
    }

    /// The rules in force (sanitized).
    pub fn config(&self) -> &ArenaConfig {
        &self.config
    }

    /// The map.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Ticks played so far.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Every agent, in id order.
    pub fn agents(&self) -> impl ExactSizeIterator<Item = &Agent> + '_ {
        self.agents.iter()
    }

    /// Every agent id, ascending: Red's first, then Blue's.
    pub fn agent_ids(&self) -> impl ExactSizeIterator<Item = AgentId> + use<> {
        let count = u32::try_from(self.agents.len()).unwrap_or(u32::MAX);
        (0..count).map(AgentId)
    }

    /// The agent with `id`.
    pub fn agent(&self, id: AgentId) -> Option<&Agent> {
        self.agents.get(id.0 as usize)
    }

    /// `team`'s score: kills and ticks holding the objective, weighted by the config.
    pub fn score(&self, team: Team) -> u32 {
        self.scores[team.index()]
    }

    /// Enemies `team` has killed.
    pub fn team_kills(&self, team: Team) -> u32 {
        self.agents
            .iter()
            .filter(|a| a.team == team)
            .map(|a| a.kills)
            .sum()
    }

    /// Times `team`'s agents have died.
    pub fn team_deaths(&self, team: Team) -> u32 {
        self.agents
            .iter()
            .filter(|a| a.team == team)
            .map(|a| a.deaths)
            .sum()
    }

    /// Whether `agent` is alive and has no step to carry out: the moment to give it one.
    pub fn is_idle(&self, agent: AgentId) -> bool {
        self.agent(agent)
            .is_some_and(|a| a.alive && a.order.is_none())
    }

    /// The living agent standing on `p`, if any.
    pub fn occupant(&self, p: Point) -> Option<AgentId> {
        self.agents
            .iter()
            .find(|a| a.alive && a.position == p)
            .map(|a| a.id)
    }

    /// The medkit pickups lying on the map now.
    pub fn medkits_on_map(&self) -> impl Iterator<Item = Point> + '_ {
        self.pickups
            .iter()
            .filter(|p| p.respawn_in == 0)
            .map(|p| p.at)
    }

    /// A hash of the whole state (agents, orders, pickups, scores, clock and random generator),
    /// for determinism tests: two worlds with the same config and the same orders hash the same
    /// after any number of ticks.
    pub fn state_hash(&self) -> u64 {
        let mut h = Fnv64::new();
        let mut put = |v: i64| h.write(&v.to_le_bytes());
        put(self.config.seed as i64);
        put(self.now as i64);
        for score in self.scores {
            put(i64::from(score));
        }
        // The generator's next output stands for its state.
        put(self.rng.clone().next_u64() as i64);
        for a in &self.agents {
            put(i64::from(a.id.0));
            put(a.team.index() as i64);
            put(i64::from(a.position.x));
            put(i64::from(a.position.y));
            put(i64::from(a.hp));
            put(i64::from(a.ammo));
            put(i64::from(a.medkits));
            put(i64::from(a.alive));
            put(i64::from(a.respawn_in));
            put(i64::from(a.kills));
            put(i64::from(a.deaths));
            put(i64::from(a.streak));
            put(a.died_at.map_or(-1, |t| t as i64));
            put(a.last_killer.map_or(-1, |k| i64::from(k.0)));
            match &a.order {
                Some(order) => {
                    put(i64::from(order.elapsed));
                    put(i64::from(order.stuck));
                    let json = order.step.to_json();
                    put(json.len() as i64);
                    for b in json.bytes() {
                        put(i64::from(b));
                    }
                }
                None => put(-1),
            }
        }
        for p in &self.pickups {
            put(i64::from(p.at.x));
            put(i64::from(p.at.y));
            put(i64::from(p.respawn_in));
        }
        h.finish()
    }

    /// Moves a living agent to `p` at once, keeping its current step. For tests and scenarios.
    pub fn place(&mut self, agent: AgentId, p: Point) -> Result<(), SetupError> {
        self.living(agent)?;
        if !self.grid.contains(p) {
            return Err(SetupError::OutOfBounds { point: p });
        }
        if self.grid.is_cover(p) {
            return Err(SetupError::Blocked { point: p });
        }
        if let Some(other) = self.occupant(p).filter(|&o| o != agent) {
            return Err(SetupError::Occupied {
                point: p,
                by: other,
            });
        }
        self.living_mut(agent)?.position = p;
        Ok(())
    }

    /// Sets a living agent's health, clamped to `1..=max`. For tests and scenarios.
    pub fn set_health(&mut self, agent: AgentId, hp: u32) -> Result<(), SetupError> {
        let a = self.living_mut(agent)?;
        a.hp = hp.clamp(1, a.max_hp);
        Ok(())
    }

    /// Sets a living agent's ammo, clamped to the magazine. For tests and scenarios.
    pub fn set_ammo(&mut self, agent: AgentId, ammo: u32) -> Result<(), SetupError> {
        let magazine = self.config.magazine;
        self.living_mut(agent)?.ammo = ammo.min(magazine);
        Ok(())
    }

    /// Sets a living agent's medkits, clamped to the most it may carry. For tests and scenarios.
    pub fn set_medkits(&mut self, agent: AgentId, medkits: u32) -> Result<(), SetupError> {
        let most = self.config.max_medkits;
        self.living_mut(agent)?.medkits = medkits.min(most);
        Ok(())
    }

    fn living(&self, agent: AgentId) -> Result<&Agent, SetupError> {
        match self.agent(agent) {
            None => Err(SetupError::UnknownAgent { agent }),
            Some(a) if !a.alive => Err(SetupError::AgentDown { agent }),
            Some(a) => Ok(a),
        }
    }

    fn living_mut(&mut self, agent: AgentId) -> Result<&mut Agent, SetupError> {
        match self.agents.get_mut(agent.0 as usize) {
            None => Err(SetupError::UnknownAgent { agent }),
            Some(a) if !a.alive => Err(SetupError::AgentDown { agent }),
            Some(a) => Ok(a),
        }
    }
}

/// Why a setter such as [`ArenaWorld::place`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// No agent has this id.
    UnknownAgent {
        /// The id given.
        agent: AgentId,
    },
    /// The agent is dead.
    AgentDown {
        /// The id given.
        agent: AgentId,
    },
    /// The cell is off the map.
    OutOfBounds {
        /// The cell given.
        point: Point,
    },
    /// The cell is cover.
    Blocked {
        /// The cell given.
        point: Point,
    },
    /// Another agent stands there.
    Occupied {
        /// The cell given.
        point: Point,
        /// Who stands there.
        by: AgentId,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::UnknownAgent { agent } => write!(f, "no agent {agent}"),
            SetupError::AgentDown { agent } => write!(f, "agent {agent} is dead"),
            SetupError::OutOfBounds { point } => write!(f, "{point} is off the map"),
            SetupError::Blocked { point } => write!(f, "{point} is cover"),
            SetupError::Occupied { point, by } => write!(f, "agent {by} stands on {point}"),
        }
    }
}

impl std::error::Error for SetupError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_start_at_their_bases_in_id_order() {
        let world = ArenaWorld::new(ArenaConfig::default());
        assert_eq!(world.agents().len(), 12);
        for a in world.agents() {
            let expected = if a.id.0 < 6 { Team::Red } else { Team::Blue };
            assert_eq!(a.team(), expected);
            assert!(world.grid().base(a.team()).contains(a.position()));
            assert_eq!(world.occupant(a.position()), Some(a.id()));
            assert_eq!(a.health(), Health::new(100, 100));
            assert_eq!((a.ammo(), a.medkits()), (3, 1));
            assert!(world.is_idle(a.id()));
        }
        assert_eq!(world.medkits_on_map().count(), 2);
        assert_eq!(world.team_deaths(Team::Blue), 0);
        assert!(!world.is_idle(AgentId(99)));
    }

    #[test]
    fn setters_check_the_cell_and_clamp_values() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let scout = AgentId(0);
        assert_eq!(
            world.place(scout, Point::new(7, 6)),
            Err(SetupError::Blocked {
                point: Point::new(7, 6)
            })
        );
        assert_eq!(
            world.place(scout, Point::new(20, 0)),
            Err(SetupError::OutOfBounds {
                point: Point::new(20, 0)
            })
        );
        let other = world.agents[1].position;
        assert_eq!(
            world.place(scout, other),
            Err(SetupError::Occupied {
                point: other,
                by: AgentId(1)
            })
        );
        assert_eq!(world.place(scout, Point::new(9, 9)), Ok(()));
        assert_eq!(world.set_health(scout, 0), Ok(()));
        assert_eq!(world.agents[0].hp, 1);
        assert_eq!(world.set_ammo(scout, 9), Ok(()));
        assert_eq!(world.agents[0].ammo, 3);
        assert_eq!(
            world.set_medkits(AgentId(40), 1),
            Err(SetupError::UnknownAgent { agent: AgentId(40) })
        );
    }

    #[test]
    fn the_state_hash_sees_every_change() {
        let mut world = ArenaWorld::new(ArenaConfig::default());
        let fresh = world.state_hash();
        assert_eq!(ArenaWorld::new(ArenaConfig::default()).state_hash(), fresh);
        assert_ne!(
            ArenaWorld::new(ArenaConfig::default().with_seed(2)).state_hash(),
            fresh
        );
        world.set_ammo(AgentId(3), 1).unwrap();
        assert_ne!(world.state_hash(), fresh);
    }
}
