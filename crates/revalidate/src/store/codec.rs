//! Codecs: how cached values become bytes in a store, and back.

use crate::key::QueryKey;

/// Turns values into bytes for a store and back. It receives the key, so
/// one codec can treat resources differently.
pub trait Codec<V>: Send + Sync + 'static {
    /// Encodes a value.
    ///
    /// # Errors
    ///
    /// The value cannot be represented.
    fn encode(&self, key: &QueryKey, value: &V) -> Result<Vec<u8>, CodecError>;

    /// Decodes a value stored earlier.
    ///
    /// # Errors
    ///
    /// The bytes are not a value of this codec (for example, written by an
    /// older version of the application).
    fn decode(&self, key: &QueryKey, bytes: &[u8]) -> Result<V, CodecError>;
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CodecError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by another.
    pub fn from_source(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// JSON through serde, for any `Serialize + DeserializeOwned` value: the
/// default codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl<V> Codec<V> for JsonCodec
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, _key: &QueryKey, value: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::from_source)
    }

    fn decode(&self, _key: &QueryKey, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::from_source)
    }
}
