//! The device layout of GGUF blocks: a lossless host repack into `u32` words.
//!
//! WGSL has no 8- or 16-bit storage, and Q4_0 (18-byte), Q5_0 (22), Q8_0 (34) and Q6_K (210)
//! blocks are not 4-byte aligned, so the kernels cannot read GGUF's array of blocks as it is.
//! The repack splits each block into its f16 "scale piece" (the 2 or 4 bytes that break the
//! alignment) and the rest, and stores a structure of arrays in one `u32` buffer:
//!
//! - words first: each block less its scale piece, as little-endian `u32` words, block after
//!   block (row-major: row `r`'s block `b` is block `r * blocks_per_row + b`),
//!   [`QuantKind::words_per_block`] words each, the bytes in GGUF's order;
//! - then the scale pieces from [`scales_at`] on: a 2-byte piece (Q8_0, Q4_0, Q5_0: `d` at
//!   the head; Q6_K: `d` at the end) two per word (block `s`'s is the low half of word
//!   `scales_at + s / 2` when `s` is even, the high half when odd); Q4_1's 4-byte `d, m` one
//!   word per block. Q4_K and Q5_K blocks (144 and 176 bytes, `d, dmin` at the head) are
//!   aligned: they have no piece, their words are the whole block.
//!
//! - the whole padded with zero words to a multiple of 4 words, so that the kernels can read
//!   it as `vec4<u32>` (a quad-aligned 16-byte load; every kind's quants but Q5_0's start on a
//!   4-word boundary).
//!
//! Nothing is widened: the device holds the GGUF bytes plus at most 14 bytes of padding
//! (see [`device_bytes`]).

use crate::gguf::GgmlType;

/// The block types the GPU kernels decode (named as GGUF names them).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// 32 elements: f16 `d`, 32 × i8; value = q · d.
    Q8_0,
    /// 32 elements: f16 `d`, 16 bytes of nibbles (element j in the low nibble of byte j,
    /// element j + 16 in its high nibble); value = (q − 8) · d.
    Q4_0,
    /// 32 elements: f16 `d`, f16 `m`, 16 bytes of nibbles laid out as Q4_0's;
    /// value = q · d + m.
    Q4_1,
    /// 32 elements: f16 `d`, a u32 of fifth bits (bit j for element j), 16 bytes of nibbles
    /// laid out as Q4_0's; value = (q − 16) · d.
    Q5_0,
    /// 256 elements: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of
    /// nibbles; value = (d · sc) · q − dmin · m per 32 elements.
    Q4_K,
    /// Q4_K with 32 bytes of fifth bits between the scales and the nibbles.
    Q5_K,
    /// 256 elements: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 `d`
    /// at the end; value = (d · sc) · (q − 32) per 16 elements.
    Q6_K,
}

impl QuantKind {
    /// Every kind, for tests and docs.
    pub const ALL: [QuantKind; 7] = [
        QuantKind::Q8_0,
        QuantKind::Q4_0,
        QuantKind::Q4_1,
        QuantKind::Q5_0,
        QuantKind::Q4_K,
        QuantKind::Q5_K,
        QuantKind::Q6_K,
    ];

    /// The kind for a GGUF type, or `None` for a type without a GPU kernel yet.
    pub fn from_ggml(ggml_type: GgmlType) -> Option<QuantKind> {
        QuantKind::ALL.into_iter().find(|kind| kind.ggml_type() == ggml_type)
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            QuantKind::Q8_0 => GgmlType::Q8_0,
            QuantKind::Q4_0 => GgmlType::Q4_0,
            QuantKind::Q4_1 => GgmlType::Q4_1,
            QuantKind::Q5_0 => GgmlType::Q5_0,
            QuantKind::Q4_K => GgmlType::Q4_K,
            QuantKind::Q5_K => GgmlType::Q5_K,
            QuantKind::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The number that travels through the backend extension (an ordinary `u32` argument, so
    /// fusion can record it): GGUF's type id.
    pub fn code(self) -> u32 {
        self.ggml_type().id()
    }

    pub fn from_code(code: u32) -> Option<QuantKind> {
        QuantKind::from_ggml(GgmlType::from_id(code))
    }

    /// Elements per block: 32, or 256 for the K-quants' super-blocks.
    pub fn block_elements(self) -> usize {
        match self {
            QuantKind::Q4_K | QuantKind::Q5_K | QuantKind::Q6_K => 256,
            QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q4_1 | QuantKind::Q5_0 => 32,
        }
    }

    /// Bytes of one GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8_0 => 34,
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
            QuantKind::Q5_0 => 22,
            QuantKind::Q4_K => 144,
            QuantKind::Q5_K => 176,
            QuantKind::Q6_K => 210,
        }
    }

    /// Bytes of the block's scale piece, stored apart from its words (0, 2 or 4).
    pub fn piece_bytes(self) -> usize {
        match self {
            QuantKind::Q4_1 => 4,
            QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q5_0 | QuantKind::Q6_K => 2,
            QuantKind::Q4_K | QuantKind::Q5_K => 0,
        }
    }

