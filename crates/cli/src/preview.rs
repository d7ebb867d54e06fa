//! What a received file looks like on the terminal: a small inline image
//! where the terminal can show one (kitty's graphics protocol for PNG,
//! iTerm2's inline images, as WezTerm also speaks, and sixel for PNG and
//! JPEG), else one line with the type, dimensions and size.
//!
//! The image type is recognised from the decrypted bytes, never taken from
//! the sender's description: a file described as a picture is shown only
//! if it is one. Sixel needs the pixels, so the image is decoded here (the
//! `png` and `zune-jpeg` crates, pure Rust), downscaled, and quantised to a
//! fixed palette; that is done only for small images.

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
    /// DEC sixel graphics (we decode and draw the pixels).
    Sixel,
    /// None known.
    None,
}

/// The protocol the current terminal speaks, from its environment; none
/// when standard output is not a terminal.
pub fn detect() -> Graphics {
    if !std::io::stdout().is_terminal() {
        return Graphics::None;
    }
    detect_from(|k| std::env::var(k).ok())
}

/// The protocol the environment `var` describes. `TELEPOUND_GRAPHICS`
/// (`kitty`, `iterm`, `sixel` or `none`) decides when set, for terminals
/// that do not say what they speak. Otherwise: kitty by `TERM=xterm-kitty`
/// or `KITTY_WINDOW_ID`; iTerm2's protocol by `TERM_PROGRAM` `iTerm.app`
/// or `WezTerm`; sixel by a `TERM` that names it (e.g. `xterm-sixel`), or
/// that of foot, mlterm or contour (which draw sixel without saying so).
pub fn detect_from(var: impl Fn(&str) -> Option<String>) -> Graphics {
    match var("TELEPOUND_GRAPHICS")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("kitty") => return Graphics::Kitty,
        Some("iterm") => return Graphics::ITerm,
        Some("sixel") => return Graphics::Sixel,
        Some("none") => return Graphics::None,
        _ => {}
    }
    let term = var("TERM").unwrap_or_default();
    let program = var("TERM_PROGRAM").unwrap_or_default();
    if term == "xterm-kitty" || var("KITTY_WINDOW_ID").is_some_and(|v| !v.is_empty()) {
        Graphics::Kitty
    } else if matches!(program.as_str(), "iTerm.app" | "WezTerm") {
        Graphics::ITerm
    } else if term.contains("sixel")
        || ["foot", "mlterm", "contour"]
            .iter()
            .any(|t| term.starts_with(t) || program.eq_ignore_ascii_case(t))
    {
        Graphics::Sixel
    } else {
        Graphics::None
    }
}

/// The image type of `bytes`, from their content alone.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    infer::get(bytes)
        .map(|t| t.mime_type())
        .filter(|m| m.starts_with("image/"))
}

/// Largest image file shown inline.
const MAX_INLINE: usize = 5 * 1024 * 1024;
/// Largest image decoded for sixel, in pixels and on either side: a
/// small picture, not a poster (decoding costs memory and time).
const MAX_SIXEL_PIXELS: u64 = 8 * 1024 * 1024;
const MAX_SIXEL_SIDE: usize = 4096;
/// The longer side of a sixel preview, in pixels (about 24 cells wide).
const SIXEL_BOX: usize = 240;

/// The escape sequence that shows `image` inline, about 24 cells wide; its
/// type comes from its bytes. None when the terminal cannot show this kind
/// of image or it is too large.
pub fn inline(kind: Graphics, image: &[u8]) -> Option<String> {
    use base64::Engine;
    if image.len() > MAX_INLINE {
        return None;
    }
    let media_type = sniff(image)?;
    match kind {
        Graphics::ITerm => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(image);
            Some(format!(
                "\x1b]1337;File=inline=1;width=24;preserveAspectRatio=1;size={}:{b64}\x07\n",
                image.len()
            ))
        }
        Graphics::Kitty if media_type == "image/png" => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(image);
            // Sent in pieces of 4096 base64 bytes; m=1 until the last.
            let pieces: Vec<&[u8]> = b64.as_bytes().chunks(4096).collect();
            let mut out = String::with_capacity(b64.len() + 64);
            for (i, p) in pieces.iter().enumerate() {
                let more = u8::from(i + 1 < pieces.len());
                let p = String::from_utf8_lossy(p);
                if i == 0 {
                    out.push_str(&format!("\x1b_Gf=100,a=T,c=24,m={more};{p}\x1b\\"));
                } else {
                    out.push_str(&format!("\x1b_Gm={more};{p}\x1b\\"));
                }
            }
            out.push('\n');
            Some(out)
        }
        Graphics::Sixel => {
            let picture = decode(media_type, image)?;
            let small = picture.fit(SIXEL_BOX);
            let mut out = sixel(&small);
            out.push('\n');
            Some(out)
        }
        _ => None,
    }
}

