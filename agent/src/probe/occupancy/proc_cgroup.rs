//! `/proc`: from a GPU process's PID to its container and pod.
//!
//! NVML reports host PIDs of the compute processes on each GPU. Their
//! `/proc/<pid>/cgroup` names the container (its ID is the last path segment
//! the container runtime created) and, under the kubelet's `kubepods`
//! hierarchy, the pod UID. The Kubernetes API cache then turns either into
//! `namespace/name` ([`super::kube_api`]). Without a cluster the process
//! list itself (PID and `comm`) is the occupancy.
//!
//! Recognised layouts (cgroup v1 lines `N:controllers:/path` and the v2 line
//! `0::/path`; cgroupfs and systemd drivers):
//! - containerd: `.../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`,
//!   `/kubepods/burstable/pod<uid>/<id>`
//! - CRI-O: `.../crio-<id>.scope`, `/kubepods/.../pod<uid>/crio-<id>`
//! - docker: `/system.slice/docker-<id>.scope`, `/docker/<id>`
//! - podman: `.../libpod-<id>.scope`
//!
//! Reads are of procfs (kernel memory, microseconds) and are cached per PID
//! for a short time, so a probe burst seldom touches `/proc` at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Container runtime naming a cgroup path matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope`, or a bare ID under `kubepods`).
    Containerd,
    /// CRI-O (`crio-<id>`).
    CriO,
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// Podman (`libpod-<id>.scope`).
    Podman,
    /// A bare 64-hex ID whose runtime the path does not say.
    Unknown,
}

/// What a cgroup file says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIds {
    /// Container ID (64 lowercase hex), without any `runtime://` prefix.
    pub container_id: Option<String>,
    /// Pod UID in its API form (dashes, lowercase).
    pub pod_uid: Option<String>,
    /// The runtime whose naming matched.
    pub runtime: Option<Runtime>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn container_segment(seg: &str) -> Option<(String, Runtime)> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    const PREFIXES: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, rt) in PREFIXES {
        if let Some(id) = seg.strip_prefix(prefix) {
            // `crio-conmon-<id>` is CRI-O's monitor process, not the container.
            return (id.len() == 64 && is_hex(id)).then(|| (id.to_ascii_lowercase(), rt));
        }
    }
    (seg.len() == 64 && is_hex(seg)).then(|| (seg.to_ascii_lowercase(), Runtime::Unknown))
}

/// Normalises a UID candidate (`_` → `-`) and checks its shape: the
/// 8-4-4-4-12 UUID form, or the 32-hex config hash of a static pod.
fn pod_uid_from(candidate: &str) -> Option<String> {
    let c = candidate.replace('_', "-").to_ascii_lowercase();
    if c.len() == 32 && is_hex(&c) {
        return Some(c);
    }
    let parts: Vec<&str> = c.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    (parts.len() == 5
        && parts
            .iter()
            .zip(shape)
            .all(|(p, n)| p.len() == n && is_hex(p)))
    .then_some(c)
}

fn pod_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let idx = seg.rfind("pod")?;
    pod_uid_from(&seg[idx + 3..])
}

/// Parses one cgroup path (the part after the second `:`).
pub fn parse_cgroup_path(path: &str) -> CgroupIds {
    let mut ids = CgroupIds::default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The container is the innermost segment that looks like one; the
    // runtime may nest further (e.g. systemd sub-cgroups), so scan all.
    for seg in segments.iter().rev() {
        if let Some((id, rt)) = container_segment(seg) {
            // A bare hex ID needs context: under kubepods it is containerd
            // (or CRI-O with cgroupfs), under /docker it is docker.
            let rt = if rt == Runtime::Unknown && segments.first() == Some(&"docker") {
                Runtime::Docker
            } else if rt == Runtime::Unknown
                && segments.first().is_some_and(|s| s.starts_with("kubepods"))
            {
                Runtime::Containerd
            } else {
                rt
            };
            ids.container_id = Some(id);
            ids.runtime = Some(rt);
            break;
        }
    }
    if segments.iter().any(|s| s.starts_with("kubepods")) {
        ids.pod_uid = segments.iter().rev().find_map(|s| pod_segment(s));
    }
    ids
}

/// Parses the content of `/proc/<pid>/cgroup` (v1, v2 or hybrid): the first
/// line that names a container wins, else the first that names a pod.
pub fn parse_cgroup_file(content: &str) -> CgroupIds {
    let mut best = CgroupIds::default();
    for line in content.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let ids = parse_cgroup_path(path);
        if ids.container_id.is_some() {
            if ids.pod_uid.is_none() && best.pod_uid.is_some() {
                return CgroupIds {
                    pod_uid: best.pod_uid,
                    ..ids
                };
            }
            return ids;
        }
        if best.pod_uid.is_none() && ids.pod_uid.is_some() {
            best = ids;
        }
    }
    best
}

