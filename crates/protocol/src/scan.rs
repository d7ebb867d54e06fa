//! A hand-written reader for the one frame a server reads once per message:
//! `send`, as clients write it.
//!
//! It accepts a strict subset of what the general decoder (serde) accepts:
//! an object with the keys `type`, `rid`, `msg_id`, `from`, `to` and
//! `envelope`, each once and in any order, keys and strings without escapes,
//! and an envelope of objects, arrays, unescaped strings, numbers and
//! literals nested at most [`MAX_DEPTH`] deep. For such a frame it returns
//! what the general decoder returns; for anything else (an unknown key, an
//! escape, a duplicate, any error at all) it returns `None` and the general
//! decoder reads the frame, and says what is wrong with it. Only frames the
//! general decoder would take are taken here, so the two cannot disagree on
//! whether a frame is good. What it saves: one pass over the frame instead
//! of two (serde's head, then the body), the envelope's strings scanned with
//! `memchr` and a vectorised check for control characters, and the envelope
//! copied once, into the shared text the server keeps.

use crate::message::RawJson;
use crate::{ClientMessage, MsgId, UserName};

/// Deepest nesting of objects and arrays read here; deeper goes to serde.
const MAX_DEPTH: usize = 32;

/// Reads a `send` frame, or returns `None` for the general decoder.
pub(crate) fn send(text: &str) -> Option<ClientMessage> {
    let mut r = Reader {
        s: text,
        b: text.as_bytes(),
        i: 0,
    };
    r.ws();
    r.eat(b'{')?;
    let (mut kind, mut rid, mut msg_id, mut from, mut to, mut envelope) =
        (false, None, None, None, None, None);
    r.members(b'}', |r| {
        match r.key()? {
            "type" if !kind => {
                if r.string()? != "send" {
                    return None;
                }
                kind = true;
            }
            "rid" if rid.is_none() => rid = Some(r.rid()?),
            "msg_id" if msg_id.is_none() => msg_id = Some(r.string()?.parse::<MsgId>().ok()?),
            "from" if from.is_none() => from = Some(UserName::new(r.string()?).ok()?),
            "to" if to.is_none() => to = Some(UserName::new(r.string()?).ok()?),
            "envelope" if envelope.is_none() => {
                let start = r.i;
                r.value(0)?;
                envelope = Some(&text[start..r.i]);
            }
            _ => return None,
        }
        Some(())
    })?;
    r.ws();
    if r.i != r.b.len() || !kind {
        return None;
    }
    Some(ClientMessage::Send {
        rid: rid.flatten(),
        msg_id: msg_id?,
        from: from?,
        to: to?,
        envelope: RawJson::checked(envelope?),
    })
}

struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn eat_word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string without escapes, returned without its quotes.
    fn string(&mut self) -> Option<&'a str> {
        let (start, end) = self.skip_string()?;
        // Cut at ASCII quotes of valid UTF-8: on character boundaries.
        self.s.get(start..end)
    }

    /// Skips a string without escapes; returns where its text starts and ends.
    fn skip_string(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + plain_len(&self.b[start..]);
        if self.b.get(end) != Some(&b'"') {
            // A backslash, a control character or the end of the text.
            return None;
        }
        self.i = end + 1;
        Some((start, end))
    }

    /// `null` or an unsigned integer as JSON writes one (no leading zero,
    /// no fraction or exponent, at most `u64::MAX`).
    fn rid(&mut self) -> Option<Option<u64>> {
        if self.peek()? == b'n' {
            self.eat_word(b"null")?;
            return Some(None);
        }
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        self.s.get(start..self.i)?.parse().ok().map(Some)
    }

    /// The members of an object or array whose opening bracket has been
    /// read, up to and including `close`: none, or `item`s separated by
    /// commas (no trailing one), with whitespace around each.
    fn members(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => continue,
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// An object member's key and its colon.
    fn key(&mut self) -> Option<&'a str> {
        let key = self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(key)
    }

    /// Skips one JSON value, checking its grammar.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string().map(drop),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => {
                self.i += 1;
                self.members(b'}', |r| {
                    r.key()?;
                    r.value(depth + 1)
                })
            }
            b'[' => {
                self.i += 1;
                self.members(b']', |r| r.value(depth + 1))
            }
            b't' => self.eat_word(b"true"),
            b'f' => self.eat_word(b"false"),
            b'n' => self.eat_word(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // A number runs into nothing but a delimiter or whitespace (so that
        // `01` or `1x` is not read as `0` or `1` followed by garbage, which
        // the caller would reject anyway).
        match self.peek() {
            None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') => Some(()),
            _ => None,
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// How many bytes from the start of `b` need no attention in a JSON string:
/// none is a quote, a backslash or a control character. The quote or
/// backslash is found with `memchr` (vector instructions chosen at run
/// time), then the span before it is checked for control characters 64
/// bytes at a time (a loop the compiler turns into vector compares).
fn plain_len(b: &[u8]) -> usize {
    const CHUNK: usize = 64;
    let end = memchr::memchr2(b'"', b'\\', b).unwrap_or(b.len());
    let span = &b[..end];
    let mut i = 0;
    while let Some(chunk) = span.get(i..i + CHUNK) {
        let mut control = 0u8;
        for &c in chunk {
            control |= u8::from(c < 0x20);
        }
        if control != 0 {
            break;
        }
        i += CHUNK;
    }
    span[i..]
        .iter()
        .position(|&c| c < 0x20)
        .map_or(end, |at| i + at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_client_general, encode};

    const ID: &str = "0190f0a8-7b1c-7c3e-8b7a-0f0e0d0c0b0a";

    fn frame(envelope: &str) -> String {
        format!(
            r#"{{"type":"send","rid":7,"msg_id":"{ID}","from":"alice","to":"bob","envelope":{envelope}}}"#
        )
    }

    /// Whatever the fast reader takes, the general decoder takes too, and
    /// reads as the same message.
    fn agrees(text: &str) -> bool {
        let Some(fast) = send(text) else {
            return false;
        };
        let general = decode_client_general(text, usize::MAX)
            .unwrap_or_else(|e| panic!("fast reader took what serde refuses ({e}): {text:?}"));
        assert_eq!(encode(&fast), encode(&general), "{text:?}");
        true
    }

    #[test]
    fn frames_as_clients_write_them_take_the_fast_path() {
        let long = "A".repeat(3000);
        for env in [
            r#"{"v":2,"suite":"tp2","ct":"AAAA"}"#.to_owned(),
            format!(r#"{{"v":2,"keys":[{{"to":"bob","k":"{long}"}}],"ct":"{long}"}}"#),
            r#"{ "a" : [ 1 , -2.5e+3 , 0 , true , false , null , { } , [ ] ] , "é" : "ü" }"#
                .to_owned(),
            r#""just a string""#.to_owned(),
            "[]".to_owned(),
            "-0.0E-0".to_owned(),
            // As deep as it reads.
            format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)),
        ] {
            let text = frame(&env);
            assert!(agrees(&text), "not taken: {text}");
            let Some(ClientMessage::Send { envelope, rid, .. }) = send(&text) else {
                unreachable!()
            };
            assert_eq!((envelope.get(), rid), (env.as_str(), Some(7)));
        }
        // Any key order, whitespace around every token, no rid or a null one.
        for text in [
            format!(
                " \n{{ \"envelope\" :\t{{}} , \"to\":\"bob\",\"from\":\"alice\",\"msg_id\":\"{ID}\",\"type\":\"send\" }}\r\n"
            ),
            format!(
                r#"{{"type":"send","rid":null,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
        ] {
            assert!(agrees(&text), "not taken: {text}");
        }
    }

    #[test]
    fn anything_unusual_goes_to_the_general_decoder() {
        for text in [
            // Escapes, in a key, a value or the envelope.
            frame(r#"{"ct":"a\"b"}"#),
            frame(r#"{"c\u0074":"ab"}"#),
            format!(
                r#"{{"type":"se\u006ed","msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            // Not JSON, or not quite.
            frame(r#"{"ct":"ab",}"#),
            frame("[1,]"),
            frame("01"),
            frame("1."),
            frame(".5"),
            frame("+1"),
            frame("tru"),
            frame("nul"),
            frame(r#"{"a" 1}"#),
            frame("\"tab\there\""),
            frame(&format!(
                "{}1{}",
                "[".repeat(MAX_DEPTH + 1),
                "]".repeat(MAX_DEPTH + 1)
            )),
            format!("{}x", frame("1")),
            frame("1").replace("}", ""),
            // Duplicates, unknown keys, other types, bad fields.
            format!(
                r#"{{"type":"send","type":"send","msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","rid":1,"rid":2,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","pad":0,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(r#"{{"type":"sync","msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#),
            format!(r#"{{"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#),
            format!(r#"{{"type":"send","msg_id":"{ID}","from":"alice","envelope":1}}"#),
            r#"{"type":"send","msg_id":"x","from":"alice","to":"bob","envelope":1}"#.to_owned(),
            format!(r#"{{"type":"send","msg_id":"{ID}","from":"Alice","to":"bob","envelope":1}}"#),
            format!(
                r#"{{"type":"send","rid":-1,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","rid":1.0,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","rid":01,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","rid":18446744073709551616,"msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
            format!(
                r#"{{"type":"send","rid":"1","msg_id":"{ID}","from":"alice","to":"bob","envelope":1}}"#
            ),
        ] {
            assert!(send(&text).is_none(), "taken: {text}");
        }
    }

    /// Random single and double byte changes to good frames (some cutting
    /// a multibyte character, so not text: skipped): the fast
    /// reader must never take one that serde refuses, or read it otherwise.
    #[test]
    fn mutated_frames_never_disagree() {
        let bases = [
            frame(r#"{"v":2,"n":[1,-2.5e3,true,null],"ct":"QUJDRA=="}"#),
            format!(
                r#"{{"type":"send","msg_id":"{ID}","from":"alice","to":"bob","envelope":{{"é":["ü",{{}}],"k":"x"}}}}"#
            ),
            format!(
                r#"{{"envelope":[[0.5]],"rid":null,"to":"bob","from":"alice","msg_id":"{ID}","type":"send"}}"#
            ),
        ];
        let alphabet = b"{}[]:,\"\\ -+.eE0123456789abcdefnlrstuAZ\t\n\x01";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut taken, mut tried) = (0, 0);
        for round in 0..30_000 {
            let mut bytes = bases[round % bases.len()].clone().into_bytes();
            for _ in 0..1 + next() % 2 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            tried += 1;
            taken += usize::from(agrees(&text));
        }
        // Both kinds occur: some mutations keep the frame good (a digit for
        // a digit), most break it.
        assert!(taken > 100 && taken < tried, "{taken} of {tried}");
    }

    #[test]
    fn plain_len_stops_at_the_first_special_byte() {
        for len in 0..100 {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut b = vec![b'a'; len + 40];
                b[len] = special;
                assert_eq!(plain_len(&b), len);
            }
            assert_eq!(plain_len(&vec![0xc3; len]), len);
        }
    }
}
