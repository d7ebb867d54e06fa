//! Identifiers that cross the wire: user names, group names and message ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A user or group name outside the allowed characters or length.
    #[error(
        "invalid name {0:?}: use 1 to 32 characters, lowercase letters a-z, digits, '_' or '-', starting with a letter"
    )]
    InvalidName(String),
    /// A message id that is not a UUID (version 7 is what clients generate).
    #[error("invalid message id {0:?}: expected a UUID")]
    InvalidMsgId(String),
}

/// Longest user or group name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 32;

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Held inline (names are at most [`MAX_NAME_LEN`] ASCII bytes), so
        /// that making, cloning and dropping one never allocates: the server
        /// copies the sender's and recipient's names into every queue a
        /// message passes through.
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name {
            len: u8,
            /// The name, then zeros (so that equality can compare it all).
            bytes: [u8; MAX_NAME_LEN],
        }

        impl $name {
            /// Validates `s` as a name.
            ///
            /// # Errors
            /// [`IdError::InvalidName`] when `s` is empty, longer than
            /// [`MAX_NAME_LEN`], or has a character other than `a-z`, `0-9`,
            /// `_` and `-`, or does not start with a letter.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                if !valid_name(s) {
                    return Err(IdError::InvalidName(s.to_owned()));
                }
                let mut bytes = [0; MAX_NAME_LEN];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Ok(Self {
                    len: s.len() as u8,
                    bytes,
                })
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                std::str::from_utf8(self.as_bytes()).expect("names are ASCII")
            }

            fn as_bytes(&self) -> &[u8] {
                &self.bytes[..usize::from(self.len)]
            }
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                // As `str` hashes: the bytes, then a terminator, so that
                // two names in one key cannot collide by moving a letter.
                state.write(self.as_bytes());
                state.write_u8(0xff);
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_bytes().cmp(other.as_bytes())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a name")
                    }
                    // Borrowed or not, the text is copied into the name:
                    // no String in between.
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

name_type!(
    /// A user name: 1 to 32 characters of `a-z`, `0-9`, `_`, `-`, starting
    /// with a letter. Lowercase only, so `Alice` cannot pose as `alice`.
    UserName
);
name_type!(
    /// A group name, with the same rules as a [`UserName`]. Written `#name`
    /// where a user could be meant.
    GroupName
);

/// A message id: a UUID chosen by the sending client (version 7, so ids sort
/// by creation time). Retrying a send with the same id is idempotent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(uuid::Uuid);

impl MsgId {
    /// A fresh time-ordered id (UUIDv7).
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl Default for MsgId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({})", self.0.hyphenated())
    }
}

impl FromStr for MsgId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        uuid::Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| IdError::InvalidMsgId(s.to_owned()))
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_the_rules() {
        for ok in [
            "a",
            "alice",
            "bob_2",
            "x-y",
            "a234567890123456789012345678901",
        ] {
            assert!(UserName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "1abc",
            "_a",
            "a b",
            "a/b",
            "../etc",
            "a\0",
            "é",
            "a23456789012345678901234567890123",
        ] {
            assert!(UserName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_name_json_rejects_invalid() {
        assert!(serde_json::from_str::<UserName>("\"alice\"").is_ok());
        assert!(serde_json::from_str::<UserName>("\"ALICE\"").is_err());
    }

    #[test]
    fn msg_id_round_trips() {
        let id = MsgId::new();
        let s = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MsgId>(&s).unwrap(), id);
        assert!("not-a-uuid".parse::<MsgId>().is_err());
    }
}
