//! One opaque TCP connection relayed to its destination: connect (within the caller's connect
//! timeout), copy both ways with half-close honoured (a side that reaches end of stream gets its
//! peer's write side shut, and the other way goes on until it ends too), close after
//! `timeouts.idle` with no byte either way, and one access-log line when it ends.
//!
//! The line has protocol `tcp`, no method, `upstream_host` the address connected to,
//! `bytes_received` the client's bytes (to the destination), `bytes_sent` the destination's (to
//! the client), the duration, the TLS server name as `authority` when the connection began with a
//! ClientHello, and `response_flags`:
//!
//! | flag | when |
//! | --- | --- |
//! | `UF` | the connection to the destination failed or timed out |
//! | `NR` | the outbound policy denied the destination (or it is tandem's own listener) |
//! | `UC` | the destination reset the connection, or writing to it failed |
//! | `DC` | the client reset the connection, or writing to it failed |
//! | `LR` | tandem cut the connection at the drain deadline |
//!
//! The report is a guard: a relay cut at the drain deadline (its future dropped by the accept
//! loop) is reported too, `LR`, with the bytes it had moved.

use crate::base::reason::{Direction, Reason};
use crate::telemetry::record::RequestRecord;
use crate::telemetry::Telemetry;
use http::HeaderValue;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each direction's copy buffer. Larger than nginx's and HAProxy's 16 KiB default: a long stream
/// moves in a quarter of the system calls. Reserved, not zeroed, and only while the connection
/// lives.
const COPY_BUFFER: usize = 64 * 1024;

/// Why the connection to the destination was not made.
#[derive(Debug)]
pub struct Unreachable {
    /// `UF` (refused, unreachable, timed out) or `NR` (denied by policy).
    pub reason: Reason,
    /// The address tried, when one was.
    pub addr: Option<SocketAddr>,
    pub cause: String,
}

/// Connects to `addr` within `timeout` (`UF` when it fails or times out).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, SocketAddr), Unreachable> {
    let unreachable = |cause: String| Unreachable { reason: Reason::UF, addr: Some(addr), cause };
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok((s, addr))
        }
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("connect timed out after {timeout:?}"))),
    }
}

/// What relays one listener's opaque connections.
pub struct Relay {
    telemetry: Arc<Telemetry>,
    direction: Direction,
    /// The `upstream_cluster` of its lines (`app` inbound, `passthrough` outbound).
    cluster: &'static str,
    /// Nothing moved either way for this long: the connection is closed (0: never).
    idle: Duration,
}

/// The bytes moved so far, each way (read by the report, also when the relay is cut).
#[derive(Default)]
struct Moved {
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides reached end of stream.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A side failed: `DC` (the client) or `UC` (the destination).
    Failed(Reason),
    /// The destination could not be reached (`UF` or `NR`).
    Unreachable(Reason),
}

impl Relay {
    pub fn new(telemetry: Arc<Telemetry>, direction: Direction, cluster: &'static str, idle: Duration) -> Self {
        Self { telemetry, direction, cluster, idle }
    }

    /// Relays `client` (from `peer`) to what `connect` reaches, until both sides close, one
    /// fails, or nothing moves for the idle timeout; reports the connection once, however it
    /// ends (dropped: `LR` at the drain deadline, `DC` otherwise).
    pub async fn run<C>(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        server_name: Option<HeaderValue>,
        connect: C,
    ) -> Ended
    where
        C: Future<Output = Result<(TcpStream, SocketAddr), Unreachable>>,
    {
        let moved = Moved::default();
        let mut record = RequestRecord::empty(self.direction, peer);
        record.tcp = true;
        record.upstream_cluster = self.cluster;
        record.authority = server_name;
        let mut report =
            Report { record: Some(Box::new(record)), moved: &moved, telemetry: &self.telemetry, ended: None };
        let mut upstream = match connect.await {
            Ok((s, addr)) => {
                if let Some(r) = report.record.as_mut() {
                    r.upstream_host = Some(addr);
                }
                s
            }
            Err(e) => {
                tracing::debug!(%peer, addr = ?e.addr, cause = %e.cause, reason = e.reason.as_str(), "opaque TCP: destination unreachable");
                if let Some(r) = report.record.as_mut() {
                    r.upstream_host = e.addr;
                }
                let ended = Ended::Unreachable(e.reason);
                report.ended = Some(ended);
                return ended;
            }
        };
        let ended = self.copy(&mut client, &mut upstream, &moved).await;
        report.ended = Some(ended);
        ended
    }

    /// Copies both ways until both have ended, one side fails, or the idle timeout passes.
    async fn copy(&self, client: &mut TcpStream, upstream: &mut TcpStream, moved: &Moved) -> Ended {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pipe(&mut cr, &mut uw, &moved.to_upstream, Reason::DC, Reason::UC);
        let down = pipe(&mut ur, &mut cw, &moved.to_client, Reason::UC, Reason::DC);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let period = self.idle.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut seen = 0u64;
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Err(reason) = r {
                        return Ended::Failed(reason);
                    }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if let Err(reason) = r {
                        return Ended::Failed(reason);
                    }
                }
                _ = tick.tick(), if !self.idle.is_zero() => {
                    let now = moved.to_upstream.load(Ordering::Relaxed) + moved.to_client.load(Ordering::Relaxed);
                    if now == seen {
                        tracing::debug!(idle = ?self.idle, "opaque TCP: closed after moving nothing for the idle timeout");
                        return Ended::Idle;
                    }
                    seen = now;
                }
            }
        }
        Ended::Closed
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to`'s write side (the half-close goes
/// on). A read failure is `read_fault`'s side, a write failure `write_fault`'s.
async fn pipe<R, W>(
    from: &mut R,
    to: &mut W,
    count: &AtomicU64,
    read_fault: Reason,
    write_fault: Reason,
) -> Result<(), Reason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(COPY_BUFFER);
    loop {
        buf.clear();
        let n = match from.read_buf(&mut buf).await {
            Ok(0) => {
                // The peer may already be gone; what matters is that it sees the end.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(fault(read_fault, &e)),
        };
        if let Err(e) = to.write_all(&buf).await {
            return Err(fault(write_fault, &e));
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn fault(side: Reason, e: &io::Error) -> Reason {
    tracing::debug!(error = %e, side = side.as_str(), "opaque TCP: a side failed");
    side
}

/// The connection's one report, written when it is dropped: at the end of [`Relay::run`], or
/// when the relay is cut (its future dropped).
struct Report<'a> {
    record: Option<Box<RequestRecord>>,
    moved: &'a Moved,
    telemetry: &'a Telemetry,
    /// How it ended; `None` when it was cut.
    ended: Option<Ended>,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        let Some(mut r) = self.record.take() else { return };
        r.bytes_received = self.moved.to_upstream.load(Ordering::Relaxed);
        r.bytes_sent = self.moved.to_client.load(Ordering::Relaxed);
        r.duration = r.started.elapsed();
        r.response_flags = match self.ended {
            Some(Ended::Failed(reason) | Ended::Unreachable(reason)) => Some(reason),
            Some(Ended::Closed | Ended::Idle) => None,
            None => Some(self.telemetry.cut_reason()),
        };
        self.telemetry.log(r);
    }
}
