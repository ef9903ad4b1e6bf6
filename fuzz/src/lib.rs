//! The in-memory connection the `h2_connection` and `http1_request` targets feed: tandem's
//! inbound server (the HTTP/1.1 codec, handing the HTTP/2 preface to the HTTP/2 server, as the
//! listener does) on one end of a `tokio::io::duplex` pipe, the fuzzer's bytes on the other, and
//! tandem's echo app behind it on 127.0.0.1:0 in this process. Each input gets a new connection,
//! bounded in time; the app and its pooled connections live for the whole run.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tandem::base::conn::ConnMeta;
use tandem::config::{Config, Human};
use tandem::http1::server::{Codec, Outcome, ReadReady, Rules};
use tandem::lifecycle::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Longest one input may take, end to end (a request for `?delay=` waits up to this).
const PER_INPUT: Duration = Duration::from_secs(2);

/// The server half of the pipe. It cannot tell readiness without reading, so it is always ready
/// (as a TLS stream is to the codec).
struct Pipe(DuplexStream);

impl AsyncRead for Pipe {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl ReadReady for Pipe {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// tandem's inbound side in front of its echo app, on a runtime of its own.
pub struct Server {
    rt: tokio::runtime::Runtime,
    codec: Codec,
    rules: Rules,
    h2: tandem::h2::server::H2Rules,
    shutdown: Shutdown,
    _echo: tandem::app::Echo,
}

/// The one server of this process.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // A Rust program's main ignores SIGPIPE before it starts, so a write to a connection
        // the peer closed is an error for tandem, not the end of the process; libFuzzer's main
        // is not Rust's. SAFETY: at start, before any thread of ours writes to a socket.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let echo = rt.block_on(tandem::app::Echo::start("127.0.0.1:0".parse().expect("addr"))).expect("echo app");
        let mut cfg = Config::default();
        cfg.inbound.app = Human::new(echo.addr);
        cfg.inbound.timeouts.response = Human::new(Duration::from_secs(1));
        cfg.access_log.destination = "off".into();
        let metrics = tandem::telemetry::metrics::Metrics::new(prometheus::Registry::new()).expect("metrics");
        let log = tandem::telemetry::access_log::AccessLog::start(
            &cfg.access_log,
            metrics.access_log_written.clone(),
            metrics.access_log_dropped.clone(),
        )
        .expect("access log off");
        let telemetry = Arc::new(tandem::telemetry::Telemetry::new(metrics, log));
        let proxy = rt.block_on(async { tandem::proxy::inbound::InboundProxy::new(&cfg.inbound, telemetry, false) });
        let codec = Codec::new(&proxy.expect("proxy"));
        // The listener's rules for the default limits (listener/accept.rs).
        let head = 2 * cfg.inbound.limits.max_header_bytes.value.0 as usize;
        let idle = Duration::from_secs(1);
        let rules = Rules { header_read: idle, idle, max_head: head.max(16 * 1024) };
        let h2 = tandem::h2::server::H2Rules { idle, max_list: head };
        Server { rt, codec, rules, h2, shutdown: Shutdown::new(), _echo: echo }
    })
}

impl Server {
    /// Opens a connection, writes `input` on it (in pieces ending at `cuts`, as TCP may split
    /// it), ends the client's side and reads until the server closes or [`PER_INPUT`] passes.
    /// Returns what the server wrote.
    pub fn exchange(&self, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(input.len());
        let serve = async {
            let mut io = Pipe(server);
            let meta = ConnMeta { peer: "127.0.0.1:40000".parse().expect("addr"), tls: None, original_dst: None };
            let peer_ip = http::HeaderValue::from_static("127.0.0.1");
            let mut drain = self.shutdown.drain();
            let handed = match self.codec.serve(&mut io, &meta, Some(&peer_ip), &mut drain, self.rules).await {
                Outcome::H2(rest) => rest,
                Outcome::Closed => return,
            };
            let proxy = self.codec.proxy();
            tandem::h2::server::serve(&mut io, handed, proxy, &meta, Some(&peer_ip), &mut drain, self.h2).await;
        };
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            let mut at = 0;
            for end in ends {
                if end > at && wr.write_all(&input[at..end]).await.is_err() {
                    return;
                }
                at = at.max(end);
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while let Ok(n) = rd.read_buf(&mut buf).await {
                if n == 0 || out.len() > 1 << 20 {
                    break;
                }
                out.extend_from_slice(&buf.split());
            }
            out
        };
        self.rt.block_on(async {
            let both = async {
                let ((), (), out) = tokio::join!(serve, write, read);
                out
            };
            tokio::time::timeout(PER_INPUT, both).await.unwrap_or_default()
        })
    }
}
