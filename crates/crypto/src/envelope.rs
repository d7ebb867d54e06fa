//! Message envelopes: a payload signed by its sender, encrypted once, with
//! the content key wrapped for every recipient.
//!
//! Suite `tp2`, the one sealed:
//!
//! ```text
//! payload   = JSON { msg_id, sender, recipients, group, group_epoch, sent_at, text, attachments }
//! commit    = HKDF-SHA256(content_key, info = "telepound/tp2/commit")   (32 bytes)
//! header    = "tp2" ‖ msg_id ‖ sender ‖ recipients ‖ group ‖ commit   (the AAD)
//! sig       = Ed25519(sender identity, "telepound/tp2/sig\0" ‖ header ‖ payload)
//! body      = nonce ‖ XChaCha20-Poly1305(content_key, aad = header, sig ‖ payload)
//! wrap[r]   = HPKE base mode (X-Wing, HKDF-SHA256, ChaCha20-Poly1305) to r's KEM key,
//!             info = "telepound/tp2/wrap", aad = header ‖ 0 ‖ r, plaintext = content_key
//! wrap[sender] = nonce ‖ XChaCha20-Poly1305(self_key, aad = header ‖ 0 ‖ sender, content_key)
//! self_key  = HKDF-SHA256(ikm = the sender's 32-byte X-Wing private key seed, no salt,
//!                         info = "telepound/tp2/self-wrap")   (32 bytes)
//! ```
//!
//! Nonces are 24 random bytes.
//!
//! The sender is always one of the recipients, so the sender's own copy
//! (local history, and a group message re-sealed after a membership
//! change) opens with the sender's keys like any other. In `tp2` that copy
//! is wrapped with a symmetric key only the sender's private keys give,
//! so it costs 72 bytes instead of 1168 (a 1120-byte KEM ciphertext and
//! the 48-byte sealed key): every machine that opens the sender's key
//! backup derives the same key. The self key lives as long as the KEM
//! key: a future rotation of the KEM key must keep the old seeds, or the
//! sent messages in local history no longer open.
//!
//! Suite `tp1` (still opened, for history and mailboxes written before
//! `tp2`) is the same with `tp1` in every label and an HPKE wrap for the
//! sender too.
//!
//! `commit` makes the body key-committing: ChaCha20-Poly1305 alone is not,
//! so without it a sender could wrap different content keys for different
//! recipients and have one body open to two different signed payloads. The
//! commitment is in the header, hence under the signature, and every
//! recipient checks that the key it unwrapped is the one committed to.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use telepound_protocol::message::{B64, UnixMillis};
use telepound_protocol::{GroupName, MsgId, UserName};
use zeroize::Zeroizing;

use crate::identity::{Identity, PeerKeys};
use crate::{Error, Result, xchacha};

/// The suite this version seals.
pub const SUITE_TP2: &str = "tp2";
/// The suite before `tp2`: opened, never sealed.
pub const SUITE_TP1: &str = "tp1";

/// A suite's name and domain-separation labels.
struct Suite {
    name: &'static str,
    sig: &'static [u8],
    wrap: &'static [u8],
    commit: &'static [u8],
    /// Whether the sender's own wrap is symmetric (under the self key).
    self_wrap: bool,
}

const TP2: Suite = Suite {
    name: SUITE_TP2,
    sig: b"telepound/tp2/sig\0",
    wrap: b"telepound/tp2/wrap",
    commit: b"telepound/tp2/commit",
    self_wrap: true,
};

const TP1: Suite = Suite {
    name: SUITE_TP1,
    sig: b"telepound/tp1/sig\0",
    wrap: b"telepound/tp1/wrap",
    commit: b"telepound/tp1/commit",
    self_wrap: false,
};

fn suite(name: &str) -> Option<&'static Suite> {
    match name {
        SUITE_TP2 => Some(&TP2),
        SUITE_TP1 => Some(&TP1),
        _ => None,
    }
}
/// Ed25519 signature length.
const SIG_LEN: usize = 64;

/// A file attached to a message: everything a recipient needs to fetch,
/// decrypt and check it. Travels only inside the encrypted payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The server's id for the encrypted blob.
    pub blob_id: String,
    /// The file's content key (32 bytes); wiped from memory on drop.
    pub key: SecretBytes,
    /// Plaintext size in bytes.
    pub size: u64,
    /// The name the sender gave it (untrusted; reduce before saving).
    pub name: String,
    /// Media type, e.g. `image/png`.
    pub media_type: String,
    /// SHA-256 of the plaintext.
    pub sha256: B64,
    /// Width and height, when the sender recognised an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSize>,
}

