//! The device layout of GGUF blocks: a lossless host repack into `u32` words.
//!
//! WGSL has no 8- or 16-bit storage, and Q4_0 (18-byte) and Q8_0 (34-byte) blocks are not
//! 4-byte aligned, so the kernels cannot read GGUF's array of blocks as it is. The repack
//! splits it into a structure of arrays in one `u32` buffer:
//!
//! - quants first: each block's quant bytes, as little-endian `u32` words, block after block
//!   (row-major: row `r`'s block `b` is block `r * blocks_per_row + b`), `words_per_block`
//!   words each (Q8_0: 32 bytes = 8 words; Q4_0 and Q4_1: 16 bytes of nibbles = 4 words);
//! - then the f16 scales: for Q8_0 and Q4_0 `d`, two per word (block `s`'s scale is the low
//!   half of word `scales_at + s / 2` when `s` is even, the high half when odd); for Q4_1 one
//!   word per block, `d` in the low half and `m` in the high half (GGUF's own order).
//!
//! Nothing is widened: the device holds the GGUF bytes plus at most 2 bytes of padding
//! (see [`device_bytes`]).

use crate::gguf::GgmlType;

/// The block types the GPU kernels decode.
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
}

/// Elements per block, for every kind.
pub const BLOCK_ELEMENTS: usize = 32;

impl QuantKind {
    /// The kind for a GGUF type, or `None` for a type without a GPU kernel yet.
    pub fn from_ggml(ggml_type: GgmlType) -> Option<QuantKind> {
        match ggml_type {
            GgmlType::Q8_0 => Some(QuantKind::Q8_0),
            GgmlType::Q4_0 => Some(QuantKind::Q4_0),
            GgmlType::Q4_1 => Some(QuantKind::Q4_1),
            _ => None,
        }
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            QuantKind::Q8_0 => GgmlType::Q8_0,
            QuantKind::Q4_0 => GgmlType::Q4_0,
            QuantKind::Q4_1 => GgmlType::Q4_1,
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

    /// Bytes of one GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8_0 => 34,
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
        }
    }

    /// Bytes of f16 scales at the head of a GGUF block (`d`, and `m` for Q4_1).
    pub fn header_bytes(self) -> usize {
        match self {
            QuantKind::Q4_1 => 4,
            QuantKind::Q8_0 | QuantKind::Q4_0 => 2,
        }
    }

    /// `u32` words of quants per block (the block less its scales).
    pub fn words_per_block(self) -> usize {
        (self.block_bytes() - self.header_bytes()) / 4
    }
}

/// Where the scales start in the packed words of a `blocks`-block matrix.
pub fn scales_at(kind: QuantKind, blocks: usize) -> usize {
    blocks * kind.words_per_block()
}

/// Length in words of the packed form of `blocks` blocks.
pub fn packed_words(kind: QuantKind, blocks: usize) -> usize {
    scales_at(kind, blocks) + (blocks * kind.header_bytes()).div_ceil(4)
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
    let header = kind.header_bytes();
    for block in bytes.chunks_exact(block_bytes) {
        words.extend(block[header..].chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
    if header == 4 {
        words.extend(bytes.chunks_exact(block_bytes).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        debug_assert_eq!(words.len(), packed_words(kind, blocks));
        return words;
    }
    let scale = |block: &[u8]| u32::from(u16::from_le_bytes([block[0], block[1]]));
    let mut blocks_iter = bytes.chunks_exact(block_bytes);
    while let Some(even) = blocks_iter.next() {
        let odd = blocks_iter.next().map_or(0, scale);
        words.push(scale(even) | (odd << 16));
    }
    debug_assert_eq!(words.len(), packed_words(kind, blocks));
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpacks block `s` back into GGUF bytes: the inverse the kernels compute.
    fn unpack_block(kind: QuantKind, words: &[u32], blocks: usize, s: usize) -> Vec<u8> {
        let wpb = kind.words_per_block();
        let mut block = if kind.header_bytes() == 4 {
            words[scales_at(kind, blocks) + s].to_le_bytes().to_vec()
        } else {
            let scale_word = words[scales_at(kind, blocks) + s / 2];
            let d = if s % 2 == 0 { scale_word & 0xFFFF } else { scale_word >> 16 } as u16;
            d.to_le_bytes().to_vec()
        };
        words[s * wpb..(s + 1) * wpb].iter().for_each(|w| block.extend(w.to_le_bytes()));
        block
    }

    #[test]
    fn pack_is_lossless_and_adds_at_most_two_bytes() {
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
            for blocks in [1usize, 2, 3, 8] {
                let bytes: Vec<u8> = (0..blocks * kind.block_bytes()).map(|i| (i * 37 + 11) as u8).collect();
                let words = pack(kind, &bytes);
                assert_eq!(words.len() * 4, device_bytes(kind, blocks));
                assert!(device_bytes(kind, blocks) <= bytes.len() + 2, "{kind:?} × {blocks}");
                let back: Vec<u8> = (0..blocks).flat_map(|s| unpack_block(kind, &words, blocks, s)).collect();
                assert_eq!(back, bytes, "{kind:?} × {blocks}");
            }
        }
    }

    #[test]
    fn codes_round_trip_and_other_types_have_no_kind() {
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
            assert_eq!(QuantKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(QuantKind::from_ggml(GgmlType::Q4_K), None);
        assert_eq!(QuantKind::from_ggml(GgmlType::F32), None);
    }
}
