//! The `#[cube]` kernels: `y[n, rows] = x[n, cols] · Wᵀ` with W in the packed layout of
//! [`super::layout`], one unit per output element.
//!
//! Each unit walks its weight row block by block: it decodes the block's quants from `u32`
//! words in registers, dots them with the activations in f32, and scales the block's partial
//! sum by its `d` once. Activations are read in their own dtype and the sum is written in it;
//! everything in between is f32. This is the first, simplest kernel (no shared memory, no
//! plane reduction, x re-read from global memory per weight row): correct everywhere cubecl
//! runs, not yet fast (docs/gpu-quantized-plan.md §4 for the workgroup-per-row version).

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::layout::{self, BLOCK_ELEMENTS, QuantKind};

/// The f16 in the low 16 bits of `bits`, as an f32, exactly, with integer operations only:
/// WGSL reads no 16-bit storage, and `SHADER_F16` is optional.
#[cube]
fn f16_bits_to_f32(bits: u32) -> f32 {
    let sign = (bits & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1F;
    let mantissa = (bits & 0x3FF) << 13;
    // A normal f16: rebias the exponent (15 → 127) and widen the mantissa.
    let mut magnitude = f32::reinterpret(((exponent + 112) << 23) | mantissa);
    if exponent == 0 {
        // Zero or subnormal: m · 2⁻²⁴ = 2⁻¹⁴ · (1 + m/1024) − 2⁻¹⁴, an exact subtraction that
        // never makes a subnormal f32 (which a GPU may flush to zero). 0x3880_0000 is 2⁻¹⁴.
        magnitude = f32::reinterpret(0x3880_0000 | mantissa) - f32::reinterpret(0x3880_0000u32);
    }
    if exponent == 31 {
        magnitude = f32::reinterpret(0x7F80_0000 | mantissa);
    }
    f32::reinterpret(u32::reinterpret(magnitude) | sign)
}

/// Block `block`'s scale `d` (layout: two f16 per word after the quants).
#[cube]
fn block_scale(words: &Tensor<u32>, scales_at: usize, block: usize) -> f32 {
    let word = words[scales_at + block / 2];
    let shift = ((block % 2) * 16) as u32;
    f16_bits_to_f32((word >> shift) & 0xFFFF)
}

/// Q8_0: 8 words of i8 quants per block; value = q · d.
#[cube(launch)]
fn matvec_q8_0<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    out: &mut Tensor<F>,
    rows: usize,
    blocks_per_row: usize,
    scales_at: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    if ABSOLUTE_POS >= n * rows {
        terminate!();
    }
    let i = ABSOLUTE_POS / rows;
    let r = ABSOLUTE_POS % rows;
    let x_row = i * x.stride(0);
    let x_col = x.stride(1);
    let mut sum = 0.0f32;
    for b in 0..blocks_per_row {
        let block = r * blocks_per_row + b;
        let first_word = block * 8;
        let first_col = b * 32;
        let mut partial = 0.0f32;
        for k in 0..8usize {
            let word = words[first_word + k];
            for t in 0..4usize {
                let q = (word >> ((t * 8) as u32)) & 0xFF;
                // Sign-extend the byte: (q ^ 0x80) − 128 maps 0..=255 to 0, …, 127, −128, …, −1.
                let value = f32::cast_from(i32::cast_from(q ^ 0x80) - 128);
                let col = first_col + k * 4 + t;
                partial += value * f32::cast_from(x[x_row + col * x_col]);
            }
        }
        sum += partial * block_scale(words, scales_at, block);
    }
    let at = i * out.stride(0) + r * out.stride(1);
    out[at] = F::cast_from(sum);
}

/// Q4_0: 4 words of nibbles per block (byte j: element j low, element j + 16 high);
/// value = (q − 8) · d.
#[cube(launch)]
fn matvec_q4_0<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    out: &mut Tensor<F>,
    rows: usize,
    blocks_per_row: usize,
    scales_at: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    if ABSOLUTE_POS >= n * rows {
        terminate!();
    }
    let i = ABSOLUTE_POS / rows;
    let r = ABSOLUTE_POS % rows;
    let x_row = i * x.stride(0);
    let x_col = x.stride(1);
    let mut sum = 0.0f32;
    for b in 0..blocks_per_row {
        let block = r * blocks_per_row + b;
        let first_word = block * 4;
        let first_col = b * 32;
        let mut partial = 0.0f32;
        for k in 0..4usize {
            let word = words[first_word + k];
            for t in 0..4usize {
                let q = (word >> ((t * 8) as u32)) & 0xFF;
                let low = f32::cast_from(q & 0xF) - 8.0;
                let high = f32::cast_from(q >> 4) - 8.0;
                let col = first_col + k * 4 + t;
                partial += low * f32::cast_from(x[x_row + col * x_col]);
                partial += high * f32::cast_from(x[x_row + (col + 16) * x_col]);
            }
        }
        sum += partial * block_scale(words, scales_at, block);
    }
    let at = i * out.stride(0) + r * out.stride(1);
    out[at] = F::cast_from(sum);
}

/// Launches the kernel for `kind` on `x` (`[n, cols]`, any float dtype the runtime has) and
/// the packed `words` of a `rows × cols` matrix; returns `[n, rows]` in `x`'s dtype.
pub(super) fn quant_matvec(x: CubeTensor, words: CubeTensor, kind: QuantKind, rows: usize, cols: usize) -> CubeTensor {
    // A storage-tiled x (a matmul's output) is readable only as rows once untiled.
    let x = into_contiguous(x);
    let n = x.meta.shape()[0];
    let dtype = x.dtype;
    let client = x.client.clone();
    let output = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [n, rows].into(), dtype);
    let total = n * rows;
    if total == 0 {
        return output;
    }
    let blocks_per_row = cols / BLOCK_ELEMENTS;
    let scales_at = layout::scales_at(kind, rows * blocks_per_row);
    let cube_dim = CubeDim::new(&client, total);
    let cube_count = calculate_cube_count_elemwise(&client, total, cube_dim);
    let (x, words, out) = (x.into_tensor_arg(), words.into_tensor_arg(), output.clone().into_tensor_arg());
    let elem = dtype_to_storage_type(dtype);
    match kind {
        QuantKind::Q8_0 => matvec_q8_0::launch(
            &client,
            cube_count,
            cube_dim,
            x,
            words,
            out,
            rows,
            blocks_per_row,
            scales_at,
            elem,
        ),
        QuantKind::Q4_0 => matvec_q4_0::launch(
            &client,
            cube_count,
            cube_dim,
            x,
            words,
            out,
            rows,
            blocks_per_row,
            scales_at,
            elem,
        ),
    }
    output
}
