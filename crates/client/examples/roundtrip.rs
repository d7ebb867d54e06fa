//! Times a login and a send→receive against a running server.
//!
//! ```sh
//! scripts/roundtrip.sh 200     # a release server with default settings, then this
//! ```
//!
//! or by hand, against a server with the default Argon2 floor and, for
//! more than about 200 messages, `messages_per_second` and `message_burst`
//! raised (past its burst a connection is answered `rate_limited`, and the
//! figures would time the client's backoff):
//!
//! ```sh
//! cargo run --release -p telepound-client --example roundtrip -- ws://127.0.0.1:7878 200
//! ```
//!
//! Signs up two fresh users with the default Argon2id cost (m=19456, t=2),
//! then reports (median, p90 and max of N messages each):
//! - one full login (OPAQUE with Argon2id on the client, key-backup opening);
//! - send→receive: from alice starting to seal until bob, online and reading,
//!   has the message opened and verified;
//! - send→`accepted` while bob acknowledges at once (the server's ack
//!   window: no disk write when the acknowledgement comes first);
//! - send→`accepted` with bob offline: the durable write (fsync) path.
//!
//! Bob reads while alice waits for `accepted`: a recipient who read only
//! after the sender's `accepted` would hold every message for the whole ack
//! window and time the window, not the delivery.

use std::time::{Duration, Instant};

use telepound_client::{Client, Inbound, account};
use telepound_protocol::UserName;
use telepound_protocol::auth::KsfParams;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:7878".into());
    let n: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let tag = std::process::id();
    let (a, b) = (
        UserName::new(format!("ra{tag}"))?,
        UserName::new(format!("rb{tag}"))?,
    );
    let password = b"a long enough test password";
    let home = tempfile::tempdir()?;
    for u in [&a, &b] {
        let (c, _e) = Client::connect(&url).await?;
        account::signup(&c, u, password, KsfParams::DEFAULT).await?;
        c.close().await;
    }

    let mut logins = Vec::new();
    for _ in 0..5 {
        let (c, _e) = Client::connect(&url).await?;
        let t = Instant::now();
        let s = account::login(&c, &a, password, home.path()).await?;
        logins.push(t.elapsed());
        s.client().close().await;
    }
    let (ca, _ea) = Client::connect(&url).await?;
    let mut alice = account::login(&ca, &a, password, home.path()).await?;
    let (cb, mut eb) = Client::connect(&url).await?;
    let mut bob = account::login(&cb, &b, password, home.path()).await?;
    let page = bob.sync_page(0, 256).await?;
    assert!(!page.more);

    let mut received = Vec::with_capacity(n);
    let mut accepted_live = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("ping {i}");
        let t = Instant::now();
        let send = async {
            alice.send_text(&b, &text).await?;
            Ok::<_, Box<dyn std::error::Error>>(t.elapsed())
        };
        let receive = async {
            loop {
                let ev = eb.recv().await.ok_or("bob's connection closed")?;
                let mut acks = Vec::new();
                let shown = bob.handle_event(ev, &mut acks).await?;
                let at = t.elapsed();
                bob.ack(acks).await?;
                if let Some(Inbound::Message(_)) = shown {
                    return Ok::<_, Box<dyn std::error::Error>>(at);
                }
            }
        };
        let (sent, got) = tokio::join!(send, receive);
        accepted_live.push(sent?);
        received.push(got?);
    }
    bob.client().close().await;
    drop(eb);
    let mut accepted_offline = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        alice.send_text(&b, &format!("offline {i}")).await?;
        accepted_offline.push(t.elapsed());
    }
    logins.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "login (Argon2id m=19456 t=2, OPAQUE, backup open): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} logins",
        ms(logins[logins.len() / 2]),
        ms(logins[0]),
        ms(logins[logins.len() - 1]),
        logins.len()
    );
    for (what, mut v) in [
        ("send->receive (seal, live push, open+verify)", received),
        (
            "send->accepted, recipient online and acking (ack window)",
            accepted_live,
        ),
        (
            "send->accepted, recipient offline (durable write, fsync)",
            accepted_offline,
        ),
    ] {
        v.sort();
        println!(
            "{what}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {n} messages",
            ms(v[n / 2]),
            ms(v[n * 9 / 10]),
            ms(v[n - 1])
        );
    }
    Ok(())
}
