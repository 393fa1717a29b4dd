//! The shaping proxy: a TCP proxy on loopback in front of the registry that makes it look
//! far away and behind a thin pipe.
//!
//! - Round-trip time: every byte is delivered RTT/2 after it was sent, in each direction,
//!   and a new connection waits one RTT before anything flows (the TCP handshake).
//! - Bandwidth: each direction is one link shared by every connection, a token bucket
//!   refilled at the configured rate with a depth of [`BURST`] worth of bytes (so timer
//!   granularity does not eat into the rate). A reader waits for the link before it reads
//!   on, so TCP's flow control reaches the sender as on a real link.
//! - Counting: the bytes that went from the registry to the clients (headers and bodies),
//!   which is what "bytes fetched from the registry" means in the report.
//!
//! `tc netem` is not available on these kernels; this needs no privileges at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How much unused link time may be saved up (the token bucket's depth).
pub const BURST: Duration = Duration::from_millis(5);
/// The most a proxy reads in one go (the unit it schedules on the link).
const READ_SIZE: usize = 16 << 10;

/// How the path to the registry is shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    /// Round-trip time.
    pub rtt: Duration,
    /// Bandwidth in bits per second, each direction; 0 means unlimited.
    pub bits_per_sec: f64,
}

impl Shaping {
    /// `rtt_ms` milliseconds and `mbit` Mbit/s (10^6 bits).
    pub fn new(rtt_ms: f64, mbit: f64) -> Self {
        Self {
            rtt: Duration::from_secs_f64(rtt_ms.max(0.0) / 1000.0),
            bits_per_sec: mbit.max(0.0) * 1e6,
        }
    }

    /// Round-trip time in milliseconds.
    pub fn rtt_ms(&self) -> f64 {
        self.rtt.as_secs_f64() * 1000.0
    }

    /// Bandwidth in Mbit/s.
    pub fn mbit(&self) -> f64 {
        self.bits_per_sec / 1e6
    }

    /// Seconds `bytes` take on the link (0 when unlimited).
    pub fn transfer_secs(&self, bytes: u64) -> f64 {
        if self.bits_per_sec > 0.0 {
            bytes as f64 * 8.0 / self.bits_per_sec
        } else {
            0.0
        }
    }
}

/// One direction of the path: a token bucket shared by every connection.
struct Link {
    /// When the link is free again (may lie up to [`BURST`] in the past).
    free_at: Mutex<Instant>,
    secs_per_byte: f64,
}

impl Link {
    fn new(shaping: &Shaping) -> Self {
        Self {
            free_at: Mutex::new(Instant::now()),
            secs_per_byte: if shaping.bits_per_sec > 0.0 {
                8.0 / shaping.bits_per_sec
            } else {
                0.0
            },
        }
    }

    /// Reserves the link for `n` bytes; returns when they have been sent.
    fn reserve(&self, n: usize) -> Instant {
        let now = Instant::now();
        if self.secs_per_byte == 0.0 {
            return now;
        }
        let mut free_at = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = (*free_at).max(earliest);
        *free_at = start + Duration::from_secs_f64(n as f64 * self.secs_per_byte);
        *free_at
    }
}

/// What the proxy counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes from the registry to clients.
    pub down: AtomicU64,
    /// Bytes from clients to the registry.
    pub up: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// HTTP requests sent to the registry (request lines counted on the way up).
    pub requests: AtomicU64,
}

