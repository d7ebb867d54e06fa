//! Safety numbers: 60 digits two users compare to verify each other's keys.
//!
//! Each side's half is 30 digits from an iterated SHA-512 over its identity
//! key and name (Signal's construction); the halves are ordered by name, so
//! both users see the same number.

use sha2::{Digest, Sha512};
use telepound_protocol::UserName;

const VERSION: [u8; 2] = [0, 1];
const ITERATIONS: usize = 5200;

fn half(user: &UserName, identity_key: &[u8; 32]) -> String {
    let mut h = {
        let mut d = Sha512::new();
        d.update(VERSION);
        d.update(identity_key);
        d.update(user.as_str().as_bytes());
        d.update(identity_key);
        d.finalize()
    };
    for _ in 1..ITERATIONS {
        let mut d = Sha512::new();
        d.update(h);
        d.update(identity_key);
        h = d.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in h[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The safety number of two users' identity keys, as 12 groups of 5 digits.
pub fn safety_number(a: (&UserName, &[u8; 32]), b: (&UserName, &[u8; 32])) -> String {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let digits = half(first.0, first.1) + &half(second.0, second.1);
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).expect("ascii digits"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_number_and_it_changes_with_the_key() {
        let (a, b) = (
            UserName::new("alice").unwrap(),
            UserName::new("bob").unwrap(),
        );
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let n1 = safety_number((&a, &ka), (&b, &kb));
        let n2 = safety_number((&b, &kb), (&a, &ka));
        assert_eq!(n1, n2);
        assert_eq!(n1.len(), 60 + 11);
        assert_ne!(n1, safety_number((&a, &ka), (&b, &[3u8; 32])));
    }
}
