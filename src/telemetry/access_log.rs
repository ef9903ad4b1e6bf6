//! The access log: one line per request, formatted and written by a dedicated thread behind a
//! bounded queue, to stdout or to a file that rotates by size and reopens on demand.
//!
//! The request path only moves its finished [`RequestRecord`] into the queue (never blocking);
//! formatting and every syscall happen on the writer thread. The queue's memory follows what is
//! queued (a linked list of small blocks), not its bound: a bound of 65,536 lines made up front
//! would keep about 2 MiB resident for a queue that is nearly always empty. A full queue drops the
//! line, counts it in `tandem_access_log_dropped_total`, and says so in tandem's own log at most
//! once every few seconds. Lines are written whole: the writer only ever hands complete lines to
//! `write(2)`, and rotation happens between lines.
//!
//! The writer drains the queue in batches: while lines keep coming it sleeps [`BATCH_INTERVAL`]
//! between batches instead of waiting on the queue, so under load the request path never pays for
//! waking it up; once a batch finds the queue empty it blocks on the queue again (idle).
//!
//! Every string field is escaped (JSON: `\n`, `\r`, `\"`, `\\`, `\u00XX` for control characters;
//! invalid UTF-8 becomes U+FFFD) and cut at [`MAX_FIELD_BYTES`] of *output*, so one line stays one
//! line and a hostile request cannot make it arbitrarily long.

use crate::config::{AccessLog as AccessLogConfig, AccessLogFormat};
use crate::telemetry::ratelimit::RateLimitedLog;
use crate::telemetry::record::RequestRecord;
use http::HeaderValue;
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest string field written (after escaping); longer values are cut and end in `...`.
pub const MAX_FIELD_BYTES: usize = 2048;

/// Pause between batches while lines keep coming.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// How often an idle writer looks at the reopen flag.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Bytes buffered before a `write(2)`.
const WRITE_CHUNK: usize = 64 * 1024;

/// At most one warning about dropped lines per this many seconds.
const DROP_WARNING_SECS: u64 = 5;

/// Where lines go (read from the configuration, which owns what each word means).
pub use crate::config::Destination;

/// The request path's handle on the access log.
pub struct AccessLog {
    /// The writer's queue; `None` when the log started off (turning it on takes a restart).
    tx: Option<Sender<Msg>>,
    /// False while a reload has turned the log off.
    on: AtomicBool,
    /// Lines in the queue (the writer subtracts what it takes), against `capacity`.
    queued: Arc<AtomicUsize>,
    /// `access_log.queue`; a reload may change it.
    capacity: AtomicUsize,
    dropped: IntCounter,
    last_drop_warning: AtomicU64,
    reopen: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Msg {
    Line(Box<RequestRecord>),
    /// Write everything queued before this (and reopen if asked), then acknowledge with the
    /// outcome of the last reopen.
    Flush(SyncSender<Result<(), String>>),
    /// A reload: write everything queued before this where it was going, then write to the new
    /// sink in the new format.
    Retarget(Box<Sink>, AccessLogFormat),
}

/// Where a reloaded configuration sends lines, opened before anything changes (so a
/// destination that cannot be opened leaves the log as it was).
pub enum Retarget {
    Off,
    To(Box<Sink>, AccessLogFormat),
}

impl AccessLog {
    /// Opens the destination (so a bad path fails at startup) and starts the writer thread.
    /// `written` counts lines written; `dropped` counts lines lost (queue full or write failed).
    pub fn start(cfg: &AccessLogConfig, written: IntCounter, dropped: IntCounter) -> io::Result<Self> {
        let dest = Destination::parse(&cfg.destination);
        let reopen = Arc::new(AtomicBool::new(false));
        if dest == Destination::Off {
            return Ok(Self {
                tx: None,
                on: AtomicBool::new(false),
                queued: Arc::new(AtomicUsize::new(0)),
                capacity: AtomicUsize::new(0),
                dropped,
                last_drop_warning: AtomicU64::new(0),
                reopen,
                thread: std::sync::Mutex::new(None),
            });
        }
        let sink = Sink::open(dest, cfg.max_size.value.0, cfg.max_files)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            queued: queued.clone(),
            sink,
            format: cfg.format,
            written,
            dropped: dropped.clone(),
            reopen: reopen.clone(),
            buf: Vec::with_capacity(2 * WRITE_CHUNK),
            pending: 0,
            errors: RateLimitedLog::new(Duration::from_secs(DROP_WARNING_SECS)),
            reopen_error: None,
        };
        let thread = std::thread::Builder::new().name("tandem-access-log".into()).spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Some(tx),
            on: AtomicBool::new(true),
            queued,
            capacity: AtomicUsize::new(cfg.queue.max(1)),
            dropped,
            last_drop_warning: AtomicU64::new(0),
            reopen,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some() && self.on.load(Ordering::Relaxed)
    }

