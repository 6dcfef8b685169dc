//! Every compiled version of the host kernels against float64 references, at lengths on
//! both sides of the 4-, 8- and 16-lane vectors and over the whole input range.

use super::*;
use crate::rng::SplitMix64;

type Gated = fn(&[f32], &[f32], &mut [f32]);
type Norm = fn(&[f32], &[f32], f32, &mut [f32]);

/// The versions this CPU can run, by name.
fn gated_versions(activation: Activation) -> Vec<(&'static str, Gated)> {
    let mut versions: Vec<(&'static str, Gated)> = match activation {
        Activation::Silu => vec![("baseline", silu_mul)],
        Activation::GeluTanh => vec![("baseline", gelu_mul)],
    };
    #[cfg(target_arch = "x86_64")]
    {
        let wide = is_x86_feature_detected!("avx512f");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        // SAFETY (all four): only pushed where the CPU has the features.
        match activation {
            Activation::Silu => {
                if wide {
                    versions.push(("avx512", |g, u, o| unsafe { x86::silu_mul_avx512(g, u, o) }));
                }
                if avx2 {
                    versions.push(("avx2", |g, u, o| unsafe { x86::silu_mul_avx2(g, u, o) }));
                }
            }
            Activation::GeluTanh => {
                if wide {
                    versions.push(("avx512", |g, u, o| unsafe { x86::gelu_mul_avx512(g, u, o) }));
                }
                if avx2 {
                    versions.push(("avx2", |g, u, o| unsafe { x86::gelu_mul_avx2(g, u, o) }));
                }
            }
        }
    }
    versions.push(("dispatch", match activation {
        Activation::Silu => |g, u, o| gated(Activation::Silu, g, u, o),
        Activation::GeluTanh => |g, u, o| gated(Activation::GeluTanh, g, u, o),
    }));
    versions
}

fn norm_versions() -> Vec<(&'static str, Norm)> {
    let mut versions: Vec<(&'static str, Norm)> = vec![("baseline", rms_norm), ("dispatch", rms_norm_row)];
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both): only pushed where the CPU has the features.
        if is_x86_feature_detected!("avx512f") {
            versions.push(("avx512", |x, g, e, o| unsafe { x86::rms_norm_avx512(x, g, e, o) }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            versions.push(("avx2", |x, g, e, o| unsafe { x86::rms_norm_avx2(x, g, e, o) }));
        }
    }
    versions
}

/// Uniform in `[-range, range)`.
fn uniform(rng: &mut SplitMix64, len: usize, range: f32) -> Vec<f32> {
    (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * range).collect()
}

const LENGTHS: [usize; 11] = [0, 1, 3, 4, 7, 15, 16, 17, 33, 100, 1537];

fn reference(activation: Activation, g: f32, u: f32) -> f64 {
    let (g, u) = (f64::from(g), f64::from(u));
    let act = match activation {
        Activation::Silu => g / (1.0 + (-g).exp()),
        // 0.5 · g · (1 + tanh(t)) in the form that does not cancel for very negative t.
        Activation::GeluTanh => {
            let t = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            g / (1.0 + (-2.0 * t).exp())
        }
    };
    act * u
}

fn check_gated(activation: Activation) {
    let mut rng = SplitMix64(41);
    for (name, f) in gated_versions(activation) {
        for len in LENGTHS {
            // Moderate values, where every rounding shows, and wide ones, where the limits do.
            for range in [4.0, 30.0, 120.0] {
                let (gate, up) = (uniform(&mut rng, len, range), uniform(&mut rng, len, 3.0));
                let mut out = vec![f32::NAN; len];
                f(&gate, &up, &mut out);
                for (i, ((&g, &u), &o)) in gate.iter().zip(&up).zip(&out).enumerate() {
                    let want = reference(activation, g, u);
                    // A few roundings of the result; the tanh form also inherits t's rounding
                    // (relative error ≈ 2|t|·2⁻²⁴ where e^-2t dominates), and results too
                    // small to matter get an absolute floor.
                    let growth = match activation {
                        Activation::Silu => 1.0,
                        Activation::GeluTanh => 1.0 + f64::from(g).abs().powi(3) / 8.0,
                    };
                    let tol = 6e-7 * want.abs() * growth + 1e-30;
                    assert!(
                        (f64::from(o) - want).abs() <= tol,
                        "{activation:?} {name} len {len} [{i}]: act({g}) · {u} = {o}, want {want}"
                    );
                }
            }
        }
        // Limits: zero for very negative gates, g · u for very positive ones, NaN kept.
        let gate = [-1000.0, -100.0, 0.0, -0.0, 100.0, 1000.0, f32::NAN];
        let mut out = [1.0; 7];
        f(&gate, &[2.0; 7], &mut out);
        assert!(out[..4].iter().all(|v| v.abs() < 1e-30), "{activation:?} {name} limits: {out:?}");
        assert_eq!(&out[4..6], &[200.0, 2000.0], "{activation:?} {name} limits");
        assert!(out[6].is_nan(), "{activation:?} {name}: NaN in, NaN out");
    }
}

#[test]
fn silu_mul_matches_f64_in_every_version() {
    check_gated(Activation::Silu);
}

#[test]
fn gelu_tanh_mul_matches_f64_in_every_version() {
    check_gated(Activation::GeluTanh);
}

#[test]
fn exp_is_within_about_one_rounding() {
    let mut worst = 0f64;
    let mut x = EXP_MIN;
    while x <= EXP_MAX {
        let want = f64::from(x).exp();
        worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        x += 0.0137;
    }
    // One rounding is 6e-8 relative; the polynomial and the reduction add a little.
    assert!(worst < 1.8e-7, "worst relative error {worst:e}");
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(-1000.0), exp(EXP_MIN));
    assert_eq!(exp(1000.0), exp(EXP_MAX));
    assert!(exp(f32::NAN).is_nan());
}

#[test]
fn rms_norm_matches_f64_in_every_version() {
    let mut rng = SplitMix64(43);
    for (name, f) in norm_versions() {
        for len in LENGTHS.into_iter().filter(|&l| l > 0) {
            for scale in [1e-3, 1.0, 50.0] {
                let (x, gamma) = (uniform(&mut rng, len, scale), uniform(&mut rng, len, 2.0));
                let eps = 1e-6;
                let mut out = vec![f32::NAN; len];
                f(&x, &gamma, eps, &mut out);
                let mean = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / len as f64;
                let rms = (mean + f64::from(eps)).sqrt();
                for (i, ((&v, &g), &o)) in x.iter().zip(&gamma).zip(&out).enumerate() {
                    let want = f64::from(v) / rms * f64::from(g);
                    let tol = 1e-6 * (f64::from(v) / rms).abs().max(1e-3) * f64::from(g).abs();
                    assert!((f64::from(o) - want).abs() <= tol, "rms_norm {name} len {len} scale {scale} [{i}]: {o}, want {want}");
                }
            }
        }
    }
}
