//! The arena's map: teams and their bases, cover, the objective zone and medkit spots.
//!
//! The map answers the two geometric questions the rules ask: can one cell see another
//! ([`Grid::line_of_sight`]) and how far is every cell from a goal ([`Grid::distances_to`]).
//!
//! The layout is generated from the size alone and mirrored left–right and top–bottom, so
//! neither team starts with better cover:
//!
//! ```text
//! RR................BB      R, B  the Red and Blue bases (spawn columns)
//! RR................BB      #     cover: blocks movement and sight
//! RR..#...####...#..BB      o     the objective zone
//! RR..#..........#..BB      +     a medkit pickup spot
//! RR...#........#...BB
//! RR......oooo......BB
//! RR.....#oooo#.....BB
//! RR...+.#oooo#.+...BB
//! RR......oooo......BB
//! RR...#........#...BB
//! RR..#..........#..BB
//! RR..#...####...#..BB
//! RR................BB
//! RR................BB
//! ```
//!
//! (the default 20×14 arena, as [`Grid::render`] draws it).

use std::collections::VecDeque;
use std::fmt;

use hivemind_core::snapshot::{Bounds, Point};
use serde::{Deserialize, Serialize};

/// One of the two teams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Team {
    /// Starts on the left (low x).
    Red,
    /// Starts on the right (high x).
    Blue,
}

impl Team {
    /// Both teams, Red first.
    pub const ALL: [Team; 2] = [Team::Red, Team::Blue];

    /// The other team.
    pub fn opponent(self) -> Team {
        match self {
            Team::Red => Team::Blue,
            Team::Blue => Team::Red,
        }
    }

    /// `0` for Red, `1` for Blue: an index into per-team arrays.
    pub fn index(self) -> usize {
        match self {
            Team::Red => 0,
            Team::Blue => 1,
        }
    }

    /// `red` or `blue`.
    pub fn as_str(self) -> &'static str {
        match self {
            Team::Red => "red",
            Team::Blue => "blue",
        }
    }
}

impl fmt::Display for Team {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four moves, in the order ties are broken: up, toward the enemy base, down, back. Mirror
/// images for the two teams, so that neither walks a different path to the same kind of place.
pub(crate) fn steps(team: Team) -> [(i32, i32); 4] {
    match team {
        Team::Red => [(0, -1), (1, 0), (0, 1), (-1, 0)],
        Team::Blue => [(0, -1), (-1, 0), (0, 1), (1, 0)],
    }
}

/// The arena's static map. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    width: i32,
    height: i32,
    /// One flag per cell, row by row: whether the cell is cover.
    blocked: Vec<bool>,
    cover_cells: Vec<Point>,
    cover_points: Vec<Point>,
    objective: Bounds,
    bases: [Bounds; 2],
    /// Per team, its base cells in the order agents (re)spawn into them.
    spawns: [Vec<Point>; 2],
    medkit_spots: Vec<Point>,
}