    /// Whether the writer was started (the log did not start off).
    pub fn started(&self) -> bool {
        self.tx.is_some()
    }

    /// Opens what a reloaded `cfg` names, changing nothing yet ([`AccessLog::retarget`] does).
    /// A log that started off cannot be turned on: its writer was never started.
    pub fn prepare(&self, cfg: &AccessLogConfig) -> Result<Retarget, String> {
        match Destination::parse(&cfg.destination) {
            Destination::Off => Ok(Retarget::Off),
            _ if self.tx.is_none() => Err("the access log started off; turning it on needs a restart".to_owned()),
            dest => Sink::open(dest, cfg.max_size.value.0, cfg.max_files)
                .map(|sink| Retarget::To(Box::new(sink), cfg.format))
                .map_err(|e| e.to_string()),
        }
    }

    /// Puts a prepared destination and `queue` in force: lines queued before this go where they
    /// were going, lines after it to the new destination.
    pub fn retarget(&self, to: Retarget, queue: usize) {
        self.capacity.store(queue.max(1), Ordering::Relaxed);
        match (to, &self.tx) {
            (Retarget::Off, _) => self.on.store(false, Ordering::Relaxed),
            (Retarget::To(sink, format), Some(tx)) => {
                if tx.send(Msg::Retarget(sink, format)).is_ok() {
                    self.on.store(true, Ordering::Relaxed);
                }
            }
            (Retarget::To(..), None) => {}
        }
    }

    /// Queues a finished request; never blocks. A full queue drops the line and counts it. A
    /// queued record is detached from the request head's buffer first
    /// ([`RequestRecord::detach`]): it waits for the writer's next batch, and would otherwise keep
    /// that whole buffer allocated until then.
    pub fn log(&self, mut record: Box<RequestRecord>) {
        let Some(tx) = self.tx.as_ref().filter(|_| self.on.load(Ordering::Relaxed)) else { return };
        // Reserve a place first; the writer gives it back when it takes the line.
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity.load(Ordering::Relaxed) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            self.warn_dropped();
            return;
        }
        record.detach();
        if tx.send(Msg::Line(record)).is_err() {
            // The writer has stopped (only at exit).
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    fn warn_dropped(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + DROP_WARNING_SECS)
            && self.last_drop_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                dropped_total = self.dropped.get(),
                "access log writer cannot keep up; lines are being dropped (tandem_access_log_dropped_total)"
            );
        }
    }

    /// Asks the writer to close and reopen its file (after an external rotation). The reopen
    /// happens before the next batch is written, or within a second when idle; [`AccessLog::flush`]
    /// after this returns once it has happened.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits (up to 5 s) until every line queued so far is written and a requested reopen is done.
    /// This blocks the calling thread: from async code use
    /// [`Telemetry::flush_access_log`](crate::telemetry::Telemetry::flush_access_log).
    pub fn flush(&self) {
        let _ = self.sync();
    }

    /// Like [`AccessLog::flush`], and says whether the file in use is the configured path: `Err`
    /// if the last reopen failed (lines still go to the file opened before), or if the writer did
    /// not answer within 5 s.
    pub fn sync(&self) -> Result<(), String> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Flush(ack_tx)).map_err(|_| "the access log writer has stopped".to_owned())?;
        ack_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "the access log writer did not answer within 5s".to_owned())?
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer write what is left and stop.
        self.tx.take();
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

/// Where the writer puts lines: stdout or a file it rotates.
pub struct Sink {
    out: Out,
    path: Option<PathBuf>,
    size: u64,
    max_size: u64,
    max_files: usize,
}

impl Sink {
    fn open(dest: Destination, max_size: u64, max_files: usize) -> io::Result<Self> {
        match dest {
            Destination::File(path) => {
                let file = open_append(&path)?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Ok(Self { out: Out::File(file), path: Some(path), size, max_size, max_files })
            }
            _ => Ok(Self { out: Out::Stdout(io::stdout()), path: None, size: 0, max_size, max_files }),
        }
    }

