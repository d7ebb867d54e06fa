//! Times a login and a send→receive against a running server.
//!
//! ```sh
//! telepound serve &            # release build, default Argon2 floor
//! cargo run --release -p telepound-client --example roundtrip -- ws://127.0.0.1:7878 200
//! ```
//!
//! Signs up two fresh users with the default Argon2id cost (m=19456, t=2),
//! then reports the time of one full login (OPAQUE with Argon2id on the
//! client, key-backup opening) and the send→receive latency: sealing on
//! alice's side, the server's durable `accepted`, the live push, and bob
//! opening and verifying it (median, p90 and max of N messages).

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

    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        alice.send_text(&b, &format!("ping {i}")).await?;
        loop {
            let ev = eb.recv().await.ok_or("bob's connection closed")?;
            let mut acks = Vec::new();
            let shown = bob.handle_event(ev, &mut acks).await?;
            bob.ack(acks).await?;
            if let Some(Inbound::Message(_)) = shown {
                break;
            }
        }
        rtts.push(t.elapsed());
    }
    logins.sort();
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "login (Argon2id m=19456 t=2, OPAQUE, backup open): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} logins",
        ms(logins[logins.len() / 2]),
        ms(logins[0]),
        ms(logins[logins.len() - 1]),
        logins.len()
    );
    println!(
        "send->receive (seal, durable accept, push, open+verify, ack): median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {n} messages",
        ms(rtts[n / 2]),
        ms(rtts[n * 9 / 10]),
        ms(rtts[n - 1])
    );
    Ok(())
}
