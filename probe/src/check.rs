//! Correctness checks: every run's output is judged against a reference that
//! was computed once, in f64, from the same fixed inputs.
//!
//! * FFT: Parseval's theorem (output energy = N × input energy) and a
//!   projection of the output onto a fixed random vector `w`, compared with the
//!   same projection of the f64 reference transform. The projection catches a
//!   single wrong element that Parseval alone could miss.
//! * GEMM: the checksum-vector product. `C·v` must equal `A·(B·v)`, which is
//!   O(n²) on the host, computed once.
//!
//! Both reduce the output to a few numbers, so on the GPU they run as two
//! cuBLAS reductions outside the timed region and copy back a handful of bytes.

use num_complex::{Complex32, Complex64};
use rustfft::FftPlanner;

use crate::spec::{FftDims, FftSpec, GemmSpec, Precision};

/// FFT tolerance: cuFFT and rustfft in fp32 agree with an f64 reference to
/// about 1e-6 relative (‖error‖/‖output‖); 1e-4 leaves a 100× margin while a
/// single element off by 1% of the output's norm shows up 100× above it.
pub const FFT_TOLERANCE: f64 = 1e-4;

/// Deterministic pseudo-random numbers in [-1, 1) (SplitMix64), so references
/// are reproducible without a seeded RNG dependency on the data path.
pub fn det_uniform(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The FFT's fixed input and what its output must satisfy.
#[derive(Debug, Clone)]
pub struct FftReference {
    /// Fixed input, interleaved complex, `total_len` points.
    pub input: Vec<Complex32>,
    /// Projection vector.
    pub w: Vec<Complex32>,
    /// `Σ X_ref[k]·w[k]` (no conjugation, like cublasCdotu).
    pub ref_dot: Complex64,
    /// `‖X_ref‖·rms(w)`: the expected size of the projection of a vector of
    /// norm ‖X_ref‖ onto `w`, so that `|Δdot| / dot_scale ≈ ‖error‖ / ‖X_ref‖`.
    pub dot_scale: f64,
    /// Expected output energy `N · Σ|x|²`.
    pub expected_energy: f64,
}

impl FftReference {
    /// Builds the input and the f64 reference for `spec`.
    pub fn new(spec: &FftSpec) -> Self {
        let total = spec.total_len();
        let raw = det_uniform(0x5EED_0001, 2 * total);
        let input: Vec<Complex32> = raw.chunks(2).map(|c| Complex32::new(c[0], c[1])).collect();
        let raw_w = det_uniform(0x5EED_0002, 2 * total);
        let w: Vec<Complex32> = raw_w
            .chunks(2)
            .map(|c| Complex32::new(c[0], c[1]))
            .collect();
        let mut x: Vec<Complex64> = input
            .iter()
            .map(|c| Complex64::new(c.re as f64, c.im as f64))
            .collect();
        fft_f64_in_place(spec, &mut x);
        let ref_dot: Complex64 = x
            .iter()
            .zip(&w)
            .map(|(a, b)| a * Complex64::new(b.re as f64, b.im as f64))
            .sum();
        let norm_x = x.iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
        let norm_w = w.iter().map(|c| c.norm_sqr() as f64).sum::<f64>().sqrt();
        let in_energy: f64 = input.iter().map(|c| c.norm_sqr() as f64).sum();
        FftReference {
            input,
            w,
            ref_dot,
            dot_scale: norm_x * norm_w / (total as f64).sqrt(),
            expected_energy: spec.transform_len() as f64 * in_energy,
        }
    }

    /// The value the self-test writes into one output element: a tenth of
    /// the output's norm, so the corruption is caught whatever the size
    /// (a fixed value is lost in the norm of a 4096×4096 transform).
    pub fn plant_value(&self) -> f32 {
        (0.1 * self.expected_energy.sqrt()) as f32
    }

    /// Judges an output from its projection and its energy (what the GPU
    /// computes with two reductions). Returns `(correct, rel_error)`.
    pub fn judge(&self, dot: Complex64, energy: f64) -> (bool, f64) {
        let parseval = ((energy - self.expected_energy) / self.expected_energy).abs();
        let proj = (dot - self.ref_dot).norm() / self.dot_scale.max(f64::MIN_POSITIVE);
        let rel = parseval.max(proj);
        // NaN compares false, so a NaN output is incorrect.
        (
            rel <= FFT_TOLERANCE,
            if rel.is_nan() { f64::INFINITY } else { rel },
        )
    }

    /// Judges a host-resident output.
    pub fn judge_host(&self, out: &[Complex32]) -> (bool, f64) {
        let mut dot = Complex64::new(0.0, 0.0);
        let mut energy = 0.0f64;
        for (o, w) in out.iter().zip(&self.w) {
            let o64 = Complex64::new(o.re as f64, o.im as f64);
            dot += o64 * Complex64::new(w.re as f64, w.im as f64);
            energy += o64.norm_sqr();
        }
        self.judge(dot, energy)
    }
}

/// f64 forward FFT of `x` laid out as `spec` says (row-major for 2-D).
fn fft_f64_in_place(spec: &FftSpec, x: &mut [Complex64]) {
    let mut planner = FftPlanner::<f64>::new();
    match spec.dims {
        FftDims::D1 { n, .. } => planner.plan_fft_forward(n).process(x),
        FftDims::D2 { nx, ny } => {
            planner.plan_fft_forward(ny).process(x);
            let mut t = vec![Complex64::new(0.0, 0.0); nx * ny];
            transpose(x, &mut t, nx, ny);
            planner.plan_fft_forward(nx).process(&mut t);
            transpose(&t, x, ny, nx);
        }
    }
}

/// Transposes a row-major `rows × cols` matrix into `out` (`cols × rows`).
pub fn transpose<T: Copy>(src: &[T], out: &mut [T], rows: usize, cols: usize) {
    const B: usize = 32;
    for rb in (0..rows).step_by(B) {
        for cb in (0..cols).step_by(B) {
            for r in rb..(rb + B).min(rows) {
                for c in cb..(cb + B).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Rounds `x` to what `p` can represent (the values actually multiplied).
pub fn round_to(p: Precision, x: f32) -> f32 {
    match p {
        Precision::Fp32 => x,
        Precision::Fp16 => half::f16::from_f32(x).to_f32(),
        Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
    }
}

/// The GEMM's fixed inputs and the checksum reference.
#[derive(Debug, Clone)]
pub struct GemmReference {
    /// A, column-major, already rounded to the precision.
    pub a: Vec<f32>,
    /// B, column-major, already rounded.
    pub b: Vec<f32>,
    /// Checksum vector (entries exactly representable in every precision).
    pub v: Vec<f32>,
    /// `A·(B·v)` in f64.
    pub expected: Vec<f64>,
    /// Tolerance for this precision.
    pub tolerance: f64,
}

impl GemmReference {
    /// Builds inputs and reference for `spec`.
    pub fn new(spec: &GemmSpec) -> Self {
        let n = spec.n;
        let p = spec.precision;
        let a: Vec<f32> = det_uniform(0x5EED_0003, n * n)
            .into_iter()
            .map(|x| round_to(p, x))
            .collect();
        let b: Vec<f32> = det_uniform(0x5EED_0004, n * n)
            .into_iter()
            .map(|x| round_to(p, x))
            .collect();
        // Nonzero multiples of 1/8 in [-1, 1]: exact in fp16 and bf16, and no
        // column of C is invisible to the checksum.
        let v: Vec<f32> = det_uniform(0x5EED_0005, n)
            .into_iter()
            .map(|x| {
                let q = (x * 8.0).round() / 8.0;
                if q == 0.0 {
                    0.125f32.copysign(x)
                } else {
                    q
                }
            })
            .collect();
        let bv = matvec_f64(&b, &v.iter().map(|&x| x as f64).collect::<Vec<_>>(), n);
        let expected = matvec_f64(&a, &bv, n);
        GemmReference {
            a,
            b,
            v,
            expected,
            tolerance: p.gemm_tolerance(),
        }
    }

    /// The value the self-test writes into `C[0]`: the norm of the expected
    /// `C·v` (|v₀| ≥ 1/8, so the checksum moves by at least 12 %), capped to
    /// what fp16 can hold.
    pub fn plant_value(&self) -> f32 {
        let norm = self.expected.iter().map(|e| e * e).sum::<f64>().sqrt();
        norm.clamp(1.0, 60_000.0) as f32
    }

    /// Judges `y = C·v` (as computed from the run's output).
    pub fn judge(&self, y: &[f32]) -> (bool, f64) {
        let mut num = 0.0f64;
        let mut den = 0.0f64;
        for (yi, ei) in y.iter().zip(&self.expected) {
            num += (*yi as f64 - ei).powi(2);
            den += ei * ei;
        }
        let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        let rel = if rel.is_nan() || y.len() != self.expected.len() {
            f64::INFINITY
        } else {
            rel
        };
        (rel <= self.tolerance, rel)
    }

    /// Judges a host-resident output matrix C (column-major).
    pub fn judge_host(&self, c: &[f32]) -> (bool, f64) {
        let n = self.v.len();
        let y: Vec<f32> = matvec_f64(c, &self.v.iter().map(|&x| x as f64).collect::<Vec<_>>(), n)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        self.judge(&y)
    }
}

/// `M·x` for a column-major `n × n` matrix, in f64.
fn matvec_f64(m: &[f32], x: &[f64], n: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; n];
    for (j, xj) in x.iter().enumerate().take(n) {
        let col = &m[j * n..(j + 1) * n];
        for (yi, mij) in y.iter_mut().zip(col) {
            *yi += *mij as f64 * xj;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_reference_accepts_a_correct_fp32_transform_and_rejects_a_corrupted_one() {
        let spec = FftSpec {
            dims: FftDims::D1 { n: 256, batch: 4 },
        };
        let r = FftReference::new(&spec);
        let mut out = r.input.clone();
        let plan = FftPlanner::<f32>::new().plan_fft_forward(256);
        plan.process(&mut out);
        let (ok, rel) = r.judge_host(&out);
        assert!(ok, "fp32 transform rejected, rel={rel}");
        assert!(rel < 1e-5, "rel={rel}");
        out[17] += Complex32::new(3.0, 0.0);
        let (ok, rel) = r.judge_host(&out);
        assert!(!ok, "corruption of one element not caught, rel={rel}");
    }

    #[test]
    fn fft_2d_reference_matches_row_column_transform() {
        let spec = FftSpec {
            dims: FftDims::D2 { nx: 16, ny: 32 },
        };
        let r = FftReference::new(&spec);
        let mut planner = FftPlanner::<f32>::new();
        let mut x = r.input.clone();
        planner.plan_fft_forward(32).process(&mut x);
        let mut t = vec![Complex32::new(0.0, 0.0); 16 * 32];
        transpose(&x, &mut t, 16, 32);
        planner.plan_fft_forward(16).process(&mut t);
        transpose(&t, &mut x, 32, 16);
        assert!(r.judge_host(&x).0);
        // A 1-D-only transform (columns skipped) must fail.
        let mut wrong = r.input.clone();
        planner.plan_fft_forward(32).process(&mut wrong);
        assert!(!r.judge_host(&wrong).0);
    }

    #[test]
    fn nan_output_is_incorrect() {
        let spec = FftSpec {
            dims: FftDims::D1 { n: 64, batch: 1 },
        };
        let r = FftReference::new(&spec);
        let mut out = r.input.clone();
        out[0] = Complex32::new(f32::NAN, 0.0);
        let (ok, rel) = r.judge_host(&out);
        assert!(!ok);
        assert!(rel.is_infinite());
    }

    #[test]
    fn gemm_reference_per_precision() {
        for p in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            let spec = GemmSpec {
                n: 64,
                precision: p,
            };
            let r = GemmReference::new(&spec);
            let n = 64;
            let mut c = vec![0.0f32; n * n];
            for j in 0..n {
                for k in 0..n {
                    let bkj = r.b[j * n + k];
                    for i in 0..n {
                        c[j * n + i] += r.a[k * n + i] * bkj;
                    }
                }
            }
            let c: Vec<f32> = c.into_iter().map(|x| round_to(p, x)).collect();
            let (ok, rel) = r.judge_host(&c);
            assert!(ok, "{p:?} rejected rel={rel}");
            let mut bad = c.clone();
            bad[5 * n + 3] += 100.0;
            assert!(!r.judge_host(&bad).0, "{p:?} corruption not caught");
        }
    }

    fn round_tf32(x: f32) -> f32 {
        // TF32 keeps 10 of fp32's 23 mantissa bits (round to nearest).
        f32::from_bits((x.to_bits() + 0x1000) & !0x1FFF)
    }

    /// An fp32 GEMM that cuBLAS ran on TF32 tensor cores (the handle's math
    /// mode, or a node-wide override) must not be reported as a wrong
    /// answer: the tolerance follows the math mode in use. The strict fp32
    /// tolerance would flag it, which is why the mode matters.
    #[test]
    fn tf32_gemm_passes_under_the_tf32_tolerance_and_would_fail_the_strict_one() {
        use crate::spec::Fp32Math;
        let n = 256;
        let spec = GemmSpec {
            n,
            precision: Precision::Fp32,
        };
        let mut r = GemmReference::new(&spec);
        let a: Vec<f32> = r.a.iter().map(|&x| round_tf32(x)).collect();
        let b: Vec<f32> = r.b.iter().map(|&x| round_tf32(x)).collect();
        let mut c = vec![0.0f32; n * n];
        for j in 0..n {
            for k in 0..n {
                let bkj = b[j * n + k] as f64;
                for i in 0..n {
                    c[j * n + i] = (c[j * n + i] as f64 + a[k * n + i] as f64 * bkj) as f32;
                }
            }
        }
        r.tolerance = Precision::Fp32.gemm_tolerance_under(Fp32Math::Strict);
        let (strict_ok, rel) = r.judge_host(&c);
        assert!(
            !strict_ok,
            "TF32 error {rel} should exceed the strict fp32 tolerance"
        );
        r.tolerance = Precision::Fp32.gemm_tolerance_under(Fp32Math::Tf32);
        let (tf32_ok, rel) = r.judge_host(&c);
        assert!(tf32_ok, "TF32 error {rel} must pass the TF32 tolerance");
        // And a real corruption is still caught under the TF32 tolerance.
        c[0] = r.plant_value();
        assert!(!r.judge_host(&c).0);
    }
}
