//! tandem's own HTTP/2 server (RFC 9113) for the inbound proxy in front of an HTTP/1.1 app: h2c
//! with prior knowledge and h2 negotiated by TLS ALPN. One task per connection reads frames,
//! decodes each request's header block ([`crate::h2::hpack`]), runs the request through the same
//! checks, rewrites and reports as every other inbound request ([`InboundProxy::call`]) and
//! writes the answers back, several to one write. No task is spawned per stream, and the only
//! allocation a request without a body makes here is its header map.
//!
//! # What it implements
//!
//! - The preface and SETTINGS both ways. Ours: `MAX_CONCURRENT_STREAMS` 200,
//!   `INITIAL_WINDOW_SIZE` 1 MiB, `MAX_HEADER_LIST_SIZE` the listener's head limit (twice
//!   `limits.max_header_bytes`, the same as hyper's path), and a connection window of 1 MiB. The
//!   peer's `HEADER_TABLE_SIZE`, `INITIAL_WINDOW_SIZE` (applied to every open stream) and
//!   `MAX_FRAME_SIZE` are honoured.
//! - Flow control both ways. A request body is handed to the app as it arrives, and its window is
//!   given back only as the app's connection takes the bytes, so a stream never holds more than
//!   its window and a connection never more than 1 MiB. An answer's body is polled only while
//!   both windows and the write buffer have room.
//! - Requests: the pseudo-header and field rules of RFC 9113 section 8 (a malformed request is
//!   answered 400 `DPE` without END_STREAM, then reset `PROTOCOL_ERROR`, section 8.1.1; a gRPC
//!   one gets its trailers-only answer with END_STREAM, the reset following while the client's
//!   side is open, so that the client reads the status; a header
//!   list over the limit 431 `DPE`; both are logged and counted and never reach the app),
//!   `content-length` checked against the DATA received, trailers, `cookie` fields joined for
//!   the HTTP/1.1 app (section 8.2.3). `:authority` is the app's Host (a differing `host` is
//!   dropped, section 8.3.1); with neither, the app's own authority is. CONNECT is answered 405
//!   (tandem makes no tunnels).
//! - Answers: HEADERS (with CONTINUATION when longer than the peer's frame size), DATA, trailers;
//!   the connection-specific fields HTTP/2 forbids are never sent. A body that fails resets its
//!   stream (`INTERNAL_ERROR`); an answer that ends before its request body does is followed by
//!   `RST_STREAM(NO_ERROR)`.
//! - `RST_STREAM` from the client cancels the request (reported `DC`). PING is answered, GOAWAY
//!   from the client lets open streams finish. Frames of unknown type are ignored.
//! - Stream states (section 5.1): DATA or HEADERS on a stream the client reset or that both
//!   sides ended is a stream error `STREAM_CLOSED`; on a stream we reset, it is ignored (the
//!   client may have sent it before it saw our RST_STREAM). HEADERS opening a stream below one
//!   already opened is a connection error `PROTOCOL_ERROR` (section 5.1.1); a stream made to
//!   depend on itself, by PRIORITY or HEADERS, a stream error `PROTOCOL_ERROR` (section 5.3.1).
//! - The stop: GOAWAY with the last possible stream ID and a PING, then, once the PING is
//!   answered (or after 1 s), GOAWAY naming the last stream taken; open streams finish and the
//!   connection closes (the [`crate::lifecycle::shutdown`] rules). Idle connections close after
//!   `timeouts.idle`; a PING every 30 s without traffic, and no answer within 10 s closes the
//!   connection. A connection quiet for one timer tick with nothing in flight gives its buffers
//!   back.
//! - Limits against abuse, each counted in [`abuse`]: streams over 200 are refused
//!   (`REFUSED_STREAM`); these end the connection with GOAWAY `ENHANCE_YOUR_CALM`: a client
//!   that resets more streams than it lets finish (more than 200 ahead, the rapid-reset
//!   attack), more than 1,000 answers to its PING, SETTINGS and bad frames waiting unwritten
//!   (a flood it does not read, nghttp2's bound), a header block in more CONTINUATION frames
//!   than its largest size needs (the `h2` crate's rule), more than 100 empty DATA frames
//!   without END_STREAM (the `h2` crate's bound), more than 10,000 frames that carry no
//!   request and no data (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, ...) with neither a new
//!   stream nor DATA in between (the count halves every timer tick, so keep-alive PINGs never
//!   add up). A header block is bounded before it is decoded, and a list of more fields than a
//!   header map holds is answered 431 like one over the size limit; nothing more is read while
//!   64 KiB of answers wait to be written. With an idle timeout set, a stream whose answer
//!   waits that long for the client (its window at zero, or no write room) is reset `CANCEL`,
//!   which releases its app connection, and a connection whose client reads nothing that long
//!   is closed.
//!
//! Protocol errors are connection errors (GOAWAY with the code, then close) or stream errors
//! (`RST_STREAM`), as section 5.4 assigns them.

use crate::base::body::RequestBody;
use crate::base::body::{RecvBody, RecvShared};
use crate::base::conn::ConnMeta;
use crate::base::reason::Direction;
use crate::h2::hpack::{self, HpackError};
use crate::lifecycle::shutdown::Drain;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{error_response, ProxyError};
use crate::proxy::inbound::{InboundFuture, InboundProxy};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, SizeHint};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub use crate::base::conn::{H2_PREFACE as PREFACE, H2_PREFACE_LINE as PREFACE_LINE};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 section 7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// Streams one connection may have open.
pub const MAX_CONCURRENT_STREAMS: usize = 200;
/// The window each stream starts with, and the connection's.
pub const WINDOW: u32 = 1 << 20;
/// The largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE's default, which we keep).
const MAX_FRAME: usize = 16_384;
/// Answers waiting to be written beyond which nothing more is read or polled.
const WRITE_HIGH: usize = 64 * 1024;
/// A body part at most this long is copied next to its frame header; a longer one is written
/// from its own buffer (vectored).
const COPY_DATA: usize = 1024;
/// Window credit given back once this much has been taken.
const CREDIT_AT: u32 = 64 * 1024;
/// Passes over a connection's work before it lets the worker's other tasks run.
const MAX_PASSES: usize = 32;
/// Streams a client may reset ahead of the ones it lets finish.
const RESET_BUDGET: u32 = 200;
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the stop waits for the PING after the first GOAWAY.
const GOAWAY_PING_WAIT: Duration = Duration::from_secs(1);
const GOAWAY_PING: [u8; 8] = *b"tandem:g";
const KEEPALIVE_PING: [u8; 8] = *b"tandem:k";

/// Streams we reset whose late frames are ignored (RFC 9113 section 5.1), the most recent this
/// many; a frame on any other closed stream is a stream error `STREAM_CLOSED`.
const RESETS_KEPT: usize = 2 * MAX_CONCURRENT_STREAMS;
/// Ranges of stream IDs the client skipped (never opened), the most recent this many: HEADERS on
/// one is a stream ID lower than one already used (section 5.1.1).
const SKIPS_KEPT: usize = 16;
/// Answers to the client's control frames (PING and SETTINGS acknowledgements, RST_STREAM) that
/// may wait unwritten: past this the client is flooding without reading (nghttp2's bound).
const MAX_CTL_UNSENT: u32 = 1000;
/// Empty DATA frames without END_STREAM one connection may send (the `h2` crate's bound).
const MAX_EMPTY_DATA: u32 = 100;
/// Frames that carry no request and no data (PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
/// RST_STREAM, GOAWAY, unknown types) a client may send with no request opened and no DATA
/// either way in between. The count halves at every tick of the connection's timer (at most
/// 10 s), so keep-alive PINGs never add up; a flood of 500 a second for 10 s does.
const MAX_IDLE_FRAMES: u32 = 10_000;

