//! Stop strings (`stop` in the OpenAI API) over streamed text.
//!
//! Detokenized text arrives piece by piece, and a stop string may straddle pieces, so the
//! tail that could still grow into a stop string is held back until it either completes
//! (generation stops and it is never shown) or stops being a possible prefix (it is
//! released). Clients therefore never see any part of a stop string, and never see text
//! after it.
//!
//! The outcome does not depend on how the text was cut into pieces: generation stops at
//! the first position where any stop string ends, and if several end there, the longest
//! one counts as matched (it removes the most text).

/// What to do after a piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Keep generating.
    Continue {
        /// Text now safe to send to the client; often empty while a prefix is held back.
        emit: String,
    },
    /// A stop string ended the text; finish the sequence.
    Stopped {
        /// The last text to send: everything before the stop string.
        emit: String,
        /// The stop string that matched (never sent).
        matched: String,
    },
}

/// Stop-string matcher for one sequence.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Received but not yet emitted: always shorter than the longest stop string between
    /// calls, which keeps every search short.
    pending: String,
    stopped: bool,
}

impl From<Vec<String>> for StopStrings {
    fn from(stops: Vec<String>) -> Self {
        Self::new(stops)
    }
}

impl StopStrings {
    /// Empty strings are dropped: they would match everywhere.
    pub fn new(mut stops: Vec<String>) -> Self {
        stops.retain(|s| !s.is_empty());
        Self {
            stops,
            pending: String::new(),
            stopped: false,
        }
    }

