//! `post_transform`: what turns raw ensemble scores into the outputs.
//!
//! Everything is computed in f64 and rounded to f32 once, at the output, so
//! the transforms add no error beyond that final rounding.

use std::f64::consts::{PI, SQRT_2};

use crate::error::TreeError;

/// The spec's post transforms, applied to one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PostTransform {
    /// Scores as they are.
    #[default]
    None,
    /// `1 / (1 + exp(-x))` on each score.
    Logistic,
    /// Row-wise softmax.
    Softmax,
    /// Softmax over the non-zero scores; zeros stay zero.
    SoftmaxZero,
    /// `sqrt(2) * erfinv(2x - 1)` on each score: the standard normal quantile.
    Probit,
}

impl PostTransform {
    /// Parses the `post_transform` attribute (absent means `NONE`).
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, TreeError> {
        Ok(match value.unwrap_or("NONE") {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => {
                return Err(TreeError::UnknownValue {
                    attr: "post_transform",
                    value: other.into(),
                })
            }
        })
    }

    /// Applies the transform to one row of scores, in place.
    pub(crate) fn apply(self, scores: &mut [f64]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            PostTransform::Softmax => softmax(scores),
            PostTransform::SoftmaxZero => softmax_zero(scores),
            PostTransform::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
        }
    }
}

/// The logistic function, written so neither branch can overflow `exp`.
pub fn logistic(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Softmax, shifted by the row maximum so `exp` never overflows.
fn softmax(scores: &mut [f64]) {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

/// Below this magnitude SOFTMAX_ZERO treats a score as zero (onnxruntime's
/// tolerance, so scores that are zero up to rounding stay zero too).
const ZERO_TOLERANCE: f64 = 1e-7;

/// Softmax over the scores that are not (nearly) zero; the others become 0.
/// A row of zeros stays all zeros rather than dividing by zero.
fn softmax_zero(scores: &mut [f64]) {
    let nonzero = |s: f64| s.abs() > ZERO_TOLERANCE;
    let max = scores
        .iter()
        .copied()
        .filter(|&s| nonzero(s))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = if nonzero(*s) { (*s - max).exp() } else { 0.0 };
        sum += *s;
    }
    if sum > 0.0 {
        scores.iter_mut().for_each(|s| *s /= sum);
    }
}

/// PROBIT: the standard normal quantile of `p`, i.e. `sqrt(2) * erfinv(2p - 1)`,
/// computed directly so `p` near 0 keeps its precision. `-inf` at 0, `+inf` at
/// 1, NaN outside [0, 1].
pub fn probit(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    refine_quantile(rough_quantile(p), p)
}

/// The inverse error function on [-1, 1] (±inf at ±1, NaN outside).
/// Accurate to about 1e-13, far inside the 1e-6 the outputs need.
pub fn erfinv(y: f64) -> f64 {
    probit((y + 1.0) / 2.0) / SQRT_2
}

/// A first estimate of the normal quantile: P. J. Acklam's rational
/// approximations (relative error ~1e-9), one for the centre and one for the
/// tails, which [`refine_quantile`] then polishes.
fn rough_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const LOW: f64 = 0.02425;
    let poly = |coefs: &[f64], x: f64| coefs.iter().fold(0.0, |acc, c| acc * x + c);
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        poly(&C, q) / (poly(&D, q) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        poly(&A, r) * q / (poly(&B, r) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -poly(&C, q) / (poly(&D, q) * q + 1.0)
    }
}

/// One Halley step on `Phi(x) = p`, with `Phi` from [`erfc`]: squares the
/// error of the rough estimate, leaving only f64 rounding.
fn refine_quantile(x: f64, p: f64) -> f64 {
    let err = 0.5 * erfc(-x / SQRT_2) - p;
    let u = err * (2.0 * PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// The complementary error function: a series with only positive terms
/// below 2.5 (absolute error ~1e-16, so ~1e-12 relative near 2.5), a
/// continued fraction above (~1e-15 relative). Enough for the quantile's
/// refinement step, which needs `Phi(x) - p` to ~1e-16 absolute.
pub(crate) fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        2.0 - erfc(-x)
    } else if x < 2.5 {
        1.0 - erf_series(x)
    } else {
        erfc_fraction(x)
    }
}

/// `erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n (2x^2)^n x / (2n+1)!!` for x >= 0:
/// every term is positive, so nothing cancels.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= 2.0 * x2 / (2 * n + 1) as f64;
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
    }
    2.0 / PI.sqrt() * (-x2).exp() * sum
}

