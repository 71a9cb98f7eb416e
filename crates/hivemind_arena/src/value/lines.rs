//! Judging a line: a copy of what the model was shown, an echo of the player, or its own words,
//! and in whose voice. See the [suite's rules](super#lines).

use hivemind_core::hooks::CopyCheck;
use hivemind_core::prompt::PromptAsset;

use crate::scenarios::Voice;

/// The copy check over every fixed text of `prompt`: the preamble, the rules, each worked
/// example's situation and answer, and every persona's voice.
pub fn copy_check(prompt: &PromptAsset) -> CopyCheck {
    CopyCheck::from_prompt(prompt)
}

/// What the suite finds in one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineJudgement {
    /// It copies the prompt or the text shown with it (the options).
    pub copy: bool,
    /// It copies what the player said: a copy, and off topic.
    pub echo: bool,
    /// Whose words it uses.
    pub voice: Voice,
}

impl LineJudgement {
    /// Whether the line counts as written by the model: no copy, no echo.
    pub fn is_own(&self) -> bool {
        !self.copy && !self.echo
    }
}

/// Judges `line`, said by an agent of `persona` who was shown `shown` besides the prompt (the
/// options' labels and reasons) after the player said `player_said`.
pub fn judge_line(
    check: &CopyCheck,
    persona: &str,
    line: &str,
    shown: &[&str],
    player_said: Option<&str>,
) -> LineJudgement {
    let copy = check.copy_at(line, shown).is_some();
    let echo = player_said.is_some_and(|said| check.for_line(&[said]).is_copy(line));
    LineJudgement {
        copy,
        echo,
        voice: super::persona_voice(persona, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assets;

    #[test]
    fn the_worked_example_and_the_voices_are_copies_and_the_player_is_an_echo() {
        let prompt = assets().prompt;
        let check = copy_check(&prompt);
        let copy = judge_line(&check, "rookie", "Three down. Who's next?", &[], None);
        assert!(copy.copy && !copy.is_own());
        let voice = judge_line(
            &check,
            "rookie",
            "An eager rookie. Excited, talks fast.",
            &[],
            None,
        );
        assert!(voice.copy);
        let shown = judge_line(
            &check,
            "veteran",
            "Attack enemy 9, it is weak",
            &["attack enemy 9: it is at 40% hp"],
            None,
        );
        assert!(shown.copy);
        let echo = judge_line(
            &check,
            "medic",
            "Are you scared of them?",
            &[],
            Some("Are you scared of them?"),
        );
        assert!(echo.echo && !echo.copy && !echo.is_own());
        let own = judge_line(&check, "medic", "Hold still, let me patch that.", &[], None);
        assert!(own.is_own());
        assert_eq!(own.voice, Voice::Own);
    }
}
