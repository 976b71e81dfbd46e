//! The tier's hop marker: the field a ring member puts on a request it forwards to a key's
//! owner, keyed-BLAKE2b over who sent it, when, the invalidation position it knows, the
//! scheme the client used and the request's method, host and target, so an owner trusts it only
//! from a member that holds the ring's key and only for a short window. Also RFC 8586
//! `CDN-Loop` counting.
//!
//! The field: `verge-tier-hop: <member id> <unix seconds> <invalidation seq> <scheme> <mac>`,
//! the MAC as 64 hex digits.

use blake2::digest::consts::U32;
use blake2::digest::{Digest, Mac};
use blake2::{Blake2b512, Blake2bMac};

/// The request field carrying the marker.
pub const HOP_FIELD: &str = "verge-tier-hop";

/// RFC 8586's field, and verge's token in it.
pub const CDN_LOOP_FIELD: &str = "cdn-loop";
/// verge's `cdn-id` in `CDN-Loop`.
pub const CDN_TOKEN: &str = "verge";

/// The hop key, derived from the ring's shared secret.
#[derive(Clone)]
pub struct HopKey([u8; 64]);

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey(..)")
    }
}

impl HopKey {
    /// The key for a ring whose members share `secret`.
    pub fn derive(secret: &[u8]) -> HopKey {
        let mut h = Blake2b512::new();
        Digest::update(&mut h, b"verge tier hop key v1\0");
        Digest::update(&mut h, secret);
        HopKey(h.finalize().into())
    }

    fn mac(&self, signed: &Signed<'_>) -> Option<Blake2bMac<U32>> {
        let mut m = <Blake2bMac<U32> as Mac>::new_from_slice(&self.0).ok()?;
        for part in [
            signed.node,
            &signed.at.to_string(),
            &signed.seq.to_string(),
            signed.scheme,
            signed.method,
            signed.host,
            signed.target,
        ] {
            Mac::update(&mut m, part.as_bytes());
            // a separator no part can hold (ids, numbers, schemes, methods, hosts and targets
            // are all visible ASCII)
            Mac::update(&mut m, b"\n");
        }
        Some(m)
    }