/// Secret bytes (a file key): base64 in JSON like [`B64`], wiped from
/// memory when dropped, and never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes` (moved, not copied).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine;
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.0));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use base64::Engine;
        let text = Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Self::new)
            .map_err(serde::de::Error::custom)
    }
}

/// An image's dimensions in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The signed, encrypted content of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Same as the envelope's.
    pub msg_id: MsgId,
    /// Who wrote it.
    pub sender: UserName,
    /// Everyone it is encrypted to, sorted, including the sender.
    pub recipients: Vec<UserName>,
    /// The group it was sent to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    /// The sender's clock when it was written.
    pub sent_at: UnixMillis,
    /// The message text.
    pub text: String,
    /// Attached files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// For a group message: the epoch of the signed membership the sender
    /// sealed it for (see `telepound_protocol::group`). Recipients show it
    /// only if the sender was a member then and `recipients` is exactly
    /// that membership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_epoch: Option<u64>,
}

/// One recipient's wrapped content key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wrap {
    /// The recipient.
    pub to: UserName,
    /// HPKE encapsulated key (1120 bytes for X-Wing); absent on the
    /// sender's own wrap in `tp2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<B64>,
    /// The content key: HPKE-sealed (32 + 16 bytes), or for the sender's
    /// own wrap in `tp2`, nonce ‖ XChaCha20-Poly1305 (24 + 32 + 16 bytes).
    pub key: B64,
}

/// The envelope as it travels: a cleartext header the server may route by,
/// and ciphertext.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Encryption suite and version; clients refuse suites they do not know.
    pub suite: String,
    /// The message id.
    pub msg_id: MsgId,
    /// The sender.
    pub sender: UserName,
    /// Everyone it is encrypted to, sorted, including the sender.
    pub recipients: Vec<UserName>,
    /// The group, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    /// Commitment to the content key (see the module docs).
    pub commit: B64,
    /// nonce ‖ XChaCha20-Poly1305(sig ‖ payload).
    pub body: B64,
    /// One wrapped content key per recipient.
    pub wraps: Vec<Wrap>,
}

/// A message that opened and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedMessage {
    /// The verified payload.
    pub payload: Payload,
}

fn commitment(suite: &Suite, content_key: &[u8; 32]) -> [u8; 32] {
    let mut c = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, content_key)
        .expand(suite.commit, &mut c)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    c
}

fn header(
    suite: &Suite,
    msg_id: &MsgId,
    sender: &UserName,
    recipients: &[UserName],
    group: Option<&GroupName>,
    commit: &[u8],
) -> Vec<u8> {
    // Names are [a-z0-9_-] only, so NUL and ',' separate them unambiguously.
    let mut h = Vec::with_capacity(64 + recipients.len() * 16);
    h.extend_from_slice(suite.name.as_bytes());
    h.push(0);
    h.extend_from_slice(msg_id.to_string().as_bytes());
    h.push(0);
    h.extend_from_slice(sender.as_str().as_bytes());
    h.push(0);
    for (i, r) in recipients.iter().enumerate() {
        if i > 0 {
            h.push(b',');
        }
        h.extend_from_slice(r.as_str().as_bytes());
    }
    h.push(0);
    if let Some(g) = group {
        h.extend_from_slice(g.as_str().as_bytes());
    }
    h.push(0);
    h.extend_from_slice(commit);
    h
}

fn wrap_aad(header: &[u8], to: &UserName) -> Vec<u8> {
    let mut a = header.to_vec();
    a.push(0);
    a.extend_from_slice(to.as_str().as_bytes());
    a
}

/// Sorts and de-duplicates a recipient list, the canonical form.
pub fn canonical_recipients(mut names: Vec<UserName>) -> Vec<UserName> {
    names.sort();
    names.dedup();
    names
}

