//! The load generator `scripts/bench` uses for large objects: keep-alive connections that GET one
//! URL in a loop and read each whole response through a 256 KiB buffer, without parsing the
//! body. wrk reads 8 KiB at a time and runs every byte through its HTTP parser, so on large
//! responses its own core is the limit long before the proxy's; this client costs a fraction of
//! that per byte, so the MB/s it measures is the proxy's.
//!
//! ```text
//! cargo run --release --example bench_fetch -- --addr 127.0.0.1:8080 --path /obj/1048576/big \
//!     --conns 16 --seconds 10
//! ```
//!
//! Prints one line, `BENCHJSON {...}`, with the fields `scripts/bench` reads from wrk: requests,
//! duration_us, bytes (whole responses, heads included), error counts, latency percentiles.
//! A response that is not `200` with a `Content-Length`, or a connection that fails, is counted
//! as an error and the connection is opened again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUFFER: usize = 256 * 1024;

#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    connect_errors: u64,
    read_errors: u64,
    status_errors: u64,
    latencies_us: Vec<u64>,
}

struct Args {
    addr: SocketAddr,
    path: String,
    conns: usize,
    seconds: f64,
}

fn args() -> Result<Args, String> {
    let mut addr = None;
    let mut path = "/".to_string();
    let mut conns = 16;
    let mut seconds = 10.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().map_err(|e| format!("--addr: {e}"))?),
            "--path" => path = value,
            "--conns" => conns = value.parse().map_err(|e| format!("--conns: {e}"))?,
            "--seconds" => seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        path,
        conns,
        seconds,
    })
}

/// What a response head says: where it ends, the body's length, and whether the server closes
/// the connection after it (`Connection: close`, e.g. at its keep-alive request limit).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    end: usize,
    length: usize,
    close: bool,
}

/// The head, once a whole one is in `buf`; `Err` when the response is not a `200` with a
/// length.
fn parse_head(buf: &[u8]) -> Option<Result<Head, ()>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok();
    let Some(head) = head.filter(|h| h.starts_with("HTTP/1.1 200 ")) else {
        return Some(Err(()));
    };
    let field = |wanted: &str| {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(wanted)
                .then(|| value.trim())
        })
    };
    let close = field("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let length = field("content-length").and_then(|v| v.parse::<usize>().ok());
    Some(length.map(|length| Head { end, length, close }).ok_or(()))
}

/// One request and its whole response on `stream`: `Ok((bytes, the server closes))`, or
/// `Err(true)` for a bad status, `Err(false)` for a failed connection.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut [u8],
) -> Result<(u64, bool), bool> {
    stream.write_all(request).await.map_err(|_| false)?;
    let mut filled = 0;
    let head = loop {
        let n = stream.read(&mut buf[filled..]).await.map_err(|_| false)?;
        if n == 0 {
            return Err(false);
        }
        filled += n;
        match parse_head(&buf[..filled]) {
            Some(Ok(found)) => break found,
            Some(Err(())) => return Err(true),
            None if filled == buf.len() => return Err(true),
            None => {}
        }
    };
    let total = head.end + head.length;
    let mut got = filled;
    while got < total {
        let n = stream.read(buf).await.map_err(|_| false)?;
        if n == 0 {
            return Err(false);
        }
        got += n;
    }
    if got != total {
        return Err(true); // bytes past the response: nothing else was asked for
    }
    Ok((total as u64, head.close))
}

async fn connection(addr: SocketAddr, request: Vec<u8>, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; BUFFER];
    while Instant::now() < until {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.connect_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < until {
            let started = Instant::now();
            match exchange(&mut stream, &request, &mut buf).await {
                Ok((bytes, close)) => {
                    tally.requests += 1;
                    tally.bytes += bytes;
                    tally
                        .latencies_us
                        .push(started.elapsed().as_micros() as u64);
                    if close {
                        break; // the server's keep-alive limit: open a new connection
                    }
                }
                Err(status) => {
                    if status {
                        tally.status_errors += 1;
                    } else {
                        tally.read_errors += 1;
                    }
                    break;
                }
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn main() -> Result<(), String> {
    let args = args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench_fetch\r\n\r\n",
        args.path, args.addr
    )
    .into_bytes();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let tallies = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.conns)
            .map(|_| tokio::spawn(connection(args.addr, request.clone(), until)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(tally) = t.await {
                out.push(tally);
            }
        }
        out
    });
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for t in tallies {
        all.requests += t.requests;
        all.bytes += t.bytes;
        all.connect_errors += t.connect_errors;
        all.read_errors += t.read_errors;
        all.status_errors += t.status_errors;
        all.latencies_us.extend(t.latencies_us);
    }
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    println!(
        "BENCHJSON {{\"requests\":{},\"duration_us\":{},\"bytes\":{},\"connect_errors\":{},\
         \"read_errors\":{},\"write_errors\":0,\"status_errors\":{},\"timeouts\":0,\
         \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        all.requests,
        elapsed.as_micros(),
        all.bytes,
        all.connect_errors,
        all.read_errors,
        all.status_errors,
        percentile(l, 50),
        percentile(l, 90),
        percentile(l, 99),
        l.last().copied().unwrap_or(0),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_their_length() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        let head = Head {
            end: 44,
            length: 5,
            close: false,
        };
        assert_eq!(parse_head(ok), Some(Ok(head)));
        let last = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n";
        assert!(matches!(
            parse_head(last),
            Some(Ok(Head { close: true, .. }))
        ));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), None);
        assert_eq!(parse_head(b"HTTP/1.1 404 Not Found\r\n\r\n"), Some(Err(())));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Err(()))
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[], 99), 0);
    }
}
