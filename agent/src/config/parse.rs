//! Reading the TOML file: one-line `field (line N): reason` errors, and the
//! probe keys that moved into `[probe]`, still read from their old top-level
//! place with a [`Deprecated`] note each.

use std::path::Path;

use serde::Deserialize;

use super::{invalid, Config, ConfigError};

/// Turns a TOML error into `field: reason` on one line. toml reports a byte
/// span; the key is the text before `=` on that line, and its table the last
/// `[header]` above it.
fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .trim()
        .to_string();
    let mut field = String::from("config");
    if let Some(span) = e.span() {
        let before = &src[..span.start.min(src.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        let line = &src[line_start..line_end];
        let section = src[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string());
        let line_no = before.matches('\n').count() + 1;
        field = match (section, key) {
            (Some(s), Some(k)) if !line.trim_start().starts_with('[') => format!("{s}.{k}"),
            (None, Some(k)) => k,
            (Some(s), None) => s,
            _ => format!("line {line_no}"),
        };
        // Unknown keys: serde names the key itself in the message.
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            if let Some(k) = rest.split('`').next() {
                field = match field.rsplit_once('.') {
                    Some((s, _)) => format!("{s}.{k}"),
                    None => k.to_string(),
                };
            }
        }
        field = format!("{field} (line {line_no})");
    }
    ConfigError::Parse {
        field,
        message: msg,
    }
}

/// A key read from its old place: its value still applies, and the operator
/// is told where it lives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    /// The old key, e.g. `interval_ms`.
    pub old: &'static str,
    /// Where it belongs now, e.g. `probe.interval_ms`.
    pub new: &'static str,
}

impl Deprecated {
    /// Logs the deprecation (WARN: the file works, but should be edited).
    pub fn warn(&self) {
        tracing::warn!(
            key = self.old,
            new_key = self.new,
            "deprecated config key `{}`: move it to `{}`",
            self.old,
            self.new
        );
    }
}

/// The probe keys that used to sit at the top level. Read on their own, with
/// spans, so an error in one still names its line; the parse of `Config`
/// then sees the document with those lines blanked.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TopLevelProbeKeys {
    interval_ms: Option<toml::Spanned<u64>>,
    jitter_pct: Option<toml::Spanned<u32>>,
    self_test: Option<toml::Spanned<bool>>,
    probe: Option<toml::Table>,
}

/// Replaces `key = value` (from the start of its line to the end of the value)
/// with spaces, keeping every other byte offset, so later errors keep their
/// line numbers.
fn blank_key_line(text: &mut [u8], value: std::ops::Range<usize>) {
    let start = text[..value.start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = value.end.min(text.len());
    for b in &mut text[start..end] {
        *b = b' ';
    }
}

impl Config {
    /// Parses a TOML document, logging a warning for each deprecated key.
    pub fn from_toml(src: &str) -> Result<Self, ConfigError> {
        let (c, deprecated) = Self::from_toml_reporting(src)?;
        for d in &deprecated {
            d.warn();
        }
        Ok(c)
    }

    /// Parses a TOML document and returns the deprecated keys it used (their
    /// values applied), for the caller to report once logging is set up. A
    /// key given both in its old place and its new one is an error.
    pub fn from_toml_reporting(src: &str) -> Result<(Self, Vec<Deprecated>), ConfigError> {
        let old: TopLevelProbeKeys = toml::from_str(src).map_err(|e| toml_error(src, &e))?;
        let probe = old.probe.unwrap_or_default();
        let mut text = src.as_bytes().to_vec();
        let mut deprecated = Vec::new();
        for (key, new, span) in [
            (
                "interval_ms",
                "probe.interval_ms",
                old.interval_ms.as_ref().map(|v| v.span()),
            ),
            (
                "jitter_pct",
                "probe.jitter_pct",
                old.jitter_pct.as_ref().map(|v| v.span()),
            ),
            (
                "self_test",
                "probe.self_test",
                old.self_test.as_ref().map(|v| v.span()),
            ),
        ] {
            let Some(span) = span else { continue };
            if probe.contains_key(key) {
                return Err(invalid(
                    key,
                    format!("set both at the top level (deprecated) and as {new}; keep only {new}"),
                ));
            }
            blank_key_line(&mut text, span);
            deprecated.push(Deprecated { old: key, new });
        }
        let rest = String::from_utf8(text).map_err(|e| invalid("config", e.to_string()))?;
        let mut c: Config = toml::from_str(&rest).map_err(|e| toml_error(&rest, &e))?;
        if let Some(v) = old.interval_ms {
            c.probe.interval_ms = v.into_inner();
        }
        if let Some(v) = old.jitter_pct {
            c.probe.jitter_pct = v.into_inner();
        }
        if let Some(v) = old.self_test {
            c.probe.self_test = v.into_inner();
        }
        Ok((c, deprecated))
    }

    /// Reads and parses `path`, logging a warning for each deprecated key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (c, deprecated) = Self::from_file_reporting(path)?;
        for d in &deprecated {
            d.warn();
        }
        Ok(c)
    }

    /// Reads and parses `path`; see [`Config::from_toml_reporting`].
    pub fn from_file_reporting(path: &Path) -> Result<(Self, Vec<Deprecated>), ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_reporting(&src)
    }
}
