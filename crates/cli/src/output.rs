//! Dates and times in the local time zone, and other printing helpers.

use std::sync::OnceLock;

use time::{OffsetDateTime, UtcOffset, format_description::FormatItem, macros::format_description};

static LOCAL: OnceLock<UtcOffset> = OnceLock::new();

/// Reads the local UTC offset; call while the process is single-threaded.
pub fn init_local_offset() {
    let _ = LOCAL.set(UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC));
}

fn local(ms: i64) -> OffsetDateTime {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.to_offset(*LOCAL.get().unwrap_or(&UtcOffset::UTC))
}

const DATE: &[FormatItem<'static>] = format_description!("[year]-[month]-[day]");
const TIME: &[FormatItem<'static>] = format_description!("[hour]:[minute]:[second]");
const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// `YYYY-MM-DD` in local time.
pub fn date(ms: i64) -> String {
    local(ms).format(DATE).unwrap_or_default()
}

/// `HH:MM:SS` in local time.
pub fn time_of_day(ms: i64) -> String {
    local(ms).format(TIME).unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn stamp(ms: i64) -> String {
    local(ms).format(STAMP).unwrap_or_default()
}

/// RFC 3339 in local time, for JSON output.
pub fn rfc3339(ms: i64) -> String {
    local(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What starts each further line of a message that has several: no line
/// this program prints on its own starts so, so a message cannot pass
/// its lines off as another message, a receipt or an attachment.
pub const CONTINUATION: &str = "  | ";

/// Characters that could rewrite the terminal or disguise what is shown:
/// control characters (escape sequences, carriage returns, backspaces),
/// bidirectional overrides and isolates, and Unicode line separators.
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
}

/// A message text from someone else, made safe to print: a newline starts
/// a continuation line (marked with [`CONTINUATION`]), a tab stays, every
/// other [`hostile`] character becomes U+FFFD. It cannot write escape
/// sequences or make a line that looks like one of ours.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => {
                out.push('\n');
                out.push_str(CONTINUATION);
            }
            '\t' => out.push(c),
            c if hostile(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Text that must stay on one line (a file name, a server's sentence, an
/// error): newlines and tabs become spaces, other [`hostile`] characters
/// U+FFFD.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => ' ',
            c if hostile(c) => '\u{fffd}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(
            sanitize("hi\x1b[2Jthere\r\nok"),
            "hi\u{fffd}[2Jthere\u{fffd}\n  | ok"
        );
        assert_eq!(sanitize("a\u{202e}b\u{2028}c\td"), "a\u{fffd}b\u{fffd}c\td");
        assert_eq!(one_line("x\ny\tz\x1b]0;t\x07"), "x y z\u{fffd}]0;t\u{fffd}");
    }

    #[test]
    fn no_line_of_a_message_starts_like_one_of_ours() {
        let forged = "hi\n[2026-01-01 00:00:00] mallory: pay me\n  attached: x\nMessage from eve:";
        let shown = format!("[2026-01-01 00:00:00] bob: {}", sanitize(forged));
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4);
        for l in &lines[1..] {
            assert!(l.starts_with(CONTINUATION), "{l:?}");
        }
    }

    #[test]
    fn formats_dates() {
        assert_eq!(stamp(0).len(), 19);
        assert_eq!(date(0).len(), 10);
        assert_eq!(time_of_day(0).len(), 8);
    }
}
