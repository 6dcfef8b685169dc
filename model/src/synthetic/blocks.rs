//! Quantized synthetic models: `synthetic:<preset>@q4_k_m` (or `@q4_0`, `@q8_0`) draws each
//! linear layer's GGUF blocks directly from the seed, typed as llama.cpp's quantizer types a
//! file of that name, so benchmarks and the GPU check can run an 8B-shaped `Q4_K_M` model
//! without a 5 GB download.
//!
//! The blocks are random (quants, and for K-quants the 6-bit sub-block scales) with the block
//! scales chosen so the values spread like the f32 synthetic weights (uniform in about
//! `[-scale, scale]`); nothing is quantized from floats. `SyntheticWeights` dequantizes the
//! same blocks when a float copy is asked for, so dense and quantized runs of one model
//! compute with the same weights.

use std::str::FromStr;

use half::f16;

use crate::arch::Role;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::rng::SplitMix64;

/// The file type a quantized synthetic model imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticQuant {
    /// Everything Q4_0, the output Q6_K (as llama.cpp writes `Q4_0` files).
    Q4_0,
    /// Everything Q8_0.
    Q8_0,
    /// Q4_K, with Q6_K for the output and for `attn_v`/`ffn_down` of the layers llama.cpp
    /// gives more bits (its `use_more_bits`).
    Q4KM,
}

impl FromStr for SyntheticQuant {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4_0" => Ok(SyntheticQuant::Q4_0),
            "q8_0" => Ok(SyntheticQuant::Q8_0),
            "q4_k_m" => Ok(SyntheticQuant::Q4KM),
            other => Err(ModelError::InvalidRequest(format!(
                "unknown synthetic quantization `{other}` (q4_0, q8_0, q4_k_m)"
            ))),
        }
    }
}

impl SyntheticQuant {
    /// The type of a tensor of `role` in block `layer` of `layers` with ggml `dims`; `F32`
    /// for everything that is not a weight matrix. A row that is not a whole number of
    /// super-blocks falls back as llama.cpp does (Q4_K → Q5_0, Q6_K → Q8_0).
    pub fn tensor_type(self, role: Role, layer: Option<usize>, layers: usize, dims: &[usize]) -> GgmlType {
        let matrix = dims.len() == 2
            && matches!(
                role,
                Role::TokenEmbedding
                    | Role::Output
                    | Role::AttnQ
                    | Role::AttnK
                    | Role::AttnV
                    | Role::AttnQkv
                    | Role::AttnOutput
                    | Role::FfnGate
                    | Role::FfnUp
                    | Role::FfnGateUp
                    | Role::FfnDown
            );
        if !matrix || dims[0] % 32 != 0 {
            return GgmlType::F32;
        }
        let more_bits = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
        let wanted = match (self, role) {
            (SyntheticQuant::Q8_0, _) => GgmlType::Q8_0,
            (_, Role::Output) => GgmlType::Q6_K,
            (SyntheticQuant::Q4_0, _) => GgmlType::Q4_0,
            (SyntheticQuant::Q4KM, Role::AttnV | Role::FfnDown) if layer.is_some_and(more_bits) => GgmlType::Q6_K,
            (SyntheticQuant::Q4KM, _) => GgmlType::Q4_K,
        };
        match wanted {
            GgmlType::Q4_K if dims[0] % 256 != 0 => GgmlType::Q5_0,
            GgmlType::Q6_K if dims[0] % 256 != 0 => GgmlType::Q8_0,
            other => other,
        }
    }
}

