//! `open_backend` opens one device only, and `auto` falls back to the CPU
//! with a reason where CUDA is missing (CI; on a GPU host the CPU case still
//! runs).

use slicetrace_probe::{open_backend, open_backends, BackendKind, Preset, ProbeSpec};

fn spec_for(backend: &'static str) -> ProbeSpec {
    ProbeSpec::preset_for(Preset::Light, backend)
}

#[test]
fn open_backend_opens_the_chosen_device_only() {
    let (b, fallback) = open_backend(BackendKind::Cpu, &spec_for, 2).expect("cpu device 2");
    assert!(fallback.is_none());
    assert_eq!(b.device().index, 2);
    assert_eq!(b.device().uuid, "CPU-2");
    // The same device as open_backends would give at that index.
    let (all, _) = open_backends(BackendKind::Cpu, &spec_for, 3).expect("cpu devices");
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].device().uuid, b.device().uuid);
}

#[test]
fn auto_falls_back_to_the_cpu_with_a_reason_where_cuda_is_missing() {
    if slicetrace_probe::cuda_device_count().is_ok_and(|n| n > 0) {
        // A GPU is present (the GPU tier): auto must open CUDA, no fallback.
        let (b, fallback) = open_backend(BackendKind::Auto, &spec_for, 0).expect("cuda device 0");
        assert_eq!(b.device().backend, slicetrace_probe::Backend::Cuda);
        assert!(b.device().uuid.starts_with("GPU-"), "{}", b.device().uuid);
        assert!(fallback.is_none(), "{fallback:?}");
        return;
    }
    let (b, fallback) = open_backend(BackendKind::Auto, &spec_for, 1).expect("fallback");
    assert_eq!(b.device().uuid, "CPU-1");
    assert!(fallback.is_some(), "the reason CUDA was not used");
    assert!(open_backend(BackendKind::Cuda, &spec_for, 0).is_err());
}