    /// The field value for a hop request.
    pub fn sign(&self, signed: &Signed<'_>) -> Option<String> {
        let tag = self.mac(signed)?.finalize().into_bytes();
        let mut hex = String::with_capacity(64);
        for b in tag {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Some(format!(
            "{} {} {} {} {hex}",
            signed.node, signed.at, signed.seq, signed.scheme
        ))
    }

    /// Read and check a marker received with `method host target` at `now` (unix seconds):
    /// the hop it proves, or why it proves nothing. `is_member` says whether an id is one of
    /// the ring's other members.
    pub fn verify(
        &self,
        value: &str,
        request: (&str, &str, &str),
        now: u64,
        window: u64,
        is_member: impl Fn(&str) -> bool,
    ) -> Result<Hop, Refused> {
        let mut parts = value.split(' ');
        let (Some(node), Some(at), Some(seq), Some(scheme), Some(hex), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let (Ok(at), Ok(seq)) = (at.parse::<u64>(), seq.parse::<u64>()) else {
            return Err(Refused::Malformed);
        };
        let scheme = match scheme {
            "http" => "http",
            "https" => "https",
            _ => return Err(Refused::Malformed),
        };
        let tag = unhex(hex).ok_or(Refused::Malformed)?;
        let (method, host, target) = request;
        let signed = Signed {
            node,
            at,
            seq,
            scheme,
            method,
            host,
            target,
        };
        let m = self.mac(&signed).ok_or(Refused::Malformed)?;
        m.verify_slice(&tag).map_err(|_| Refused::BadMac)?;
        if now.abs_diff(at) > window {
            return Err(Refused::Expired);
        }
        if !is_member(node) {
            return Err(Refused::NotMember);
        }
        Ok(Hop {
            from: node.to_string(),
            seq,
            scheme,
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// What a marker signs.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The sending member's id.
    pub node: &'a str,
    /// When it was sent (unix seconds).
    pub at: u64,
    /// The sender's invalidation position: the sequence it has applied, or a later one a hop
    /// showed it.
    pub seq: u64,
    /// The scheme the client used with the sender (`http` or `https`).
    pub scheme: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// Its `Host`, as sent to the owner.
    pub host: &'a str,
    /// Its path and query, as sent to the owner.
    pub target: &'a str,
}

/// A hop request an owner verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The member that forwarded it.
    pub from: String,
    /// That member's invalidation position (see [`Signed::seq`]).
    pub seq: u64,
    /// The scheme its client used.
    pub scheme: &'static str,
}

/// Why a marker proves nothing (the request then is an ordinary client's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not the marker's shape.
    Malformed,
    /// The MAC does not match: not made with the ring's key, or for another request.
    BadMac,
    /// Made too long ago (or too far ahead).
    Expired,
    /// Made by a node that is not one of the ring's other members.
    NotMember,
}

impl Refused {
    /// The label in `verge_tier_hops_received_total{result}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::BadMac => "bad_mac",
            Refused::Expired => "expired",
            Refused::NotMember => "not_member",
        }
    }
}

/// How many times verge's token appears in these `CDN-Loop` field values (RFC 8586: a list of
/// `cdn-id [; params]`).
pub fn cdn_loop_count<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> usize {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .filter(|entry| {
            let id = entry.split(';').next().unwrap_or("").trim();
            id.eq_ignore_ascii_case(CDN_TOKEN)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed<'a>(node: &'a str, at: u64) -> Signed<'a> {
        Signed {
            node,
            at,
            seq: 7,
            scheme: "https",
            method: "GET",
            host: "a.com",
            target: "/x?y=1",
        }
    }

    const REQ: (&str, &str, &str) = ("GET", "a.com", "/x?y=1");

    #[test]
    fn a_marker_verifies_only_for_its_request_key_member_and_window() {
        let key = HopKey::derive(b"0123456789abcdef");
        let value = key.sign(&signed("b", 1000)).expect("sign");
        assert!(value.starts_with("b 1000 7 https "), "{value}");
        let member = |id: &str| id == "b";
        let hop = key.verify(&value, REQ, 1005, 10, member).expect("valid");
        assert_eq!(
            hop,
            Hop {
                from: "b".into(),
                seq: 7,
                scheme: "https"
            }
        );
        assert_eq!(key.verify(&value, REQ, 990, 10, member), Ok(hop));
        assert_eq!(
            key.verify(&value, REQ, 1011, 10, member),
            Err(Refused::Expired)
        );
        assert_eq!(
            key.verify(&value, ("GET", "a.com", "/other"), 1000, 10, member),
            Err(Refused::BadMac)
        );
        assert_eq!(
            key.verify(&value, ("HEAD", "a.com", "/x?y=1"), 1000, 10, member),
            Err(Refused::BadMac)
        );
        assert_eq!(
            key.verify(&value, REQ, 1000, 10, |_| false),
            Err(Refused::NotMember)
        );
        let other = HopKey::derive(b"another key of the same length");
        assert_eq!(
            other.verify(&value, REQ, 1000, 10, member),
            Err(Refused::BadMac)
        );
        // a changed position, scheme or sender breaks the MAC
        for forged in [
            value.replacen(" 7 ", " 8 ", 1),
            value.replacen("https", "http", 1),
            value.replacen("b ", "c ", 1),
        ] {
            assert_eq!(
                key.verify(&forged, REQ, 1000, 10, |_| true),
                Err(Refused::BadMac),
                "{forged}"
            );
        }
        for junk in [
            "",
            "b 1000 7 https",
            "b x 7 https ab",
            "b 1 2 ftp 00",
            &format!("{value} x"),
        ] {
            assert_eq!(
                key.verify(junk, REQ, 1000, 10, member),
                Err(Refused::Malformed),
                "{junk}"
            );
        }
    }

    #[test]
    fn cdn_loop_counts_verge_entries() {
        let values: [&[u8]; 2] = [b"foo, verge; v=1", b"Verge,bar"];
        assert_eq!(cdn_loop_count(values), 2);
        assert_eq!(cdn_loop_count([&b"vergex, xverge"[..]]), 0);
        assert_eq!(cdn_loop_count(Vec::<&[u8]>::new()), 0);
    }
}
