//! The request body types every layer passes around: the body a server read (hyper's, or one
//! fed by a connection task of tandem's own through a pipe, [`RecvShared`]), counted on its way upstream.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A request body's state, shared by the connection (writer) and the app's connection (reader).
#[derive(Default)]
pub(crate) struct RecvShared {
    pub(crate) state: Mutex<RecvState>,
}

#[derive(Default)]
pub(crate) struct RecvState {
    /// Parts kept as they arrived (large ones, which fill most of their frame).
    pub(crate) chunks: VecDeque<Bytes>,
    /// Small parts, copied together: a client cannot make a byte of window hold a frame's
    /// buffer, or a queue entry, by sending its body in tiny or heavily padded frames.
    pub(crate) tail: BytesMut,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) end: bool,
    /// The stream was reset or the connection lost: the body fails.
    pub(crate) failed: Option<&'static str>,
    /// Bytes the reader took since the connection last looked.
    pub(crate) taken: u32,
    /// The reader is gone: the connection discards and gives back what arrives.
    pub(crate) dropped: bool,
    pub(crate) reader: Option<Waker>,
    /// The stream's slot, woken when bytes are taken.
    pub(crate) conn: Option<Waker>,
}

impl RecvShared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RecvState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parts at least this long that fill at least half their frame are kept without a copy.
pub(crate) const KEEP_PART: usize = 4096;

impl RecvState {
    /// Queues a part of the body that arrived in a DATA frame of `frame_len` bytes.
    pub(crate) fn push(&mut self, data: Bytes, frame_len: usize) {
        if data.len() >= KEEP_PART && data.len() * 2 >= frame_len {
            if !self.tail.is_empty() {
                let t = self.tail.split().freeze();
                self.chunks.push_back(t);
            }
            self.chunks.push_back(data);
        } else {
            self.tail.extend_from_slice(&data);
            if self.tail.len() >= KEEP_PART {
                let t = self.tail.split().freeze();
                self.chunks.push_back(t);
            }
        }
    }

    /// The next part for the reader.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        self.chunks.pop_front().or_else(|| (!self.tail.is_empty()).then(|| self.tail.split().freeze()))
    }

    /// Bytes queued and not yet taken.
    pub(crate) fn queued(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.tail.clear();
    }
}

/// A request body arriving in DATA frames on tandem's HTTP/2 server.
pub struct RecvBody {
    pub(crate) shared: Arc<RecvShared>,
    pub(crate) hint: SizeHint,
}

/// Why a request body from an HTTP/2 client failed.
#[derive(Debug)]
pub struct RecvError(&'static str);

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for RecvError {}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let mut s = self.shared.lock();
        if let Some(chunk) = s.pop() {
            s.taken = s.taken.saturating_add(chunk.len() as u32);
            let conn = s.conn.clone();
            drop(s);
            if let Some(c) = conn {
                c.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(why) = s.failed {
            return Poll::Ready(Some(Err(RecvError(why))));
        }
        if let Some(t) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if s.end {
            return Poll::Ready(None);
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock();
        s.end && s.chunks.is_empty() && s.tail.is_empty() && s.trailers.is_none() && s.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let conn = {
            let mut s = self.shared.lock();
            s.dropped = true;
            s.reader = None;
            // Still attached to its stream: the connection gives back what was never taken.
            let left = s.queued();
            s.clear();
            s.taken = s.taken.saturating_add(left as u32);
            s.conn.clone()
        };
        if let Some(c) = conn {
            c.wake();
        }
    }
}

/// A request's body as the server that read the request has it: hyper's, tandem's own HTTP/2
/// server's ([`crate::base::body::RecvBody`]), or none.
pub enum RequestBody {
    Hyper(Incoming),
    H2(crate::base::body::RecvBody),
    Empty,
}

impl From<Incoming> for RequestBody {
    fn from(b: Incoming) -> Self {
        RequestBody::Hyper(b)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = crate::base::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The request body on its way upstream, counting the bytes it carries.
pub struct CountingBody {
    pub(crate) inner: RequestBody,
    pub(crate) count: Option<Arc<AtomicU64>>,
}

impl CountingBody {
    /// Wraps a request body; `count` is `None` for bodies known to be empty.
    pub fn new(inner: RequestBody, count: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, count }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = crate::base::body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(count)) = (&polled, &self.count) {
            if let Some(d) = f.data_ref() {
                count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a body can fail with: hyper's errors, or the I/O errors of tandem's own codecs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