impl Grid {
    /// The standard layout for a `width` × `height` arena. Sizes below
    /// [`MIN_SIZE`](crate::config::MIN_SIZE) are raised to it.
    pub fn new(width: i32, height: i32) -> Grid {
        let (w, h) = (
            width.max(crate::config::MIN_SIZE.0),
            height.max(crate::config::MIN_SIZE.1),
        );
        let bases = [
            Bounds {
                min: Point::new(0, 0),
                max: Point::new(1, h - 1),
            },
            Bounds {
                min: Point::new(w - 2, 0),
                max: Point::new(w - 1, h - 1),
            },
        ];
        let (kx, ky) = ((w / 10).max(1), (h / 7).max(1));
        let objective = Bounds {
            min: Point::new(w / 2 - kx, h / 2 - ky),
            max: Point::new(w - 1 - (w / 2 - kx), h - 1 - (h / 2 - ky)),
        };

        // One quarter of the layout; the rest is its mirror images.
        let quarter = [
            // A short wall in front of each base.
            Point::new(w / 5, h / 4 - 1),
            Point::new(w / 5, h / 4),
            // A wall across the approach above (and below) the objective.
            Point::new(w / 2 - 2, h / 5),
            Point::new(w / 2 - 1, h / 5),
            // Pillars on the objective's flanks and in the lanes leading to it.
            Point::new(w / 2 - 3, h / 2 - 1),
            Point::new(w / 3 - 1, h / 2 - 3),
        ];
        let mut grid = Grid {
            width: w,
            height: h,
            blocked: vec![false; (w * h) as usize],
            cover_cells: Vec::new(),
            cover_points: Vec::new(),
            objective,
            bases,
            spawns: [Vec::new(), Vec::new()],
            medkit_spots: Vec::new(),
        };
        for p in quarter {
            let mirrored = [
                p,
                Point::new(w - 1 - p.x, p.y),
                Point::new(p.x, h - 1 - p.y),
                Point::new(w - 1 - p.x, h - 1 - p.y),
            ];
            let mut placed = Vec::with_capacity(4);
            for q in mirrored {
                let keep_clear = bases.iter().any(|b| b.contains(q)) || objective.contains(q);
                if grid.contains(q) && !keep_clear && !grid.is_cover(q) {
                    let i = grid.index(q);
                    grid.blocked[i] = true;
                    placed.push(i);
                }
            }
            // On small maps the pieces crowd together; one that walls a part of the map off is
            // left out, with all its mirror images, so every open cell stays reachable.
            if !grid.is_connected() {
                for i in placed {
                    grid.blocked[i] = false;
                }
            }
        }
        grid.cover_cells = grid.cells().filter(|&p| grid.is_cover(p)).collect();
        grid.cover_points = grid
            .cells()
            .filter(|&p| !grid.is_cover(p) && grid.neighbours(p).any(|q| grid.is_cover(q)))
            .collect();

        // Base cells, middle rows first, the column facing the arena before the back wall.
        for team in Team::ALL {
            let base = bases[team.index()];
            let front = if team == Team::Red {
                base.max.x
            } else {
                base.min.x
            };
            let mut cells: Vec<Point> = (base.min.y..=base.max.y)
                .flat_map(|y| (base.min.x..=base.max.x).map(move |x| Point::new(x, y)))
                .filter(|&p| !grid.is_cover(p))
                .collect();
            cells.sort_by_key(|p| ((2 * p.y - (h - 1)).abs(), p.x != front, p.y));
            grid.spawns[team.index()] = cells;
        }

        let spot = Point::new(w / 4, h / 2);
        for p in [spot, Point::new(w - 1 - spot.x, spot.y)] {
            if !grid.is_cover(p) {
                grid.medkit_spots.push(p);
            }
        }
        grid
    }

    /// Cells across.
    pub fn width(&self) -> i32 {
        self.width
    }

    /// Cells down.
    pub fn height(&self) -> i32 {
        self.height
    }

    /// Every cell, as snapshot bounds.
    pub fn bounds(&self) -> Bounds {
        Bounds::grid(self.width, self.height)
    }

    /// Whether `p` is on the map.
    pub fn contains(&self, p: Point) -> bool {
        (0..self.width).contains(&p.x) && (0..self.height).contains(&p.y)
    }

    /// Whether `p` is cover: it blocks movement and sight. Cells off the map count as cover.
    pub fn is_cover(&self, p: Point) -> bool {
        !self.contains(p) || self.blocked[self.index(p)]
    }

    /// Whether an agent may stand on `p`: on the map and not cover.
    pub fn is_walkable(&self, p: Point) -> bool {
        !self.is_cover(p)
    }

    /// The cover cells, row by row.
    pub fn cover_cells(&self) -> &[Point] {
        &self.cover_cells
    }

    /// The cover points: walkable cells next to cover (up, down, left or right), row by row.
    /// An agent standing on one is *in cover*.
    pub fn cover_points(&self) -> &[Point] {
        &self.cover_points
    }

    /// Whether `p` is a cover point.
    pub fn is_cover_point(&self, p: Point) -> bool {
        self.contains(p) && !self.is_cover(p) && self.neighbours(p).any(|q| self.is_cover(q))
    }

    /// The objective zone, a rectangle in the centre.
    pub fn objective(&self) -> Bounds {
        self.objective
    }

    /// The middle of the objective zone as seen from `team`'s side: on an even-width map the
    /// two middle columns are mirror images, and each team heads for the one on its own side,
    /// so neither reaches the objective first by construction.
    pub fn objective_center(&self, team: Team) -> Point {
        let x = match team {
            Team::Red => (self.width - 1) / 2,
            Team::Blue => self.width / 2,
        };
        Point::new(x, self.height / 2)
    }

    /// `team`'s base: the two outermost columns of its side.
    pub fn base(&self, team: Team) -> Bounds {
        self.bases[team.index()]
    }

    /// `team`'s base cells, in the order agents spawn into them (middle rows first).
    pub fn spawns(&self, team: Team) -> &[Point] {
        &self.spawns[team.index()]
    }

    /// Where medkit pickups lie, one on each side.
    pub fn medkit_spots(&self) -> &[Point] {
        &self.medkit_spots
    }

