//! Sign-up and login.
//!
//! Both run OPAQUE: the password is stretched with Argon2id and used only
//! on this machine. Sign-up generates the user's keys and uploads them
//! sealed under a key derived from OPAQUE's export key; login downloads the
//! sealed keys and opens them, so the password alone is enough on a new
//! machine.

use std::path::Path;

use telepound_crypto::{Identity, backup, opaque};
use telepound_protocol::auth::KsfParams;
use telepound_protocol::message::B64;
use telepound_protocol::{ClientMessage, ErrorCode, ServerMessage, UserName};
use zeroize::Zeroizing;

use crate::{Client, Error, Result, Session};

fn unexpected(what: &str, got: &ServerMessage) -> Error {
    Error::Protocol(format!("expected {what}, got {got:?}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("password stretching does not panic")
}

/// Creates the account `user` with `password`, using `ksf` to stretch it.
///
/// # Errors
/// [`Error::Server`] with `user_taken` when the name is taken, or a
/// connection or protocol error.
pub async fn signup(
    client: &Client,
    user: &UserName,
    password: &[u8],
    ksf: KsfParams,
) -> Result<()> {
    ksf.validate().map_err(telepound_crypto::Error::Ksf)?;
    let password = Zeroizing::new(password.to_vec());
    let (state, request) = opaque::register_start(&password)?;
    let answer = client
        .request(ClientMessage::RegisterStart {
            rid: None,
            user: user.clone(),
            request: B64(request),
        })
        .await?;
    let ServerMessage::RegisterChallenge {
        response, min_ksf, ..
    } = answer
    else {
        return Err(unexpected("register_challenge", &answer));
    };
    if !ksf.meets(&min_ksf) {
        return Err(Error::Server {
            code: ErrorCode::BadKey,
            message: format!(
                "password stretching too weak: this server requires at least argon2 {min_ksf}, you chose {ksf}"
            ),
        });
    }
    let (identity, upload, sealed) = {
        let user = user.clone();
        blocking(move || -> Result<_> {
            let (upload, export_key) =
                opaque::register_finish(state, &password, &user, &response.0, &ksf)?;
            let identity = Identity::generate();
            let sealed = backup::seal(&identity, &user, &export_key);
            Ok((identity, upload, sealed))
        })
        .await?
    };
    let answer = client
        .request(ClientMessage::RegisterFinish {
            rid: None,
            user: user.clone(),
            upload: B64(upload),
            ksf,
            keys: identity.public_keys(),
            backup: B64(sealed),
        })
        .await?;
    match answer {
        ServerMessage::Registered { .. } => Ok(()),
        other => Err(unexpected("registered", &other)),
    }
}

/// Logs in as `user` and opens the key backup; local state lives under
/// `home/USER`.
///
/// # Errors
/// [`Error::Server`] with `unknown_user` or `auth_failed` (a wrong password
/// is detected on this side and reported with that code too), or a
/// connection, protocol or local-state error.
pub async fn login(
    client: &Client,
    user: &UserName,
    password: &[u8],
    home: &Path,
) -> Result<Session> {
    let (identity, token) = authenticate(client, user, password).await?;
    Session::new(client.clone(), user.clone(), identity, home, token)
}

/// Runs the OPAQUE login on `client`, opens the key backup and checks it
/// against the directory; returns the keys and the resume token.
///
/// # Errors
/// As [`login`].
pub(crate) async fn authenticate(
    client: &Client,
    user: &UserName,
    password: &[u8],
) -> Result<(Identity, Vec<u8>)> {
    let password = Zeroizing::new(password.to_vec());
    let (state, request) = opaque::login_start(&password)?;
    let answer = client
        .request(ClientMessage::LoginStart {
            rid: None,
            user: user.clone(),
            request: B64(request),
        })
        .await?;
    let ServerMessage::LoginChallenge { response, ksf, .. } = answer else {
        return Err(unexpected("login_challenge", &answer));
    };
    let finished = {
        let user = user.clone();
        blocking(move || opaque::login_finish(state, &password, &user, &response.0, &ksf)).await
    };
    let (finalization, export_key) = match finished {
        Ok(v) => v,
        Err(telepound_crypto::Error::Opaque) => {
            return Err(Error::Server {
                code: ErrorCode::AuthFailed,
                message: ErrorCode::AuthFailed.describe().to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let answer = client
        .request(ClientMessage::LoginFinish {
            rid: None,
            finalization: B64(finalization),
        })
        .await?;
    let ServerMessage::LoginOk {
        backup: sealed,
        keys,
        token,
        ..
    } = answer
    else {
        return Err(unexpected("login_ok", &answer));
    };
    let identity = backup::open(&sealed.0, user, &export_key)?;
    let mine = identity.public_keys();
    if mine.identity != keys.identity || mine.kem != keys.kem {
        return Err(Error::Protocol(
            "the server publishes keys that do not match your private keys".into(),
        ));
    }
    Ok((identity, token.0))
}