/// Abuse this server cut short, counted for the whole process (read by [`abuse::totals`]).
pub mod abuse {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// What a client did.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Abuse {
        /// Streams opened and reset (by it, or provoked from us) faster than answered.
        RapidReset,
        /// PING or SETTINGS (or frames we must answer with RST_STREAM) sent without reading the
        /// answers.
        ControlFlood,
        /// PING frames, far more than requests and data.
        PingFlood,
        /// SETTINGS frames, far more than requests and data.
        SettingsFlood,
        /// WINDOW_UPDATE frames, far more than requests and data.
        WindowUpdateFlood,
        /// PRIORITY, RST_STREAM, GOAWAY or unknown frames, far more than requests and data.
        FrameFlood,
        /// A header block in more CONTINUATION frames than its size needs.
        ContinuationFlood,
        /// Empty DATA frames that do not end their stream.
        EmptyData,
        /// A stream whose answer made no progress for the idle timeout (the client's window
        /// stayed at zero, or it did not read).
        StalledStream,
        /// A connection whose answers the client did not read for the idle timeout.
        Unread,
    }

    const ALL: [Abuse; 10] = [
        Abuse::RapidReset,
        Abuse::ControlFlood,
        Abuse::PingFlood,
        Abuse::SettingsFlood,
        Abuse::WindowUpdateFlood,
        Abuse::FrameFlood,
        Abuse::ContinuationFlood,
        Abuse::EmptyData,
        Abuse::StalledStream,
        Abuse::Unread,
    ];

    static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

    impl Abuse {
        /// The label this kind is exported under.
        pub fn as_str(self) -> &'static str {
            match self {
                Abuse::RapidReset => "rapid_reset",
                Abuse::ControlFlood => "control_flood",
                Abuse::PingFlood => "ping_flood",
                Abuse::SettingsFlood => "settings_flood",
                Abuse::WindowUpdateFlood => "window_update_flood",
                Abuse::FrameFlood => "frame_flood",
                Abuse::ContinuationFlood => "continuation_flood",
                Abuse::EmptyData => "empty_data",
                Abuse::StalledStream => "stalled_stream",
                Abuse::Unread => "unread",
            }
        }
    }

    pub(super) fn count(kind: Abuse) {
        COUNTS[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind with the times it was seen since the process started.
    pub fn totals() -> [(Abuse, u64); ALL.len()] {
        ALL.map(|k| (k, COUNTS[k as usize].load(Ordering::Relaxed)))
    }
}

use abuse::Abuse;

/// A connection error: GOAWAY with `code`, then close.
#[derive(Debug)]
struct ConnError {
    code: u32,
    why: &'static str,
}

fn conn_err(code: u32, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// A connection error `ENHANCE_YOUR_CALM` for abuse, counted.
fn calm(kind: Abuse, why: &'static str) -> ConnError {
    abuse::count(kind);
    conn_err(code::ENHANCE_YOUR_CALM, why)
}

/// Whether `buf` starts with the HTTP/2 preface (or could, with more bytes).
fn may_be_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    buf[..n] == PREFACE[..n]
}

/// The listener's rules for one connection.
#[derive(Clone, Copy)]
pub struct H2Rules {
    /// A connection with no stream and no frame for this long is closed (0: never).
    pub idle: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a request's decoded header list, RFC 9113 section 6.5.2.
    pub max_list: usize,
}

/// Serves one HTTP/2 connection whose first bytes (`read`, possibly the whole preface or more)
/// have already been read. Returns when the connection is finished.
pub async fn serve<IO>(
    io: &mut IO,
    read: BytesMut,
    proxy: &Arc<InboundProxy>,
    meta: &ConnMeta,
    peer_ip: Option<&HeaderValue>,
    drain: &mut Drain,
    rules: H2Rules,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(proxy, meta, peer_ip, rules, read);
    conn.start();
    let mut draining = pin!(drain.wait());
    let mut timer = pin!(tokio::time::sleep(tick_period(rules.idle)));
    let mut goaway_wait: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if conn.stop == Stop::Running && draining.as_mut().poll(cx).is_ready() {
            conn.begin_stop();
            goaway_wait = Some(Box::pin(tokio::time::sleep(GOAWAY_PING_WAIT)));
        }
        if let Some(w) = goaway_wait.as_mut() {
            if w.as_mut().poll(cx).is_ready() {
                goaway_wait = None;
                conn.final_goaway();
            }
        }
        if timer.as_mut().poll(cx).is_ready() {
            conn.tick();
            let next = tokio::time::Instant::now() + tick_period(rules.idle);
            timer.as_mut().reset(next);
            // Registers the new deadline.
            let _ = timer.as_mut().poll(cx);
        }
        conn.poll(io, cx)
    })
    .await;
    conn.close();
}

/// How often a connection's timer looks at it: the idle timeout, or the keep-alive timeout when
/// that is shorter (or no idle timeout is set).
fn tick_period(idle: Duration) -> Duration {
    if idle.is_zero() {
        KEEPALIVE_TIMEOUT
    } else {
        idle.min(KEEPALIVE_TIMEOUT)
    }
}

/// Slots whose stream has something to do, and the connection task to wake for them.
#[derive(Default)]
struct ReadyQueue {
    inner: Mutex<ReadyInner>,
}

#[derive(Default)]
struct ReadyInner {
    slots: Vec<usize>,
    queued: Vec<bool>,
    task: Option<Waker>,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, ReadyInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, slot: usize) {
        let task = {
            let mut q = self.lock();
            if q.queued.len() <= slot {
                q.queued.resize(slot + 1, false);
            }
            if q.queued[slot] {
                return;
            }
            q.queued[slot] = true;
            q.slots.push(slot);
            q.task.clone()
        };
        if let Some(t) = task {
            t.wake();
        }
    }
}

/// The waker of one stream slot: marks it ready and wakes the connection.
struct SlotWaker {
    slot: usize,
    queue: Arc<ReadyQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.queue.push(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.slot);
    }
}

/// What the answer side of a stream is doing.
enum Answer {
    /// The request is with the proxy.
    Waiting(InboundFuture),
    /// Headers sent; the body is being relayed.
    Body(ProxyBody),
    /// END_STREAM (or RST_STREAM) sent.
    Done,
}

struct Stream {
    id: u32,
    answer: Answer,
    /// Body bytes polled but not yet sent (no window), and whether the body ended with them.
    held: Option<(Bytes, bool)>,
    /// Trailers polled but not yet sent (DATA before them still held).
    held_trailers: Option<HeaderMap>,
    /// The request body's shared state (kept until the stream is removed: the app may still be
    /// taking its bytes after END_STREAM).
    recv: Option<Arc<RecvShared>>,
    /// END_STREAM received.
    recv_closed: bool,
    /// What the client may still send on this stream before a WINDOW_UPDATE.
    recv_window: i64,
    /// Taken by the app, not yet given back.
    credit: u32,
    /// What we may still send.
    send_window: i64,
    /// Declared `content-length` of the request, and DATA received so far.
    expect_len: Option<u64>,
    received: u64,
    /// The request went to the app (not refused here).
    forwarded: bool,
    /// The request is malformed (RFC 9113 section 8.1.1): its answer ends with RST_STREAM
    /// `PROTOCOL_ERROR` instead of END_STREAM.
    malformed: bool,
    /// A malformed gRPC request: its trailers-only answer ends the stream (so the client reads
    /// the status), and RST_STREAM `PROTOCOL_ERROR` follows while the client's side is open.
    malformed_grpc: bool,
    /// Since when the answer has been waiting for the client (its window, or write room).
    stalled_at: Option<tokio::time::Instant>,
    /// Already in `blocked` (waiting for the connection window), and in `deferred` (waiting
    /// for write room): a stream is listed once however often it is woken.
    in_blocked: bool,
    in_deferred: bool,
}

/// A header block being received over HEADERS and CONTINUATION frames.
struct PendingBlock {
    id: u32,
    end_stream: bool,
    /// The HEADERS frame made the stream depend on itself (a stream error once decoded).
    self_dep: bool,
    block: BytesMut,
    /// CONTINUATION frames so far.
    continuations: usize,
}

/// The stop's GOAWAY exchange.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Stop {
    Running,
    /// GOAWAY(2^31-1) and a PING sent.
    Announced,
    /// GOAWAY naming the last stream sent: no stream above it is taken.
    Final(u32),
}

struct Conn<'a> {
    proxy: &'a Arc<InboundProxy>,
    meta: &'a ConnMeta,
    peer_ip: Option<&'a HeaderValue>,
    rules: H2Rules,
    rbuf: BytesMut,
    /// `rbuf` holds bytes not yet parsed (what was read before this server took over).
    unparsed: bool,
    preface_seen: bool,
    settings_seen: bool,
    /// Frames being composed, then queued in `out`.
    wbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_len: usize,
    hbuf: BytesMut,
    dec: hpack::Decoder,
    enc: hpack::Encoder,
    peer_max_frame: usize,
    peer_initial_window: i64,
    send_window: i64,
    recv_window: i64,
    conn_credit: u32,
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    by_id: HashMap<u32, usize>,
    wakers: Vec<Waker>,
    queue: Arc<ReadyQueue>,
    /// Slots waiting for the connection's send window.
    blocked: Vec<usize>,
    /// Slots that had more to send when the write buffer filled.
    deferred: Vec<usize>,
    /// The highest stream taken (what GOAWAY names).
    last_id: u32,
    /// The highest stream the client opened, taken or not (frames above it are on idle streams).
    max_seen: u32,
    /// Streams we reset recently, whose late frames are ignored.
    resets: VecDeque<u32>,
    /// Stream IDs the client skipped (first, last), recently.
    skips: VecDeque<(u32, u32)>,
    /// Answers to control frames queued since the write queue was last empty.
    ctl_unsent: u32,
    /// Empty DATA frames without END_STREAM received.
    empty_data: u32,
    /// Frames without a request or data since the last that had one (halved every tick).
    idle_frames: u32,
    /// Writes that took bytes, and how many the timer last saw (with when).
    writes: u64,
    seen_writes: u64,
    writes_at: tokio::time::Instant,
    pending: Option<PendingBlock>,
    stop: Stop,
    peer_goaway: bool,
    /// A connection error: GOAWAY queued, close once written.
    failed: bool,
    /// The client stopped answering (keep-alive): close at once.
    dead: bool,
    reset_budget: u32,
    activity: u64,
    seen_activity: u64,
    /// When the timer last saw traffic.
    active_at: tokio::time::Instant,
    ping_sent: Option<tokio::time::Instant>,
}

