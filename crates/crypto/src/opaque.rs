//! The client half of OPAQUE registration and login.
//!
//! Each step takes and returns wire bytes; the state between steps is an
//! opaque value that zeroizes itself. The password is used only here, on the
//! client, and never sent anywhere, not even hashed.

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use rand_core_06::OsRng;
use telepound_protocol::UserName;
use telepound_protocol::auth::{Argon2Ksf, KsfParams, LOGIN_CONTEXT, Suite, identifiers};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

/// OPAQUE's export key: 64 bytes known only to a client with the password.
pub type ExportKey = Zeroizing<Vec<u8>>;

/// Builds the Argon2id instance for `params`: the suite's key-stretching
/// function, which wipes its working memory after each hash.
///
/// # Errors
/// [`Error::Ksf`] when the parameters are out of range.
pub fn argon2(params: &KsfParams) -> Result<Argon2Ksf> {
    params.validate().map_err(Error::Ksf)?;
    let p = opaque_ke::argon2::Params::new(params.m_kib, params.t, params.p, None)
        .map_err(|e| Error::Ksf(e.to_string()))?;
    Ok(Argon2Ksf::new(p))
}

/// Client state between `register_start` and `register_finish`.
pub struct Registration(ClientRegistration<Suite>);

/// Client state between `login_start` and `login_finish`.
pub struct Login(ClientLogin<Suite>);

/// Starts registration; returns the state and the `RegistrationRequest` bytes.
///
/// # Errors
/// [`Error::Opaque`] if OPAQUE refuses the password (it never does for
/// non-empty input).
pub fn register_start(password: &[u8]) -> Result<(Registration, Vec<u8>)> {
    let r = ClientRegistration::<Suite>::start(&mut OsRng, password).map_err(|_| Error::Opaque)?;
    Ok((Registration(r.state), r.message.serialize().to_vec()))
}

/// Finishes registration; returns the `RegistrationUpload` bytes and the
/// export key.
///
/// # Errors
/// [`Error::Opaque`] for a malformed server response, [`Error::Ksf`] for
/// bad parameters.
pub fn register_finish(
    state: Registration,
    password: &[u8],
    user: &UserName,
    response: &[u8],
    ksf: &KsfParams,
) -> Result<(Vec<u8>, ExportKey)> {
    let response =
        RegistrationResponse::<Suite>::deserialize(response).map_err(|_| Error::Opaque)?;
    let argon = argon2(ksf)?;
    let mut r = state
        .0
        .finish(
            &mut OsRng,
            password,
            response,
            ClientRegistrationFinishParameters::new(identifiers(user), Some(&argon)),
        )
        .map_err(|_| Error::Opaque)?;
    let export_key = Zeroizing::new(r.export_key.to_vec());
    // opaque-ke's result type does not wipe itself.
    r.export_key.as_mut_slice().zeroize();
    Ok((r.message.serialize().to_vec(), export_key))
}

/// Starts a login; returns the state and the `CredentialRequest` bytes.
///
/// # Errors
/// [`Error::Opaque`] if OPAQUE refuses the password.
pub fn login_start(password: &[u8]) -> Result<(Login, Vec<u8>)> {
    let r = ClientLogin::<Suite>::start(&mut OsRng, password).map_err(|_| Error::Opaque)?;
    Ok((Login(r.state), r.message.serialize().to_vec()))
}

/// Finishes a login; returns the `CredentialFinalization` bytes and the
/// export key.
///
/// # Errors
/// [`Error::Opaque`] when the password is wrong (or the server's answer is
/// forged), [`Error::Ksf`] for bad parameters.
pub fn login_finish(
    state: Login,
    password: &[u8],
    user: &UserName,
    response: &[u8],
    ksf: &KsfParams,
) -> Result<(Vec<u8>, ExportKey)> {
    let response = CredentialResponse::<Suite>::deserialize(response).map_err(|_| Error::Opaque)?;
    let argon = argon2(ksf)?;
    let mut r = state
        .0
        .finish(
            &mut OsRng,
            password,
            response,
            ClientLoginFinishParameters::new(Some(LOGIN_CONTEXT), identifiers(user), Some(&argon)),
        )
        .map_err(|_| Error::Opaque)?;
    let export_key = Zeroizing::new(r.export_key.to_vec());
    // opaque-ke's result type does not wipe itself. Its session key is
    // not used: the login's WebSocket is the session.
    r.export_key.as_mut_slice().zeroize();
    r.session_key.as_mut_slice().zeroize();
    Ok((r.message.serialize().to_vec(), export_key))
}