    /// Whether nothing blocks the straight line between `a` and `b`.
    ///
    /// The cells between the two (Bresenham's line, endpoints excluded) must not be cover. The
    /// line is always drawn from the smaller point to the larger, so sight is symmetric: if `a`
    /// sees `b`, `b` sees `a`. Agents do not block sight.
    pub fn line_of_sight(&self, a: Point, b: Point) -> bool {
        let (from, to) = if a <= b { (a, b) } else { (b, a) };
        let (dx, dy) = ((to.x - from.x).abs(), -(to.y - from.y).abs());
        let (sx, sy) = (
            if from.x < to.x { 1 } else { -1 },
            if from.y < to.y { 1 } else { -1 },
        );
        let (mut x, mut y, mut err) = (from.x, from.y, dx + dy);
        loop {
            let here = Point::new(x, y);
            if here == to {
                return true;
            }
            if here != from && self.is_cover(here) {
                return false;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// The walking distance from every cell to the nearest of `goals`, around cover (agents are
    /// ignored: they move). Goals that are cover or off the map are skipped.
    pub fn distances_to(&self, goals: impl IntoIterator<Item = Point>) -> DistanceField {
        self.distances_avoiding(goals, |_| false)
    }

    /// Like [`Grid::distances_to`], but cells for which `avoid` is true are walls too (goals
    /// excepted): a way around other agents.
    pub fn distances_avoiding(
        &self,
        goals: impl IntoIterator<Item = Point>,
        avoid: impl Fn(Point) -> bool,
    ) -> DistanceField {
        let mut field = DistanceField {
            width: self.width,
            height: self.height,
            steps: vec![u32::MAX; self.blocked.len()],
        };
        let mut queue = VecDeque::new();
        for goal in goals {
            if self.is_walkable(goal) && field.steps[self.index(goal)] != 0 {
                field.steps[self.index(goal)] = 0;
                queue.push_back(goal);
            }
        }
        while let Some(p) = queue.pop_front() {
            let next = field.steps[self.index(p)].saturating_add(1);
            for q in self.neighbours(p) {
                if self.is_walkable(q) && field.steps[self.index(q)] == u32::MAX && !avoid(q) {
                    field.steps[self.index(q)] = next;
                    queue.push_back(q);
                }
            }
        }
        field
    }

    /// The map as text, one row per line: `#` cover, `o` objective, `R`/`B` bases, `+` medkit
    /// spots, `.` open ground.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(((self.width + 1) * self.height) as usize);
        for y in 0..self.height {
            for x in 0..self.width {
                let p = Point::new(x, y);
                out.push(if self.is_cover(p) {
                    '#'
                } else if self.objective.contains(p) {
                    'o'
                } else if self.bases[0].contains(p) {
                    'R'
                } else if self.bases[1].contains(p) {
                    'B'
                } else if self.medkit_spots.contains(&p) {
                    '+'
                } else {
                    '.'
                });
            }
            out.push('\n');
        }
        out
    }

    /// Whether every walkable cell can reach every other.
    fn is_connected(&self) -> bool {
        let Some(start) = self.cells().find(|&p| self.is_walkable(p)) else {
            return true;
        };
        let field = self.distances_to([start]);
        self.cells()
            .all(|p| self.is_cover(p) || field.get(p).is_some())
    }

    /// Every cell, row by row.
    fn cells(&self) -> impl Iterator<Item = Point> + use<> {
        let (w, h) = (self.width, self.height);
        (0..h).flat_map(move |y| (0..w).map(move |x| Point::new(x, y)))
    }

    /// The (up to four) neighbours of `p` on the map.
    fn neighbours(&self, p: Point) -> impl Iterator<Item = Point> + '_ {
        steps(Team::Red)
            .into_iter()
            .map(move |(dx, dy)| Point::new(p.x + dx, p.y + dy))
            .filter(|&q| self.contains(q))
    }

    /// The index of an on-map cell in per-cell vectors.
    fn index(&self, p: Point) -> usize {
        (p.y * self.width + p.x) as usize
    }
}

/// Walking distances to a set of goals, from [`Grid::distances_to`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistanceField {
    width: i32,
    height: i32,
    steps: Vec<u32>,
}

