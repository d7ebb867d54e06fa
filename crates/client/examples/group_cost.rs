//! The cost of one send to a group of N members (default 256): client time
//! to seal (one HPKE/X-Wing wrap per member but the sender), bytes on the wire, and the
//! time until the server has stored it for everyone.
//!
//! ```sh
//! scripts/group-cost.sh 256
//! ```

use std::time::{Duration, Instant};

use telepound_client::{Client, account};
use telepound_crypto::Payload;
use telepound_crypto::envelope::{self, canonical_recipients};
use telepound_protocol::auth::KsfParams;
use telepound_protocol::{GroupName, MsgId, UserName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:7878".into());
    let n: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let ksf: KsfParams = "m=64,t=1,p=1".parse()?;
    let pw = b"group cost password";
    let home = tempfile::tempdir()?;
    let name = |s: String| UserName::new(s).unwrap();
    let members: Vec<UserName> = (1..n).map(|i| name(format!("m{i:04}"))).collect();
    for u in members.iter().chain([&name("owner".into())]) {
        let (c, _e) = Client::connect(&url).await?;
        let _ = account::signup(&c, u, pw, ksf).await;
        c.close().await;
    }
    let (c, _e) = Client::connect(&url).await?;
    let mut owner = account::login(&c, &name("owner".into()), pw, home.path()).await?;
    let group = GroupName::new("big")?;
    owner.group_create(&group, members.clone()).await?;
    let mut all = members.clone();
    all.push(owner.user().clone());
    let keys = owner
        .peer_keys_many(&canonical_recipients(all.clone()))
        .await?;

    let mut seal = Vec::new();
    let mut total = Vec::new();
    let mut bytes = 0;
    for i in 0..20 {
        let payload = Payload {
            msg_id: MsgId::new(),
            sender: owner.user().clone(),
            recipients: canonical_recipients(all.clone()),
            group: Some(group.clone()),
            sent_at: 0,
            text: format!(
                "message {i} to everyone, about two hundred bytes of text: {}",
                "x".repeat(120)
            ),
            attachments: vec![],
            group_epoch: None,
        };
        let t = Instant::now();
        let sealed = envelope::seal(owner.identity(), &payload, &keys)?;
        seal.push(t.elapsed());
        bytes = sealed.len();
        let t = Instant::now();
        owner.send_group(&group, &payload.text, vec![]).await?;
        total.push(t.elapsed());
    }
    seal.sort();
    total.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "group of {n}: seal (one X-Wing wrap per member) median {:.1} ms; envelope {} bytes ({:.0} bytes per member); \
         send until stored for all members (seal + {n}-row group commit) median {:.1} ms, max {:.1} ms over 20 sends",
        ms(seal[10]),
        bytes,
        bytes as f64 / n as f64,
        ms(total[10]),
        ms(total[19])
    );
    Ok(())
}
