//! Server memory with one client that stops reading while others chat.
//!
//! ```sh
//! scripts/slow-consumer.sh        # starts a release server and runs this
//! ```
//!
//! Arguments: server URL, server PID, chatting pairs, seconds. A user
//! `slow` logs in, syncs (so it takes live pushes), and then never reads
//! again; every chatter also writes to `slow`. The server's resident memory
//! is sampled from /proc every second.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use telepound_client::{Client, account};
use telepound_protocol::UserName;
use telepound_protocol::auth::KsfParams;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One sample from the server's /metrics.
async fn metric(url: &str, series: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://");
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return "?".into();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "?".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:7878".into());
    let pid: u32 = args.get(2).ok_or("server pid")?.parse()?;
    let pairs: usize = args.get(3).map_or(Ok(8), |s| s.parse())?;
    let secs: u64 = args.get(4).map_or(Ok(20), |s| s.parse())?;
    let ksf: KsfParams = "m=64,t=1,p=1".parse()?;
    let pw = b"slow consumer test password";
    let home = tempfile::tempdir()?;
    let name = |s: String| UserName::new(s).unwrap();
    let slow = name("slow".into());
    let mut users = vec![slow.clone()];
    for i in 0..pairs {
        users.push(name(format!("c{i}a")));
        users.push(name(format!("c{i}b")));
    }
    for u in &users {
        let (c, _e) = Client::connect(&url).await?;
        let _ = account::signup(&c, u, pw, ksf).await;
        c.close().await;
    }
    println!("baseline: server RSS {} KiB", rss_kib(pid));

    // The slow consumer: a raw connection that resumes, syncs, then never
    // reads another byte.
    let (c, _e) = Client::connect(&url).await?;
    let s = account::login(&c, &slow, pw, home.path()).await?;
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(s.token());
    let (mut raw, _) = tokio_tungstenite::connect_async(format!("{url}/v1/ws")).await?;
    raw.send(format!(r#"{{"type":"resume","rid":1,"user":"slow","token":"{token}"}}"#).into())
        .await?;
    raw.send(r#"{"type":"sync","rid":2,"after":0,"limit":1}"#.into())
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let (a, b) = (name(format!("c{i}a")), name(format!("c{i}b")));
        let (url, slow, dir) = (url.clone(), slow.clone(), home.path().to_owned());
        tasks.push(tokio::spawn(async move {
            let (ca, _ea) = Client::connect(&url).await.unwrap();
            let mut sa = account::login(&ca, &a, pw, &dir).await.unwrap();
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let text = "x".repeat(1000);
                sa.send_text(&b, &text).await.unwrap();
                sa.send_text(&slow, &text).await.unwrap();
                sent += 2;
            }
            sent
        }));
    }
    let mut peak = 0;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = rss_kib(pid);
        peak = peak.max(r);
        samples.push(r);
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    s.client().close().await;
    let kicked = metric(
        &url,
        "telepound_disconnects_total{reason=\"slow_consumer\"}",
    )
    .await;
    println!("samples (KiB, 1/s): {samples:?}");
    println!(
        "{pairs} chatting pairs sent {sent} messages in {secs} s ({} to the slow consumer); server RSS peak {peak} KiB, end {} KiB; connections dropped as slow consumers: {kicked}",
        sent / 2,
        rss_kib(pid),
    );
    drop(raw);
    Ok(())
}