    /// True when there is nothing to watch for (every piece passes straight through).
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Whether a stop string has been hit; later pieces are discarded.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next decoded piece of text.
    pub fn push(&mut self, piece: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Continue {
                emit: String::new(),
            };
        }
        self.pending.push_str(piece);
        if let Some((start, index)) = self.first_match() {
            self.stopped = true;
            self.pending.truncate(start);
            return StopOutcome::Stopped {
                emit: std::mem::take(&mut self.pending),
                matched: self.stops[index].clone(),
            };
        }
        let cut = self.pending.len() - self.held_back_len();
        let held = self.pending.split_off(cut);
        StopOutcome::Continue {
            emit: std::mem::replace(&mut self.pending, held),
        }
    }

    /// Releases the held-back text when generation ends for another reason (EOS, length).
    /// Empty after a stop.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Start of the stop occurrence that ends first in `pending` (the longest one on a tie)
    /// and the index of its stop string. Earlier text was already searched and released, and
    /// a held-back tail is shorter than any stop, so only matches within `pending` exist.
    fn first_match(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (index, stop) in self.stops.iter().enumerate() {
            if let Some(start) = self.pending.find(stop.as_str()) {
                let candidate = (start + stop.len(), start, index);
                if best.is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1)) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(_, start, index)| (start, index))
    }

    /// Length of the longest tail of `pending` that is a proper prefix of some stop string.
    /// Prefixes are cut at char boundaries of the stop string; since such a prefix starts
    /// with a whole character, a matching tail also starts on a boundary of `pending`.
    fn held_back_len(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(self.pending.len());
            for k in (longest + 1..=max).rev() {
                if stop.is_char_boundary(k) && self.pending.ends_with(&stop[..k]) {
                    longest = k;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        StopStrings::new(list.iter().map(|s| s.to_string()).collect())
    }

    fn go(emit: &str) -> StopOutcome {
        StopOutcome::Continue {
            emit: emit.to_string(),
        }
    }

    fn stop(emit: &str, matched: &str) -> StopOutcome {
        StopOutcome::Stopped {
            emit: emit.to_string(),
            matched: matched.to_string(),
        }
    }

    /// Feeds `pieces`; returns everything emitted (flushed at the end unless stopped) and
    /// the matched stop string.
    fn run(list: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = stops(list);
        let mut out = String::new();
        for piece in pieces {
            match s.push(piece) {
                StopOutcome::Continue { emit } => out.push_str(&emit),
                StopOutcome::Stopped { emit, matched } => {
                    out.push_str(&emit);
                    return (out, Some(matched));
                }
            }
        }
        out.push_str(&s.flush());
        (out, None)
    }

    /// Independent definition of the contract: grow the text one char at a time and stop as
    /// soon as some stop string is a suffix, preferring the longest.
    fn oracle(list: &[&str], text: &str) -> (String, Option<String>) {
        for (i, c) in text.char_indices() {
            let seen = &text[..i + c.len_utf8()];
            let hit = list
                .iter()
                .filter(|s| !s.is_empty() && seen.ends_with(**s))
                .max_by_key(|s| s.len());
            if let Some(hit) = hit {
                return (
                    seen[..seen.len() - hit.len()].to_string(),
                    Some(hit.to_string()),
                );
            }
        }
        (text.to_string(), None)
    }

    /// Every way of cutting `text` into at most three pieces (at char boundaries), plus
    /// char-by-char.
    fn splits(text: &str) -> Vec<Vec<&str>> {
        let cuts: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let mut out = vec![
            text.char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
        ];
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                out.push(vec![&text[..a], &text[a..b], &text[b..]]);
            }
        }
        out
    }

    #[test]
    fn without_stops_everything_passes_straight_through() {
        let mut s = stops(&[]);
        assert!(s.is_empty());
        assert_eq!(s.push("Hello"), go("Hello"));
        assert_eq!(s.push(""), go(""));
        assert_eq!(s.flush(), "");
        assert!(stops(&["", ""]).is_empty());
    }

    #[test]
    fn simple_hit_cuts_the_stop_and_everything_after() {
        let mut s = stops(&["Paris"]);
        assert!(!s.is_empty());
        assert_eq!(s.push("Go to Paris today"), stop("Go to ", "Paris"));
        assert!(s.is_stopped());
        assert_eq!(s.push(" and more"), go(""));
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn stop_split_across_pieces_is_never_shown() {
        let mut s = stops(&["Paris"]);
        assert_eq!(s.push("The capital is Par"), go("The capital is "));
        assert_eq!(s.push("is."), stop("", "Paris"));
        let mut s = stops(&["Paris"]);
        assert_eq!(s.push("P"), go(""));
        assert_eq!(s.push("ar"), go(""));
        assert_eq!(s.push("is"), stop("", "Paris"));
    }

    #[test]
    fn held_prefix_is_released_once_it_cannot_match() {
        let mut s = stops(&["Paris"]);
        assert_eq!(s.push("a Par"), go("a "));
        assert_eq!(s.push("k is"), go("Park is"));
        assert_eq!(s.push(" Pa"), go(" "));
        assert_eq!(s.flush(), "Pa");
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn multiple_stop_strings() {
        let mut s = stops(&["\n\n", "User:"]);
        assert_eq!(s.push("Hi\n"), go("Hi"));
        assert_eq!(s.push("User: more"), stop("\n", "User:"));
        assert_eq!(
            run(&["\n\n", "User:"], &["a\n", "\nUser:"]),
            ("a".into(), Some("\n\n".into()))
        );
    }

    #[test]
    fn first_ending_stop_wins_then_longest() {
        // "bc" completes before "abcd" does, whatever the chunking.
        assert_eq!(
            run(&["abcd", "bc"], &["abcd"]),
            ("a".into(), Some("bc".into()))
        );
        assert_eq!(
            run(&["abcd", "bc"], &["a", "b", "c", "d"]),
            ("a".into(), Some("bc".into()))
        );
        // Both end at the same place: the longer one removes more.
        assert_eq!(
            run(&["c", "abc"], &["xabc"]),
            ("x".into(), Some("abc".into()))
        );
    }

    #[test]
    fn stop_at_the_very_start() {
        assert_eq!(stops(&["Hello"]).push("Hello world"), stop("", "Hello"));
        assert_eq!(
            run(&["<|im_end|>"], &["<|im", "_end|>"]),
            (String::new(), Some("<|im_end|>".into()))
        );
    }

    #[test]
    fn overlapping_prefixes_are_tracked() {
        let mut s = stops(&["abc"]);
        assert_eq!(s.push("ab"), go(""));
        assert_eq!(s.push("ab"), go("ab"));
        assert_eq!(s.push("c"), stop("", "abc"));
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b"]),
            ("a".into(), Some("aab".into()))
        );
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(
            run(&["é!"], &["caf", "é", "!"]),
            ("caf".into(), Some("é!".into()))
        );
        let mut s = stops(&["日本"]);
        assert_eq!(s.push("語日"), go("語"));
        assert_eq!(s.push("ö"), go("日ö"));
        // A stop whose first byte matches a different char's first byte must not split it.
        let mut s = stops(&["éa"]);
        assert_eq!(s.push("xè"), go("xè"));
    }

    #[test]
    fn result_does_not_depend_on_chunking() {
        let cases: [(&[&str], &str); 8] = [
            (&["Paris"], "I love Paris in spring"),
            (&["abc"], "xxababcab"),
            (&["abcd", "bc"], "zabcd"),
            (&["ab", "b"], "aab"),
            (&["\n\n", "User:", "###"], "one\ntwo\nUser: ###"),
            (&["aaa"], "aaaaa"),
            (&["stop"], "no match here, st"),
            (&["日本", "本語"], "これは日本語です"),
        ];
        for (list, text) in cases {
            let expected = oracle(list, text);
            for pieces in splits(text) {
                assert_eq!(run(list, &pieces), expected, "{list:?} over {pieces:?}");
            }
        }
    }
}
