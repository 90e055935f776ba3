//! Identifier newtypes.
//!
//! Ids are `Arc<str>` inside: a token frame carries its turn id, and cloning one per chunk must cost
//! a reference-count increment, not an allocation. Client-supplied ids are validated once, at the
//! edge ([`IdError`]); everything past the decoder can trust them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id accepted from a client, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a client-supplied id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was the empty string.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("id may only hold ASCII letters, digits and _ . : -")]
    BadChar,
}

fn check(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps a client-supplied id.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// One conversation. Server-generated (UUID v4) unless the client resumes one in `hello`.
    SessionId
);
id_type!(
    /// One user message and the answer streamed for it; chosen by the client.
    TurnId
);
id_type!(
    /// The person behind a session: the subject of the token its connection authenticated with.
    UserId
);

impl SessionId {
    /// A fresh random session id.
    pub fn new_random() -> Self {
        Self(Arc::from(uuid::Uuid::new_v4().to_string()))
    }
}

/// A trace id in X-Ray format: `1-{8 hex digits of epoch seconds}-{24 hex random digits}`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TraceId(Arc<str>);

impl TraceId {
    /// A new X-Ray-format id for a trace that starts at `epoch_secs`.
    pub fn new_xray(epoch_secs: u64) -> Self {
        let random = uuid::Uuid::new_v4().as_u128() & ((1u128 << 96) - 1);
        Self(Arc::from(format!(
            "1-{:08x}-{:024x}",
            epoch_secs & 0xffff_ffff,
            random
        )))
    }

    /// The X-Ray form of a 128-bit trace id (an OpenTelemetry one from an X-Ray id generator
    /// holds the epoch seconds in its top 32 bits).
    pub fn from_u128(id: u128) -> Self {
        Self(Arc::from(format!(
            "1-{:08x}-{:024x}",
            id >> 96,
            id & ((1u128 << 96) - 1)
        )))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(TurnId::parse("t-1").is_ok());
        assert_eq!(TurnId::parse(""), Err(IdError::Empty));
        assert_eq!(TurnId::parse(&"x".repeat(65)), Err(IdError::TooLong));
        assert_eq!(TurnId::parse("a b"), Err(IdError::BadChar));
    }

    #[test]
    fn xray_trace_id_shape() {
        let id = TraceId::new_xray(0x5f00_0000);
        let parts: Vec<&str> = id.as_str().split('-').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "1");
        assert_eq!(parts[1], "5f000000");
        assert_eq!(parts[2].len(), 24);
        assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