/// Decoded pixels: `width × height`, each `None` (transparent) or RGB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row by row.
    pub pixels: Vec<Option<[u8; 3]>>,
}

impl Picture {
    /// From 8-bit samples with `channels` per pixel (1 gray, 2 gray and
    /// alpha, 3 RGB, 4 RGBA); mostly transparent pixels count as none.
    fn from_samples(width: usize, height: usize, channels: usize, data: &[u8]) -> Option<Self> {
        if channels == 0 || data.len() < width * height * channels {
            return None;
        }
        let pixels = data
            .chunks_exact(channels)
            .take(width * height)
            .map(|p| match *p {
                [g] => Some([g, g, g]),
                [g, a] => (a >= 128).then_some([g, g, g]),
                [r, g, b] => Some([r, g, b]),
                [r, g, b, a] => (a >= 128).then_some([r, g, b]),
                _ => None,
            })
            .collect();
        Some(Self {
            width,
            height,
            pixels,
        })
    }

    /// Scaled down (never up) so that neither side exceeds `side`, each
    /// new pixel the average of the block it covers.
    pub fn fit(&self, side: usize) -> Picture {
        let longer = self.width.max(self.height);
        if longer <= side || longer == 0 {
            return self.clone();
        }
        let w = (self.width * side / longer).max(1);
        let h = (self.height * side / longer).max(1);
        let mut pixels = Vec::with_capacity(w * h);
        for y in 0..h {
            let (y0, y1) = (
                y * self.height / h,
                ((y + 1) * self.height / h).max(y * self.height / h + 1),
            );
            for x in 0..w {
                let (x0, x1) = (
                    x * self.width / w,
                    ((x + 1) * self.width / w).max(x * self.width / w + 1),
                );
                let (mut sum, mut seen, mut all) = ([0u64; 3], 0u64, 0u64);
                for sy in y0..y1 {
                    for sx in x0..x1 {
                        all += 1;
                        if let Some(p) = self.pixels[sy * self.width + sx] {
                            seen += 1;
                            for c in 0..3 {
                                sum[c] += u64::from(p[c]);
                            }
                        }
                    }
                }
                pixels.push((seen * 2 >= all && seen > 0).then(|| sum.map(|s| (s / seen) as u8)));
            }
        }
        Picture {
            width: w,
            height: h,
            pixels,
        }
    }
}

/// Decodes a small PNG or JPEG; None for other types, images too large to
/// preview (judged from the header before decoding), or broken files.
pub fn decode(media_type: &str, bytes: &[u8]) -> Option<Picture> {
    let size = imagesize::blob_size(bytes).ok()?;
    if size.width > MAX_SIXEL_SIDE
        || size.height > MAX_SIXEL_SIDE
        || (size.width as u64) * (size.height as u64) > MAX_SIXEL_PIXELS
    {
        return None;
    }
    match media_type {
        "image/png" => {
            let mut decoder = png::Decoder::new_with_limits(
                std::io::Cursor::new(bytes),
                png::Limits {
                    bytes: 64 * 1024 * 1024,
                },
            );
            decoder.set_transformations(png::Transformations::normalize_to_color8());
            let mut reader = decoder.read_info().ok()?;
            let mut buf = vec![0u8; reader.output_buffer_size()?];
            let info = reader.next_frame(&mut buf).ok()?;
            let (width, height) = (info.width as usize, info.height as usize);
            let channels = info.color_type.samples();
            // Rows may be padded: take each row's pixels.
            let mut data = Vec::with_capacity(width * height * channels);
            for row in buf.chunks(info.line_size).take(height) {
                data.extend_from_slice(row.get(..width * channels)?);
            }
            Picture::from_samples(width, height, channels, &data)
        }
        "image/jpeg" => {
            use zune_core::colorspace::ColorSpace;
            use zune_core::options::DecoderOptions;
            let options = DecoderOptions::default()
                .jpeg_set_out_colorspace(ColorSpace::RGB)
                .set_max_width(MAX_SIXEL_SIDE)
                .set_max_height(MAX_SIXEL_SIDE);
            let mut decoder =
                zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), options);
            let data = decoder.decode().ok()?;
            let info = decoder.info()?;
            let (width, height) = (usize::from(info.width), usize::from(info.height));
            Picture::from_samples(width, height, 3, &data)
        }
        _ => None,
    }
}

/// One of the 216 colours of a 6×6×6 cube: the palette every sixel
/// preview uses, so no colour search is needed.
fn cube(p: [u8; 3]) -> usize {
    let level = |c: u8| (usize::from(c) * 5 + 127) / 255;
    level(p[0]) * 36 + level(p[1]) * 6 + level(p[2])
}

