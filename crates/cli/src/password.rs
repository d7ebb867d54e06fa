//! Where the password comes from: `--password-file`, `TELEPOUND_PASSWORD`,
//! or a hidden prompt on the terminal.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

/// The password for a non-interactive command. `confirm` asks twice on a
/// terminal (sign-up).
pub fn obtain(file: Option<&Path>, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read password file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        return nonempty(Zeroizing::new(line.to_owned()));
    }
    if let Ok(p) = std::env::var("TELEPOUND_PASSWORD") {
        return nonempty(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password given: use --password-file FILE, set TELEPOUND_PASSWORD, or run in a terminal to be asked"
        );
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(if confirm {
            "Create Password: "
        } else {
            "Enter Password: "
        })
        .context("cannot read the password")?,
    );
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password("Confirm Password: ").context("cannot read the password")?,
        );
        if *first != *second {
            bail!("the passwords do not match");
        }
    }
    nonempty(first)
}

fn nonempty(p: Zeroizing<String>) -> anyhow::Result<Zeroizing<String>> {
    if p.is_empty() {
        bail!("the password is empty");
    }
    Ok(p)
}