    /// Where the scale piece sits in a GGUF block: at the head, or (Q6_K) at the end.
    fn piece_offset(self) -> usize {
        match self {
            QuantKind::Q6_K => self.block_bytes() - self.piece_bytes(),
            _ => 0,
        }
    }

    /// `u32` words per block (the block less its scale piece).
    pub fn words_per_block(self) -> usize {
        (self.block_bytes() - self.piece_bytes()) / 4
    }

    /// The block's bytes less its scale piece, and the piece.
    fn split(self, block: &[u8]) -> (impl Iterator<Item = &u8>, &[u8]) {
        let (at, len) = (self.piece_offset(), self.piece_bytes());
        (block[..at].iter().chain(&block[at + len..]), &block[at..at + len])
    }
}

/// Where the scale pieces start in the packed words of a `blocks`-block matrix.
pub fn scales_at(kind: QuantKind, blocks: usize) -> usize {
    blocks * kind.words_per_block()
}

/// Length in words of the packed form of `blocks` blocks (a multiple of 4).
pub fn packed_words(kind: QuantKind, blocks: usize) -> usize {
    (scales_at(kind, blocks) + (blocks * kind.piece_bytes()).div_ceil(4)).next_multiple_of(4)
}

/// Bytes the packed form of `blocks` blocks takes on the device.
pub fn device_bytes(kind: QuantKind, blocks: usize) -> usize {
    packed_words(kind, blocks) * 4
}

/// Repacks GGUF blocks (`bytes.len()` a multiple of the block size) into the layout above.
pub fn pack(kind: QuantKind, bytes: &[u8]) -> Vec<u32> {
    let block_bytes = kind.block_bytes();
    debug_assert_eq!(bytes.len() % block_bytes, 0, "whole blocks");
    let blocks = bytes.len() / block_bytes;
    let mut words = Vec::with_capacity(packed_words(kind, blocks));
    let mut pieces = Vec::with_capacity(blocks * kind.piece_bytes() + 2);
    for block in bytes.chunks_exact(block_bytes) {
        let (rest, piece) = kind.split(block);
        let mut word = [0u8; 4];
        for (k, &byte) in rest.enumerate() {
            word[k % 4] = byte;
            if k % 4 == 3 {
                words.push(u32::from_le_bytes(word));
            }
        }
        pieces.extend_from_slice(piece);
    }
    // Two 2-byte pieces a word, low half first; Q4_1's 4-byte pieces are a word each.
    pieces.resize(pieces.len().next_multiple_of(4), 0);
    words.extend(pieces.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    words.resize(words.len().next_multiple_of(4), 0);
    debug_assert_eq!(words.len(), packed_words(kind, blocks));
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpacks block `s` back into GGUF bytes: the inverse the kernels compute.
    fn unpack_block(kind: QuantKind, words: &[u32], blocks: usize, s: usize) -> Vec<u8> {
        let wpb = kind.words_per_block();
        let piece = match kind.piece_bytes() {
            0 => Vec::new(),
            4 => words[scales_at(kind, blocks) + s].to_le_bytes().to_vec(),
            _ => {
                let scale_word = words[scales_at(kind, blocks) + s / 2];
                let d = if s % 2 == 0 { scale_word & 0xFFFF } else { scale_word >> 16 } as u16;
                d.to_le_bytes().to_vec()
            }
        };
        let rest: Vec<u8> = words[s * wpb..(s + 1) * wpb].iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = kind.piece_offset();
        [&rest[..at], &piece[..], &rest[at..]].concat()
    }

    #[test]
    fn pack_is_lossless_whole_quads_and_adds_at_most_fourteen_bytes() {
        for kind in QuantKind::ALL {
            for blocks in [1usize, 2, 3, 8] {
                let bytes: Vec<u8> = (0..blocks * kind.block_bytes()).map(|i| (i * 37 + 11) as u8).collect();
                let words = pack(kind, &bytes);
                assert_eq!(words.len() * 4, device_bytes(kind, blocks));
                assert!(device_bytes(kind, blocks) <= bytes.len() + 14, "{kind:?} × {blocks}");
                assert_eq!(words.len() % 4, 0, "{kind:?} × {blocks}: whole quads");
                let back: Vec<u8> = (0..blocks).flat_map(|s| unpack_block(kind, &words, blocks, s)).collect();
                assert_eq!(back, bytes, "{kind:?} × {blocks}");
            }
        }
    }

    #[test]
    fn sizes_agree_with_gguf_and_codes_round_trip() {
        for kind in QuantKind::ALL {
            assert_eq!(QuantKind::from_code(kind.code()), Some(kind));
            assert_eq!(kind.ggml_type().block_layout(), Some((kind.block_elements(), kind.block_bytes())));
            assert_eq!((kind.block_bytes() - kind.piece_bytes()) % 4, 0, "{kind:?}: whole words");
        }
        assert_eq!(QuantKind::from_ggml(GgmlType::Q5_1), None);
        assert_eq!(QuantKind::from_ggml(GgmlType::F32), None);
    }
}