/// `picture` as a sixel sequence: DCS with transparent background and 1:1
/// pixels, raster attributes, the palette colours used (as RGB percent),
/// then bands of six rows, one pass per colour (`$` returns to the band's
/// start, `-` goes to the next band), runs of four or more written `!N`.
pub fn sixel(picture: &Picture) -> String {
    let (w, h) = (picture.width, picture.height);
    let mut out = format!("\x1bP0;1;0q\"1;1;{w};{h}");
    let mut used = [false; 216];
    for p in picture.pixels.iter().flatten() {
        used[cube(*p)] = true;
    }
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        let pct = |l: usize| l * 100 / 5;
        out.push_str(&format!(
            "#{i};2;{};{};{}",
            pct(i / 36),
            pct(i / 6 % 6),
            pct(i % 6)
        ));
    }
    let bands = h.div_ceil(6);
    for band in 0..bands {
        let rows = band * 6..(band * 6 + 6).min(h);
        let mut colours: Vec<usize> = Vec::new();
        for y in rows.clone() {
            for p in picture.pixels[y * w..(y + 1) * w].iter().flatten() {
                let c = cube(*p);
                if !colours.contains(&c) {
                    colours.push(c);
                }
            }
        }
        colours.sort_unstable();
        for (n, colour) in colours.iter().enumerate() {
            if n > 0 {
                out.push('$');
            }
            out.push_str(&format!("#{colour}"));
            let column = |x: usize| {
                let mut bits = 0u8;
                for (dy, y) in rows.clone().enumerate() {
                    if picture.pixels[y * w + x].is_some_and(|p| cube(p) == *colour) {
                        bits |= 1 << dy;
                    }
                }
                char::from(63 + bits)
            };
            let mut chars: Vec<char> = (0..w).map(column).collect();
            while chars.last() == Some(&'?') {
                chars.pop();
            }
            let mut i = 0;
            while i < chars.len() {
                let c = chars[i];
                let run = chars[i..].iter().take_while(|&&d| d == c).count();
                if run >= 4 {
                    out.push_str(&format!("!{run}{c}"));
                } else {
                    out.extend(std::iter::repeat_n(c, run));
                }
                i += run;
            }
        }
        if band + 1 < bands {
            out.push('-');
        }
    }
    out.push_str("\x1b\\");
    out
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
    describe_as(a, &a.media_type)
}

/// [`describe`], with the media type given rather than the sender's.
fn describe_as(a: &Attachment, media_type: &str) -> String {
    let dims = a
        .image
        .map(|i| format!(", {}x{}", i.width, i.height))
        .unwrap_or_default();
    format!(
        "{} ({}{dims}, {})",
        one_line(&a.name),
        one_line(media_type),
        human(a.size)
    )
}

