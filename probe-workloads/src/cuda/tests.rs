use super::device::effective_fp32_math_with;
use super::*;

#[test]
fn a_node_wide_tf32_override_loosens_the_fp32_check() {
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, None),
        Fp32Math::Strict
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, Some("0")),
        Fp32Math::Strict
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, Some("1")),
        Fp32Math::Tf32
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Tf32, None),
        Fp32Math::Tf32
    );
}

#[test]
fn uuid_is_formatted_like_nvml() {
    let b: [u8; 16] = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    assert_eq!(format_uuid(&b), "GPU-deadbeef-0001-0203-0405-060708090a0b");
}

/// The failure to find CUDA: on a machine without the driver (CI) this
/// must be a clean error naming libcuda, never a panic; with a GPU it must
/// count at least one device.
#[test]
fn missing_cuda_is_a_clear_error_not_a_panic() {
    match device_count() {
        Err(ProbeError::LibraryMissing { library, .. }) => {
            assert!(library.starts_with("lib"), "{library}");
            let e = CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light))
                .err()
                .expect("backend must fail without CUDA");
            assert!(e.to_string().contains("not found"), "{e}");
        }
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(n) => assert!(
            n >= 1
                || matches!(
                    CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light)),
                    Err(ProbeError::BadIndex { .. })
                )
        ),
    }
}

#[test]
fn auto_falls_back_to_cpu_with_a_reason_when_cuda_is_missing() {
    let spec = ProbeSpec {
        fft: crate::FftSpec {
            dims: FftDims::D1 { n: 256, batch: 2 },
        },
        gemm: crate::GemmSpec {
            n: 32,
            precision: Precision::Fp32,
        },
        burst_runs: 2,
        timing: crate::Timing::Graph,
        ..ProbeSpec::preset(crate::Preset::Light)
    };
    if device_count().is_ok_and(|n| n > 0) {
        return; // a GPU is present: the fallback path does not apply here.
    }
    let (backends, reason) =
        crate::open_backends(crate::BackendKind::Auto, &|_| spec, 1).expect("fallback");
    assert_eq!(backends.len(), 1);
    assert_eq!(
        backends[0].device().backend,
        slicetrace_schema::Backend::Cpu
    );
    assert!(reason.expect("reason").to_string().contains("not found"));
    assert!(crate::open_backends(crate::BackendKind::Cuda, &|_| spec, 1).is_err());
}