    /// Whether a line, with `before` bytes still buffered ahead of it and `with_line` bytes
    /// buffered in all, would take the file over its size. A line that would be the file's first
    /// never rotates, so a single line longer than `max_size` is still written.
    fn needs_rotation(&self, before: u64, with_line: u64) -> bool {
        self.path.is_some() && self.size + before > 0 && self.size + with_line > self.max_size
    }

    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(lines)?;
                lock.flush()
            }
            Out::File(f) => {
                // O_APPEND: every write lands at the end, even if something else appends too.
                f.write_all(lines)?;
                self.size += lines.len() as u64;
                Ok(())
            }
        }
    }

    /// Renames `access.log` → `.1`, `.1` → `.2`, … (the oldest beyond `max_files` is removed)
    /// and opens a fresh file. Never copy-and-truncate: a shipper holding the old file reads it
    /// to its end.
    fn rotate(&mut self) -> io::Result<()> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        let numbered = |n: usize| {
            let mut s = path.clone().into_os_string();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        match std::fs::remove_file(numbered(self.max_files)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.max_files).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&path, numbered(1))?;
        self.reopen()
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let file = open_append(path)?;
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.out = Out::File(file);
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open access log {}: {e}", path.display())))
}

struct Writer {
    /// Shared with [`AccessLog`]: one less for every line taken off the queue.
    queued: Arc<AtomicUsize>,
    sink: Sink,
    format: AccessLogFormat,
    written: IntCounter,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    /// Whole lines not yet written.
    buf: Vec<u8>,
    /// Lines in `buf`.
    pending: u64,
    /// Write, rotation and reopen failures, at most one message per kind every few seconds.
    errors: RateLimitedLog,
    /// Why the last reopen failed, until one succeeds.
    reopen_error: Option<String>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut busy = false;
        loop {
            // Under load, sleep between batches rather than wait on the queue: a sender never
            // has to wake a waiting writer. Idle, wait on the queue.
            let first = if busy {
                std::thread::sleep(BATCH_INTERVAL);
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => {
                        busy = false;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv_timeout(IDLE_TICK) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.check_reopen();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            self.check_reopen();
            self.handle(first);
            loop {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.write_out();
                        return;
                    }
                }
            }
            self.write_out();
            busy = true;
        }
        self.write_out();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(r) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                let before = self.buf.len();
                match self.format {
                    AccessLogFormat::Json => format_json(&r, &mut self.buf),
                    AccessLogFormat::Text => format_text(&r, &mut self.buf),
                }
                if self.sink.needs_rotation(before as u64, self.buf.len() as u64) {
                    // Write what precedes this line, rotate, then carry the line over.
                    let line = self.buf.split_off(before);
                    self.write_out();
                    if let Err(e) = self.sink.rotate() {
                        self.errors.warn("access log rotation", &format_args!("access log rotation failed: {e}"));
                    }
                    self.buf = line;
                }
                self.pending += 1;
                if self.buf.len() >= WRITE_CHUNK {
                    self.write_out();
                }
            }
            Msg::Retarget(sink, format) => {
                self.write_out();
                self.sink = *sink;
                self.format = format;
                self.reopen_error = None;
            }
            Msg::Flush(ack) => {
                self.write_out();
                self.check_reopen();
                let _ = ack.send(self.reopen_error.clone().map_or(Ok(()), Err));
            }
        }
    }

    fn check_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.write_out();
            match self.sink.reopen() {
                Ok(()) => {
                    self.reopen_error = None;
                    tracing::debug!("access log reopened");
                }
                Err(e) => {
                    let msg = format!("access log reopen failed; still writing to the file opened before: {e}");
                    self.errors.warn("access log reopen", &msg);
                    self.reopen_error = Some(msg);
                }
            }
        }
    }

    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.sink.write_lines(&self.buf) {
            Ok(()) => self.written.inc_by(self.pending),
            Err(e) => {
                self.dropped.inc_by(self.pending);
                self.errors.warn("access log write", &format_args!("access log write failed; lines lost: {e}"));
            }
        }
        self.buf.clear();
        self.pending = 0;
    }
}

