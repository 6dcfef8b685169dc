//! The `#[cube]` kernel: `y[n, rows] = x[n, cols] · Wᵀ` (W Q8_0, Q4_0 or Q4_1) in the packed layout of
//! [`super::layout`], one cube of 32 units per output element.
//!
//! Each unit takes blocks of the weight row in turn: it decodes a block's quants from `u32`
//! words in registers, dots them with the activations in f32, and scales the block's partial
//! sum by its `d` once; the cube then adds its units' sums in shared memory. Activations are
//! read in their own dtype and the result is written in it; everything in between is f32.
//! A first kernel: correct everywhere cubecl runs, not tuned (x is re-read per weight row and
//! each weight block once per activation row; no plane reduction, no vectorised loads; see
//! docs/gpu-quantized-plan.md §4).

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

/// The dot of Q8_0 block `block`'s quants (before its scale) with the 32 activations from
/// `x_at` on, `x_col` apart: 8 words of i8, value = q · d.
#[cube]
fn q8_0_block_dot<F: Float>(x: &Tensor<F>, words: &Tensor<u32>, x_at: usize, x_col: usize, block: usize) -> f32 {
    let first_word = block * 8;
    let mut dot = 0.0f32;
    for k in 0..8usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            // Sign-extend the byte: (q ^ 0x80) − 128 maps 0..=255 to 0, …, 127, −128, …, −1.
            let value = f32::cast_from(i32::cast_from(q ^ 0x80) - 128);
            dot += value * f32::cast_from(x[x_at + (k * 4 + t) * x_col]);
        }
    }
    dot
}

/// The same for Q4_0: 4 words of nibbles (byte j: element j low, element j + 16 high),
/// value = (q − 8) · d.
#[cube]
fn q4_0_block_dot<F: Float>(x: &Tensor<F>, words: &Tensor<u32>, x_at: usize, x_col: usize, block: usize) -> f32 {
    let first_word = block * 4;
    let mut dot = 0.0f32;
    for k in 0..4usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let low = f32::cast_from(q & 0xF) - 8.0;
            let high = f32::cast_from(q >> 4) - 8.0;
            let j = k * 4 + t;
            dot += low * f32::cast_from(x[x_at + j * x_col]);
            dot += high * f32::cast_from(x[x_at + (j + 16) * x_col]);
        }
    }
    dot
}

/// Q4_1 block `block`, scales included: d · Σ q·x + m · Σ x (Q4_0's nibble layout; the
/// block's word after the quants holds `d` low and `m` high).
#[cube]
fn q4_1_block<F: Float>(x: &Tensor<F>, words: &Tensor<u32>, x_at: usize, x_col: usize, block: usize, scales_at: usize) -> f32 {
    let first_word = block * 4;
    let mut dot = 0.0f32;
    let mut sum = 0.0f32;
    for k in 0..4usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = k * 4 + t;
            let (low_x, high_x) = (f32::cast_from(x[x_at + j * x_col]), f32::cast_from(x[x_at + (j + 16) * x_col]));
            dot += f32::cast_from(q & 0xF) * low_x + f32::cast_from(q >> 4) * high_x;
            sum += low_x + high_x;
        }
    }
    let scales = words[scales_at + block];
    dot * f16_bits_to_f32(scales & 0xFFFF) + sum * f16_bits_to_f32(scales >> 16)
}

/// One cube of `units` units per output element `y[i, r]`: the units take the row's blocks in
/// turn (unit u: blocks u, u + units, …, so neighbouring units read neighbouring blocks), then
/// add their partial sums in shared memory. Plain barriers, no plane (subgroup) operations,
/// so it runs wherever cubecl does.
#[cube(launch)]
fn quant_matvec_kernel<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    out: &mut Tensor<F>,
    rows: usize,
    blocks_per_row: usize,
    scales_at: usize,
    #[comptime] kind: u32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    // Whole cubes leave together, so the barriers below stay in uniform control flow.
    if CUBE_POS >= n * rows {
        terminate!();
    }
    let i = CUBE_POS / rows;
    let r = CUBE_POS % rows;
    let x_row = i * x.stride(0);
    let x_col = x.stride(1);
    let unit = UNIT_POS as usize;
    let mut partial = 0.0f32;
    let mut b = unit;
    while b < blocks_per_row {
        let block = r * blocks_per_row + b;
        let x_at = x_row + b * 32 * x_col;
        if comptime![kind == KIND_Q4_1] {
            partial += q4_1_block(x, words, x_at, x_col, block, scales_at);
        } else if comptime![kind == KIND_Q4_0] {
            partial += q4_0_block_dot(x, words, x_at, x_col, block) * block_scale(words, scales_at, block);
        } else {
            partial += q8_0_block_dot(x, words, x_at, x_col, block) * block_scale(words, scales_at, block);
        }
        b += units;
    }
    let mut sums = Shared::<[f32]>::new_slice(units);
    sums[unit] = partial;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            let both = sums[unit] + sums[unit + stride];
            sums[unit] = both;
        }
        sync_cube();
        stride /= 2;
    }
    if unit == 0 {
        let at = i * out.stride(0) + r * out.stride(1);
        out[at] = F::cast_from(sums[0]);
    }
}

/// The kernel's compile-time kind codes.
const KIND_Q8_0: u32 = 0;
const KIND_Q4_0: u32 = 1;
const KIND_Q4_1: u32 = 2;

/// Units per cube (a power of two for the reduction): a row of a 576-wide matrix has 18
/// blocks, of a 4096-wide one 128.
const UNITS: usize = 32;

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
    let cube_dim = CubeDim::new_1d(UNITS as u32);
    let cube_count = calculate_cube_count_elemwise(&client, total * UNITS, cube_dim);
    let (x, words, out) = (x.into_tensor_arg(), words.into_tensor_arg(), output.clone().into_tensor_arg());
    quant_matvec_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        x,
        words,
        out,
        rows,
        blocks_per_row,
        scales_at,
        match kind {
            QuantKind::Q8_0 => KIND_Q8_0,
            QuantKind::Q4_0 => KIND_Q4_0,
            QuantKind::Q4_1 => KIND_Q4_1,
        },
        UNITS,
        dtype_to_storage_type(dtype),
    );
    output
}
