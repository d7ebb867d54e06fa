//! What a received file looks like on the terminal: a small inline image
//! where the terminal can show one (kitty's graphics protocol for PNG,
//! iTerm2's inline images, as WezTerm also speaks), else one line with the
//! type, dimensions and size.

use std::io::{IsTerminal, Write};
use std::path::Path;

use telepound_crypto::Attachment;

use crate::output::one_line;

/// Inline-image protocols a terminal speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graphics {
    /// kitty's graphics protocol (we send PNG, which it decodes itself).
    Kitty,
    /// iTerm2's inline images (any format the terminal decodes).
    ITerm,
    /// None known.
    None,
}

/// The protocol the current terminal speaks, from its environment; none
/// when standard output is not a terminal.
pub fn detect() -> Graphics {
    if !std::io::stdout().is_terminal() {
        return Graphics::None;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("TERM") == "xterm-kitty" || !var("KITTY_WINDOW_ID").is_empty() {
        Graphics::Kitty
    } else if matches!(var("TERM_PROGRAM").as_str(), "iTerm.app" | "WezTerm") {
        Graphics::ITerm
    } else {
        Graphics::None
    }
}

/// Largest image shown inline.
const MAX_INLINE: usize = 5 * 1024 * 1024;

/// The escape sequence that shows `image` inline, about 24 cells wide.
pub fn inline(kind: Graphics, media_type: &str, image: &[u8]) -> Option<String> {
    use base64::Engine;
    if image.len() > MAX_INLINE {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    match kind {
        Graphics::ITerm if media_type.starts_with("image/") => Some(format!(
            "\x1b]1337;File=inline=1;width=24;preserveAspectRatio=1;size={}:{b64}\x07\n",
            image.len()
        )),
        Graphics::Kitty if media_type == "image/png" => {
            // Sent in pieces of 4096 base64 bytes; m=1 until the last.
            let pieces: Vec<&str> = b64
                .as_bytes()
                .chunks(4096)
                .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
                .collect();
            let mut out = String::with_capacity(b64.len() + 64);
            for (i, p) in pieces.iter().enumerate() {
                let more = u8::from(i + 1 < pieces.len());
                if i == 0 {
                    out.push_str(&format!("\x1b_Gf=100,a=T,c=24,m={more};{p}\x1b\\"));
                } else {
                    out.push_str(&format!("\x1b_Gm={more};{p}\x1b\\"));
                }
            }
            out.push('\n');
            Some(out)
        }
        _ => None,
    }
}

/// Human sizes: 2.4 KB, 1.1 MB.
pub fn human(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KB", n as f64 / 1024.0),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MB", n as f64 / (1024.0 * 1024.0)),
        n => format!("{:.1} GB", n as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// One line describing an attachment.
pub fn describe(a: &Attachment) -> String {
    let dims = a
        .image
        .map(|i| format!(", {}x{}", i.width, i.height))
        .unwrap_or_default();
    format!(
        "{} ({}{dims}, {})",
        one_line(&a.name),
        one_line(&a.media_type),
        human(a.size)
    )
}

/// Shows a saved file: inline when possible, else its line.
pub fn show_saved(a: &Attachment, path: &Path) {
    let kind = detect();
    if kind != Graphics::None
        && a.media_type.starts_with("image/")
        && let Ok(bytes) = std::fs::read(path)
        && let Some(seq) = inline(kind, &a.media_type, &bytes)
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(seq.as_bytes());
        let _ = out.flush();
        return;
    }
    println!("  saved {} to {}", describe(a), path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_sequences_for_each_terminal() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let iterm = inline(Graphics::ITerm, "image/png", png).unwrap();
        assert!(iterm.starts_with("\x1b]1337;File=inline=1;") && iterm.ends_with("\x07\n"));
        let kitty = inline(Graphics::Kitty, "image/png", png).unwrap();
        assert!(kitty.starts_with("\x1b_Gf=100,a=T,") && kitty.contains("m=0;"));
        assert!(
            inline(Graphics::Kitty, "image/jpeg", png).is_none(),
            "kitty gets PNG only"
        );
        assert!(inline(Graphics::None, "image/png", png).is_none());
        let big = vec![0u8; 10_000];
        let k = inline(Graphics::Kitty, "image/png", &big).unwrap();
        assert_eq!(k.matches("\x1b_G").count(), 4, "chunked");
    }

    #[test]
    fn describes_in_one_line() {
        let a = Attachment {
            blob_id: "x".into(),
            key: Default::default(),
            size: 2483,
            name: "pho\nto.jpg".into(),
            media_type: "image/jpeg".into(),
            sha256: Default::default(),
            image: Some(telepound_crypto::ImageSize {
                width: 640,
                height: 480,
            }),
        };
        assert_eq!(describe(&a), "pho to.jpg (image/jpeg, 640x480, 2.4 KB)");
    }
}
