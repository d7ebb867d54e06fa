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

/// Replaces control characters in text from other people, so a message
/// cannot rewrite the terminal (escape sequences) or forge extra lines.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '\u{fffd}',
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
            "hi\u{fffd}[2Jthere\u{fffd}\nok"
        );
    }

    #[test]
    fn formats_dates() {
        assert_eq!(stamp(0).len(), 19);
        assert_eq!(date(0).len(), 10);
        assert_eq!(time_of_day(0).len(), 8);
    }
}
