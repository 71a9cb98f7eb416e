//! The console's egui window and the live latency plot.

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use egui_plot::{Legend, Line, Plot, PlotPoints};
use hivemind_core::plan::RequestKind;

use super::{Console, ConsoleCommands, ConsoleSystems};
use crate::HivemindMetrics;

pub(super) fn build(app: &mut App) {
    app.add_systems(Update, toggle.before(ConsoleSystems::Run))
        .add_systems(EguiPrimaryContextPass, (window, plot));
}

/// The backtick key opens and closes the console.
fn toggle(keys: Option<Res<ButtonInput<KeyCode>>>, mut console: ResMut<Console>) {
    if keys.is_some_and(|k| k.just_pressed(KeyCode::Backquote)) {
        console.open = !console.open;
    }
}

fn window(
    mut contexts: EguiContexts,
    mut console: ResMut<Console>,
    commands: Res<ConsoleCommands>,
) -> Result {
    if !console.open {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let console = &mut *console;
    let screen = ctx.content_rect();
    egui::Window::new("hivemind console")
        .default_pos([12.0, screen.bottom() - 236.0])
        .default_size([650.0, 220.0])
        .resizable(true)
        .show(ctx, |ui| {
            let log_height = (ui.available_height() - 34.0).max(80.0);
            egui::ScrollArea::vertical()
                .max_height(log_height)
                .stick_to_bottom(true)
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    for line in console.log() {
                        ui.label(egui::RichText::new(line).monospace());
                    }
                });
            ui.separator();
            let tab = ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Tab));
            let up = ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowUp));
            let down = ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowDown));
            let response = ui.add(
                egui::TextEdit::singleline(&mut console.input)
                    .font(egui::TextStyle::Monospace)
                    .hint_text("hm status · help · Tab completes · ` closes")
                    .desired_width(f32::INFINITY)
                    .lock_focus(true),
            );
            // The key that toggles the console is not part of a command.
            console.input.retain(|c| c != '`');
            if response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                let line = std::mem::take(&mut console.input);
                console.submit(line);
                console.recall = None;
            }
            if tab {
                console.complete_input(&commands);
            }
            if up {
                console.recall_previous();
            }
            if down {
                console.recall_next();
            }
            response.request_focus();
        });
    Ok(())
}

/// The last full-answer latencies of each kind, in milliseconds, by sample number.
fn plot(
    mut contexts: EguiContexts,
    mut console: ResMut<Console>,
    metrics: Res<HivemindMetrics>,
) -> Result {
    if !console.plot || !console.open {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let mut open = true;
    let screen = ctx.content_rect();
    egui::Window::new("hm perf: latency")
        .open(&mut open)
        .default_pos([680.0, screen.bottom() - 270.0])
        .default_size([420.0, 240.0])
        .show(ctx, |ui| {
            Plot::new("hivemind-latency")
                .legend(Legend::default())
                .x_axis_label("answer")
                .y_axis_label("ms")
                .height(200.0)
                .show(ui, |plot_ui| {
                    for kind in RequestKind::ALL {
                        let points: PlotPoints<'_> = metrics
                            .0
                            .recent_full(kind)
                            .map(|s| [s.index as f64, s.latency.as_secs_f64() * 1_000.0])
                            .collect();
                        plot_ui.line(Line::new(kind.as_str(), points));
                    }
                });
        });
    console.plot = open;
    Ok(())
}
