//! The console's text handling, apart from Bevy and egui: splitting a command line into words,
//! and the arithmetic of Tab completion over the typed line and its candidates.
//!
//! Everything here is plain string code over text a player typed, so it is held to properties
//! (the tests below) rather than examples: any line, any candidates, no panic.

/// Splits a command line shell-style: white space separates words, quotes group them and a
/// backslash escapes the next character. `None` for unbalanced quotes or a trailing backslash.
pub(crate) fn split_line(line: &str) -> Option<Vec<String>> {
    shlex::split(line)
}

/// The words of a partly typed line before the word being typed, and that word: empty when the
/// line is empty or ends in white space.
pub(crate) fn split_partial(input: &str) -> (Vec<&str>, &str) {
    let mut words: Vec<&str> = input.split_whitespace().collect();
    let partial = if input.ends_with(char::is_whitespace) || words.is_empty() {
        ""
    } else {
        words.pop().unwrap_or_default()
    };
    (words, partial)
}

/// Where the word being typed starts: just past the last white space, whatever its width (a
/// no-break or ideographic space is more than one byte), or 0 if there is none.
pub(crate) fn last_word_start(input: &str) -> usize {
    input
        .char_indices()
        .rfind(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// The longest start every candidate shares, ending on a character boundary; empty for none.
pub(crate) fn common_start<S: AsRef<str>>(candidates: &[S]) -> &str {
    let Some(first) = candidates.first() else {
        return "";
    };
    candidates.iter().fold(first.as_ref(), |common, c| {
        let c = c.as_ref();
        let same = common
            .char_indices()
            .zip(c.chars())
            .find(|((_, a), b)| a != b)
            .map_or(common.len().min(c.len()), |((i, _), _)| i);
        &common[..same]
    })
}

/// The command line after Tab, given the candidates for its last word: the line up to that
/// word, then the candidates' common start, and a space after a single candidate so the next
/// word can follow. `None` when there is no candidate.
pub(crate) fn complete_line<S: AsRef<str>>(input: &str, candidates: &[S]) -> Option<String> {
    if candidates.is_empty() {
        return None;
    }
    let common = common_start(candidates);
    let mut line = format!("{}{common}", &input[..last_word_start(input)]);
    if candidates.len() == 1 {
        line.push(' ');
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Typed text: command words, several kinds of white space (some wider than a byte), quotes,
    /// backslashes and letters of several widths.
    fn typed() -> impl Strategy<Value = String> {
        "[a-z_\\-é中😀 \t\u{a0}\u{3000}\"'\\\\]{0,24}"
    }

    /// Candidate words, sharing starts often enough to matter.
    fn candidates() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("(hm|he|help|h)?[a-zé中😀]{0,4}", 0..6)
    }

    #[test]
    fn a_wide_space_ends_a_word_whole() {
        assert_eq!(last_word_start("hm\u{3000}per"), "hm\u{3000}".len());
        assert_eq!(
            complete_line("hm\u{a0}pe", &["perf"]).as_deref(),
            Some("hm\u{a0}perf ")
        );
        assert_eq!(split_partial("hm per"), (vec!["hm"], "per"));
        assert_eq!(split_partial("hm "), (vec!["hm"], ""));
        assert_eq!(common_start(&["stream", "status", "stop"]), "st");
        assert_eq!(
            split_line("hm replay \"my run.jsonl\""),
            Some(vec!["hm".into(), "replay".into(), "my run.jsonl".into()])
        );
        assert_eq!(split_line("hm \"open"), None);
    }

    proptest! {
        #[test]
        fn the_partial_word_is_what_follows_the_last_space(input in typed()) {
            let (words, partial) = split_partial(&input);
            let start = last_word_start(&input);
            prop_assert!(input.is_char_boundary(start));
            prop_assert_eq!(&input[start..], partial);
            prop_assert!(!partial.contains(char::is_whitespace));
            let mut all = words.clone();
            if !partial.is_empty() {
                all.push(partial);
            }
            prop_assert_eq!(all, input.split_whitespace().collect::<Vec<_>>());
        }

        #[test]
        fn the_common_start_is_the_longest_shared_one(candidates in candidates()) {
            let common = common_start(&candidates);
            for c in &candidates {
                prop_assert!(c.starts_with(common), "{:?} does not start with {:?}", c, common);
            }
            // One character more and some candidate no longer shares it.
            if let Some(first) = candidates.first() {
                if let Some(next) = first[common.len()..].chars().next() {
                    let longer = format!("{common}{next}");
                    prop_assert!(candidates.iter().any(|c| !c.starts_with(&longer)));
                }
            } else {
                prop_assert_eq!(common, "");
            }
        }

        #[test]
        fn completing_keeps_the_line_and_extends_its_last_word(
            input in typed(),
            tails in candidates(),
        ) {
            // Candidates as `ConsoleCommands::complete` gives them: each starts with the word
            // being typed.
            let (_, partial) = split_partial(&input);
            let candidates: Vec<String> = tails.iter().map(|t| format!("{partial}{t}")).collect();
            let Some(line) = complete_line(&input, &candidates) else {
                prop_assert!(candidates.is_empty());
                return Ok(());
            };
            prop_assert!(line.starts_with(input.as_str()), "{:?} lost some of {:?}", line, input);
            let kept = &input[..last_word_start(&input)];
            if let [only] = candidates.as_slice() {
                prop_assert_eq!(line, format!("{kept}{only} "));
            } else {
                prop_assert_eq!(line, format!("{kept}{}", common_start(&candidates)));
            }
        }

        #[test]
        fn any_line_splits_without_panic_and_quoted_words_come_back(
            line in typed(),
            words in prop::collection::vec("[a-z\"' \\\\é中\u{3000}]{0,8}", 0..5),
        ) {
            let _ = split_line(&line);
            // Words quoted as a shell would quote them split back to themselves.
            let quoted: Vec<String> = words
                .iter()
                .map(|w| shlex::try_quote(w).map(std::borrow::Cow::into_owned))
                .collect::<Result<_, _>>()
                .unwrap_or_default();
            if quoted.len() == words.len() {
                prop_assert_eq!(split_line(&quoted.join(" ")), Some(words));
            }
        }

        #[test]
        fn plain_words_split_on_white_space(
            words in prop::collection::vec("[a-z_\\-0-9é]{1,8}", 0..6),
        ) {
            let line = words.join("  ");
            prop_assert_eq!(split_line(&line), Some(words));
        }
    }
}
