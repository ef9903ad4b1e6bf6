//! The access log: one line per request, formatted and written by a dedicated thread behind a
//! bounded queue, to stdout or to a file that rotates by size and reopens on demand.
//!
//! The request path only moves its finished [`RequestRecord`] into the queue (`try_send`, never
//! blocking); formatting and every syscall happen on the writer thread. A full queue drops the
//! line, counts it in `tandem_access_log_dropped_total`, and says so in tandem's own log at most
//! once every few seconds. Lines are written whole: the writer only ever hands complete lines to
//! `write(2)`, and rotation happens between lines.

use crate::config::{AccessLog as AccessLogConfig, AccessLogFormat};
use crate::record::RequestRecord;
use http::HeaderValue;
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the writer lets lines gather after a write while requests keep coming; a line
/// reaches the file at most about this much later than without it.
const GATHER_INTERVAL: Duration = Duration::from_millis(5);

/// Longest string field written; longer values are cut on a character boundary and marked.
pub const MAX_FIELD_BYTES: usize = 2048;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(PathBuf),
}

impl Destination {
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "off" | "" => Destination::Off,
            "stdout" | "-" => Destination::Stdout,
            p => Destination::File(PathBuf::from(p)),
        }
    }
}

/// The request path's handle on the access log.
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    dropped: IntCounter,
    last_drop_warning: AtomicU64,
    reopen: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Msg {
    Line(Box<RequestRecord>),
    /// Flush everything before this and acknowledge.
    Flush(SyncSender<()>),
}

impl AccessLog {
    /// Opens the destination (so a bad path fails at startup) and starts the writer thread.
    pub fn start(cfg: &AccessLogConfig, written: IntCounter, dropped: IntCounter) -> io::Result<Self> {
        let dest = Destination::parse(&cfg.destination);
        let reopen = Arc::new(AtomicBool::new(false));
        if dest == Destination::Off {
            return Ok(Self {
                tx: None,
                dropped,
                last_drop_warning: AtomicU64::new(0),
                reopen,
                thread: std::sync::Mutex::new(None),
            });
        }
        let sink = Sink::open(dest, cfg.max_size.value.0, cfg.max_files)?;
        let (tx, rx) = mpsc::sync_channel(cfg.queue);
        let writer =
            Writer { sink, format: cfg.format, written, reopen: reopen.clone(), buf: Vec::with_capacity(64 * 1024) };
        let thread = std::thread::Builder::new().name("tandem-access-log".into()).spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Some(tx),
            dropped,
            last_drop_warning: AtomicU64::new(0),
            reopen,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a finished request; never blocks.
    pub fn log(&self, record: RequestRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let last = self.last_drop_warning.load(Ordering::Relaxed);
                if now >= last + 5
                    && self.last_drop_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(
                        dropped_total = self.dropped.get(),
                        "access log writer cannot keep up; lines are being dropped"
                    );
                }
            }
        }
    }

    /// Asks the writer to close and reopen its file (after an external rotation). The reopen
    /// happens before the next line is written, or within a second when idle.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits until every line queued so far is written (used at shutdown and by tests).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
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

struct Sink {
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

    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(lines)?;
                lock.flush()
            }
            Out::File(f) => {
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
        let _ = std::fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
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
    sink: Sink,
    format: AccessLogFormat,
    written: IntCounter,
    reopen: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.check_reopen();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.check_reopen();
            let mut next = Some(first);
            // Take what is queued, up to a batch, then write it in whole lines.
            let mut batch = 0;
            let mut full = false;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(r) => {
                        let before = self.buf.len();
                        match self.format {
                            AccessLogFormat::Json => format_json(&r, &mut self.buf),
                            AccessLogFormat::Text => format_text(&r, &mut self.buf),
                        }
                        let line_len = (self.buf.len() - before) as u64;
                        if self.sink.path.is_some() && self.sink.size + (before as u64) + line_len > self.sink.max_size
                        {
                            // Write what precedes this line, rotate, then carry the line over.
                            let line = self.buf.split_off(before);
                            self.write_out();
                            if let Err(e) = self.sink.rotate() {
                                tracing::error!(error = %e, "access log rotation failed; continuing in the current file");
                            }
                            self.buf = line;
                        }
                        batch += 1;
                    }
                    Msg::Flush(ack) => {
                        self.write_out();
                        let _ = ack.send(());
                    }
                }
                if batch < 1024 && self.buf.len() < 60 * 1024 {
                    next = rx.try_recv().ok();
                } else {
                    full = true;
                }
            }
            self.write_out();
            // Let lines gather before the next write. A writer that goes back to waiting on the
            // queue after every line is woken for every request: a futex call on the request
            // path and two context switches, which on a one-core budget cost more than the
            // request itself. Asleep, it is not waiting, so queueing a line is one atomic push.
            if batch > 0 && !full {
                std::thread::sleep(GATHER_INTERVAL);
            }
        }
        self.write_out();
    }

    fn check_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.write_out();
            if let Err(e) = self.sink.reopen() {
                tracing::error!(error = %e, "access log reopen failed");
            }
        }
    }

    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = self.buf.iter().filter(|b| **b == b'\n').count() as u64;
        match self.sink.write_lines(&self.buf) {
            Ok(()) => self.written.inc_by(lines),
            Err(e) => tracing::error!(error = %e, lines, "access log write failed"),
        }
        self.buf.clear();
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
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Writes `s` as a JSON string: escaped, invalid UTF-8 replaced, cut at [`MAX_FIELD_BYTES`].
pub fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let text = String::from_utf8_lossy(s);
    let (text, cut) = truncate(&text);
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
    out.push(b'"');
}

