//! The measured kernels and their inputs: the cuFFT C2C transform, the
//! cuBLAS GEMM, the one-element fence kernel that precedes the start event,
//! and the type-erased matrices the GEMM reads and writes.
#![allow(unsafe_code)]

use std::ffi::c_void;

use cudarc::cublas::{result::CublasError, sys as blas_sys};
use cudarc::cufft::result as fft_result;
use cudarc::driver::{sys as drv_sys, CudaSlice, DevicePtr};

use super::CudaBackend;
use crate::spec::{Kernel, Precision};
use crate::ProbeError;

/// Device-resident, type-erased matrix (fp32, fp16 or bf16 elements).
pub(super) struct Matrix {
    pub(super) buf: CudaSlice<u8>,
}

pub(super) fn to_bytes(p: Precision, xs: &[f32]) -> Vec<u8> {
    match p {
        Precision::Fp32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Precision::Fp16 => xs
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        Precision::Bf16 => xs
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

pub(super) fn data_type(p: Precision) -> blas_sys::cudaDataType {
    match p {
        Precision::Fp32 => blas_sys::cudaDataType::CUDA_R_32F,
        Precision::Fp16 => blas_sys::cudaDataType::CUDA_R_16F,
        Precision::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

/// `C(m×n, tc) = A(m×k, t) · B(k×n, t)`: one column-major `cublasGemmEx`
/// without transposes, fp32 compute and host `alpha = 1`, `beta = 0`. Shared
/// by the measured GEMM and its check, so both run the same call.
///
/// # Safety
/// `a`, `b` and `c` are device buffers of the handle's context holding m×k,
/// k×n (of type `t`) and m×n (of type `tc`) elements; the handle is in host
/// pointer mode.
pub(super) unsafe fn gemm_ex(
    h: blas_sys::cublasHandle_t,
    (m, n, k): (i32, i32, i32),
    a: drv_sys::CUdeviceptr,
    b: drv_sys::CUdeviceptr,
    t: blas_sys::cudaDataType,
    c: drv_sys::CUdeviceptr,
    tc: blas_sys::cudaDataType,
) -> Result<(), CublasError> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the caller vouches for the buffers; alpha/beta are host f32 as
    // CUBLAS_COMPUTE_32F requires.
    unsafe {
        blas_sys::cublasGemmEx(
            h,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            &alpha as *const f32 as *const c_void,
            a as *const c_void,
            t,
            m,
            b as *const c_void,
            t,
            k,
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            tc,
            m,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .result()
    }
}

impl CudaBackend {
    /// A one-element `sscal` whose only purpose is to make the following
    /// start event wait until this context is running on the SMs.
    pub(super) fn enqueue_fence(&mut self) -> Result<(), ProbeError> {
        let one = 1.0f32;
        let (x, _g) = self.fence.device_ptr(&self.stream);
        // SAFETY: x is a 1-element device buffer; alpha is a host f32 in the
        // handle's default host pointer mode.
        ck!("cublasSscal", unsafe {
            blas_sys::cublasSscal_v2(*self.blas.handle(), 1, &one, x as *mut f32, 1).result()
        })
    }

    /// Enqueues the kernel being measured (no poison, fence or events).
    pub(super) fn enqueue(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        match kernel {
            Kernel::Fft => {
                let (i, _gi) = self.fft_in.device_ptr(&self.stream);
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                // SAFETY: the plan was made for exactly these buffer sizes on
                // this stream; the input is not overwritten by an out-of-place
                // C2C transform.
                ck!("cufftExecC2C", unsafe {
                    fft_result::exec_c2c(
                        self.fft_plan,
                        i as *mut _,
                        o as *mut _,
                        -1, /* CUFFT_FORWARD */
                    )
                })
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n as i32;
                let t = data_type(self.spec.gemm.precision);
                let (a, _ga) = self.a.buf.device_ptr(&self.stream);
                let (b, _gb) = self.b.buf.device_ptr(&self.stream);
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                // SAFETY: A, B, C are n×n buffers of the declared type; the
                // handle is bound to this stream; alpha/beta are host f32 as
                // CUBLAS_COMPUTE_32F requires.
                ck!("cublasGemmEx", unsafe {
                    gemm_ex(*self.blas.handle(), (n, n, n), a, b, t, c, t)
                })
            }
        }
    }
}
