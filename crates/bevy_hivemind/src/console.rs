//! The in-game debug console (feature `console`): a log, a command line with history and tab
//! completion, and the `hm` commands over the live [`Hivemind`](crate::Hivemind) state.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_hivemind::console::{ConsoleAppExt, ConsoleReply, HivemindConsolePlugin};
//! use clap::Parser;
//!
//! /// Counts the entities in the world.
//! #[derive(Parser)]
//! #[command(name = "entities")]
//! struct Entities;
//!
//! App::new()
//!     .add_plugins(HivemindConsolePlugin)
//!     .add_console_command(|_: Entities, world: &mut World, reply: &mut ConsoleReply| {
//!         reply.line(format!("{} entities", world.entities().len()));
//!     });
//! ```
//!
//! # Design
//!
//! A command is a clap parser type and a handler that gets the parsed value, the whole
//! [`World`] and a [`ConsoleReply`]. Lines are split shell-style (quotes group words), the first
//! word picks the command, and clap parses the rest; a parse error, `--help` included, is printed
//! as clap renders it, with the usage. The built-in `help` and `hm` commands are registered
//! through the same [`ConsoleAppExt::add_console_command`] any other plugin uses.
//!
//! Running a command is plain Rust over a `World` ([`run_console_line`]), apart from the egui
//! window that feeds it, so every command is tested headless by submitting its text and reading
//! the log. Lines submitted in a frame run at the start of the next `Update`, in
//! [`ConsoleSystems::Run`], with exclusive world access. The window is added only when
//! `bevy_egui`'s `EguiPlugin` is in the app.

mod hm;
mod text;
mod ui;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bevy::prelude::*;

pub use bevy_egui::EguiPlugin;
pub use hm::{Hm, HmCommand, OnOff, Probe};

/// Lines the log keeps; older ones are dropped.
pub const LOG_LINES: usize = 2_000;

/// Adds the console: its state, the `help` and `hm` commands, and (with `EguiPlugin`) the
/// window, toggled with the backtick key.
pub struct HivemindConsolePlugin;

impl Plugin for HivemindConsolePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<Console>()
            .init_resource::<ConsoleCommands>()
            .add_systems(
                Update,
                run_submitted
                    .in_set(ConsoleSystems::Run)
                    .before(crate::HivemindSystems::Gather),
            )
            .add_console_command(help);
        hm::build(app);
    }

    fn finish(&self, app: &mut App) {
        if app.is_plugin_added::<EguiPlugin>() {
            ui::build(app);
        }
    }
}

/// The console's systems.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsoleSystems {
    /// In `Update`, before hivemind's Gather: runs the lines submitted since the last frame.
    Run,
}

/// The console's state: whether it is open, its log, its history and lines waiting to run.
#[derive(Resource, Default)]
pub struct Console {
    /// Whether the window shows.
    pub open: bool,
    log: VecDeque<String>,
    history: Vec<String>,
    submitted: Vec<String>,
    /// The command line being typed.
    pub(crate) input: String,
    /// Where Up/Down is in the history; `None` while typing a new line.
    pub(crate) recall: Option<usize>,
    /// Whether the live latency plot shows (`hm perf` opens it).
    pub(crate) plot: bool,
}

impl Console {
    /// Queues `line` to run at the start of the next `Update`, and adds it to the history.
    pub fn submit(&mut self, line: impl Into<String>) {
        let line = line.into();
        if line.trim().is_empty() {
            return;
        }
        if self.history.last() != Some(&line) {
            self.history.push(line.clone());
        }
        self.submitted.push(line);
    }

    /// Adds a line to the log.
    pub fn print(&mut self, line: impl Into<String>) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line.into());
    }

    /// The log, oldest line first.
    pub fn log(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        self.log.iter().map(String::as_str)
    }

    /// Empties the log.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// Lines submitted, oldest first, without repeats in a row.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Whether the live latency plot shows.
    pub fn shows_plot(&self) -> bool {
        self.plot
    }

    /// The command line being typed.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Replaces the command line being typed.
    pub fn set_input(&mut self, input: impl Into<String>) {
        self.input = input.into();
    }

    /// Tab: completes the last word of the command line. One candidate is put in whole; several
    /// are completed to their common start and listed in the log.
    pub fn complete_input(&mut self, commands: &ConsoleCommands) {
        let candidates = commands.complete(&self.input);
        let Some(input) = text::complete_line(&self.input, &candidates) else {
            return;
        };
        if candidates.len() > 1 {
            self.print(candidates.join("  "));
        }
        self.input = input;
    }

    /// Up: the previous line of the history.
    pub fn recall_previous(&mut self) {
        let at = match self.recall {
            Some(i) => i.saturating_sub(1),
            None => match self.history.len().checked_sub(1) {
                Some(last) => last,
                None => return,
            },
        };
        self.recall = Some(at);
        self.input = self.history[at].clone();
    }

    /// Down: the next line of the history, or an empty line past its end.
    pub fn recall_next(&mut self) {
        let Some(i) = self.recall else { return };
        if i + 1 < self.history.len() {
            self.recall = Some(i + 1);
            self.input = self.history[i + 1].clone();
        } else {
            self.recall = None;
            self.input.clear();
        }
    }
}

/// What a command prints.
#[derive(Debug, Default)]
pub struct ConsoleReply {
    lines: Vec<String>,
}