impl DistanceField {
    /// The number of moves from `p` to the nearest goal; `None` if `p` is off the map, cover,
    /// or walled off from every goal.
    pub fn get(&self, p: Point) -> Option<u32> {
        if !((0..self.width).contains(&p.x) && (0..self.height).contains(&p.y)) {
            return None;
        }
        let steps = self.steps[(p.y * self.width + p.x) as usize];
        (steps != u32::MAX).then_some(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_grid() -> Grid {
        Grid::new(20, 14)
    }

    #[test]
    fn the_layout_is_mirror_symmetric_and_keeps_bases_and_objective_clear() {
        for (w, h) in [(20, 14), (10, 8), (13, 9), (21, 15), (40, 30)] {
            let grid = Grid::new(w, h);
            assert!(!grid.cover_cells().is_empty(), "{w}x{h}");
            assert!(grid.is_connected(), "{w}x{h}");
            for &p in grid.cover_cells() {
                assert!(grid.is_cover(Point::new(w - 1 - p.x, p.y)), "{w}x{h} {p}");
                assert!(grid.is_cover(Point::new(p.x, h - 1 - p.y)), "{w}x{h} {p}");
                assert!(!grid.objective().contains(p));
                assert!(Team::ALL.iter().all(|&t| !grid.base(t).contains(p)));
            }
            let o = grid.objective();
            assert_eq!(o.min.x, w - 1 - o.max.x);
            assert_eq!(o.min.y, h - 1 - o.max.y);
            let (red, blue) = (
                grid.objective_center(Team::Red),
                grid.objective_center(Team::Blue),
            );
            assert!(o.contains(red) && o.contains(blue));
            assert_eq!((red.x, red.y), (w - 1 - blue.x, blue.y));
            assert_eq!(grid.spawns(Team::Red).len(), 2 * h as usize);
            for (r, b) in grid.spawns(Team::Red).iter().zip(grid.spawns(Team::Blue)) {
                assert_eq!((r.x, r.y), (w - 1 - b.x, b.y));
            }
        }
        let grid = default_grid();
        assert_eq!(grid.spawns(Team::Red)[0], Point::new(1, 6));
        assert_eq!(grid.spawns(Team::Blue)[0], Point::new(18, 6));
    }

    #[test]
    fn cover_points_are_free_cells_next_to_cover() {
        let grid = default_grid();
        assert!(!grid.cover_points().is_empty());
        for &p in grid.cover_points() {
            assert!(grid.is_walkable(p) && grid.is_cover_point(p));
        }
        // Pillar (7,6) guards the objective's west edge.
        assert!(grid.is_cover(Point::new(7, 6)));
        assert!(grid.is_cover_point(Point::new(8, 6)));
        assert!(!grid.is_cover_point(Point::new(7, 6)));
        assert!(!grid.is_cover_point(Point::new(10, 7)));
    }

    #[test]
    fn line_of_sight_is_blocked_by_cover_and_symmetric() {
        let grid = default_grid();
        // (7,6) and (7,7) are cover: a horizontal line through them is blocked.
        assert!(!grid.line_of_sight(Point::new(5, 6), Point::new(10, 6)));
        assert!(!grid.line_of_sight(Point::new(10, 7), Point::new(3, 7)));
        // One row down, past the pillar, is open.
        assert!(grid.line_of_sight(Point::new(5, 12), Point::new(14, 12)));
        // Standing next to a wall does not block one's own sight.
        assert!(grid.line_of_sight(Point::new(8, 6), Point::new(8, 9)));
        // A pillar between two lanes blocks the diagonal through it.
        assert!(!grid.line_of_sight(Point::new(6, 3), Point::new(4, 5)));
        for &a in &[Point::new(1, 1), Point::new(6, 12), Point::new(3, 7)] {
            for b in grid.cells() {
                assert_eq!(
                    grid.line_of_sight(a, b),
                    grid.line_of_sight(b, a),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn distances_walk_around_cover() {
        let grid = default_grid();
        let field = grid.distances_to([Point::new(8, 6)]);
        assert_eq!(field.get(Point::new(8, 6)), Some(0));
        // (6,6) to (8,6) is two cells across, but (7,6) and (7,7) are cover: around via row 5.
        assert_eq!(field.get(Point::new(6, 6)), Some(4));
        assert_eq!(field.get(Point::new(7, 6)), None);
        assert_eq!(field.get(Point::new(-1, 0)), None);
        let nowhere = grid.distances_to([Point::new(7, 6)]);
        assert_eq!(nowhere.get(Point::new(0, 0)), None);
    }

    #[test]
    fn render_draws_the_map_in_the_module_docs() {
        let text = default_grid().render();
        let docs: String = include_str!("grid.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! R"))
            .map(|l| format!("R{}\n", &l[..19]))
            .collect();
        assert_eq!(text, docs);
        assert_eq!(text.lines().count(), 14);
        assert!(text.lines().all(|l| l.len() == 20));
        assert!(
            text.lines()
                .all(|l| l.starts_with("RR") && l.ends_with("BB"))
        );
        assert_eq!(text.matches('+').count(), 2);
        assert_eq!(text.matches('o').count(), 16);
    }
}
