//! Finding a vocabulary's added tokens (control and user-defined ones) in a text, the way
//! Hugging Face's `AddedVocabulary` splits them out before the model sees the rest: the
//! leftmost match, the longest of those, then on after it; a special (control) token stays
//! ordinary text unless special tokens are parsed, and the text it covers is not searched
//! again for shorter tokens.
//!
//! The texts live in a byte trie (Gemma 3's 6,414 added tokens share long prefixes such as
//! `<unused`: ~30,000 nodes, well under a megabyte), so a position costs one root lookup unless an
//! added token can start there.

/// A trie node with no token of its own.
const NO_TOKEN: u32 = u32::MAX;

/// One piece of a split text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Ordinary text for the model (never empty).
    Text(&'a str),
    /// An added token's id.
    Token(u32),
}

struct Node {
    /// `edges[first_edge..first_edge + edge_count]`, sorted by byte.
    first_edge: u32,
    edge_count: u32,
    /// The id of the token whose text ends here, or [`NO_TOKEN`].
    token: u32,
    special: bool,
}

/// The added tokens of a vocabulary.
pub(crate) struct AddedTokens {
    /// Node 0 is the root (the empty text).
    nodes: Vec<Node>,
    /// (next byte, child node).
    edges: Vec<(u8, u32)>,
    /// The ids and whether each is special, in id order.
    ids: Vec<(u32, bool)>,
}

impl AddedTokens {
    /// `tokens`: (text, id, special). Empty texts are left out; of two tokens with one text,
    /// the first is kept (as `AddedVocabulary` ignores a text it already has).
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32, bool)>) -> AddedTokens {
        let mut entries: Vec<(&[u8], u32, bool)> = Vec::new();
        for (text, id, special) in tokens {
            if !text.is_empty() {
                entries.push((text.as_bytes(), id, special));
            }
        }
        // Stable: a repeated text keeps its first entry first.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries.dedup_by(|later, first| later.0 == first.0);
        let mut ids: Vec<(u32, bool)> = entries.iter().map(|&(_, id, special)| (id, special)).collect();
        ids.sort_unstable();
        ids.dedup_by_key(|&mut (id, _)| id);
        let mut added = AddedTokens { nodes: Vec::new(), edges: Vec::new(), ids };
        added.add_node(&entries, 0);
        added.nodes.shrink_to_fit();
        added.edges.shrink_to_fit();
        added
    }

    /// Adds the node for `entries` (sorted, distinct, all sharing their first `depth` bytes)
    /// and its subtree; returns its index.
    fn add_node(&mut self, entries: &[(&[u8], u32, bool)], depth: usize) -> u32 {
        let index = self.nodes.len() as u32;
        let (token, special, rest) = match entries.split_first() {
            Some((&(text, id, special), rest)) if text.len() == depth => (id, special, rest),
            _ => (NO_TOKEN, false, entries),
        };
        let mut groups: Vec<&[(&[u8], u32, bool)]> = Vec::new();
        let mut start = 0;
        for i in 1..=rest.len() {
            if i == rest.len() || rest[i].0[depth] != rest[start].0[depth] {
                groups.push(&rest[start..i]);
                start = i;
            }
        }
        let first_edge = self.edges.len();
        self.nodes.push(Node { first_edge: first_edge as u32, edge_count: groups.len() as u32, token, special });
        self.edges.extend(groups.iter().map(|group| (group[0].0[depth], 0)));
        for (i, group) in groups.into_iter().enumerate() {
            let child = self.add_node(group, depth + 1);
            self.edges[first_edge + i].1 = child;
        }
        index
    }

    /// The added tokens' ids and whether each is special, in id order.
    pub(crate) fn ids(&self) -> &[(u32, bool)] {
        &self.ids
    }

    /// The longest added token `bytes` starts with: (its length, id, special).
    fn longest_prefix(&self, bytes: &[u8]) -> Option<(usize, u32, bool)> {
        let mut node = &self.nodes[0];
        let mut found = None;
        for (depth, byte) in bytes.iter().enumerate() {
            let edges = &self.edges[node.first_edge as usize..(node.first_edge + node.edge_count) as usize];
            let Ok(at) = edges.binary_search_by_key(byte, |&(b, _)| b) else { break };
            node = &self.nodes[edges[at].1 as usize];
            if node.token != NO_TOKEN {
                found = Some((depth + 1, node.token, node.special));
            }
        }
        found
    }

    /// Splits `text` into ordinary text and added tokens, in order; special tokens are
    /// split out only with `parse_special`. An empty text gives no pieces.
    pub(crate) fn split<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Piece<'a>> {
        let bytes = text.as_bytes();
        let mut pieces = Vec::new();
        // Where the ordinary text not yet emitted starts.
        let mut text_start = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            match self.longest_prefix(&bytes[pos..]) {
                // Left in the text, and not searched again (the automaton moved past it).
                Some((len, _, true)) if !parse_special => pos += len,
                Some((len, id, _)) => {
                    // Added texts are whole UTF-8 strings, so a match starts and ends on
                    // character boundaries.
                    if text_start < pos {
                        pieces.push(Piece::Text(&text[text_start..pos]));
                    }
                    pieces.push(Piece::Token(id));
                    pos += len;
                    text_start = pos;
                }
                None => pos += 1,
            }
        }
        if text_start < bytes.len() {
            pieces.push(Piece::Text(&text[text_start..]));
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::Piece::{Text, Token};
    use super::*;

    fn added() -> AddedTokens {
        AddedTokens::new([
            ("<start>", 10, true),
            ("<start_of_turn>", 11, true),
            ("\n", 20, false),
            ("\n\n", 21, false),
            ("  ", 22, false),
            ("<st", 23, false),
            ("<start>", 99, false),
            ("", 98, false),
        ])
    }

    #[test]
    fn splits_leftmost_longest() {
        let added = added();
        assert_eq!(added.ids(), &[(10, true), (11, true), (20, false), (21, false), (22, false), (23, false)]);
        assert_eq!(added.split("", true), vec![]);
        assert_eq!(added.split("plain", true), vec![Text("plain")]);
        assert_eq!(
            added.split("a<start_of_turn>\n\n\nb  c<start>", true),
            vec![Text("a"), Token(11), Token(21), Token(20), Text("b"), Token(22), Text("c"), Token(10)]
        );
        // "<start_of" stops short of "<start_of_turn>": the longest match is "<st".
        assert_eq!(added.split("<start_of", true), vec![Token(23), Text("art_of")]);
        assert_eq!(added.split("é\n", true), vec![Text("é"), Token(20)]);
    }

    #[test]
    fn special_tokens_stay_text_unless_parsed_and_hide_what_they_cover() {
        let added = added();
        assert_eq!(added.split("x<start>\ny", false), vec![Text("x<start>"), Token(20), Text("y")]);
        // "<st" inside the special "<start>" is not split out either.
        assert_eq!(added.split("<start>", false), vec![Text("<start>")]);
        assert_eq!(added.split("<start", false), vec![Token(23), Text("art")]);
    }
}