impl ConsoleReply {
    /// Prints one line.
    pub fn line(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Prints text of several lines; a trailing newline adds no empty line.
    pub fn text(&mut self, text: &str) {
        self.lines
            .extend(text.trim_end_matches('\n').lines().map(str::to_owned));
    }

    /// The lines printed so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

type RunCommand = dyn Fn(&[String], &mut World, &mut ConsoleReply) + Send + Sync;

struct Entry {
    command: clap::Command,
    run: Arc<RunCommand>,
}

/// Every registered command, by name.
#[derive(Resource, Default)]
pub struct ConsoleCommands {
    entries: BTreeMap<String, Entry>,
}

impl ConsoleCommands {
    /// The names of every command, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.keys().map(String::as_str)
    }

    /// The clap command of `name`, for its help and completion.
    pub fn command(&self, name: &str) -> Option<&clap::Command> {
        self.entries.get(name).map(|e| &e.command)
    }

    /// The words that could stand in place of the last, partly typed word of `input`: command
    /// names first, then subcommands and the values a positional argument takes.
    pub fn complete(&self, input: &str) -> Vec<String> {
        let (words, partial) = text::split_partial(input);
        let mut candidates: Vec<String> = match words.split_first() {
            None => self.names().map(str::to_owned).collect(),
            Some((name, rest)) => {
                let Some(mut command) = self.command(name) else {
                    return Vec::new();
                };
                for word in rest {
                    match command.find_subcommand(word) {
                        Some(sub) => command = sub,
                        None => return Vec::new(),
                    }
                }
                let subcommands = command
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name().to_owned());
                let values = command
                    .get_positionals()
                    .next()
                    .map(|arg| {
                        arg.get_possible_values()
                            .into_iter()
                            .map(|v| v.get_name().to_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                subcommands.chain(values).collect()
            }
        };
        candidates.retain(|c| c.starts_with(partial));
        candidates
    }
}

/// Registering console commands.
pub trait ConsoleAppExt {
    /// Adds command `C`, named by its clap `name`. `run` gets the parsed command, the world
    /// and the reply to print into. A command of the same name is replaced.
    fn add_console_command<C, F>(&mut self, run: F) -> &mut Self
    where
        C: clap::Parser + 'static,
        F: Fn(C, &mut World, &mut ConsoleReply) + Send + Sync + 'static;
}

impl ConsoleAppExt for App {
    fn add_console_command<C, F>(&mut self, run: F) -> &mut Self
    where
        C: clap::Parser + 'static,
        F: Fn(C, &mut World, &mut ConsoleReply) + Send + Sync + 'static,
    {
        let command = C::command();
        let name = command.get_name().to_owned();
        let run: Arc<RunCommand> =
            Arc::new(move |words, world, reply| match C::try_parse_from(words) {
                Ok(parsed) => run(parsed, world, reply),
                Err(error) => {
                    let text = error.render().to_string();
                    reply.text(&text);
                    if !text.contains("Usage:") {
                        reply.text(&usage(C::command(), words));
                    }
                }
            });
        self.world_mut()
            .get_resource_or_init::<ConsoleCommands>()
            .entries
            .insert(name, Entry { command, run });
        self
    }
}

/// The usage of the deepest subcommand `words` name.
fn usage(mut command: clap::Command, words: &[String]) -> String {
    command.build();
    let mut at = &command;
    for word in words.iter().skip(1) {
        match at.find_subcommand(word) {
            Some(found) => at = found,
            None => break,
        }
    }
    at.clone().render_usage().to_string()
}

/// Runs one command line over `world` and returns what it printed. Unknown commands, bad
/// arguments and unbalanced quotes print an error and the usage; nothing panics.
pub fn run_console_line(world: &mut World, line: &str) -> Vec<String> {
    let mut reply = ConsoleReply::default();
    let Some(words) = text::split_line(line) else {
        reply.line("error: unbalanced quotes");
        return reply.lines;
    };
    let Some(name) = words.first() else {
        return reply.lines;
    };
    let run = world
        .get_resource::<ConsoleCommands>()
        .and_then(|c| c.entries.get(name))
        .map(|e| Arc::clone(&e.run));
    match run {
        Some(run) => run(&words, world, &mut reply),
        None => reply.line(format!("unknown command `{name}`; `help` lists them")),
    }
    reply.lines
}

/// Runs the lines submitted since the last frame, echoing each into the log.
fn run_submitted(world: &mut World) {
    let submitted = std::mem::take(&mut world.resource_mut::<Console>().submitted);
    for line in submitted {
        let printed = run_console_line(world, &line);
        let mut console = world.resource_mut::<Console>();
        console.print(format!("> {line}"));
        for text in printed {
            console.print(text);
        }
    }
}

/// Lists the commands, or shows one command's help.
#[derive(clap::Parser)]
#[command(name = "help")]
struct Help {
    /// The command to explain.
    command: Option<String>,
}

fn help(args: Help, world: &mut World, reply: &mut ConsoleReply) {
    let commands = world.resource::<ConsoleCommands>();
    match args.command {
        Some(name) => match commands.command(&name) {
            Some(command) => reply.text(&command.clone().render_long_help().to_string()),
            None => reply.line(format!("unknown command `{name}`")),
        },
        None => {
            for (name, entry) in &commands.entries {
                let about = entry
                    .command
                    .get_about()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                reply.line(format!("{name:<8} {about}"));
            }
            reply.line("`help <command>` or `<command> --help` for more; Tab completes.");
        }
    }
}
