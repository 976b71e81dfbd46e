//! The PROXY protocol (HAProxy's, versions 1 and 2) on a listener (`listeners[].proxy_protocol`):
//! a connection from one of the listener's trusted sources starts with a header naming the
//! client it carries, read here before TLS and HTTP; that client's address becomes the
//! connection's peer address, which everything after reads (access rules, rate limits,
//! `X-Forwarded-For`, the access log). A connection from anyone else is read as it comes: a
//! header it sends is a malformed request.

use crate::config::ProxyProtocol;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{SocketDigest, Stream};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Version 2's signature (the first 12 bytes of its header).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A version 1 line is at most 107 bytes, its CRLF included.
const V1_MAX: usize = 107;

/// Why a header was refused (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// The connection closed before its first byte (a TCP health check): not counted.
    #[error("closed before a PROXY protocol header")]
    Closed,
    /// It is neither version's header.
    #[error("no PROXY protocol header")]
    Missing,
    /// It starts as one but does not read as one.
    #[error("a malformed PROXY protocol header")]
    Malformed,
}

/// What a header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// The client's address and port.
    Client(SocketAddr),
    /// Nothing to replace (version 1 `UNKNOWN`, version 2 `LOCAL` or another family): the
    /// connection's own address stays.
    Unknown,
}

/// Read a version 1 line (`PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\n`), CRLF included. Pure.
pub fn parse_v1(line: &[u8]) -> Result<Carried, BadHeader> {
    let text = std::str::from_utf8(line).map_err(|_| BadHeader::Malformed)?;
    let text = text.strip_suffix("\r\n").ok_or(BadHeader::Malformed)?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(BadHeader::Missing);
    }
    let family = parts.next().ok_or(BadHeader::Malformed)?;
    if family == "UNKNOWN" {
        return Ok(Carried::Unknown);
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(BadHeader::Malformed),
    };
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(BadHeader::Malformed);
    };
    let ip = |text: &str| match text.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => Ok(ip),
        _ => Err(BadHeader::Malformed),
    };
    let (src, _) = (ip(src)?, ip(dst)?);
    let (sport, _) = (port(sport)?, port(dport)?);
    Ok(Carried::Client(SocketAddr::new(src, sport)))
}

/// A decimal port without leading zeros or signs.
fn port(text: &str) -> Result<u16, BadHeader> {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !plain || (text.len() > 1 && text.starts_with('0')) {
        return Err(BadHeader::Malformed);
    }
    text.parse().map_err(|_| BadHeader::Malformed)
}

/// The bytes after version 2's 16-byte head that `head` announces (its length field). Pure.
pub fn v2_length(head: &[u8; 16]) -> Result<usize, BadHeader> {
    if head[..12] != V2_SIGNATURE {
        return Err(BadHeader::Missing);
    }
    if head[12] >> 4 != 2 || head[12] & 0x0f > 1 {
        return Err(BadHeader::Malformed);
    }
    Ok(usize::from(u16::from_be_bytes([head[14], head[15]])))
}

