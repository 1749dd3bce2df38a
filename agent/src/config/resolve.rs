//! From the parsed file to what the agent runs: the environment and flag
//! layers on top of the file, the probe spec and arrival plan the settings
//! describe, and the validation of values that parsed but are not usable.

use std::path::{Path, PathBuf};

use slicetrace_probe::ProbeSpec;

use super::{in_table, invalid, CliFlags, Config, ConfigError};

impl Config {
    /// Applies `SLICETRACE_*` and `NODE_NAME` environment variables. The OTLP
    /// `OTEL_*` variables are applied by the OTLP sink itself, between the
    /// file and the flags.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("SLICETRACE_BACKEND") {
            self.backend = v
                .parse()
                .map_err(|m: String| invalid("SLICETRACE_BACKEND", m))?;
        }
        if let Some(v) = env("SLICETRACE_PRESET") {
            self.preset = v
                .parse()
                .map_err(|m: String| invalid("SLICETRACE_PRESET", m))?;
        }
        if let Some(v) = env("SLICETRACE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SLICETRACE_INTERVAL") {
            let d = humantime::parse_duration(&v)
                .map_err(|e| invalid("SLICETRACE_INTERVAL", e.to_string()))?;
            self.probe.interval_ms = d.as_millis() as u64;
        }
        if let Some(v) = env("SLICETRACE_RATE_HZ") {
            self.probe.rate_hz =
                Some(v.parse().map_err(|_| {
                    invalid("SLICETRACE_RATE_HZ", format!("{v:?} is not a number"))
                })?);
        }
        if let Some(v) = env("SLICETRACE_METRICS_LISTEN") {
            self.metrics.listen = v;
        }
        if let Some(v) = env("SLICETRACE_SHIP_DESTINATION") {
            self.ship.set_destination(v);
        }
        if let Some(v) = env("SLICETRACE_SHIP_ENDPOINT") {
            self.ship.endpoint = Some(v).filter(|v| !v.is_empty());
        }

        self.otlp
            .apply_env_from(env)
            .map_err(|e| invalid("otlp", crate::internal_events::error_chain(&e)))?;
        if self.node_name.is_empty() {
            if let Some(v) = env("NODE_NAME").filter(|v| !v.is_empty()) {
                self.node_name = v;
            }
        }
        Ok(())
    }

    /// Applies command-line flags (highest precedence).
    pub fn apply_flags(&mut self, o: &CliFlags) {
        if let Some(b) = o.backend {
            self.backend = b;
        }
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(i) = o.interval {
            self.probe.interval_ms = i.as_millis() as u64;
        }
        if let Some(r) = o.rate_hz {
            self.probe.rate_hz = Some(r);
        }
        if let Some(p) = o.preset {
            self.preset = p;
        }
        if let Some(e) = &o.otlp_endpoint {
            self.otlp.endpoint = Some(e.clone()).filter(|e| !e.is_empty());
        }
        if let Some(l) = &o.metrics_listen {
            self.metrics.listen = l.clone();
        }
        if let Some(n) = &o.node_name {
            self.node_name = n.clone();
        }
        if let Some(n) = o.cpu_devices {
            self.cpu_devices = n;
        }
        if let Some(d) = &o.ship_destination {
            self.ship.set_destination(d.clone());
        }
    }

    /// The node name to use: configured, else the host name.
    pub fn resolved_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        host_name()
    }

    /// The probe spec for a backend (`cuda` or `cpu`): the preset, then
    /// the `[probe]` table.
    pub fn probe_spec(&self, backend: &str) -> ProbeSpec {
        self.probe.spec(self.preset, backend)
    }

    /// Checks every value that parsed but is not usable. Writes nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.probe;
        if p.interval_ms == 0 || p.interval_ms > 3_600_000 {
            return Err(invalid(
                "probe.interval_ms",
                format!("{} is out of range 1..=3600000", p.interval_ms),
            ));
        }
        if p.jitter_pct > 90 {
            return Err(invalid(
                "probe.jitter_pct",
                format!("{} is above 90", p.jitter_pct),
            ));
        }
        if self.shutdown_deadline_ms == 0 {
            return Err(invalid("shutdown_deadline_ms", "must be positive"));
        }
        if self.sink_queue_records == 0 {
            return Err(invalid("sink_queue_records", "must be positive"));
        }
        if self.cpu_devices == 0 || self.cpu_devices > 64 {
            return Err(invalid(
                "cpu_devices",
                format!("{} is out of range 1..=64", self.cpu_devices),
            ));
        }
        if let Some(r) = self.probe.rate_hz {
            if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
                return Err(invalid(
                    "probe.rate_hz",
                    format!("{r} is out of range (0, 1000]"),
                ));
            }
        }
        if let Some(b) = self.probe.cuda_stack_bytes {
            if b > 65_536 {
                return Err(invalid(
                    "probe.cuda_stack_bytes",
                    format!("{b} is above 65536"),
                ));
            }
        }
        if let Some(ms) = self.probe.process_list_max_age_ms {
            if !(1000..=300_000).contains(&ms) {
                return Err(invalid(
                    "probe.process_list_max_age_ms",
                    format!("{ms} is out of range 1000..=300000"),
                ));
            }
        }
        if let Some(ms) = self.probe.busy_window_ms {
            if !(100..=60_000).contains(&ms) {
                return Err(invalid(
                    "probe.busy_window_ms",
                    format!("{ms} is out of range 100..=60000"),
                ));
            }
        }
        if let Some(ms) = self.probe.busy_tenants_interval_ms {
            if ms > 3_600_000 {
                return Err(invalid(
                    "probe.busy_tenants_interval_ms",
                    format!("{ms} is above 3600000"),
                ));
            }
        }
        if let Some(us) = self.probe.spin_us {
            if us > 1_000_000 {
                return Err(invalid("probe.spin_us", format!("{us} is above 1000000")));
            }
        }
        for b in ["cuda", "cpu"] {
            self.probe_spec(b)
                .validate()
                .map_err(|e| invalid("probe", e.to_string()))?;
        }
        check_dir_writable(&self.data_dir).map_err(|m| invalid("data_dir", m))?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{:?} is not an address:port", self.metrics.listen),
            ));
        }
        self.otlp.validate().map_err(|e| in_table(e, "otlp"))?;
        self.health.validate().map_err(|e| in_table(e, "health"))?;
        self.watchdog
            .validate()
            .map_err(|e| in_table(e, "watchdog"))?;
        self.parquet
            .validate()
            .map_err(|e| in_table(e, "parquet"))?;
        self.occupancy
            .validate()
            .map_err(|e| in_table(e, "occupancy"))?;
        self.ship
            .validate()
            .map_err(|e| invalid(&format!("ship.{}", e.field), e.reason))?;
        Ok(())
    }
}

/// The directory must exist and be writable, or be creatable under the
/// nearest existing ancestor. Nothing is created.
fn check_dir_writable(dir: &Path) -> Result<(), String> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                return if writable(p) {
                    Ok(())
                } else {
                    Err(format!("{} is not writable", p.display()))
                };
            }
            Ok(_) => return Err(format!("{} is not a directory", p.display())),
            Err(_) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return Ok(()),
            },
        }
    }
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    #[allow(unsafe_code)]
    // SAFETY: c is a valid NUL-terminated path; access only reads it.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    rc == 0
}

/// The host name, from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