/// Laplace's continued fraction for large x:
/// `erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))`,
/// evaluated bottom-up to a fixed depth that converges for x >= 2.5.
fn erfc_fraction(x: f64) -> f64 {
    let mut t = x;
    for k in (1..=80).rev() {
        t = x + (k as f64 / 2.0) / t;
    }
    (-x * x).exp() / (PI.sqrt() * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values of erfc to 16 digits.
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (2.5, 4.06952017444959e-4),
            (3.0, 2.209049699858544e-5),
            (5.0, 1.537459794428035e-12),
            (-1.0, 1.8427007929497148),
        ] {
            let got = erfc(x);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "erfc({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn probit_matches_normal_quantiles() {
        for (p, want) in [
            (0.5, 0.0),
            (0.975, 1.959963984540054),
            (0.025, -1.959963984540054),
            (0.841344746068543, 1.0),
            (0.999, 3.090232306167813),
            (1e-10, -6.361340902404056),
            (0.01, -2.326347874040841),
        ] {
            let got = probit(p);
            assert!(close(got, want, 1e-12), "probit({p}) = {got}, want {want}");
        }
        assert_eq!(probit(0.0), f64::NEG_INFINITY);
        assert_eq!(probit(1.0), f64::INFINITY);
        assert!(probit(1.5).is_nan() && probit(-0.1).is_nan() && probit(f64::NAN).is_nan());
    }

    #[test]
    fn erfinv_inverts_erf_to_1e_9() {
        for i in -999..=999 {
            let y = i as f64 / 1000.0;
            let x = erfinv(y);
            let back = 1.0 - erfc(x);
            assert!((back - y).abs() < 1e-12, "erf(erfinv({y})) = {back}");
        }
        assert!(close(erfinv(0.5), 0.4769362762044699, 1e-12));
        assert_eq!(erfinv(1.0), f64::INFINITY);
        assert_eq!(erfinv(-1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn logistic_is_stable_at_extremes() {
        assert_eq!(logistic(0.0), 0.5);
        assert!(close(logistic(2.0), 0.8807970779778823, 1e-15));
        assert!(close(logistic(-2.0), 0.11920292202211755, 1e-15));
        assert_eq!(logistic(-1000.0), 0.0);
        assert_eq!(logistic(1000.0), 1.0);
    }

    #[test]
    fn softmax_is_shift_invariant_and_stable() {
        let mut a = [1.0, 2.0, 3.0];
        let mut b = [1001.0, 1002.0, 1003.0];
        PostTransform::Softmax.apply(&mut a);
        PostTransform::Softmax.apply(&mut b);
        let want = [0.09003057317038046, 0.24472847105479767, 0.6652409557748219];
        for i in 0..3 {
            assert!(close(a[i], want[i], 1e-15) && close(b[i], want[i], 1e-15));
        }
    }

    #[test]
    fn softmax_zero_keeps_zeros() {
        let mut s = [0.0, 1.0, 0.0, 2.0];
        PostTransform::SoftmaxZero.apply(&mut s);
        let e = (-1.0f64).exp();
        assert_eq!(s[0], 0.0);
        assert_eq!(s[2], 0.0);
        assert!(close(s[1], e / (1.0 + e), 1e-15) && close(s[3], 1.0 / (1.0 + e), 1e-15));
        let mut zeros = [0.0, 0.0];
        PostTransform::SoftmaxZero.apply(&mut zeros);
        assert_eq!(zeros, [0.0, 0.0]);
    }

    #[test]
    fn parse_names_the_attribute() {
        assert_eq!(PostTransform::parse(None).unwrap(), PostTransform::None);
        assert_eq!(
            PostTransform::parse(Some("PROBIT")).unwrap(),
            PostTransform::Probit
        );
        let err = PostTransform::parse(Some("SIGMOID")).unwrap_err();
        assert!(err.to_string().contains("post_transform"), "{err}");
    }
}