fn truncate(s: &str) -> (&str, bool) {
    if s.len() <= MAX_FIELD_BYTES {
        return (s, false);
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

fn opt_json(v: Option<&HeaderValue>, out: &mut Vec<u8>) {
    match v {
        Some(v) => json_str(v.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// One JSON object and a newline, keys as in Istio's JSON access log.
pub fn format_json(r: &RequestRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"start_time\":\"");
    rfc3339(r.start, out);
    let _ = write!(out, "\",\"direction\":\"{}\",\"method\":", r.direction.as_str());
    json_str(r.method.as_str().as_bytes(), out);
    out.extend_from_slice(b",\"authority\":");
    opt_json(r.authority.as_ref(), out);
    out.extend_from_slice(b",\"path\":");
    match &r.path {
        Some(p) => json_str(p.as_str().as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"response_code\":{},\"response_flags\":\"{}\",\"bytes_received\":{},\"bytes_sent\":{},\"duration_ms\":{}",
        protocol(r.protocol),
        r.response_code,
        r.response_flags.map(|f| f.as_str()).unwrap_or("-"),
        r.bytes_received,
        r.bytes_sent,
        r.duration.as_millis(),
    );
    out.extend_from_slice(b",\"upstream_service_time_ms\":");
    match r.upstream_service_time {
        Some(d) => {
            let _ = write!(out, "{}", d.as_millis());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_host\":");
    match r.upstream_host {
        Some(h) => {
            let _ = write!(out, "\"{h}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"upstream_cluster\":\"{}\",\"downstream_remote_address\":\"{}\",\"x_forwarded_for\":",
        r.upstream_cluster, r.downstream_remote_address
    );
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
    match &r.tls {
        Some(t) => {
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
        None => out.extend_from_slice(b",\"tls_version\":null,\"alpn\":null,\"downstream_peer_identity\":null"),
    }
    out.extend_from_slice(b"}\n");
}

/// Envoy's default one-line format, for people who read logs by eye.
pub fn format_text(r: &RequestRecord, out: &mut Vec<u8>) {
    out.push(b'[');
    rfc3339(r.start, out);
    out.extend_from_slice(b"] \"");
    text_field(r.method.as_str().as_bytes(), out);
    out.push(b' ');
    text_field(r.path.as_ref().map(|p| p.as_str().as_bytes()).unwrap_or(b"-"), out);
    let _ = write!(
        out,
        " {}\" {} {} {} {} {} ",
        protocol(r.protocol),
        r.response_code,
        r.response_flags.map(|f| f.as_str()).unwrap_or("-"),
        r.bytes_received,
        r.bytes_sent,
        r.duration.as_millis()
    );
    match r.upstream_service_time {
        Some(d) => {
            let _ = write!(out, "{}", d.as_millis());
        }
        None => out.push(b'-'),
    }
    for v in [&r.x_forwarded_for, &r.user_agent, &r.request_id, &r.authority] {
        out.extend_from_slice(b" \"");
        text_field(v.as_ref().map(|v| v.as_bytes()).unwrap_or(b"-"), out);
        out.push(b'"');
    }
    let _ = write!(
        out,
        " \"{}\" {}",
        r.upstream_host.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
        r.direction.as_str()
    );
    out.push(b'\n');
}

/// A text-format field: control characters, quotes and backslashes escaped; cut when too long.
fn text_field(s: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(s);
    let (text, cut) = truncate(&text);
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_everything_that_could_split_a_line() {
        let mut out = Vec::new();
        json_str(b"a\r\nb\"c\\d\x01\xff", &mut out);
        let s = String::from_utf8(out).expect("utf8");
        assert!(!s.contains('\n') && !s.contains('\r'));
        let back: String = serde_json::from_str(&s).expect("valid json");
        assert_eq!(back, "a\r\nb\"c\\d\u{1}\u{fffd}");
    }

    #[test]
    fn long_fields_are_cut() {
        let mut out = Vec::new();
        json_str(&vec![b'x'; 8192], &mut out);
        let back: String = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(back.len(), MAX_FIELD_BYTES + 3);
    }

    #[test]
    fn rfc3339_formats_utc() {
        let mut out = Vec::new();
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_764_061_200_123), &mut out);
        assert_eq!(String::from_utf8(out).expect("utf8"), "2025-11-25T09:00:00.123Z");
    }
}
