//! The one error shape of every component's config validation. A leaf:
//! components return it and `config` prefixes their table, so neither
//! imports the other for it.

/// The first unusable value of one component's table: the one shape every
/// component's `validate()` returns, so `Config::validate` only prefixes
/// the table name (`otlp.timeout_ms: must be greater than 0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The key inside its table, e.g. `timeout_ms`.
    pub field: &'static str,
    /// Why the value is unusable, lowercase, one line.
    pub message: String,
}

impl FieldError {
    /// A field and its reason.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