/// Read version 2's addresses: `head` (its first 16 bytes) and `rest` (the length it
/// announces). TLVs after the addresses are skipped. Pure.
pub fn parse_v2(head: &[u8; 16], rest: &[u8]) -> Result<Carried, BadHeader> {
    if v2_length(head)? != rest.len() {
        return Err(BadHeader::Malformed);
    }
    let local = head[12] & 0x0f == 0;
    let address = |n: usize| rest.get(..n).ok_or(BadHeader::Malformed);
    let carried = match head[13] {
        // TCP over IPv4: source, destination, source port, destination port
        0x11 => {
            let a = address(12)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Carried::Client(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x21 => {
            let a = address(36)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Carried::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        _ => Carried::Unknown,
    };
    Ok(if local { Carried::Unknown } else { carried })
}

/// Read the header a connection from a trusted source starts with, within `timeout`.
async fn read_header(stream: &mut Stream, timeout: Duration) -> Result<Carried, BadHeader> {
    let read = async {
        let mut head = [0u8; 16];
        let first = stream
            .read(&mut head[..12])
            .await
            .map_err(|_| BadHeader::Missing)?;
        if first == 0 {
            return Err(BadHeader::Closed);
        }
        stream
            .read_exact(&mut head[first..12])
            .await
            .map_err(|_| BadHeader::Missing)?;
        if head[..12] == V2_SIGNATURE {
            stream
                .read_exact(&mut head[12..])
                .await
                .map_err(|_| BadHeader::Malformed)?;
            let mut rest = vec![0u8; v2_length(&head)?];
            stream
                .read_exact(&mut rest)
                .await
                .map_err(|_| BadHeader::Malformed)?;
            return parse_v2(&head, &rest);
        }
        if !head.starts_with(b"PROXY ") {
            return Err(BadHeader::Missing);
        }
        let mut line = head[..12].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() == V1_MAX {
                return Err(BadHeader::Malformed);
            }
            line.push(stream.read_u8().await.map_err(|_| BadHeader::Malformed)?);
        }
        parse_v1(&line)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BadHeader::Missing)?
}

/// On a listener with `spec`: when the connection comes from a trusted source, read its header
/// and make the client it names the connection's peer. `Err`: close the connection.
pub async fn accept(
    spec: &ProxyProtocol,
    stream: &mut Stream,
    timeout: Duration,
) -> Result<(), BadHeader> {
    let digest = stream.get_socket_digest();
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    if !peer.is_some_and(|ip| spec.trusts(ip)) {
        return Ok(());
    }
    let Carried::Client(client) = read_header(stream, timeout).await? else {
        return Ok(());
    };
    let replaced = SocketDigest::from_raw_fd(stream.id());
    let _ = replaced.peer_addr.set(Some(PeerAddr::Inet(client)));
    if let Some(local) = digest.as_ref().and_then(|d| d.local_addr()) {
        let _ = replaced.local_addr.set(Some(local.clone()));
    }
    stream.set_socket_digest(replaced);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIGNATURE);
        head[12] = 0x20 | command;
        head[13] = family;
        let len = u16::try_from(addresses.len()).expect("len").to_be_bytes();
        head[14..].copy_from_slice(&len);
        (head, addresses.to_vec())
    }

    #[test]
    fn version_1_lines_name_the_client() {
        let client = |text: &str| parse_v1(text.as_bytes());
        assert_eq!(
            client("PROXY TCP4 198.51.100.9 10.0.0.1 5555 443\r\n"),
            Ok(Carried::Client("198.51.100.9:5555".parse().expect("addr")))
        );
        assert_eq!(
            client("PROXY TCP6 2001:db8::1 ::1 1 80\r\n"),
            Ok(Carried::Client("[2001:db8::1]:1".parse().expect("addr")))
        );
        assert_eq!(client("PROXY UNKNOWN\r\n"), Ok(Carried::Unknown));
        assert_eq!(client("PROXY UNKNOWN ff ee 1 2\r\n"), Ok(Carried::Unknown));
        for bad in [
            "PROXY TCP4 198.51.100.9 10.0.0.1 5555 443\n",
            "PROXY TCP4 198.51.100.9 10.0.0.1 5555\r\n",
            "PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            "PROXY TCP6 198.51.100.9 ::1 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(client(bad), Err(BadHeader::Malformed), "{bad:?}");
        }
        assert_eq!(client("GET / HTTP/1.1\r\n"), Err(BadHeader::Missing));
    }

    #[test]
    fn version_2_headers_name_the_client() {
        let four = [198, 51, 100, 9, 10, 0, 0, 1, 0x15, 0xb3, 0x01, 0xbb];
        let (head, rest) = v2(1, 0x11, &four);
        assert_eq!(v2_length(&head), Ok(12));
        assert_eq!(
            parse_v2(&head, &rest),
            Ok(Carried::Client("198.51.100.9:5555".parse().expect("addr")))
        );
        // TLVs after the addresses are skipped
        let mut with_tlv = four.to_vec();
        with_tlv.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let (head, rest) = v2(1, 0x11, &with_tlv);
        assert!(matches!(parse_v2(&head, &rest), Ok(Carried::Client(_))));
        let mut six = vec![0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("ip").octets());
        six[32..34].copy_from_slice(&80u16.to_be_bytes());
        let (head, rest) = v2(1, 0x21, &six);
        assert_eq!(
            parse_v2(&head, &rest),
            Ok(Carried::Client("[2001:db8::7]:80".parse().expect("addr")))
        );
        // LOCAL (a health check from the proxy itself), or an unspecified or unix family
        let (head, rest) = v2(0, 0x11, &four);
        assert_eq!(parse_v2(&head, &rest), Ok(Carried::Unknown));
        let (head, rest) = v2(1, 0x00, &[]);
        assert_eq!(parse_v2(&head, &rest), Ok(Carried::Unknown));
        // too short for its family, another version or command, a wrong signature
        let (head, rest) = v2(1, 0x21, &four);
        assert_eq!(parse_v2(&head, &rest), Err(BadHeader::Malformed));
        let (mut head, rest) = v2(1, 0x11, &four);
        head[12] = 0x11;
        assert_eq!(parse_v2(&head, &rest), Err(BadHeader::Malformed));
        head[12] = 0x22;
        assert_eq!(parse_v2(&head, &rest), Err(BadHeader::Malformed));
        head[0] = b'G';
        assert_eq!(v2_length(&head), Err(BadHeader::Missing));
    }
}