impl<'a> Conn<'a> {
    fn new(
        proxy: &'a Arc<InboundProxy>,
        meta: &'a ConnMeta,
        peer_ip: Option<&'a HeaderValue>,
        rules: H2Rules,
        read: BytesMut,
    ) -> Self {
        Conn {
            proxy,
            meta,
            peer_ip,
            rules,
            unparsed: !read.is_empty(),
            rbuf: read,
            preface_seen: false,
            settings_seen: false,
            wbuf: BytesMut::with_capacity(4096),
            out: VecDeque::new(),
            out_len: 0,
            hbuf: BytesMut::new(),
            dec: hpack::Decoder::default(),
            enc: hpack::Encoder::default(),
            peer_max_frame: MAX_FRAME,
            peer_initial_window: 65_535,
            send_window: 65_535,
            recv_window: i64::from(WINDOW),
            conn_credit: 0,
            streams: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            wakers: Vec::new(),
            queue: Arc::new(ReadyQueue::default()),
            blocked: Vec::new(),
            deferred: Vec::new(),
            last_id: 0,
            max_seen: 0,
            resets: VecDeque::new(),
            skips: VecDeque::new(),
            ctl_unsent: 0,
            empty_data: 0,
            idle_frames: 0,
            writes: 0,
            seen_writes: 0,
            writes_at: tokio::time::Instant::now(),
            pending: None,
            stop: Stop::Running,
            peer_goaway: false,
            failed: false,
            dead: false,
            reset_budget: RESET_BUDGET,
            activity: 0,
            seen_activity: 0,
            active_at: tokio::time::Instant::now(),
            ping_sent: None,
        }
    }

    /// Our SETTINGS and the connection window, sent first.
    fn start(&mut self) {
        let max_list = u32::try_from(self.rules.max_list).unwrap_or(u32::MAX);
        let settings: [(u16, u32); 3] = [(0x3, MAX_CONCURRENT_STREAMS as u32), (0x4, WINDOW), (0x6, max_list)];
        frame_head(&mut self.wbuf, settings.len() * 6, SETTINGS, 0, 0);
        for (k, v) in settings {
            self.wbuf.put_u16(k);
            self.wbuf.put_u32(v);
        }
        self.window_update(0, WINDOW - 65_535);
    }

    fn open_streams(&self) -> usize {
        self.by_id.len()
    }

    /// Bytes composed or queued and not yet written.
    fn pending_out(&self) -> usize {
        self.out_len + self.wbuf.len()
    }