/// A running shaping proxy (on its own runtime thread); stopped when dropped.
pub struct ShapingProxy {
    addr: SocketAddr,
    shaping: Shaping,
    counters: Arc<Counters>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ShapingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr, shaping: Shaping) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("veil-bench-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let down = Arc::new(Link::new(&shaping));
        let up = Arc::new(Link::new(&shaping));
        let c = counters.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let (c, down, up) = (c.clone(), down.clone(), up.clone());
                tokio::spawn(async move {
                    let _ = serve(client, upstream, shaping, c, down, up).await;
                });
            }
        });
        Ok(Self {
            addr,
            shaping,
            counters,
            runtime: Some(runtime),
        })
    }

    /// `127.0.0.1:PORT`: what clients use as the registry's host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The shaping it applies.
    pub fn shaping(&self) -> Shaping {
        self.shaping
    }

    /// Bytes sent from the registry to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.counters.down.load(Ordering::Relaxed)
    }

    /// Bytes sent from clients to the registry so far.
    pub fn bytes_up(&self) -> u64 {
        self.counters.up.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// HTTP requests sent to the registry so far (range requests and the rest).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ShapingProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    shaping: Shaping,
    counters: Arc<Counters>,
    down: Arc<Link>,
    up: Arc<Link>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The handshake of a connection over the shaped path costs one round trip.
    tokio::time::sleep(shaping.rtt).await;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let delay = shaping.rtt / 2;
    let to_server = pump(cr, sw, up, delay, counters.clone(), Direction::Up);
    let to_client = pump(sr, cw, down, delay, counters, Direction::Down);
    let _ = tokio::join!(to_server, to_client);
    Ok(())
}

/// How an HTTP/1.1 request line ends (counted on the way up: one per request).
const REQUEST_LINE_END: &[u8] = b" HTTP/1.1\r\n";

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Copies `from` to `to` over `link`, each piece delivered `delay` after it left.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    delay: Duration,
    counters: Arc<Counters>,
    direction: Direction,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match data {
                Some(d) => {
                    if to.write_all(&d).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    });
    let mut last = Instant::now();
    loop {
        let mut buf = vec![0u8; READ_SIZE];
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            let at = (Instant::now() + delay).max(last);
            let _ = tx.send((at, None));
            break;
        }
        buf.truncate(n);
        let sent = link.reserve(n);
        tokio::time::sleep_until(sent).await;
        match direction {
            Direction::Up => {
                let lines = buf.windows(REQUEST_LINE_END.len());
                let requests = lines.filter(|w| *w == REQUEST_LINE_END).count();
                counters
                    .requests
                    .fetch_add(requests as u64, Ordering::Relaxed);
                counters.up.fetch_add(n as u64, Ordering::Relaxed)
            }
            Direction::Down => counters.down.fetch_add(n as u64, Ordering::Relaxed),
        };
        last = (sent + delay).max(last);
        if tx.send((last, Some(buf))).is_err() {
            break;
        }
    }
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An upstream that answers every connection with `len` bytes after reading a line.
    fn upstream(len: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while matches!(conn.read(&mut b), Ok(1)) && b[0] != b'\n' {}
                    let _ = conn.write_all(&vec![7u8; len]);
                });
            }
        });
        addr
    }

    fn fetch(proxy: &ShapingProxy) -> usize {
        let mut s = std::net::TcpStream::connect(proxy.host()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    }

    #[test]
    fn delays_by_the_round_trip_time() {
        let proxy = ShapingProxy::start(upstream(10), Shaping::new(100.0, 0.0)).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(fetch(&proxy), 10);
        let took = t.elapsed();
        // Handshake (1 RTT) + request (RTT/2) + answer (RTT/2).
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert_eq!(proxy.bytes_down(), 10);
        assert_eq!(proxy.bytes_up(), 16);
        assert_eq!(proxy.requests(), 1);
    }

    #[test]
    fn limits_the_bandwidth_and_counts_bytes() {
        // 2 MiB at 40 Mbit/s: 0.42 s.
        let len = 2 << 20;
        let proxy = ShapingProxy::start(upstream(len), Shaping::new(0.0, 40.0)).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(fetch(&proxy), len);
        let took = t.elapsed().as_secs_f64();
        let ideal = proxy.shaping().transfer_secs(len as u64);
        assert!(took > ideal * 0.9, "{took} s for an ideal {ideal} s");
        assert!(took < ideal * 1.5 + 0.2, "{took} s for an ideal {ideal} s");
        assert_eq!(proxy.bytes_down(), len as u64);
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.requests(), 1);
    }
}
