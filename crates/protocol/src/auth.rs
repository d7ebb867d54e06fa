//! The OPAQUE cipher suite and the key-stretching parameters both sides agree on.
//!
//! Login is OPAQUE (RFC 9807): the password never leaves the client, and the
//! server stores only the registration record. The suite is defined here,
//! in the protocol crate, because it is part of the wire format: client and
//! server must name the same one.

use serde::{Deserialize, Serialize};

/// The OPAQUE cipher suite: ristretto255 for the OPRF and the 3DH key
/// exchange, SHA-512, and Argon2id as the key-stretching function.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2_010::Sha512>;
    type Ksf = opaque_ke::argon2::Argon2<'static>;
}

/// Context string bound into every OPAQUE login, so a transcript from another
/// protocol cannot be replayed here.
pub const LOGIN_CONTEXT: &[u8] = b"telepound/v1/login";

/// The server identity bound into OPAQUE: fixed, so a record does not depend
/// on the address a client used to reach the server.
pub const SERVER_ID: &[u8] = b"telepound";

/// The OPAQUE identities for `user`: the user name for the client and
/// [`SERVER_ID`] for the server. Both sides must use the same ones.
pub fn identifiers(user: &crate::UserName) -> opaque_ke::Identifiers<'_> {
    opaque_ke::Identifiers {
        client: Some(user.as_str().as_bytes()),
        server: Some(SERVER_ID),
    }
}

/// Domain-separation prefix of the identity key's signature over the KEM
/// key. Clients sign with it; the server checks it at sign-up.
pub const KEM_SIG_CONTEXT: &[u8] = b"telepound/v1/kem-key\0";

/// Argon2id parameters, chosen by the client at sign-up and stored with the
/// account so that every later login (from any machine) stretches the
/// password the same way. The server never runs Argon2: in OPAQUE the
/// stretching happens on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsfParams {
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Number of passes.
    pub t: u32,
    /// Degree of parallelism.
    pub p: u32,
}

impl KsfParams {
    /// The default for new accounts: Argon2id with 19 MiB, 2 passes, 1 lane
    /// (the OWASP recommendation).
    pub const DEFAULT: KsfParams = KsfParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    /// Largest memory cost a client will agree to spend (1 GiB), so a hostile
    /// server cannot make a login exhaust the client's memory.
    pub const MAX_M_KIB: u32 = 1024 * 1024;

    /// Largest memory × passes (4 GiB·pass), so a hostile server cannot make
    /// a login run for minutes either.
    pub const MAX_COST: u64 = 4 * 1024 * 1024;

    /// Whether these parameters cost at least as much as `min` in memory and
    /// in passes.
    pub fn meets(&self, min: &KsfParams) -> bool {
        self.m_kib >= min.m_kib && self.t >= min.t
    }

    /// Checks the values are ones Argon2 accepts and a client should spend.
    ///
    /// # Errors
    /// A readable reason when a value is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.p == 0 || self.p > 16 {
            return Err(format!("argon2 lanes must be 1..=16, got {}", self.p));
        }
        if self.t == 0 || self.t > 64 {
            return Err(format!("argon2 passes must be 1..=64, got {}", self.t));
        }
        if self.m_kib < 8 * self.p || self.m_kib > Self::MAX_M_KIB {
            return Err(format!(
                "argon2 memory must be {}..={} KiB, got {}",
                8 * self.p,
                Self::MAX_M_KIB,
                self.m_kib
            ));
        }
        if u64::from(self.m_kib) * u64::from(self.t) > Self::MAX_COST {
            return Err(format!(
                "argon2 memory × passes must be at most {} KiB, got {}",
                Self::MAX_COST,
                u64::from(self.m_kib) * u64::from(self.t)
            ));
        }
        Ok(())
    }
}

impl Default for KsfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for KsfParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m={},t={},p={}", self.m_kib, self.t, self.p)
    }
}

impl std::str::FromStr for KsfParams {
    type Err = String;

    /// Parses `m=KIB,t=N,p=N` (any order, all three required).
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut m, mut t, mut p) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected m=KIB,t=N,p=N, got {s:?}"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("not a number in {part:?}"))?;
            match k.trim() {
                "m" => m = Some(v),
                "t" => t = Some(v),
                "p" => p = Some(v),
                other => return Err(format!("unknown argon2 parameter {other:?}")),
            }
        }
        let params = KsfParams {
            m_kib: m.ok_or("missing m=")?,
            t: t.ok_or("missing t=")?,
            p: p.ok_or("missing p=")?,
        };
        params.validate()?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let p: KsfParams = "m=64,t=1,p=1".parse().unwrap();
        assert_eq!(
            p,
            KsfParams {
                m_kib: 64,
                t: 1,
                p: 1
            }
        );
        assert!("m=1,t=1,p=1".parse::<KsfParams>().is_err());
        assert!("m=64,t=1".parse::<KsfParams>().is_err());
        assert!("m=64,t=0,p=1".parse::<KsfParams>().is_err());
        assert!(KsfParams::DEFAULT.validate().is_ok());
        assert!(
            "m=1048576,t=8,p=1".parse::<KsfParams>().is_err(),
            "cost cap"
        );
        assert_eq!(
            KsfParams::DEFAULT.to_string().parse::<KsfParams>().unwrap(),
            KsfParams::DEFAULT
        );
        assert!(KsfParams::DEFAULT.meets(&p));
        assert!(!p.meets(&KsfParams::DEFAULT));
    }
}
