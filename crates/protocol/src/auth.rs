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
    type Ksf = Argon2Ksf;
}

/// Argon2id as OPAQUE's key-stretching function: the same hash as
/// opaque-ke's own `Ksf` for `Argon2` (a salt of 16 zero bytes, as the
/// OPAQUE RFC has it), so existing registrations still log in, except that
/// its working memory (19 MiB at the default cost) is wiped before it goes
/// back to the allocator, and the copy of the OPRF output it is handed is
/// wiped once hashed. opaque-ke's, through `Argon2::hash_password_into`,
/// frees the memory as it is: the last pass's blocks are enough to compute
/// the hash's output, and from it the key that opens the user's private
/// keys. (What opaque-ke keeps of its own, its original of the OPRF output
/// and the hash's result, and Argon2's 1 KiB buffer on the stack, are out
/// of reach here.)
#[derive(Default)]
pub struct Argon2Ksf(argon2::Argon2<'static>);

impl Argon2Ksf {
    /// Argon2id (version 0x13) with these parameters.
    pub fn new(params: argon2::Params) -> Self {
        Self(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// Hashes `input` with `salt` into `out`, then wipes the memory it used.
    ///
    /// # Errors
    /// Argon2's, for an output or salt of a length it does not take.
    pub fn hash_into(&self, input: &[u8], salt: &[u8], out: &mut [u8]) -> argon2::Result<()> {
        // Wiped when dropped, on every path out, an unwinding one too.
        let mut memory = zeroize::Zeroizing::new(vec![
            argon2::Block::default();
            self.0.params().block_count()
        ]);
        self.0
            .hash_password_into_with_memory(input, salt, out, memory.as_mut_slice())
    }
}

impl opaque_ke::ksf::Ksf for Argon2Ksf {
    fn hash<L: opaque_ke::generic_array::ArrayLength<u8>>(
        &self,
        mut input: opaque_ke::generic_array::GenericArray<u8, L>,
    ) -> Result<opaque_ke::generic_array::GenericArray<u8, L>, opaque_ke::errors::InternalError>
    {
        let input = WipeOnDrop(input.as_mut_slice());
        let mut output = opaque_ke::generic_array::GenericArray::default();
        self.hash_into(&*input.0, &[0; argon2::RECOMMENDED_SALT_LEN], &mut output)
            .map_err(|_| opaque_ke::errors::InternalError::KsfError)?;
        Ok(output)
    }
}

/// Wipes the bytes it holds when dropped: on every path out, an unwinding
/// one too.
struct WipeOnDrop<'a>(&'a mut [u8]);

impl Drop for WipeOnDrop<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.0);
    }
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

    /// The suite's stretching function computes what opaque-ke's own
    /// `Argon2` one does, so records registered with it still log in.
    #[test]
    fn wiping_ksf_hashes_as_opaque_kes_argon2() {
        use opaque_ke::generic_array::GenericArray;
        use opaque_ke::generic_array::typenum::U64;
        use opaque_ke::ksf::Ksf;
        for (m, t) in [(64, 1), (256, 2), (1024, 3)] {
            let params = || argon2::Params::new(m, t, 1, None).unwrap();
            let theirs = argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                params(),
            );
            let ours = Argon2Ksf::new(params());
            for input in [[0u8; 64], [7u8; 64]] {
                let input = GenericArray::<u8, U64>::clone_from_slice(&input);
                let expected = theirs.hash(input).unwrap();
                assert_eq!(ours.hash(input).unwrap(), expected, "m={m} t={t}");
                assert_ne!(expected, input);
            }
        }
    }
}