/// Shows a saved file: its line, with the type its content has (not the
/// one its sender claimed), then the image inline when the terminal can
/// show it.
pub fn show_saved(a: &Attachment, path: &Path) {
    let bytes = std::fs::metadata(path)
        .ok()
        .filter(|m| m.len() <= MAX_INLINE as u64)
        .and_then(|_| std::fs::read(path).ok());
    let actual = match &bytes {
        Some(b) => infer::get(b).map_or("application/octet-stream", |t| t.mime_type()),
        None => a.media_type.as_str(),
    };
    println!(
        "  saved {} to {}",
        describe_as(a, actual),
        one_line(&path.display().to_string())
    );
    let kind = detect();
    if kind != Graphics::None
        && let Some(seq) = bytes.as_deref().and_then(|b| inline(kind, b))
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(seq.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real PNG of `w × h` pixels, each `f(x, y)` as RGBA.
    fn png_of(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend(f(x, y));
            }
        }
        writer.write_image_data(&data).unwrap();
        drop(writer);
        out
    }

    #[test]
    fn inline_sequences_for_each_terminal() {
        let png = png_of(2, 2, |_, _| [255, 0, 0, 255]);
        let iterm = inline(Graphics::ITerm, &png).unwrap();
        assert!(iterm.starts_with("\x1b]1337;File=inline=1;") && iterm.ends_with("\x07\n"));
        let kitty = inline(Graphics::Kitty, &png).unwrap();
        assert!(kitty.starts_with("\x1b_Gf=100,a=T,") && kitty.contains("m=0;"));
        let sixel = inline(Graphics::Sixel, &png).unwrap();
        assert!(
            sixel.starts_with("\x1bP") && sixel.ends_with("\x1b\\\n"),
            "{sixel:?}"
        );
        assert!(inline(Graphics::None, &png).is_none());
        let jpeg_magic = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00rest";
        assert!(
            inline(Graphics::Kitty, jpeg_magic).is_none(),
            "kitty gets PNG only"
        );
        let mut big = png.clone();
        big.resize(10_000, 0);
        let k = inline(Graphics::Kitty, &big).unwrap();
        assert_eq!(k.matches("\x1b_G").count(), 4, "chunked");
    }

    #[test]
    fn the_type_comes_from_the_bytes_not_the_claim() {
        let png = png_of(1, 1, |_, _| [0, 0, 0, 255]);
        assert_eq!(sniff(&png), Some("image/png"));
        // Text a sender called image/png is no image, whatever it says.
        let text = b"MZ\x90\x00 not a picture";
        assert_eq!(sniff(text), None);
        for kind in [Graphics::Kitty, Graphics::ITerm, Graphics::Sixel] {
            assert!(inline(kind, text).is_none(), "{kind:?}");
        }
        // A PNG header over garbage: recognised, but not decodable.
        assert!(inline(Graphics::Sixel, &png[..20]).is_none());
    }

    #[test]
    fn terminals_are_recognised_from_their_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            detect_from(env(&[("TERM", "xterm-kitty")])),
            Graphics::Kitty
        );
        assert_eq!(
            detect_from(env(&[("KITTY_WINDOW_ID", "3")])),
            Graphics::Kitty
        );
        assert_eq!(
            detect_from(env(&[("TERM_PROGRAM", "WezTerm")])),
            Graphics::ITerm
        );
        assert_eq!(detect_from(env(&[("TERM", "foot")])), Graphics::Sixel);
        assert_eq!(detect_from(env(&[("TERM", "foot-extra")])), Graphics::Sixel);
        assert_eq!(detect_from(env(&[("TERM", "mlterm")])), Graphics::Sixel);
        assert_eq!(
            detect_from(env(&[("TERM", "xterm-sixel")])),
            Graphics::Sixel
        );
        assert_eq!(
            detect_from(env(&[("TERM", "xterm-256color")])),
            Graphics::None
        );
        assert_eq!(detect_from(env(&[])), Graphics::None);
        assert_eq!(
            detect_from(env(&[
                ("TERM", "xterm-256color"),
                ("TELEPOUND_GRAPHICS", "Sixel")
            ])),
            Graphics::Sixel
        );
        assert_eq!(
            detect_from(env(&[
                ("TERM", "xterm-kitty"),
                ("TELEPOUND_GRAPHICS", "none")
            ])),
            Graphics::None
        );
    }

    #[test]
    fn sixel_encoding_is_exact() {
        let red = Some([255, 0, 0]);
        let blue = Some([0, 0, 255]);
        // 5 columns, 7 rows: two bands. Column 4 is blue, row 6 transparent
        // except column 0.
        let mut pixels = Vec::new();
        for y in 0..7 {
            for x in 0..5 {
                pixels.push(match (x, y) {
                    (0, 6) => red,
                    (_, 6) => None,
                    (4, _) => blue,
                    _ => red,
                });
            }
        }
        let p = Picture {
            width: 5,
            height: 7,
            pixels,
        };
        // red = cube 5*36 = 180, blue = 5. Band one: blue's pass is four
        // empty columns (`!4?`) then a full one (`~`), red's four full
        // columns; band two: red in row 0 of column 0 (`@`, bit 0).
        assert_eq!(
            sixel(&p),
            "\x1bP0;1;0q\"1;1;5;7#5;2;0;0;100#180;2;100;0;0#5!4?~$#180!4~-#180@\x1b\\"
        );
    }

    #[test]
    fn previews_are_small() {
        let p = Picture {
            width: 1000,
            height: 10,
            pixels: vec![Some([9, 9, 9]); 10_000],
        };
        let s = p.fit(SIXEL_BOX);
        assert_eq!((s.width, s.height), (240, 2));
        assert!(s.pixels.iter().all(|p| *p == Some([9, 9, 9])));
        let tiny = Picture {
            width: 3,
            height: 3,
            pixels: vec![None; 9],
        };
        assert_eq!(tiny.fit(SIXEL_BOX), tiny, "never scaled up");
        // Decoded from a real PNG, checked against its header first.
        let png = png_of(300, 150, |x, _| {
            if x < 150 {
                [255, 255, 255, 255]
            } else {
                [0, 0, 0, 0]
            }
        });
        let pic = decode("image/png", &png).unwrap();
        assert_eq!((pic.width, pic.height), (300, 150));
        assert_eq!(pic.pixels[0], Some([255, 255, 255]));
        assert_eq!(pic.pixels[299], None, "transparent");
        let s = pic.fit(SIXEL_BOX);
        assert_eq!((s.width, s.height), (240, 120));
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