/// Seals `payload` from `sender` to every recipient in `keys` (which must be
/// exactly `payload.recipients`, sender included) and returns the envelope
/// as JSON text, in suite `tp2`. The sender's own entry in `keys` is not
/// used: the sender's copy is wrapped under `sender`'s self key.
///
/// # Errors
/// [`Error::Malformed`] when the key list and the payload's recipients
/// differ or the sender is not a recipient.
pub fn seal(sender: &Identity, payload: &Payload, keys: &[(UserName, PeerKeys)]) -> Result<String> {
    if payload.recipients != canonical_recipients(payload.recipients.clone()) {
        return Err(Error::Malformed(
            "recipients must be sorted and unique".into(),
        ));
    }
    if !payload.recipients.contains(&payload.sender) {
        return Err(Error::Malformed("the sender must be a recipient".into()));
    }
    let mut names: Vec<UserName> = keys.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    if names != payload.recipients {
        return Err(Error::Malformed(
            "keys do not match the recipient list".into(),
        ));
    }
    let suite = &TP2;
    let mut content_key = Zeroizing::new([0u8; 32]);
    crate::random_bytes(content_key.as_mut());
    let commit = commitment(suite, &content_key);
    let hdr = header(
        suite,
        &payload.msg_id,
        &payload.sender,
        &payload.recipients,
        payload.group.as_ref(),
        &commit,
    );
    let payload_json = Zeroizing::new(serde_json::to_vec(payload).expect("payload serialises"));
    let signed = signed_message(suite, &hdr, &payload_json);
    let sig = sender.sign(&signed);

    let mut plain = Zeroizing::new(Vec::with_capacity(SIG_LEN + payload_json.len()));
    plain.extend_from_slice(&sig.to_bytes());
    plain.extend_from_slice(&payload_json);

    let body = xchacha::seal(&content_key, &hdr, &plain);

    let mut wraps = Vec::with_capacity(keys.len());
    for (to, peer) in keys {
        let aad = wrap_aad(&hdr, to);
        let wrap = if to == &payload.sender {
            Wrap {
                to: to.clone(),
                enc: None,
                key: B64(xchacha::seal(
                    sender.self_wrap_key(),
                    &aad,
                    content_key.as_ref(),
                )),
            }
        } else {
            let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
                &OpModeS::Base,
                peer.kem(),
                suite.wrap,
                content_key.as_ref(),
                &aad,
            )
            .map_err(|_| Error::InvalidKey("kem key"))?;
            Wrap {
                to: to.clone(),
                enc: Some(B64(enc.to_bytes().to_vec())),
                key: B64(ct),
            }
        };
        wraps.push(wrap);
    }
    wraps.sort_by(|a, b| a.to.cmp(&b.to));
    let env = Envelope {
        suite: suite.name.to_owned(),
        msg_id: payload.msg_id,
        sender: payload.sender.clone(),
        recipients: payload.recipients.clone(),
        group: payload.group.clone(),
        commit: B64(commit.to_vec()),
        body: B64(body),
        wraps,
    };
    Ok(serde_json::to_string(&env).expect("envelope serialises"))
}

/// What the sender signs: the suite's context, the header, the payload
/// (wiped on drop: the payload holds the text and any file keys).
fn signed_message(suite: &Suite, hdr: &[u8], payload_json: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut signed = Zeroizing::new(Vec::with_capacity(
        suite.sig.len() + hdr.len() + payload_json.len(),
    ));
    signed.extend_from_slice(suite.sig);
    signed.extend_from_slice(hdr);
    signed.extend_from_slice(payload_json);
    signed
}

impl Envelope {
    /// Parses envelope JSON and checks its suite.
    ///
    /// # Errors
    /// [`Error::UnknownSuite`] for a suite other than `tp2` or `tp1`,
    /// [`Error::Malformed`] for anything not shaped like an envelope.
    pub fn parse(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct SuiteName {
            suite: String,
        }
        let s: SuiteName =
            serde_json::from_str(json).map_err(|e| Error::Malformed(e.to_string()))?;
        if suite(&s.suite).is_none() {
            return Err(Error::UnknownSuite(s.suite.chars().take(32).collect()));
        }
        serde_json::from_str(json).map_err(|e| Error::Malformed(e.to_string()))
    }