/// Strips the `containerd://`, `cri-o://` or `docker://` prefix that the
/// API puts on `containerStatuses[].containerID`, and lowercases the rest.
pub fn strip_runtime_prefix(container_id: &str) -> String {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    id.to_ascii_lowercase()
}

/// Reads and parses `<proc_root>/<pid>/cgroup`.
pub fn read_cgroup(proc_root: &Path, pid: u32) -> std::io::Result<CgroupIds> {
    let content = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(parse_cgroup_file(&content))
}

/// Reads `<proc_root>/<pid>/comm` (the command name, at most 15 bytes).
pub fn read_comm(proc_root: &Path, pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm")).ok()?;
    let s = s.trim_end_matches('\n').to_string();
    (!s.is_empty()).then_some(s)
}

/// How long a PID's cgroup answer is reused. Short: PIDs get reused, and a
/// process that moves cgroups is rare but possible.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// Resolves PIDs to cgroup IDs with a small per-PID cache.
#[derive(Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
    cache: Mutex<HashMap<u32, (Instant, Option<CgroupIds>)>>,
}

impl ProcResolver {
    /// A resolver reading `proc_root` (normally `/proc`; a temp dir in tests).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The proc root read.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The cgroup IDs of `pid`, `None` when it cannot be read (the process
    /// is gone, or `/proc` is not the host's). The agent's own PID always
    /// resolves to `None`: the agent is never a tenant.
    pub fn resolve(&self, pid: u32) -> Option<CgroupIds> {
        if pid == std::process::id() {
            return None;
        }
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, ids)) = cache.get(&pid) {
                if now.duration_since(*at) < CACHE_TTL {
                    return ids.clone();
                }
            }
        }
        // Read outside the lock.
        let ids = read_cgroup(&self.proc_root, pid).ok();
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 4096 {
                cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
            }
            cache.insert(pid, (now, ids.clone()));
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f7c2e9d1b3a5c6e8f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d1e";
    const UID: &str = "3b2a1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

    fn check(fixture: &str, rt: Runtime, pod: bool) {
        let ids = parse_cgroup_file(fixture);
        assert_eq!(ids.container_id.as_deref(), Some(CID), "{fixture}");
        assert_eq!(ids.runtime, Some(rt), "{fixture}");
        assert_eq!(ids.pod_uid.as_deref(), pod.then_some(UID), "{fixture}");
    }

    #[test]
    fn containerd_cgroup_v2_systemd() {
        check(
            include_str!("fixtures/cgroup/containerd-v2-systemd.txt"),
            Runtime::Containerd,
            true,
        );
    }

    #[test]
    fn containerd_cgroup_v1_cgroupfs() {
        check(
            include_str!("fixtures/cgroup/containerd-v1-cgroupfs.txt"),
            Runtime::Containerd,
            true,
        );
    }

    #[test]
    fn containerd_cgroup_v1_systemd() {
        check(
            include_str!("fixtures/cgroup/containerd-v1-systemd.txt"),
            Runtime::Containerd,
            true,
        );
    }

    #[test]
    fn crio_cgroup_v2_systemd() {
        check(
            include_str!("fixtures/cgroup/crio-v2-systemd.txt"),
            Runtime::CriO,
            true,
        );
    }

    #[test]
    fn crio_cgroup_v1_cgroupfs() {
        check(
            include_str!("fixtures/cgroup/crio-v1-cgroupfs.txt"),
            Runtime::CriO,
            true,
        );
    }

    #[test]
    fn docker_cgroup_v2_systemd() {
        check(
            include_str!("fixtures/cgroup/docker-v2-systemd.txt"),
            Runtime::Docker,
            false,
        );
    }

    #[test]
    fn docker_cgroup_v1_cgroupfs() {
        check(
            include_str!("fixtures/cgroup/docker-v1-cgroupfs.txt"),
            Runtime::Docker,
            false,
        );
    }

    #[test]
    fn kubelet_docker_cgroup_v1_systemd() {
        check(
            include_str!("fixtures/cgroup/dockershim-v1-systemd.txt"),
            Runtime::Docker,
            true,
        );
    }

    #[test]
    fn host_process_has_no_container() {
        let ids = parse_cgroup_file(include_str!("fixtures/cgroup/host-v2.txt"));
        assert_eq!(ids, CgroupIds::default());
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let ids = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{CID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(ids.container_id, None);
        assert_eq!(ids.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn static_pod_hash_uid() {
        let ids = parse_cgroup_path(&format!(
            "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{CID}"
        ));
        assert_eq!(
            ids.pod_uid.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn api_container_ids_lose_their_runtime_prefix() {
        assert_eq!(strip_runtime_prefix(&format!("containerd://{CID}")), CID);
        assert_eq!(strip_runtime_prefix(&format!("cri-o://{CID}")), CID);
        assert_eq!(strip_runtime_prefix(&format!("docker://{CID}")), CID);
        assert_eq!(strip_runtime_prefix(CID), CID);
    }
}
