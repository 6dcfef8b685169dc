//! Dequantization of ggml blocks to f32 (placeholder: being written).
use super::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum DequantError {
    #[error("{0} cannot be dequantized")]
    Unsupported(GgmlType),
    #[error("{bytes} bytes do not hold {elements} elements of {ggml_type}")]
    Length { ggml_type: GgmlType, bytes: usize, elements: usize },
}

pub fn dequantize(ggml_type: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let _ = (bytes, out);
    Err(DequantError::Unsupported(ggml_type))
}