    /// Opens the envelope as `me`, verifying it was written by the holder of
    /// `sender_keys` and addressed exactly as its header says.
    ///
    /// # Errors
    /// [`Error::NotForMe`] when `me` is not a recipient, [`Error::Tampered`]
    /// when any decryption or the signature fails, [`Error::Malformed`] when
    /// the payload disagrees with the header.
    pub fn open(
        &self,
        me: &Identity,
        my_name: &UserName,
        sender_keys: &PeerKeys,
    ) -> Result<OpenedMessage> {
        if !self.recipients.contains(my_name) {
            return Err(Error::NotForMe);
        }
        if self.recipients != canonical_recipients(self.recipients.clone()) {
            return Err(Error::Malformed("recipient list not canonical".into()));
        }
        let suite = suite(&self.suite)
            .ok_or_else(|| Error::UnknownSuite(self.suite.chars().take(32).collect()))?;
        let wrap = self
            .wraps
            .iter()
            .find(|w| &w.to == my_name)
            .ok_or(Error::NotForMe)?;
        let hdr = header(
            suite,
            &self.msg_id,
            &self.sender,
            &self.recipients,
            self.group.as_ref(),
            &self.commit.0,
        );
        let aad = wrap_aad(&hdr, my_name);
        let key = Zeroizing::new(match &wrap.enc {
            // The sender's own copy: only the sender's keys give the self key.
            None if suite.self_wrap && my_name == &self.sender => {
                xchacha::open(me.self_wrap_key(), &aad, &wrap.key.0)
                    .ok_or(Error::Tampered("content key"))?
            }
            Some(enc) if !(suite.self_wrap && my_name == &self.sender) => {
                let enc = <XWing as hpke::Kem>::EncappedKey::from_bytes(&enc.0)
                    .map_err(|_| Error::Tampered("encapsulated key"))?;
                hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, XWing>(
                    &OpModeR::Base,
                    me.kem_secret(),
                    &enc,
                    suite.wrap,
                    &wrap.key.0,
                    &aad,
                )
                .map_err(|_| Error::Tampered("content key"))?
            }
            _ => return Err(Error::Tampered("wrap of the wrong kind")),
        });
        let key: &[u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| Error::Tampered("content key length"))?;
        {
            use subtle::ConstantTimeEq;
            if !bool::from(commitment(suite, key).ct_eq(self.commit.0.as_slice())) {
                return Err(Error::Tampered("content key does not match its commitment"));
            }
        }
        let plain =
            Zeroizing::new(xchacha::open(key, &hdr, &self.body.0).ok_or(Error::Tampered("body"))?);
        if plain.len() < SIG_LEN {
            return Err(Error::Tampered("body too short"));
        }
        let (sig, payload_json) = plain.split_at(SIG_LEN);
        let sig = ed25519_dalek::Signature::from_slice(sig)
            .map_err(|_| Error::Tampered("signature encoding"))?;
        let signed = signed_message(suite, &hdr, payload_json);
        sender_keys
            .verifying_key()
            .verify_strict(&signed, &sig)
            .map_err(|_| Error::Tampered("signature"))?;
        let payload: Payload =
            serde_json::from_slice(payload_json).map_err(|e| Error::Malformed(e.to_string()))?;
        if payload.msg_id != self.msg_id
            || payload.sender != self.sender
            || payload.recipients != self.recipients
            || payload.group != self.group
        {
            return Err(Error::Malformed(
                "payload does not match the envelope header".into(),
            ));
        }
        Ok(OpenedMessage { payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_travel_as_base64_and_never_show() {
        let key = SecretBytes::new(vec![7u8; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, serde_json::to_string(&B64(vec![7u8; 32])).unwrap());
        let back: SecretBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert_eq!(format!("{key:?}"), "SecretBytes(<32 bytes>)");
    }

    fn name(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    fn payload(sender: &str, to: &[&str]) -> Payload {
        let mut r: Vec<UserName> = to.iter().map(|s| name(s)).collect();
        r.push(name(sender));
        Payload {
            msg_id: MsgId::new(),
            sender: name(sender),
            recipients: canonical_recipients(r),
            group: None,
            sent_at: 1_700_000_000_000,
            text: "hello bob".into(),
            attachments: vec![],
            group_epoch: None,
        }
    }

    /// The server reads a send in one pass only when it is written as
    /// clients write it: a real sealed envelope (whatever its text held)
    /// in the frame the client library encodes must take that path.
    #[test]
    fn a_sealed_send_takes_the_servers_one_pass_reader() {
        use telepound_protocol::ClientMessage;
        use telepound_protocol::codec::{decode_client, encode, reads_send_in_one_pass};
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let mut p = payload("alice", &["bob"]);
        p.text = "quotes \" and \\ and a\nnewline, ünïcødé, \u{1}".into();
        let json = seal(&alice, &p, &keys_of(&alice, &bob)).unwrap();
        for rid in [None, Some(1), Some(u64::MAX)] {
            let frame = encode(&ClientMessage::Send {
                rid,
                msg_id: p.msg_id,
                from: name("alice"),
                to: name("bob"),
                envelope: telepound_protocol::message::RawJson::parse(&json).unwrap(),
            });
            assert!(reads_send_in_one_pass(&frame), "{frame}");
            let Ok(ClientMessage::Send { envelope, .. }) = decode_client(&frame, usize::MAX) else {
                panic!("not read as a send")
            };
            assert_eq!(envelope.get(), json);
        }
    }

    #[test]
    fn recipient_and_sender_open_others_cannot() {
        let (alice, bob, eve) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let p = payload("alice", &["bob"]);
        let keys = keys_of(&alice, &bob);
        let json = seal(&alice, &p, &keys).unwrap();
        assert!(!json.contains("hello bob"));
        let env = Envelope::parse(&json).unwrap();
        assert_eq!(
            env.open(&bob, &name("bob"), &alice.peer_keys())
                .unwrap()
                .payload,
            p
        );
        assert_eq!(
            env.open(&alice, &name("alice"), &alice.peer_keys())
                .unwrap()
                .payload,
            p
        );
        assert!(matches!(
            env.open(&eve, &name("eve"), &alice.peer_keys()),
            Err(Error::NotForMe)
        ));
        // Eve claiming to be bob cannot unwrap bob's key.
        assert!(matches!(
            env.open(&eve, &name("bob"), &alice.peer_keys()),
            Err(Error::Tampered(_))
        ));
        // A signature by the wrong key fails.
        assert!(matches!(
            env.open(&bob, &name("bob"), &eve.peer_keys()),
            Err(Error::Tampered("signature"))
        ));
    }

    #[test]
    fn tampering_with_the_header_or_body_fails() {
        let (alice, bob, env) = alice_to_bob();

        let mut e = env.clone();
        e.msg_id = MsgId::new();
        assert!(e.open(&bob, &name("bob"), &alice.peer_keys()).is_err());

        let mut e = env.clone();
        e.body.0[30] ^= 1;
        assert!(e.open(&bob, &name("bob"), &alice.peer_keys()).is_err());

        let mut e = env.clone();
        e.group = Some(GroupName::new("g").unwrap());
        assert!(e.open(&bob, &name("bob"), &alice.peer_keys()).is_err());

        let mut e = env.clone();
        e.commit.0[0] ^= 1;
        assert!(e.open(&bob, &name("bob"), &alice.peer_keys()).is_err());
    }

    /// A sender who wraps a different content key for one recipient cannot
    /// make the same envelope open to something else for them: the key no
    /// longer matches the signed commitment.
    #[test]
    fn a_wrap_with_another_key_is_refused() {
        let (alice, bob, env) = alice_to_bob();
        let keys = keys_of(&alice, &bob);
        let other =
            Envelope::parse(&seal(&alice, &payload("alice", &["bob"]), &keys).unwrap()).unwrap();
        let mut forged = env.clone();
        let i = forged
            .wraps
            .iter()
            .position(|w| w.to == name("bob"))
            .unwrap();
        forged.wraps[i] = other.wraps[i].clone();
        let err = forged
            .open(&bob, &name("bob"), &alice.peer_keys())
            .unwrap_err();
        assert!(matches!(err, Error::Tampered(_)), "{err}");
    }

    /// Fresh alice and bob, and an envelope from alice to bob.
    fn alice_to_bob() -> (Identity, Identity, Envelope) {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let keys = keys_of(&alice, &bob);
        let env =
            Envelope::parse(&seal(&alice, &payload("alice", &["bob"]), &keys).unwrap()).unwrap();
        (alice, bob, env)
    }

    /// The recipients' keys of a message from alice to bob.
    fn keys_of(alice: &Identity, bob: &Identity) -> Vec<(UserName, PeerKeys)> {
        vec![
            (name("alice"), alice.peer_keys()),
            (name("bob"), bob.peer_keys()),
        ]
    }

    /// In `tp2` the sender's own copy is a 72-byte symmetric wrap that any
    /// machine holding the sender's key backup opens, and nobody else.
    #[test]
    fn tp2_wraps_the_senders_copy_with_the_self_key() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let keys = keys_of(&alice, &bob);
        let p = payload("alice", &["bob"]);
        let env = Envelope::parse(&seal(&alice, &p, &keys).unwrap()).unwrap();
        assert_eq!(env.suite, SUITE_TP2);
        let own = env.wraps.iter().find(|w| w.to == name("alice")).unwrap();
        assert!(own.enc.is_none());
        assert_eq!(own.key.0.len(), xchacha::NONCE_LEN + 32 + 16);
        let theirs = env.wraps.iter().find(|w| w.to == name("bob")).unwrap();
        assert_eq!(theirs.enc.as_ref().unwrap().0.len(), 1120);

        // Another machine: the identity restored from the backup bundle.
        let restored = Identity::from_bundle(&alice.to_bundle()).unwrap();
        let opened = env
            .open(&restored, &name("alice"), &alice.peer_keys())
            .unwrap();
        assert_eq!(opened.payload, p);
        // Bob cannot open the sender's copy, even naming himself alice.
        assert!(matches!(
            env.open(&bob, &name("alice"), &alice.peer_keys()),
            Err(Error::Tampered("content key"))
        ));
        // Alice naming herself bob gets no HPKE key out of bob's wrap.
        assert!(matches!(
            env.open(&alice, &name("bob"), &alice.peer_keys()),
            Err(Error::Tampered(_))
        ));
    }

    /// A wrap of the other kind is refused: an HPKE wrap where the
    /// sender's symmetric one belongs, a symmetric one for anyone else.
    #[test]
    fn tp2_refuses_a_wrap_of_the_wrong_kind() {
        let (alice, bob, env) = alice_to_bob();
        let (a, b) = (
            env.wraps
                .iter()
                .position(|w| w.to == name("alice"))
                .unwrap(),
            env.wraps.iter().position(|w| w.to == name("bob")).unwrap(),
        );
        let mut e = env.clone();
        e.wraps[a].enc = env.wraps[b].enc.clone();
        assert!(matches!(
            e.open(&alice, &name("alice"), &alice.peer_keys()),
            Err(Error::Tampered("wrap of the wrong kind"))
        ));
        let mut e = env.clone();
        e.wraps[b].enc = None;
        assert!(matches!(
            e.open(&bob, &name("bob"), &alice.peer_keys()),
            Err(Error::Tampered("wrap of the wrong kind"))
        ));
    }

    /// The fixtures' keys: alice is `fixed(1, 2)`, bob `fixed(3, 4)`.
    fn fixed(signing: u8, kem: u8) -> Identity {
        let mut v = vec![1u8];
        v.extend_from_slice(&[signing; 32]);
        v.extend_from_slice(&[kem; 32]);
        Identity::from_bundle(&v).unwrap()
    }

    /// The self key is HKDF-SHA256 of the KEM seed, as PROTOCOL.md says
    /// (computed independently with Python's hmac module).
    #[test]
    fn the_self_key_is_derived_as_documented() {
        let hex: String = fixed(1, 2)
            .self_wrap_key()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "630543b013edbf7448fa301e624bb3c0140cd1546dda5436673c5810c87201c7"
        );
    }

    /// An envelope whose wrap for `to` holds another key than the one
    /// committed to, under the right AAD, so only the commitment catches it.
    fn rewrap_with_another_key(env: &Envelope, to: &str, by: &Identity) -> Envelope {
        let suite = suite(&env.suite).unwrap();
        let hdr = header(
            suite,
            &env.msg_id,
            &env.sender,
            &env.recipients,
            env.group.as_ref(),
            &env.commit.0,
        );
        let aad = wrap_aad(&hdr, &name(to));
        let other = [9u8; 32];
        let mut e = env.clone();
        let w = e.wraps.iter_mut().find(|w| w.to == name(to)).unwrap();
        if w.enc.is_none() {
            w.key = B64(xchacha::seal(by.self_wrap_key(), &aad, &other));
        } else {
            let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
                &OpModeS::Base,
                by.peer_keys().kem(),
                suite.wrap,
                &other,
                &aad,
            )
            .unwrap();
            w.enc = Some(B64(enc.to_bytes().to_vec()));
            w.key = B64(ct);
        }
        e
    }

    #[test]
    fn a_key_other_than_the_committed_one_is_refused_on_both_paths() {
        let (alice, bob, env) = alice_to_bob();
        for (me, my_name) in [(&bob, "bob"), (&alice, "alice")] {
            let forged = rewrap_with_another_key(&env, my_name, me);
            assert!(matches!(
                forged.open(me, &name(my_name), &alice.peer_keys()),
                Err(Error::Tampered("content key does not match its commitment"))
            ));
        }
    }

    /// The sender's own copy is checked like anyone's: its header, and the
    /// signature against the keys the caller expects.
    #[test]
    fn the_senders_copy_is_checked_like_any_other() {
        let (alice, bob, env) = alice_to_bob();
        assert!(matches!(
            env.open(&alice, &name("alice"), &bob.peer_keys()),
            Err(Error::Tampered("signature"))
        ));
        let mut e = env.clone();
        e.msg_id = MsgId::new();
        assert!(matches!(
            e.open(&alice, &name("alice"), &alice.peer_keys()),
            Err(Error::Tampered("content key"))
        ));
    }

    /// Envelopes sealed by this code for fixed keys: the `tp1` one by the
    /// code before `tp2`, so both formats keep opening.
    const TP1_FIXTURE: &str = include_str!("../testdata/tp1_alice_to_bob.json");
    const TP2_FIXTURE: &str = include_str!("../testdata/tp2_alice_to_bob.json");

    #[test]
    fn tp2_fixture_opens() {
        let (alice, bob) = (fixed(1, 2), fixed(3, 4));
        let env = Envelope::parse(TP2_FIXTURE).unwrap();
        assert_eq!(env.suite, SUITE_TP2);
        for (me, my_name) in [(&bob, "bob"), (&alice, "alice")] {
            let opened = env.open(me, &name(my_name), &alice.peer_keys()).unwrap();
            assert_eq!(opened.payload.text, "sealed as tp2");
        }
    }

    /// A `tp1` envelope relabelled `tp2` (or the other way round) opens
    /// for nobody.
    #[test]
    fn relabelled_suites_do_not_open() {
        let (alice, bob) = (fixed(1, 2), fixed(3, 4));
        for (fixture, relabel) in [(TP1_FIXTURE, SUITE_TP2), (TP2_FIXTURE, SUITE_TP1)] {
            let mut env = Envelope::parse(fixture).unwrap();
            env.suite = relabel.to_owned();
            assert!(matches!(
                env.open(&bob, &name("bob"), &alice.peer_keys()),
                Err(Error::Tampered("content key"))
            ));
            // alice's wrap is of the other suite's kind.
            assert!(matches!(
                env.open(&alice, &name("alice"), &alice.peer_keys()),
                Err(Error::Tampered("wrap of the wrong kind"))
            ));
        }
    }

    /// An envelope sealed by the `tp1` code (kept as a fixture, with fixed
    /// keys) still opens for both its recipients.
    #[test]
    fn tp1_envelopes_still_open() {
        let (alice, bob) = (fixed(1, 2), fixed(3, 4));
        let env = Envelope::parse(include_str!("../testdata/tp1_alice_to_bob.json")).unwrap();
        assert_eq!(env.suite, SUITE_TP1);
        for (me, my_name) in [(&bob, "bob"), (&alice, "alice")] {
            let opened = env.open(me, &name(my_name), &alice.peer_keys()).unwrap();
            assert_eq!(opened.payload.text, "sealed as tp1");
            assert_eq!(opened.payload.sender, name("alice"));
        }
        assert!(matches!(
            env.open(&bob, &name("bob"), &bob.peer_keys()),
            Err(Error::Tampered("signature"))
        ));
    }

    #[test]
    fn unknown_suite_is_refused_with_a_clear_error() {
        let err = Envelope::parse(r#"{"suite":"tp9-mls"}"#).unwrap_err();
        assert!(err.to_string().contains("tp9-mls"));
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn seal_requires_matching_keys() {
        let alice = Identity::generate();
        let p = payload("alice", &["bob"]);
        assert!(seal(&alice, &p, &[(name("alice"), alice.peer_keys())]).is_err());
    }
}
