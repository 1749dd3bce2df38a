//! PID → cgroup → container/pod against a fake proc root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod occupancy_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use occupancy_support::{cid, proc_entry};
use slicetrace_agent::probe::occupancy::kube_api::{KubeCache, NodeInfo, PodInfo};
use slicetrace_agent::probe::occupancy::proc_cgroup::{read_comm, ProcResolver, Runtime};
use slicetrace_agent::probe::occupancy::{CombinedOccupancy, GpuProcess, OccupancySource};

const UID_A: &str = "11111111-1111-4111-8111-111111111111";
const UID_B: &str = "22222222-2222-4222-8222-222222222222";
const UID_C: &str = "33333333-3333-4333-8333-333333333333";

fn fake_proc(root: &Path) {
    // containerd, cgroup v2, systemd driver.
    proc_entry(
        root,
        1001,
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
            UID_A.replace('-', "_"),
            cid(1)
        ),
        "python3",
    );
    // A container the API does not know yet (just started): found by pod UID.
    proc_entry(
        root,
        1002,
        &format!(
            "12:memory:/kubepods/besteffort/pod{UID_B}/{}\n0::/\n",
            cid(999)
        ),
        "torchrun",
    );
    // CRI-O, cgroup v2.
    proc_entry(
        root,
        1003,
        &format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{}.scope/container\n",
            UID_C.replace('-', "_"),
            cid(3)
        ),
        "jupyter",
    );
    // A host process (standalone job): not a pod.
    proc_entry(
        root,
        1004,
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "slicetrace-load",
    );
    // Docker outside Kubernetes.
    proc_entry(
        root,
        1005,
        &format!("0::/system.slice/docker-{}.scope\n", cid(50)),
        "gemm",
    );
    // The agent itself, as if it ran in train-a's container: never a tenant.
    proc_entry(
        root,
        std::process::id(),
        &format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope\n",
            UID_A.replace('-', "_"),
            cid(1)
        ),
        "slicetrace-agent",
    );
}

fn pods() -> Vec<PodInfo> {
    let p = |ns: &str, name: &str, uid: &str, c: u64| PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        container_ids: vec![cid(c)],
        phase: Some("Running".into()),
        ..Default::default()
    };
    vec![
        p("ml", "train-a", UID_A, 1),
        p("ml", "train-b", UID_B, 2),
        p("research", "notebook-c", UID_C, 3),
    ]
}

fn procs(pids: &[u32]) -> Vec<GpuProcess> {
    pids.iter()
        .map(|&pid| GpuProcess {
            pid,
            used_mib: Some(1024),
            name: None,
        })
        .collect()
}

#[test]
fn pids_resolve_through_cgroups_to_runtimes_and_pods() {
    let dir = tempfile::tempdir().unwrap();
    fake_proc(dir.path());
    let r = ProcResolver::new(dir.path());
    let a = r.resolve(1001).unwrap();
    assert_eq!(a.container_id.as_deref(), Some(cid(1).as_str()));
    assert_eq!(a.pod_uid.as_deref(), Some(UID_A));
    assert_eq!(a.runtime, Some(Runtime::Containerd));
    assert_eq!(r.resolve(1003).unwrap().runtime, Some(Runtime::CriO));
    assert_eq!(r.resolve(1005).unwrap().runtime, Some(Runtime::Docker));
    assert_eq!(r.resolve(1004).unwrap().container_id, None);
    assert!(r.resolve(4242).is_none(), "a vanished PID is not an error");
    assert!(
        r.resolve(std::process::id()).is_none(),
        "the agent is never a tenant"
    );
    assert_eq!(
        read_comm(dir.path(), 1004).as_deref(),
        Some("slicetrace-load")
    );
    assert_eq!(read_comm(dir.path(), 4242), None);
}

#[test]
fn active_pods_come_from_processes_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    fake_proc(dir.path());
    let node = NodeInfo {
        replicas: Some(4),
        sharing_strategy: Some("time-slicing".into()),
        ..Default::default()
    };
    let kube = Arc::new(KubeCache::preloaded(
        pods(),
        Some(node),
        Duration::from_secs(60),
    ));
    let occ = CombinedOccupancy::new(None, Some(kube), dir.path(), Duration::from_secs(60));
    let o = occ.snapshot(
        "GPU-6e1b5c3a-9f42-4d7e-b8a1-2c3d4e5f6a7b",
        &procs(&[1001, 1002, 1003, 1004, 1005, 4242, std::process::id()]),
    );
    assert_eq!(
        o.active_pods,
        Some(vec![
            "ml/train-a".to_string(),
            "ml/train-b".into(),
            "research/notebook-c".into()
        ])
    );
    assert_eq!(o.replicas, Some(4));
    assert_eq!(o.sharing_strategy.as_deref(), Some("time-slicing"));
    // Without pod-resources nobody knows who *holds* the GPU.
    assert_eq!(o.pods, None);
    assert_eq!(o.pod_count, None);
    assert_eq!(o.stale, Some(false));
    // Only the agent on the GPU: a known empty set.
    let o = occ.snapshot("GPU-x", &procs(&[std::process::id()]));
    assert_eq!(o.active_pods, Some(vec![]));
}

#[test]
fn standalone_leaves_every_pod_field_none() {
    let dir = tempfile::tempdir().unwrap();
    fake_proc(dir.path());
    let occ = CombinedOccupancy::new(None, None, dir.path(), Duration::from_secs(60));
    let o = occ.snapshot("GPU-x", &procs(&[1004, 1005]));
    assert_eq!(o, Default::default());
    let s = occ.status();
    assert!(!s.pod_resources_ok && !s.kube_api_ok);
    assert_eq!(s.last_sync_age_ms, None);
}