/// Formats `start_time` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    push_padded(out, year.max(0) as u64, 4);
    out.push(b'-');
    push_padded(out, month as u64, 2);
    out.push(b'-');
    push_padded(out, day as u64, 2);
    out.push(b'T');
    push_padded(out, rem / 3600, 2);
    out.push(b':');
    push_padded(out, (rem / 60) % 60, 2);
    out.push(b':');
    push_padded(out, rem % 60, 2);
    out.push(b'.');
    push_padded(out, u64::from(d.subsec_millis()), 3);
    out.push(b'Z');
}

/// Writes `n` in decimal (no `fmt` machinery: this runs once per field per line).
fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_padded(out, n, 1);
}

/// Writes `n` in decimal with at least `width` digits, zero-padded.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i.min(buf.len() - width.min(buf.len()))..]);
}

/// Writes a socket address as `a.b.c.d:port` or `[v6]:port`.
fn push_addr(out: &mut Vec<u8>, a: &std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
            out.push(b':');
            push_u64(out, u64::from(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn push_millis(out: &mut Vec<u8>, d: Duration) {
    push_u64(out, u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
}

/// Writes `s` as escaped field content: runs of printable ASCII other than `"` and `\\` are copied
/// as they are, every other char goes through `escape` (which writes its representation into a
/// scratch buffer); invalid UTF-8 becomes U+FFFD; stops before the output would pass
/// [`MAX_FIELD_BYTES`] and marks the cut with `...`.
fn escaped(s: &[u8], out: &mut Vec<u8>, escape: fn(char, &mut [u8; 12]) -> usize) {
    let start = out.len();
    let mut scratch = [0u8; 12];
    let mut rest = s;
    while !rest.is_empty() {
        let plain =
            rest.iter().position(|b| !matches!(b, 0x20..=0x7e) || *b == b'"' || *b == b'\\').unwrap_or(rest.len());
        if plain > 0 {
            let room = MAX_FIELD_BYTES - (out.len() - start);
            if plain > room {
                out.extend_from_slice(&rest[..room]);
                out.extend_from_slice(b"...");
                return;
            }
            out.extend_from_slice(&rest[..plain]);
            rest = &rest[plain..];
            continue;
        }
        // One char that needs care: escaped, multi-byte, or invalid (replaced).
        let (c, used) = first_char(rest);
        let n = escape(c, &mut scratch);
        if out.len() - start + n > MAX_FIELD_BYTES {
            out.extend_from_slice(b"...");
            return;
        }
        out.extend_from_slice(&scratch[..n]);
        rest = &rest[used..];
    }
}

/// The first char of `s` (not empty) and the bytes it takes, decoding at most 4 bytes. An invalid
/// sequence is one U+FFFD, as in `String::from_utf8_lossy`.
fn first_char(s: &[u8]) -> (char, usize) {
    let window = &s[..s.len().min(4)];
    let valid = match std::str::from_utf8(window) {
        Ok(v) => v,
        Err(e) if e.valid_up_to() > 0 => std::str::from_utf8(&window[..e.valid_up_to()]).unwrap_or_default(),
        Err(e) => return ('\u{fffd}', e.error_len().unwrap_or(window.len()).max(1)),
    };
    match valid.chars().next() {
        Some(c) => (c, c.len_utf8()),
        None => ('\u{fffd}', 1),
    }
}

fn escape_json(c: char, b: &mut [u8; 12]) -> usize {
    let short: &[u8] = match c {
        '"' => b"\\\"",
        '\\' => b"\\\\",
        '\n' => b"\\n",
        '\r' => b"\\r",
        '\t' => b"\\t",
        c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
            let mut w = &mut b[..];
            let _ = write!(w, "\\u{:04x}", c as u32);
            return 6;
        }
        c => return c.encode_utf8(b).len(),
    };
    b[..short.len()].copy_from_slice(short);
    short.len()
}

fn escape_text(c: char, b: &mut [u8; 12]) -> usize {
    match c {
        '"' | '\\' => {
            b[0] = b'\\';
            b[1] = c as u8;
            2
        }
        c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
            let mut w = &mut b[..];
            let _ =
                if (c as u32) < 0x100 { write!(w, "\\x{:02x}", c as u32) } else { write!(w, "\\u{:04x}", c as u32) };
            12 - w.len()
        }
        c => c.encode_utf8(b).len(),
    }
}

/// Writes `s` as a JSON string: escaped, invalid UTF-8 replaced, cut at [`MAX_FIELD_BYTES`].
pub fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    escaped(s, out, escape_json);
    out.push(b'"');
}

/// A text-format field: control characters, quotes and backslashes escaped; cut when too long.
fn text_field(s: &[u8], out: &mut Vec<u8>) {
    escaped(s, out, escape_text);
}

fn opt_json(v: Option<&HeaderValue>, out: &mut Vec<u8>) {
    match v {
        Some(v) => json_str(v.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
}

fn protocol(r: &RequestRecord) -> &'static str {
    if r.tcp {
        return "tcp";
    }
    match r.protocol {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// One JSON object and a newline, keys as in Istio's JSON access log (DESIGN.md's list, in order).
pub fn format_json(r: &RequestRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"start_time\":\"");
    rfc3339(r.start, out);
    out.extend_from_slice(b"\",\"direction\":\"");
    out.extend_from_slice(r.direction.as_str().as_bytes());
    out.extend_from_slice(b"\",\"method\":");
    if r.tcp {
        out.extend_from_slice(b"null");
    } else {
        json_str(r.method.as_str().as_bytes(), out);
    }
    out.extend_from_slice(b",\"authority\":");
    opt_json(r.authority.as_ref(), out);
    out.extend_from_slice(b",\"path\":");
    match r.path_bytes() {
        Some(p) => json_str(p, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(r).as_bytes());
    out.extend_from_slice(b"\",\"response_code\":");
    push_u64(out, u64::from(r.response_code));
    out.extend_from_slice(b",\"response_flags\":\"");
    out.extend_from_slice(r.response_flags.map(|f| f.as_str()).unwrap_or("-").as_bytes());
    out.extend_from_slice(b"\",\"bytes_received\":");
    push_u64(out, r.bytes_received);
    out.extend_from_slice(b",\"bytes_sent\":");
    push_u64(out, r.bytes_sent);
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(out, r.duration);
    out.extend_from_slice(b",\"upstream_service_time_ms\":");
    match r.upstream_service_time {
        Some(d) => push_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_host\":");
    match &r.upstream_host {
        Some(h) => {
            out.push(b'"');
            push_addr(out, h);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_cluster\":");
    json_str(r.upstream_cluster.as_bytes(), out);
    out.extend_from_slice(b",\"downstream_remote_address\":\"");
    push_addr(out, &r.downstream_remote_address);
    out.extend_from_slice(b"\",\"x_forwarded_for\":");
    opt_json(r.x_forwarded_for.as_ref(), out);
    out.extend_from_slice(b",\"user_agent\":");
    opt_json(r.user_agent.as_ref(), out);
    out.extend_from_slice(b",\"request_id\":");
    opt_json(r.request_id.as_ref(), out);
    out.extend_from_slice(b",\"trace_id\":");
    match r.trace_id() {
        Some(t) => json_str(t.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    // Plaintext lines carry exactly DESIGN.md's keys; a gRPC request adds `grpc_status`, TLS
    // its three.
    if r.grpc {
        out.extend_from_slice(b",\"grpc_status\":");
        match r.grpc_status {
            Some(s) => push_u64(out, u64::from(s)),
            None => out.extend_from_slice(b"null"),
        }
    }
    if let Some(t) = &r.tls {
        let _ = write!(out, ",\"tls_version\":\"{}\",\"alpn\":", t.version);
        match t.alpn {
            Some(a) => {
                let _ = write!(out, "\"{a}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"downstream_peer_identity\":");
        match &t.peer_identity {
            Some(id) => json_str(id.as_bytes(), out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Envoy's default one-line format, for people who read logs by eye:
///
/// ```text
/// [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS BYTES_RECEIVED BYTES_SENT DURATION UPSTREAM_TIME "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST" DIRECTION UPSTREAM_CLUSTER
/// ```
pub fn format_text(r: &RequestRecord, out: &mut Vec<u8>) {
    out.push(b'[');
    rfc3339(r.start, out);
    out.extend_from_slice(b"] \"");
    text_field(if r.tcp { b"-" } else { r.method.as_str().as_bytes() }, out);
    out.push(b' ');
    text_field(r.path_bytes().unwrap_or(b"-"), out);
    out.push(b' ');
    out.extend_from_slice(protocol(r).as_bytes());
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(r.response_code));
    out.push(b' ');
    out.extend_from_slice(r.response_flags.map(|f| f.as_str()).unwrap_or("-").as_bytes());
    out.push(b' ');
    push_u64(out, r.bytes_received);
    out.push(b' ');
    push_u64(out, r.bytes_sent);
    out.push(b' ');
    push_millis(out, r.duration);
    out.push(b' ');
    match r.upstream_service_time {
        Some(d) => push_millis(out, d),
        None => out.push(b'-'),
    }
    for v in [&r.x_forwarded_for, &r.user_agent, &r.request_id, &r.authority] {
        out.extend_from_slice(b" \"");
        text_field(v.as_ref().map(|v| v.as_bytes()).unwrap_or(b"-"), out);
        out.push(b'"');
    }
    match &r.upstream_host {
        Some(h) => {
            out.extend_from_slice(b" \"");
            push_addr(out, h);
            out.push(b'"');
        }
        None => out.extend_from_slice(b" \"-\""),
    }
    out.push(b' ');
    out.extend_from_slice(r.direction.as_str().as_bytes());
    out.push(b' ');
    text_field(r.upstream_cluster.as_bytes(), out);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_everything_that_could_split_a_line() {
        let mut out = Vec::new();
        json_str(b"a\r\nb\"c\\d\x01\x7f\xff\xe2\x80\xa8", &mut out);
        let s = String::from_utf8(out).expect("utf8");
        assert!(!s.contains('\n') && !s.contains('\r') && !s.contains('\u{2028}'), "{s}");
        let back: String = serde_json::from_str(&s).expect("valid json");
        assert_eq!(back, "a\r\nb\"c\\d\u{1}\u{7f}\u{fffd}\u{2028}");
    }

    #[test]
    fn long_fields_are_cut_by_their_escaped_size() {
        for input in [vec![b'x'; 8192], vec![1u8; 8192], "€".repeat(3000).into_bytes(), vec![0xff; 8192]] {
            let mut out = Vec::new();
            json_str(&input, &mut out);
            assert!(out.len() <= MAX_FIELD_BYTES + 5, "{} bytes", out.len());
            let back: String = serde_json::from_slice(&out).expect("valid json");
            assert!(back.ends_with("..."));
        }
        let mut out = Vec::new();
        text_field(&[1u8; 8192], &mut out);
        assert!(out.len() <= MAX_FIELD_BYTES + 3 && out.ends_with(b"..."));
    }

    #[test]
    fn short_fields_are_kept_whole() {
        let mut out = Vec::new();
        json_str(&vec![b'y'; MAX_FIELD_BYTES], &mut out);
        assert_eq!(out.len(), MAX_FIELD_BYTES + 2);
    }

    #[test]
    fn text_fields_escape_controls_and_quotes() {
        let mut out = Vec::new();
        text_field(b"a\"b\\c\n\x01\xff\xc2\x85", &mut out);
        assert_eq!(String::from_utf8(out).expect("utf8"), "a\\\"b\\\\c\\x0a\\x01\u{fffd}\\x85");
    }

    #[test]
    fn escaping_round_trips_like_from_utf8_lossy() {
        let inputs: [&[u8]; 8] = [
            b"plain ascii",
            b"\xff\xfe\xfd",
            b"a\xe2\x82",
            b"\xe2\x82\xac\xe2\x82",
            b"\xf0\x9f\x98\x80 smile \xed\xa0\x80 surrogate",
            b"\xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc",
            b"tab\there \"quote\" back\\slash \x00 \x1f \x7f",
            b"\xe2\x80\xa8\xe2\x80\xa9",
        ];
        for input in inputs {
            let mut out = Vec::new();
            json_str(input, &mut out);
            let back: String = serde_json::from_slice(&out).expect("valid json");
            assert_eq!(back, String::from_utf8_lossy(input), "{input:?}");
        }
    }

    #[test]
    fn numbers_and_addresses_are_written_without_fmt() {
        let mut out = Vec::new();
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        push_padded(&mut out, 7, 3);
        assert_eq!(out, b"007");
        for a in ["127.0.0.1:8080", "10.255.0.1:0", "[::1]:443", "[2001:db8::1]:65535"] {
            out.clear();
            push_addr(&mut out, &a.parse().expect("addr"));
            assert_eq!(out, a.as_bytes());
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        let mut out = Vec::new();
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_764_061_200_123), &mut out);
        assert_eq!(String::from_utf8(out).expect("utf8"), "2025-11-25T09:00:00.123Z");
    }
}
