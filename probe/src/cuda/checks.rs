//! The correctness checks: the outputs and check results are poisoned with
//! NaN before the kernel, reduced on the device after it, and judged on the
//! host against the references in [`crate::check`].
//!
//! Poison and reductions live in the same submission as the kernel, so a
//! kernel (or a check) that never ran leaves NaN behind and fails.
#![allow(unsafe_code)]

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{sys as drv_sys, DevicePtr};
use num_complex::Complex64;

use super::kernel::{data_type, gemm_ex};
use super::CudaBackend;
use crate::spec::{Kernel, Precision};
use crate::ProbeError;

/// NaN in fp32, fp16 and bf16 (quiet NaN bit patterns) for poisoning.
const NAN_F32: u32 = 0x7FC0_0000;
const NAN_F16: u16 = 0x7E00;
const NAN_BF16: u16 = 0x7FC0;

impl CudaBackend {
    /// Fills the kernel's output and its check results with NaN, so that a
    /// kernel or check that never runs leaves a value the check rejects.
    pub(super) fn enqueue_poison(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let cs = self.stream.cu_stream();
        match kernel {
            Kernel::Fft => {
                let n_out = self.fft_out.len();
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                let (c, _gc) = self.chk.device_ptr(&self.stream);
                // SAFETY: o holds n_out f32 and c holds 4 f32 on this context.
                unsafe {
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(o, NAN_F32, n_out, cs).result()
                    )?;
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(c, NAN_F32, 4, cs).result()
                    )?;
                }
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n;
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                let (y, _gy) = self.y.device_ptr(&self.stream);
                // SAFETY: C holds n·n elements of the GEMM's precision and y
                // holds n f32, all on this context.
                unsafe {
                    match self.spec.gemm.precision {
                        Precision::Fp32 => ck!(
                            "cuMemsetD32Async",
                            drv_sys::cuMemsetD32Async(c, NAN_F32, n * n, cs).result()
                        )?,
                        Precision::Fp16 => ck!(
                            "cuMemsetD16Async",
                            drv_sys::cuMemsetD16Async(c, NAN_F16, n * n, cs).result()
                        )?,
                        Precision::Bf16 => ck!(
                            "cuMemsetD16Async",
                            drv_sys::cuMemsetD16Async(c, NAN_BF16, n * n, cs).result()
                        )?,
                    }
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(y, NAN_F32, n, cs).result()
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Enqueues the correctness reductions; results stay on the device
    /// (`chk` for the FFT, `y` for the GEMM) until [`Self::read_checks`].
    pub(super) fn enqueue_checks(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let h = *self.blas.handle();
        match kernel {
            Kernel::Fft => {
                let len = self.spec.fft.total_len() as i64;
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                let (w, _gw) = self.fft_w.device_ptr(&self.stream);
                let (r, _gr) = self.chk.device_ptr(&self.stream);
                // SAFETY: o and w hold `len` complex values; in device pointer
                // mode the results go to chk[0] (f32) and chk[2..4] (complex,
                // 8-byte aligned). The mode is restored right after.
                unsafe {
                    ck!(
                        "cublasSetPointerMode",
                        blas_sys::cublasSetPointerMode_v2(
                            h,
                            blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE
                        )
                        .result()
                    )?;
                    let r1 = blas_sys::cublasScnrm2_v2_64(h, len, o as *const _, 1, r as *mut f32)
                        .result();
                    let r2 = blas_sys::cublasCdotu_v2_64(
                        h,
                        len,
                        o as *const _,
                        1,
                        w as *const _,
                        1,
                        (r as *mut f32).add(2) as *mut _,
                    )
                    .result();
                    ck!(
                        "cublasSetPointerMode",
                        blas_sys::cublasSetPointerMode_v2(
                            h,
                            blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST
                        )
                        .result()
                    )?;
                    ck!("cublasScnrm2", r1)?;
                    ck!("cublasCdotu", r2)?;
                }
                Ok(())
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n as i32;
                let t = data_type(self.spec.gemm.precision);
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                let (v, _gv) = self.v.buf.device_ptr(&self.stream);
                let (y, _gy) = self.y.device_ptr(&self.stream);
                // SAFETY: y(n×1, f32) = C(n×n, t) · v(n×1, t).
                ck!("cublasGemmEx check", unsafe {
                    gemm_ex(h, (n, 1, n), c, v, t, y, blas_sys::cudaDataType::CUDA_R_32F)
                })
            }
        }
    }

    /// Copies the check results back (a few bytes, on the copy engine) and
    /// judges them.
    pub(super) fn read_checks(&mut self, kernel: Kernel) -> Result<(bool, f64), ProbeError> {
        match kernel {
            Kernel::Fft => {
                ck!(
                    "copy check",
                    self.stream.memcpy_dtoh(&self.chk, &mut self.chk_host)
                )?;
                ck!("cuStreamSynchronize", self.stream.synchronize())?;
                let nrm = self.chk_host[0] as f64;
                let dot = Complex64::new(self.chk_host[2] as f64, self.chk_host[3] as f64);
                Ok(self.fft_ref.judge(dot, nrm * nrm))
            }
            Kernel::Gemm => {
                ck!("copy y", self.stream.memcpy_dtoh(&self.y, &mut self.y_host))?;
                ck!("cuStreamSynchronize", self.stream.synchronize())?;
                Ok(self.gemm_ref.judge(&self.y_host))
            }
        }
    }
}