/// `elements` values of `ggml_type` (Q4_0, Q5_0, Q8_0, Q4_K or Q6_K) as random blocks whose
/// values spread over about `[-scale, scale]`.
pub fn random_blocks(ggml_type: GgmlType, elements: usize, scale: f32, rng: &mut SplitMix64) -> Result<Vec<u8>> {
    let (block_elements, block_bytes) = match ggml_type {
        GgmlType::Q4_0 => (32, 18),
        GgmlType::Q5_0 => (32, 22),
        GgmlType::Q8_0 => (32, 34),
        GgmlType::Q4_K => (256, 144),
        GgmlType::Q6_K => (256, 210),
        other => return Err(ModelError::UnsupportedQuantization { tensor: String::new(), ggml_type: other.to_string() }),
    };
    let blocks = elements / block_elements;
    let mut bytes = vec![0u8; blocks * block_bytes];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let tail = bytes.len() / 8 * 8;
    for b in &mut bytes[tail..] {
        *b = rng.next_u64() as u8;
    }
    let half = |x: f32| f16::from_f32(x).to_le_bytes();
    for block in bytes.chunks_exact_mut(block_bytes) {
        match ggml_type {
            // (q − 8)·d with q in 0..16.
            GgmlType::Q4_0 => block[..2].copy_from_slice(&half(scale / 8.0)),
            // (q − 16)·d with q in 0..32.
            GgmlType::Q5_0 => block[..2].copy_from_slice(&half(scale / 16.0)),
            // q·d with q in −128..128.
            GgmlType::Q8_0 => block[..2].copy_from_slice(&half(scale / 128.0)),
            // d·sc·q − dmin·m with q in 0..16: every sub-block's 6-bit sc and m is 32 (the
            // packing of `get_scale_min_k4`: bytes 0..8 = 0b10_100000, 8..12 = 0), and
            // dmin = 7.5·d centres the values: 32·d·(q − 7.5).
            GgmlType::Q4_K => {
                let d = scale / (32.0 * 7.5);
                block[..2].copy_from_slice(&half(d));
                block[2..4].copy_from_slice(&half(7.5 * d));
                block[4..12].fill(0xA0);
                block[12..16].fill(0);
            }
            // d·sc·(q − 32) with q in 0..64 and sc in −128..128; d is the last two bytes.
            GgmlType::Q6_K => block[208..].copy_from_slice(&half(scale / (32.0 * 64.0))),
            _ => unreachable!("types checked above"),
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize;

    #[test]
    fn random_blocks_spread_like_the_float_weights() {
        for ggml_type in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let mut rng = SplitMix64(7);
            let bytes = random_blocks(ggml_type, 4096, 0.05, &mut rng).expect("supported type");
            let mut values = vec![0f32; 4096];
            dequantize(ggml_type, &bytes, &mut values).expect("whole blocks");
            let mean = values.iter().sum::<f32>() / 4096.0;
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(mean.abs() < 0.005, "{ggml_type}: mean {mean}");
            assert!((0.03..=0.15).contains(&max), "{ggml_type}: max |value| {max}");
        }
        assert!(random_blocks(GgmlType::Q2_K, 256, 1.0, &mut SplitMix64(1)).is_err());
    }

    #[test]
    fn q4_k_m_types_tensors_like_llama_cpp() {
        let q = SyntheticQuant::Q4KM;
        assert_eq!(q.tensor_type(Role::Output, None, 32, &[4096, 128_256]), GgmlType::Q6_K);
        assert_eq!(q.tensor_type(Role::AttnQ, Some(5), 32, &[4096, 4096]), GgmlType::Q4_K);
        assert_eq!(q.tensor_type(Role::FfnDown, Some(0), 32, &[14336, 4096]), GgmlType::Q6_K);
        assert_eq!(q.tensor_type(Role::FfnDown, Some(5), 32, &[14336, 4096]), GgmlType::Q4_K);
        assert_eq!(q.tensor_type(Role::FfnDown, Some(6), 32, &[14336, 4096]), GgmlType::Q6_K);
        assert_eq!(q.tensor_type(Role::AttnQ, Some(0), 30, &[576, 576]), GgmlType::Q5_0, "576 is not whole super-blocks");
        assert_eq!(q.tensor_type(Role::AttnNorm, Some(0), 32, &[4096]), GgmlType::F32);
        assert_eq!("Q4_K_M".parse::<SyntheticQuant>().expect("known"), SyntheticQuant::Q4KM);
        assert!("q3_k".parse::<SyntheticQuant>().is_err());
    }
}