    /// Reads and handles frames, drives the streams that are ready, writes; again while any of
    /// that made progress. Ready when the connection is finished.
    fn poll<IO: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut q = self.queue.lock();
            if !q.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.task = Some(cx.waker().clone());
            }
        }
        if self.dead {
            return Poll::Ready(());
        }
        for _ in 0..MAX_PASSES {
            let mut progress = false;
            // Read while there is room to answer.
            if !self.failed && self.pending_out() < WRITE_HIGH {
                // Bytes read before this server took the connection come first.
                let read = if std::mem::take(&mut self.unparsed) { Poll::Ready(Ok(1)) } else { self.read(io, cx) };
                match read {
                    // The client is gone: nothing can be answered any more.
                    Poll::Ready(Ok(0)) => return Poll::Ready(()),
                    Poll::Ready(Ok(_)) => {
                        self.activity += 1;
                        progress = true;
                        if let Err(e) = self.frames() {
                            self.connection_error(e);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, peer = %self.meta.peer, "h2 connection read failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if self.failed {
                // A connection error: the GOAWAY goes out if the socket takes it now (a client
                // that does not read cannot hold the connection open), and the connection ends.
                if let Poll::Ready(Ok(_)) = self.write(io, cx) {
                    let _ = Pin::new(&mut *io).poll_shutdown(cx);
                }
                return Poll::Ready(());
            }
            if self.drive_ready() {
                progress = true;
            }
            self.give_credit();
            match self.write(io, cx) {
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, peer = %self.meta.peer, "h2 connection write failed");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(true)) => progress = true,
                _ => {}
            }
            if self.pending_out() == 0 && self.finished() {
                // Everything is written: flush (TLS may still hold records) and close our side.
                if Pin::new(&mut *io).poll_flush(cx).is_pending() {
                    return Poll::Pending;
                }
                return match Pin::new(&mut *io).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                };
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Work on every pass: let the worker's other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Nothing more will happen on this connection.
    fn finished(&self) -> bool {
        (matches!(self.stop, Stop::Final(_)) || self.peer_goaway) && self.open_streams() == 0
    }

    fn read<IO: AsyncRead + Unpin>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(MAX_FRAME + 9);
        }
        pin!(io.read_buf(&mut self.rbuf)).poll(cx)
    }

    /// Handles every complete frame in the read buffer.
    fn frames(&mut self) -> Result<(), ConnError> {
        if !self.preface_seen {
            if self.rbuf.len() < PREFACE.len() {
                return if may_be_preface(&self.rbuf) {
                    Ok(())
                } else {
                    Err(conn_err(code::PROTOCOL_ERROR, "not the HTTP/2 preface"))
                };
            }
            if &self.rbuf[..PREFACE.len()] != PREFACE {
                return Err(conn_err(code::PROTOCOL_ERROR, "not the HTTP/2 preface"));
            }
            self.rbuf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while self.rbuf.len() >= 9 && !self.failed {
            let len = (usize::from(self.rbuf[0]) << 16) | (usize::from(self.rbuf[1]) << 8) | usize::from(self.rbuf[2]);
            if len > MAX_FRAME {
                return Err(conn_err(code::FRAME_SIZE_ERROR, "frame over SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.rbuf.len() < 9 + len {
                break;
            }
            let typ = self.rbuf[3];
            let flags = self.rbuf[4];
            let id = u32::from_be_bytes([self.rbuf[5], self.rbuf[6], self.rbuf[7], self.rbuf[8]]) & 0x7fff_ffff;
            self.rbuf.advance(9);
            let payload = self.rbuf.split_to(len).freeze();
            if !self.settings_seen && typ != SETTINGS {
                return Err(conn_err(code::PROTOCOL_ERROR, "the first frame is not SETTINGS"));
            }
            self.frame(typ, flags, id, payload)?;
            if self.reset_budget == 0 {
                return Err(calm(Abuse::RapidReset, "too many streams ended unanswered"));
            }
            if self.ctl_unsent > MAX_CTL_UNSENT {
                return Err(calm(Abuse::ControlFlood, "control frames sent faster than their answers are read"));
            }
        }
        Ok(())
    }

    fn frame(&mut self, typ: u8, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if let Some(p) = &self.pending {
            if typ != CONTINUATION || id != p.id {
                return Err(conn_err(code::PROTOCOL_ERROR, "a header block was interrupted"));
            }
        }
        if !matches!(typ, DATA | HEADERS | CONTINUATION) {
            self.idle_frames += 1;
            if self.idle_frames > MAX_IDLE_FRAMES {
                let kind = match typ {
                    PING => Abuse::PingFlood,
                    SETTINGS => Abuse::SettingsFlood,
                    WINDOW_UPDATE => Abuse::WindowUpdateFlood,
                    _ => Abuse::FrameFlood,
                };
                return Err(calm(kind, "frames that carry no request and no data"));
            }
        }
        match typ {
            DATA => self.data(flags, id, payload),
            HEADERS => self.headers(flags, id, payload),
            CONTINUATION => self.continuation(flags, id, payload),
            PRIORITY => {
                if id == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if payload.len() != 5 {
                    self.reset(id, code::FRAME_SIZE_ERROR);
                } else if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff == id {
                    // Section 5.3.1: a stream cannot depend on itself (a stream error, even on an
                    // idle stream, which it does not open).
                    self.reset(id, code::PROTOCOL_ERROR);
                }
                Ok(())
            }
            RST_STREAM => self.rst_stream(id, payload),
            SETTINGS => self.settings(flags, id, payload),
            PUSH_PROMISE => Err(conn_err(code::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            PING => self.ping(flags, id, payload),
            GOAWAY => {
                if id != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(conn_err(code::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
                }
                self.peer_goaway = true;
                Ok(())
            }
            WINDOW_UPDATE => self.window_update_frame(id, payload),
            // RFC 9113 section 4.1: frames of unknown type are ignored.
            _ => Ok(()),
        }
    }

    fn settings(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id != 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(conn_err(code::FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_err(code::FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6"));
        }
        self.settings_seen = true;
        let mut initial_window = None;
        for s in payload.chunks_exact(6) {
            let key = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match key {
                0x1 => self.enc.table_size_changed(),
                0x2 if value > 1 => return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")),
                0x4 => {
                    if value > 0x7fff_ffff {
                        return Err(conn_err(code::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1"));
                    }
                    // Applied once per frame, with the last value it carries.
                    initial_window = Some(value);
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        if let Some(value) = initial_window {
            let delta = i64::from(value) - self.peer_initial_window;
            self.peer_initial_window = i64::from(value);
            for slot in 0..self.streams.len() {
                if let Some(s) = self.streams[slot].as_mut() {
                    s.send_window += delta;
                    if s.send_window > 0x7fff_ffff {
                        return Err(conn_err(code::FLOW_CONTROL_ERROR, "a stream window over 2^31-1"));
                    }
                    if delta > 0 {
                        self.queue.push(slot);
                    }
                }
            }
        }
        frame_head(&mut self.wbuf, 0, SETTINGS, ACK, 0);
        self.ctl_unsent += 1;
        Ok(())
    }

    fn ping(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id != 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "PING on a stream"));
        }
        if payload.len() != 8 {
            return Err(conn_err(code::FRAME_SIZE_ERROR, "PING not 8 bytes"));
        }
        if flags & ACK != 0 {
            if payload[..] == GOAWAY_PING && self.stop == Stop::Announced {
                self.final_goaway();
            } else if payload[..] == KEEPALIVE_PING {
                self.ping_sent = None;
            }
            return Ok(());
        }
        frame_head(&mut self.wbuf, 8, PING, ACK, 0);
        self.wbuf.put_slice(&payload);
        self.ctl_unsent += 1;
        Ok(())
    }

    fn window_update_frame(&mut self, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(conn_err(code::FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes"));
        }
        let inc = i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
        if id == 0 {
            if inc == 0 {
                return Err(conn_err(code::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.send_window += inc;
            if self.send_window > 0x7fff_ffff {
                return Err(conn_err(code::FLOW_CONTROL_ERROR, "connection window over 2^31-1"));
            }
            for slot in std::mem::take(&mut self.blocked) {
                if let Some(s) = self.streams[slot].as_mut() {
                    s.in_blocked = false;
                }
                self.queue.push(slot);
            }
            return Ok(());
        }
        let Some(&slot) = self.by_id.get(&id) else {
            if id > self.max_seen {
                return Err(conn_err(code::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
            }
            return Ok(());
        };
        if inc == 0 {
            self.reset(id, code::PROTOCOL_ERROR);
            return Ok(());
        }
        let overflow = match self.streams[slot].as_mut() {
            Some(s) => {
                s.send_window += inc;
                s.send_window > 0x7fff_ffff
            }
            None => false,
        };
        if overflow {
            self.reset(id, code::FLOW_CONTROL_ERROR);
        } else {
            self.queue.push(slot);
        }
        Ok(())
    }

    fn rst_stream(&mut self, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(conn_err(code::FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes"));
        }
        if id > self.max_seen {
            return Err(conn_err(code::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
        }
        if let Some(slot) = self.by_id.remove(&id) {
            self.remove(slot, "the client reset the stream");
        }
        Ok(())
    }

    fn data(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let len = payload.len() as i64;
        if len > self.recv_window {
            return Err(conn_err(code::FLOW_CONTROL_ERROR, "DATA over the connection window"));
        }
        self.recv_window -= len;
        let data = unpad(flags, payload).ok_or(conn_err(code::PROTOCOL_ERROR, "DATA padding too long"))?;
        // Padding is given back at once, the data when the app takes it (or when it is dropped).
        let padding = (len as usize - data.len()) as u32;
        let n = data.len() as u32;
        self.conn_credit += padding;
        let end = flags & END_STREAM != 0;
        if n == 0 && !end {
            self.empty_data += 1;
            if self.empty_data > MAX_EMPTY_DATA {
                return Err(calm(Abuse::EmptyData, "empty DATA frames"));
            }
        } else if n > 0 {
            self.idle_frames = 0;
        }
        let Some(&slot) = self.by_id.get(&id) else {
            if id > self.max_seen {
                return Err(conn_err(code::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A closed stream: its window comes back at once.
            self.conn_credit += n;
            self.on_closed_stream(id);
            return Ok(());
        };
        let verdict = match self.streams[slot].as_mut() {
            None => Err(None),
            Some(s) if s.recv_closed => Err(Some(code::STREAM_CLOSED)),
            Some(s) if len > s.recv_window => Err(Some(code::FLOW_CONTROL_ERROR)),
            Some(s) => {
                s.recv_window -= len;
                s.credit += padding;
                s.received += u64::from(n);
                let bad_length = s.expect_len.is_some_and(|e| s.received > e || (end && s.received != e));
                if bad_length {
                    Err(Some(code::PROTOCOL_ERROR))
                } else {
                    if end {
                        s.recv_closed = true;
                    }
                    Ok(s.recv.clone())
                }
            }
        };
        match verdict {
            Err(None) => self.conn_credit += n,
            Err(Some(c)) => {
                self.conn_credit += n;
                if c == code::PROTOCOL_ERROR {
                    self.fail_body(slot, "request body length differs from content-length");
                }
                self.reset(id, c);
            }
            Ok(None) => self.conn_credit += n,
            Ok(Some(shared)) => {
                let (reader, discarded) = {
                    let mut st = shared.lock();
                    let discarded = st.dropped || st.failed.is_some();
                    if !discarded && n > 0 {
                        st.push(data, len as usize);
                    }
                    if end {
                        st.end = true;
                    }
                    (st.reader.take(), discarded)
                };
                if discarded {
                    // Nobody reads it: its window comes back at once, the stream's too.
                    self.conn_credit += n;
                    if let Some(s) = self.streams[slot].as_mut() {
                        s.credit += n;
                    }
                    self.queue.push(slot);
                }
                if let Some(r) = reader {
                    r.wake();
                }
                if end {
                    self.queue.push(slot);
                }
            }
        }
        Ok(())
    }

    fn headers(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut block = unpad(flags, payload).ok_or(conn_err(code::PROTOCOL_ERROR, "HEADERS padding too long"))?;
        let mut self_dep = false;
        if flags & PRIORITY_FLAG != 0 {
            if block.len() < 5 {
                return Err(conn_err(code::FRAME_SIZE_ERROR, "HEADERS priority fields missing"));
            }
            let dep = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & 0x7fff_ffff;
            block.advance(5);
            // A stream depending on itself (section 5.3.1): a stream error once the block is
            // decoded (HPACK stays in step).
            self_dep = dep == id;
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            return self.header_block(id, end_stream, self_dep, block);
        }
        let mut pending = BytesMut::with_capacity(block.len() * 2);
        pending.extend_from_slice(&block);
        self.pending = Some(PendingBlock { id, end_stream, self_dep, block: pending, continuations: 0 });
        Ok(())
    }

    fn continuation(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        let Some(mut p) = self.pending.take() else {
            return Err(conn_err(code::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
        };
        if p.id != id {
            return Err(conn_err(code::PROTOCOL_ERROR, "CONTINUATION on another stream"));
        }
        if p.block.len() + payload.len() > self.max_block() {
            return Err(conn_err(code::ENHANCE_YOUR_CALM, "header block too large"));
        }
        p.continuations += 1;
        if p.continuations > self.max_continuations() {
            return Err(calm(Abuse::ContinuationFlood, "a header block in too many CONTINUATION frames"));
        }
        p.block.extend_from_slice(&payload);
        if flags & END_HEADERS != 0 {
            return self.header_block(id, p.end_stream, p.self_dep, p.block.freeze());
        }
        self.pending = Some(p);
        Ok(())
    }

    /// The most bytes of one encoded header block: past this it is not even decoded.
    fn max_block(&self) -> usize {
        self.rules.max_list.saturating_mul(2).saturating_add(MAX_FRAME)
    }

    /// The most CONTINUATION frames one header block may take: what the largest block needs in
    /// full frames, a quarter more for frames not filled, and at least 5 (the `h2` crate's rule).
    /// Empty or tiny CONTINUATION frames cost a frame each while the block hardly grows.
    fn max_continuations(&self) -> usize {
        let full = (self.max_block() / MAX_FRAME).max(1);
        full.saturating_add(full / 4).max(5)
    }

    fn decode_and_drop(&mut self, block: &Bytes) -> Result<(), ConnError> {
        match self.dec.decode(block, 0, |_, _| {}) {
            Ok(()) | Err(HpackError::ListTooLarge) => Ok(()),
            Err(_) => Err(conn_err(code::COMPRESSION_ERROR, "header block does not decode")),
        }
    }

    fn header_block(&mut self, id: u32, end_stream: bool, self_dep: bool, block: Bytes) -> Result<(), ConnError> {
        if id.is_multiple_of(2) {
            return Err(conn_err(code::PROTOCOL_ERROR, "a client stream with an even ID"));
        }
        if let Some(&slot) = self.by_id.get(&id) {
            if self_dep {
                self.decode_and_drop(&block)?;
                self.reset(id, code::PROTOCOL_ERROR);
                return Ok(());
            }
            return self.trailers(slot, id, end_stream, block);
        }
        if id <= self.max_seen {
            if self.skipped(id) {
                // Section 5.1.1: a new stream must have a higher ID than every one before.
                return Err(conn_err(code::PROTOCOL_ERROR, "a stream ID lower than one already used"));
            }
            // A closed stream: HPACK kept in step, then the frame is dropped or a stream error.
            self.decode_and_drop(&block)?;
            self.on_closed_stream(id);
            return Ok(());
        }
        let next = if self.max_seen == 0 { 1 } else { self.max_seen + 2 };
        if id > next {
            if self.skips.len() == SKIPS_KEPT {
                self.skips.pop_front();
            }
            self.skips.push_back((next, id - 2));
        }
        self.max_seen = id;
        self.idle_frames = 0;
        if self_dep {
            self.decode_and_drop(&block)?;
            self.send_rst(id, code::PROTOCOL_ERROR);
            return Ok(());
        }
        let mut head = RequestHead::default();
        let decoded = self.dec.decode(&block, self.rules.max_list, |n, v| head.field(n, v));
        let too_large = match decoded {
            Ok(()) => head.too_many,
            Err(HpackError::ListTooLarge) => true,
            Err(_) => return Err(conn_err(code::COMPRESSION_ERROR, "header block does not decode")),
        };
        if let Stop::Final(last) = self.stop {
            if id > last {
                // After GOAWAY: the client will retry it elsewhere.
                return Ok(());
            }
        }
        self.last_id = id;
        if self.open_streams() >= MAX_CONCURRENT_STREAMS {
            self.send_rst(id, code::REFUSED_STREAM);
            return Ok(());
        }
        let slot = self.new_stream(id, end_stream);
        let mut malformed = false;
        let grpc = head.grpc;
        let answer = if too_large {
            self.refuse(
                ProxyError::HeadersTooLarge { what: format!("HTTP/2 header list over {} bytes", self.rules.max_list) },
                grpc,
            )
        } else {
            match head.finish() {
                Err(Refusal::Malformed(what)) => {
                    malformed = true;
                    self.refuse(ProxyError::BadRequest { what: what.into() }, grpc)
                }
                Err(Refusal::Connect) => self.refuse(connect_refused(), grpc),
                Ok((mut parts, expect_len)) => {
                    if parts.uri.authority().is_none() && !parts.headers.contains_key(header::HOST) {
                        // Neither `:authority` nor `host`: the app gets its own authority as Host,
                        // as an HTTP/1.0 request without Host does.
                        if let Ok(v) = HeaderValue::from_str(self.proxy.app_authority()) {
                            parts.headers.insert(header::HOST, v);
                        }
                    }
                    let body = if end_stream {
                        RequestBody::Empty
                    } else {
                        let shared = Arc::new(RecvShared::default());
                        shared.lock().conn = Some(self.wakers[slot].clone());
                        let hint = match expect_len {
                            Some(n) => SizeHint::with_exact(n),
                            None => SizeHint::default(),
                        };
                        if let Some(s) = self.streams[slot].as_mut() {
                            s.recv = Some(shared.clone());
                            s.expect_len = expect_len;
                        }
                        RequestBody::H2(RecvBody { shared, hint })
                    };
                    if end_stream && expect_len.is_some_and(|n| n != 0) {
                        malformed = true;
                        self.refuse(ProxyError::BadRequest { what: "content-length without a body".into() }, grpc)
                    } else {
                        if let Some(s) = self.streams[slot].as_mut() {
                            s.forwarded = true;
                        }
                        let req = Request::from_parts(parts, body);
                        self.proxy.call(req, self.meta, self.peer_ip)
                    }
                }
            }
        };
        if let Some(s) = self.streams[slot].as_mut() {
            s.answer = Answer::Waiting(answer);
            s.malformed = malformed && !grpc;
            s.malformed_grpc = malformed && grpc;
        }
        self.queue.push(slot);
        Ok(())
    }

    /// An answer made here for a request the proxy never sees (in gRPC's form for a gRPC
    /// request): logged and counted like every refusal.
    fn refuse(&self, err: ProxyError, grpc: bool) -> InboundFuture {
        let status = err.answer_status(grpc).as_u16();
        let grpc_status = grpc.then(|| err.grpc_status());
        self.proxy.telemetry.refused(Direction::Inbound, self.meta.peer, status, Version::HTTP_2, grpc_status);
        InboundFuture::Ready(Some(error_response(&err, grpc)))
    }

    fn trailers(&mut self, slot: usize, id: u32, end_stream: bool, block: Bytes) -> Result<(), ConnError> {
        let mut trailers = HeaderMap::new();
        let mut bad = false;
        let decoded = self.dec.decode(&block, self.rules.max_list, |n, v| {
            if n.first() == Some(&b':') {
                bad = true;
                return;
            }
            match (HeaderName::from_lowercase(&n), HeaderValue::from_maybe_shared(v)) {
                // Section 8.2.2: connection-specific fields make any field section malformed.
                (Ok(n), Ok(_)) if is_connection_specific(&n) => bad = true,
                (Ok(n), Ok(v)) => {
                    if trailers.try_append(n, v).is_err() {
                        bad = true;
                    }
                }
                _ => bad = true,
            }
        });
        match decoded {
            Ok(()) => {}
            Err(HpackError::ListTooLarge) => bad = true,
            Err(_) => return Err(conn_err(code::COMPRESSION_ERROR, "header block does not decode")),
        }
        let verdict = match self.streams[slot].as_mut() {
            None => return Ok(()),
            Some(s) if s.recv_closed => Err((code::STREAM_CLOSED, "")),
            Some(_) if !end_stream || bad => Err((code::PROTOCOL_ERROR, "malformed request trailers")),
            Some(s) if s.expect_len.is_some_and(|n| n != s.received) => {
                Err((code::PROTOCOL_ERROR, "request body length differs from content-length"))
            }
            Some(s) => {
                s.recv_closed = true;
                Ok(s.recv.clone())
            }
        };
        match verdict {
            Err((c, why)) => {
                if !why.is_empty() {
                    self.fail_body(slot, why);
                }
                self.reset(id, c);
            }
            Ok(shared) => {
                if let Some(shared) = shared {
                    let reader = {
                        let mut st = shared.lock();
                        st.trailers = Some(trailers);
                        st.end = true;
                        st.reader.take()
                    };
                    if let Some(r) = reader {
                        r.wake();
                    }
                }
                self.queue.push(slot);
            }
        }
        Ok(())
    }

    fn new_stream(&mut self, id: u32, end_stream: bool) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let slot = self.streams.len();
                self.streams.push(None);
                self.wakers.push(Waker::from(Arc::new(SlotWaker { slot, queue: self.queue.clone() })));
                slot
            }
        };
        self.streams[slot] = Some(Stream {
            id,
            answer: Answer::Done,
            held: None,
            held_trailers: None,
            recv: None,
            recv_closed: end_stream,
            recv_window: i64::from(WINDOW),
            credit: 0,
            send_window: self.peer_initial_window,
            expect_len: None,
            received: 0,
            forwarded: false,
            malformed: false,
            malformed_grpc: false,
            stalled_at: None,
            in_blocked: false,
            in_deferred: false,
        });
        self.by_id.insert(id, slot);
        slot
    }

    /// Detaches the request body of the stream in `slot`: what it holds and what the app took is
    /// given back to the connection window, and unless it had all arrived and been taken, it
    /// fails (the app's request is cut).
    fn fail_body(&mut self, slot: usize, why: &'static str) {
        let Some(shared) = self.streams[slot].as_mut().and_then(|s| s.recv.take()) else { return };
        let reader = {
            let mut st = shared.lock();
            let left = st.queued();
            self.conn_credit = self.conn_credit.saturating_add(left as u32).saturating_add(st.taken);
            st.taken = 0;
            st.conn = None;
            if left > 0 || !st.end {
                st.clear();
                st.failed = Some(why);
            }
            st.reader.take()
        };
        if let Some(r) = reader {
            r.wake();
        }
    }

    /// Resets a stream of ours: RST_STREAM, and the stream is gone.
    fn reset(&mut self, id: u32, code: u32) {
        self.send_rst(id, code);
        if let Some(slot) = self.by_id.remove(&id) {
            self.remove(slot, "the stream was reset");
        }
    }

    fn send_rst(&mut self, id: u32, code: u32) {
        frame_head(&mut self.wbuf, 4, RST_STREAM, 0, id);
        self.wbuf.put_u32(code);
        // Resets the client provoked count as answers to its frames; ours (an answer that ended
        // early, failed, or waited too long) do not.
        if !matches!(code, code::NO_ERROR | code::CANCEL | code::INTERNAL_ERROR) {
            self.ctl_unsent += 1;
        }
        // Section 5.1: what the client sent before it saw this is ignored.
        if id <= self.max_seen && !self.resets.contains(&id) {
            if self.resets.len() == RESETS_KEPT {
                self.resets.pop_front();
            }
            self.resets.push_back(id);
        }
    }

    /// Whether `id` (at most `max_seen`) is in a range of IDs the client skipped.
    fn skipped(&self, id: u32) -> bool {
        self.skips.iter().any(|&(first, last)| (first..=last).contains(&id))
    }

    /// DATA or HEADERS on a closed stream (section 5.1): ignored if we reset it (the client may
    /// have sent it before it saw our RST_STREAM) or if it is above the final GOAWAY's; otherwise
    /// (the client reset it, or both sides ended it) a stream error `STREAM_CLOSED`, after which
    /// the stream counts as reset by us.
    fn on_closed_stream(&mut self, id: u32) {
        let after_goaway = matches!(self.stop, Stop::Final(last) if id > last);
        if !after_goaway && !self.resets.contains(&id) {
            self.send_rst(id, code::STREAM_CLOSED);
        }
    }

    /// Drops the stream in `slot` (already out of `by_id`): its request body fails, its answer
    /// is dropped (reported `DC` if unfinished), the data it held gives its window back.
    fn remove(&mut self, slot: usize, why: &'static str) {
        self.fail_body(slot, why);
        if let Some(s) = self.streams[slot].take() {
            // The rapid-reset attack (and its variant where the client provokes the resets):
            // streams that end unanswered cost the app work and the client nothing. Each one
            // spends the budget; only a request the app answered in full earns it back.
            if matches!(s.answer, Answer::Done) {
                if s.forwarded {
                    self.reset_budget = (self.reset_budget + 1).min(RESET_BUDGET);
                }
            } else {
                self.reset_budget = self.reset_budget.saturating_sub(1);
            }
            drop(s);
            self.free.push(slot);
        }
    }

    /// Drives every stream that was woken (and the ones deferred for write room). True if any
    /// did something.
    fn drive_ready(&mut self) -> bool {
        let mut slots = {
            let mut q = self.queue.lock();
            let mut slots = std::mem::take(&mut q.slots);
            for &s in &slots {
                q.queued[s] = false;
            }
            if self.pending_out() < WRITE_HIGH && !self.deferred.is_empty() {
                for &slot in &self.deferred {
                    if let Some(s) = self.streams[slot].as_mut() {
                        s.in_deferred = false;
                    }
                }
                slots.append(&mut self.deferred);
            }
            slots
        };
        if slots.is_empty() {
            return false;
        }
        for &slot in &slots {
            self.drive(slot);
        }
        slots.clear();
        // Give the (now empty) vector back so the queue keeps its capacity.
        let mut q = self.queue.lock();
        if q.slots.is_empty() {
            q.slots = slots;
        }
        true
    }

    /// Moves one stream on as far as it can go now.
    fn drive(&mut self, slot: usize) {
        let Some(s) = self.streams.get_mut(slot).and_then(Option::as_mut) else { return };
        let id = s.id;
        // The app took request bytes: give their window back.
        if let Some(shared) = s.recv.as_ref() {
            let taken = std::mem::take(&mut shared.lock().taken);
            s.credit += taken;
            self.conn_credit += taken;
        }
        if s.credit >= CREDIT_AT && !s.recv_closed {
            let c = std::mem::take(&mut s.credit);
            s.recv_window += i64::from(c);
            self.window_update(id, c);
        }
        let waker = self.wakers[slot].clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            if self.pending_out() >= WRITE_HIGH {
                if let Some(s) = self.streams[slot].as_mut().filter(|s| !s.in_deferred) {
                    s.in_deferred = true;
                    if s.stalled_at.is_none() {
                        s.stalled_at = Some(tokio::time::Instant::now());
                    }
                    self.deferred.push(slot);
                }
                return;
            }
            let Some(s) = self.streams[slot].as_mut() else { return };
            match &mut s.answer {
                Answer::Done => {
                    self.after_answer(slot);
                    return;
                }
                Answer::Waiting(f) => match Pin::new(f).poll(&mut cx) {
                    Poll::Pending => {
                        // The app's turn, not the client's.
                        s.stalled_at = None;
                        return;
                    }
                    Poll::Ready(Ok(resp)) => self.answer_head(slot, resp),
                    Poll::Ready(Err(never)) => match never {},
                },
                Answer::Body(_) => {
                    if !self.body_step(slot, &mut cx) {
                        return;
                    }
                }
            }
        }
    }

    /// The answer is complete: the stream closes once the request is too.
    fn after_answer(&mut self, slot: usize) {
        let Some(s) = self.streams[slot].as_ref() else { return };
        let id = s.id;
        if s.malformed || (s.malformed_grpc && !s.recv_closed) {
            // Section 8.1.1: a malformed request is a stream error, after its answer.
            self.send_rst(id, code::PROTOCOL_ERROR);
        } else if !s.recv_closed {
            // RFC 9113 section 8.1: the rest of the request is not needed.
            self.send_rst(id, code::NO_ERROR);
        }
        self.by_id.remove(&id);
        self.remove(slot, "the answer ended first");
    }

    /// Writes the answer's HEADERS; the body follows, or the stream ends here.
    fn answer_head(&mut self, slot: usize, resp: Response<ProxyBody>) {
        let (parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        let Some(s) = self.streams[slot].as_mut() else { return };
        let id = s.id;
        // An empty body is done: dropping it reports the request.
        s.answer = if end { Answer::Done } else { Answer::Body(body) };
        // A malformed request's answer ends with RST_STREAM (after_answer), not END_STREAM.
        let end_stream = end && !s.malformed;
        self.header_frames(id, Some(parts.status.as_u16()), &parts.headers, end_stream);
    }

    /// Sends a header block on `id` (an answer's head with its `status`, or trailers) as HEADERS
    /// and, past the peer's frame size, CONTINUATION frames. HTTP/2 forbids the
    /// connection-specific fields: they are left out.
    fn header_frames(&mut self, id: u32, status: Option<u16>, fields: &HeaderMap, end_stream: bool) {
        self.hbuf.clear();
        self.enc.begin(&mut self.hbuf);
        if let Some(status) = status {
            self.enc.status(status, &mut self.hbuf);
        }
        for (name, value) in fields {
            if !is_connection_specific(name) {
                self.enc.field(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive(), &mut self.hbuf);
            }
        }
        let mut chunks = self.hbuf.chunks(self.peer_max_frame).peekable();
        let mut typ = HEADERS;
        let mut flags = if end_stream { END_STREAM } else { 0 };
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            frame_head(&mut self.wbuf, chunk.len(), typ, flags | if last { END_HEADERS } else { 0 }, id);
            self.wbuf.put_slice(chunk);
            if last {
                break;
            }
            (typ, flags) = (CONTINUATION, 0);
        }
    }

    /// One step of relaying an answer's body. False when the stream must wait (for the body,
    /// for window, or for write room).
    fn body_step(&mut self, slot: usize, cx: &mut Context<'_>) -> bool {
        let Some(s) = self.streams[slot].as_mut() else { return false };
        let id = s.id;
        // Held data first.
        if let Some((mut data, end)) = s.held.take() {
            if data.is_empty() {
                // The body ended: with its trailers, or an empty DATA frame carrying END_STREAM
                // (for a malformed request, RST_STREAM follows instead).
                s.answer = Answer::Done;
                let fin = !s.malformed;
                match s.held_trailers.take() {
                    Some(t) => self.header_frames(id, None, &t, fin),
                    None if fin => self.data_frame(id, Bytes::new(), true),
                    None => {}
                }
                return true;
            }
            let window = s.send_window.min(self.send_window);
            if window <= 0 {
                s.held = Some((data, end));
                if s.stalled_at.is_none() {
                    s.stalled_at = Some(tokio::time::Instant::now());
                }
                if self.send_window <= 0 && !s.in_blocked {
                    s.in_blocked = true;
                    self.blocked.push(slot);
                }
                return false;
            }
            s.stalled_at = None;
            let n = data.len().min(window as usize).min(self.peer_max_frame);
            let part = data.split_to(n);
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            let end_here = data.is_empty() && end && s.held_trailers.is_none();
            if end_here {
                s.answer = Answer::Done;
            } else if !data.is_empty() || end {
                // The rest, or (after the last part) the trailers.
                s.held = Some((data, end));
            }
            let fin = end_here && !s.malformed;
            self.data_frame(id, part, fin);
            return true;
        }
        let Answer::Body(body) = &mut s.answer else { return true };
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => {
                // The app's turn, not the client's.
                s.stalled_at = None;
                false
            }
            Poll::Ready(Some(Ok(frame))) => {
                match frame.into_data() {
                    Ok(data) => {
                        let end = match &s.answer {
                            Answer::Body(b) => b.is_end_stream(),
                            _ => true,
                        };
                        if data.is_empty() && !end {
                            return true;
                        }
                        s.held = Some((data, end));
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            s.held = Some((Bytes::new(), true));
                            s.held_trailers = Some(t);
                        }
                    }
                }
                true
            }
            Poll::Ready(None) => {
                s.held = Some((Bytes::new(), true));
                true
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, stream = id, "answer body failed; resetting the stream");
                s.answer = Answer::Done;
                self.send_rst(id, code::INTERNAL_ERROR);
                self.by_id.remove(&id);
                self.remove(slot, "the answer failed");
                false
            }
        }
    }

    fn data_frame(&mut self, id: u32, data: Bytes, end_stream: bool) {
        if !data.is_empty() {
            self.idle_frames = 0;
        }
        frame_head(&mut self.wbuf, data.len(), DATA, if end_stream { END_STREAM } else { 0 }, id);
        if data.len() <= COPY_DATA {
            self.wbuf.put_slice(&data);
        } else {
            let head = self.wbuf.split().freeze();
            self.out_len += head.len() + data.len();
            self.out.push_back(head);
            self.out.push_back(data);
        }
    }

    fn window_update(&mut self, id: u32, inc: u32) {
        if inc == 0 {
            return;
        }
        frame_head(&mut self.wbuf, 4, WINDOW_UPDATE, 0, id);
        self.wbuf.put_u32(inc);
    }

    /// Gives the connection window back once enough was taken.
    fn give_credit(&mut self) {
        if self.conn_credit >= CREDIT_AT || (self.conn_credit > 0 && self.recv_window < i64::from(CREDIT_AT)) {
            let c = std::mem::take(&mut self.conn_credit);
            self.recv_window += i64::from(c);
            self.window_update(0, c);
        }
    }

    fn connection_error(&mut self, e: ConnError) {
        tracing::debug!(peer = %self.meta.peer, code = e.code, why = e.why, "h2 connection error; sending GOAWAY");
        self.goaway(self.last_id, e.code);
        self.failed = true;
    }

    fn goaway(&mut self, last: u32, code: u32) {
        frame_head(&mut self.wbuf, 8, GOAWAY, 0, 0);
        self.wbuf.put_u32(last);
        self.wbuf.put_u32(code);
    }

    /// The stop: GOAWAY with the highest ID and a PING; the final GOAWAY follows its answer.
    fn begin_stop(&mut self) {
        self.goaway(0x7fff_ffff, code::NO_ERROR);
        frame_head(&mut self.wbuf, 8, PING, 0, 0);
        self.wbuf.put_slice(&GOAWAY_PING);
        self.stop = Stop::Announced;
        self.queue_wake();
    }

    fn final_goaway(&mut self) {
        if self.stop == Stop::Announced {
            self.goaway(self.last_id, code::NO_ERROR);
            self.stop = Stop::Final(self.last_id);
            self.queue_wake();
        }
    }

    fn queue_wake(&self) {
        let task = self.queue.lock().task.clone();
        if let Some(t) = task {
            t.wake();
        }
    }

    /// The connection's timer: idle close and keep-alive PING.
    fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(sent) = self.ping_sent {
            if now.duration_since(sent) >= KEEPALIVE_TIMEOUT {
                tracing::debug!(peer = %self.meta.peer, "h2 keep-alive PING not answered; closing");
                self.dead = true;
                self.queue_wake();
                return;
            }
        }
        self.idle_frames /= 2;
        let idle = self.rules.idle;
        if self.writes != self.seen_writes || self.pending_out() == 0 {
            self.seen_writes = self.writes;
            self.writes_at = now;
        } else if !idle.is_zero() && now.duration_since(self.writes_at) >= idle {
            // Answers waiting and nothing taken by the client for the idle timeout.
            tracing::debug!(peer = %self.meta.peer, "h2 client reads nothing; closing");
            abuse::count(Abuse::Unread);
            self.dead = true;
            self.queue_wake();
            return;
        }
        if !idle.is_zero() {
            // A stream whose answer waits for the client (a window at zero, or no write room)
            // for the idle timeout is reset: it must not hold the app's connection.
            let stalled: Vec<u32> = self
                .streams
                .iter()
                .flatten()
                .filter(|s| s.stalled_at.is_some_and(|t| now.duration_since(t) >= idle))
                .map(|s| s.id)
                .collect();
            for id in stalled {
                tracing::debug!(peer = %self.meta.peer, stream = id, "h2 stream stalled by the client; resetting");
                abuse::count(Abuse::StalledStream);
                self.reset(id, code::CANCEL);
            }
        }
        if self.activity != self.seen_activity {
            self.seen_activity = self.activity;
            self.active_at = now;
        } else if self.open_streams() == 0 && self.rbuf.is_empty() && self.pending_out() == 0 {
            // Quiet since the last tick with nothing in flight: the buffers go back (about 20 KiB
            // a connection); the next frame allocates a read buffer again.
            self.rbuf = BytesMut::new();
            self.wbuf = BytesMut::new();
            self.hbuf = BytesMut::new();
        }
        let quiet = now.duration_since(self.active_at);
        if !idle.is_zero() && quiet >= idle && self.open_streams() == 0 && self.stop == Stop::Running {
            tracing::debug!(peer = %self.meta.peer, "h2 connection idle; closing");
            self.goaway(self.last_id, code::NO_ERROR);
            self.stop = Stop::Final(self.last_id);
        } else if quiet >= KEEPALIVE && self.ping_sent.is_none() {
            frame_head(&mut self.wbuf, 8, PING, 0, 0);
            self.wbuf.put_slice(&KEEPALIVE_PING);
            self.ping_sent = Some(now);
        }
        self.queue_wake();
    }

    /// Writes what is queued. `Ok(true)` if anything was written.
    fn write<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.wbuf.is_empty() {
            let b = self.wbuf.split().freeze();
            self.out_len += b.len();
            self.out.push_back(b);
        }
        let mut wrote = false;
        while !self.out.is_empty() {
            let n = if self.out.len() == 1 {
                match Pin::new(&mut *io).poll_write(cx, &self.out[0]) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Ready(Ok(wrote)),
                }
            } else {
                let mut slices = [IoSlice::new(&[]); 64];
                let mut k = 0;
                for b in self.out.iter().take(64) {
                    slices[k] = IoSlice::new(b);
                    k += 1;
                }
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Ready(Ok(wrote)),
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            wrote = true;
            self.writes += 1;
            let mut n = n;
            while n > 0 {
                let Some(front) = self.out.front_mut() else { break };
                if front.len() <= n {
                    n -= front.len();
                    self.out_len -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(n);
                    self.out_len -= n;
                    n = 0;
                }
            }
        }
        if self.out.is_empty() {
            self.ctl_unsent = 0;
            if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(wrote))
    }

    /// The connection is over: every stream still open is dropped (its request fails, its
    /// answer is reported `DC`).
    fn close(&mut self) {
        let open: Vec<usize> = self.by_id.drain().map(|(_, slot)| slot).collect();
        for slot in open {
            self.remove(slot, "the connection closed");
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

fn frame_head(buf: &mut BytesMut, len: usize, typ: u8, flags: u8, id: u32) {
    buf.put_u8((len >> 16) as u8);
    buf.put_u8((len >> 8) as u8);
    buf.put_u8(len as u8);
    buf.put_u8(typ);
    buf.put_u8(flags);
    buf.put_u32(id & 0x7fff_ffff);
}

/// The payload without its padding (RFC 9113 section 6.1); `None` if the padding is too long.
fn unpad(flags: u8, mut payload: Bytes) -> Option<Bytes> {
    if flags & PADDED == 0 {
        return Some(payload);
    }
    let pad = usize::from(*payload.first()?);
    if pad >= payload.len() {
        return None;
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Some(payload)
}

/// The fields HTTP/2 forbids (RFC 9113 section 8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Why a request head is answered here instead of going to the app.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Malformed (RFC 9113 section 8.1.1): 400, then a stream error `PROTOCOL_ERROR`.
    Malformed(&'static str),
    /// CONNECT: tandem makes no tunnels, and the app must not get it as an HTTP/1.1 request.
    Connect,
}

impl From<&'static str> for Refusal {
    fn from(why: &'static str) -> Self {
        Refusal::Malformed(why)
    }
}

/// The answer to CONNECT (405, as the HTTP/1.1 server answers it).
fn connect_refused() -> ProxyError {
    ProxyError::MethodNotAllowed { what: "CONNECT (tandem makes no tunnels)".into() }
}

/// A request's header list as it is decoded.
#[derive(Default)]
struct RequestHead {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    cookie: Option<BytesMut>,
    regular_seen: bool,
    /// A `host` field arrived (most HTTP/2 clients send none): only then is there one to drop.
    host_seen: bool,
    error: Option<&'static str>,
    /// More fields than a header map holds: refused like a list over the limit (431).
    too_many: bool,
    /// `content-type` says gRPC (seen even after a malformed field, so that the refusal is a
    /// gRPC answer).
    grpc: bool,
}

impl RequestHead {
    fn field(&mut self, name: Bytes, value: Bytes) {
        if name.len() == 12 && &name[..] == b"content-type" && crate::base::grpc::is_grpc(&value) {
            self.grpc = true;
        }
        if self.error.is_some() || self.too_many {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                self.error = Some("a pseudo-header after a regular field");
                return;
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => {
                    self.error = Some("an unknown or response pseudo-header");
                    return;
                }
            };
            if slot.is_some() {
                self.error = Some("a repeated pseudo-header");
                return;
            }
            *slot = Some(value);
            return;
        }
        self.regular_seen = true;
        let Ok(name) = HeaderName::from_lowercase(&name) else {
            self.error = Some("a field name that is not lower-case token characters");
            return;
        };
        if is_connection_specific(&name) {
            self.error = Some("a connection-specific field");
            return;
        }
        if name == header::TE && value.as_ref() != b"trailers" {
            self.error = Some("TE other than \"trailers\"");
            return;
        }
        if value.first().is_some_and(|b| *b == b' ' || *b == b'\t')
            || value.last().is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            self.error = Some("a field value with leading or trailing white space");
            return;
        }
        self.host_seen |= name == header::HOST;
        if name == header::COOKIE {
            // RFC 9113 section 8.2.3: joined for HTTP/1.1.
            match self.cookie.as_mut() {
                Some(c) => {
                    c.extend_from_slice(b"; ");
                    c.extend_from_slice(&value);
                }
                None => self.cookie = Some(BytesMut::from(&value[..])),
            }
            return;
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => {
                // HeaderMap holds at most 32,768 fields (past that `append` panics); the header
                // list limit is configurable enough to reach it with empty fields.
                if self.headers.try_append(name, v).is_err() {
                    self.too_many = true;
                }
            }
            Err(_) => self.error = Some("a field value with a control character"),
        }
    }

    /// The request's head, and its declared length.
    fn finish(mut self) -> Result<(http::request::Parts, Option<u64>), Refusal> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if let Some(c) = self.cookie.take() {
            let v =
                HeaderValue::from_maybe_shared(c.freeze()).map_err(|_| "a cookie value with a control character")?;
            self.headers.insert(header::COOKIE, v);
        }
        let method = Method::from_bytes(self.method.as_deref().ok_or("no :method")?).map_err(|_| "a bad :method")?;
        let mut uri = http::uri::Parts::default();
        if let Some(a) = self.authority {
            // Section 8.3.1: no userinfo.
            if a.contains(&b'@') {
                return Err("an :authority with userinfo".into());
            }
            uri.authority = Some(Authority::from_maybe_shared(a).map_err(|_| "a bad :authority")?);
            // Section 8.3.1: `:authority` names the target; a `host` that differs must not
            // reach the app (it gets `:authority` as Host, as nghttpx and HAProxy forward it).
            if self.host_seen {
                self.headers.remove(header::HOST);
            }
        }
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || uri.authority.is_none() {
                return Err("CONNECT with :scheme or :path, or without :authority".into());
            }
            return Err(Refusal::Connect);
        }
        let scheme = self.scheme.ok_or("no :scheme")?;
        let path = self.path.ok_or("no :path")?;
        if path.is_empty() {
            return Err("an empty :path".into());
        }
        uri.scheme = Some(match &scheme[..] {
            b"http" => Scheme::HTTP,
            b"https" => Scheme::HTTPS,
            other => std::str::from_utf8(other).ok().and_then(|s| s.parse().ok()).ok_or("a bad :scheme")?,
        });
        if path[0] != b'/' && !(&path[..] == b"*" && method == Method::OPTIONS) {
            return Err("a :path that is not absolute".into());
        }
        uri.path_and_query = Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "a bad :path")?);
        if uri.authority.is_none() {
            // No :authority: the URI cannot carry a scheme without one.
            uri.scheme = None;
        }
        let uri = Uri::from_parts(uri).map_err(|_| "a request target that does not parse")?;
        // RFC 9113 section 8.1.1 and RFC 9110 section 8.6: digits only; repeated fields must agree,
        // and the app gets one (it must never see two lengths to choose from).
        let mut lens = self.headers.get_all(header::CONTENT_LENGTH).iter();
        let expect_len = match lens.next() {
            None => None,
            Some(first) => {
                let n = crate::base::fields::parse_length(first.as_bytes()).ok_or("a bad content-length")?;
                let mut repeated = false;
                for other in lens {
                    if crate::base::fields::parse_length(other.as_bytes()) != Some(n) {
                        return Err("content-length fields that differ".into());
                    }
                    repeated = true;
                }
                if repeated {
                    self.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                Some(n)
            }
        };
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Ok((parts, expect_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Result<(http::request::Parts, Option<u64>), &'static str> {
        let mut h = RequestHead::default();
        for (n, v) in fields {
            h.field(Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes()));
        }
        h.finish().map_err(|r| match r {
            Refusal::Malformed(why) => why,
            Refusal::Connect => "CONNECT",
        })
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/x?y")];

    #[test]
    fn a_request_head_becomes_parts() {
        let mut f = GET.to_vec();
        f.push(("cookie", "a=1"));
        f.push(("accept", "*/*"));
        f.push(("cookie", "b=2"));
        f.push(("content-length", "5"));
        let (parts, len) = head(&f).unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "http://a.test/x?y");
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.headers["cookie"], "a=1; b=2");
        assert_eq!(parts.headers["accept"], "*/*");
        assert_eq!(len, Some(5));
    }

    #[test]
    fn malformed_request_heads_are_refused() {
        let with = |extra: (&'static str, &'static str)| {
            let mut f = GET.to_vec();
            f.push(extra);
            head(&f).err()
        };
        assert_eq!(with(("connection", "close")), Some("a connection-specific field"));
        assert_eq!(with(("transfer-encoding", "chunked")), Some("a connection-specific field"));
        assert_eq!(with(("te", "gzip")), Some("TE other than \"trailers\""));
        assert!(with(("te", "trailers")).is_none());
        assert_eq!(with(("Accept", "x")), Some("a field name that is not lower-case token characters"));
        assert_eq!(with(("x-a", " padded")), Some("a field value with leading or trailing white space"));
        assert_eq!(with((":status", "200")), Some("an unknown or response pseudo-header"));
        assert_eq!(with(("content-length", "x")), Some("a bad content-length"));
        assert_eq!(with(("content-length", "+5")), Some("a bad content-length"));
        assert_eq!(with(("content-length", "5, 5")), Some("a bad content-length"));
        let mut f = GET.to_vec();
        f.extend_from_slice(&[("content-length", "0"), ("content-length", "50")]);
        assert_eq!(head(&f).err(), Some("content-length fields that differ"));
        let mut f = GET.to_vec();
        f.extend_from_slice(&[("content-length", "7"), ("content-length", "7")]);
        let (parts, len) = head(&f).unwrap();
        assert_eq!(len, Some(7));
        assert_eq!(parts.headers.get_all("content-length").iter().count(), 1, "the app gets one length");
        assert_eq!(with(("x-a", "a\u{0}b")), Some("a field value with a control character"));
        // A pseudo-header after a regular field, a repeated one, missing ones.
        let mut f = vec![("accept", "*/*")];
        f.extend_from_slice(&GET);
        assert_eq!(head(&f).err(), Some("a pseudo-header after a regular field"));
        let mut f = GET.to_vec();
        f.push((":path", "/again"));
        assert_eq!(head(&f).err(), Some("a repeated pseudo-header"));
        assert_eq!(head(&GET[1..]).err(), Some("no :method"));
        assert_eq!(head(&[(":method", "GET"), (":scheme", "http")]).err(), Some("no :path"));
        assert_eq!(
            head(&[(":method", "GET"), (":scheme", "http"), (":path", "x")]).err(),
            Some("a :path that is not absolute")
        );
        assert_eq!(
            head(&[(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")]).err(),
            Some("CONNECT with :scheme or :path, or without :authority")
        );
        assert_eq!(head(&[(":method", "CONNECT"), (":authority", "a:1")]).err(), Some("CONNECT"));
        assert_eq!(
            head(&[(":method", "GET"), (":scheme", "http"), (":authority", "u@a"), (":path", "/")]).err(),
            Some("an :authority with userinfo")
        );
        assert!(head(&[(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")]).is_ok());
    }

    #[test]
    fn authority_replaces_host() {
        let mut f = GET.to_vec();
        f.push(("host", "evil.example"));
        let (parts, _) = head(&f).unwrap();
        assert!(parts.headers.get("host").is_none(), "Host comes from :authority");
        assert_eq!(parts.uri.authority().map(|a| a.as_str()), Some("a.test"));
        // Without :authority, Host stays.
        let (parts, _) = head(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "b.test")]).unwrap();
        assert_eq!(parts.headers["host"], "b.test");
    }

    #[test]
    fn padding_is_stripped_or_refused() {
        let p = Bytes::from_static(&[2, b'a', b'b', 0, 0]);
        assert_eq!(unpad(PADDED, p).as_deref(), Some(&b"ab"[..]));
        assert_eq!(unpad(PADDED, Bytes::from_static(&[4, 0, 0, 0])), None);
        assert_eq!(unpad(0, Bytes::from_static(b"xy")).as_deref(), Some(&b"xy"[..]));
        assert_eq!(unpad(PADDED, Bytes::new()), None);
    }
}
