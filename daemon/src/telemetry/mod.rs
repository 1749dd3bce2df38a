//! Device telemetry (NVML) sampled before and after each burst.
