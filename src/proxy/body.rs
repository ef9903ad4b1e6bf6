//! Response bodies on the request path: the upstream's streamed body or a short local one, counted
//! as it passes and reported once when it ends (or when the client goes away first).

use crate::telemetry::record::Finish;
use crate::upstream::http1::AppBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body of every response the proxy sends downstream.
pub struct ProxyBody {
    inner: Inner,
    /// Reported when the body ends, errors, or is dropped early (client gone).
    finish: Option<Finish>,
    sent: u64,
}

enum Inner {
    Upstream(Incoming),
    /// An answer read by the codec's client ([`crate::upstream::http1`]).
    App(AppBody),
    Local(Option<Bytes>),
}

/// What a body can fail with: hyper's errors, or the I/O errors of the codec's client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyBody {
    /// The upstream's body, streamed frame by frame.
    pub fn upstream(body: Incoming) -> Self {
        Self { inner: Inner::Upstream(body), finish: None, sent: 0 }
    }

    /// An h2 app's answer split into its head and this body.
    pub fn split_upstream(resp: http::Response<Incoming>) -> (http::response::Parts, Self) {
        let (parts, body) = resp.into_parts();
        (parts, Self::upstream(body))
    }

    /// An HTTP/1.1 app's answer (read by the codec's client half) split into its head and this
    /// body.
    pub fn split_app(resp: http::Response<AppBody>) -> (http::response::Parts, Self) {
        let (parts, body) = resp.into_parts();
        (parts, Self::app(body))
    }

    /// An answer's body read by the codec's client, streamed frame by frame.
    pub fn app(body: AppBody) -> Self {
        Self { inner: Inner::App(body), finish: None, sent: 0 }
    }

    /// A body tandem makes itself (error text, admin answers).
    pub fn local(bytes: Bytes) -> Self {
        Self { inner: Inner::Local(if bytes.is_empty() { None } else { Some(bytes) }), finish: None, sent: 0 }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self { inner: Inner::Local(None), finish: None, sent: 0 }
    }

    /// The record this body reports when it ends (to correct whose fault a failure was).
    pub(crate) fn record_mut(&mut self) -> Option<&mut crate::telemetry::record::RequestRecord> {
        self.finish.as_mut()?.record_mut()
    }

    /// Attaches the completion report for this request.
    pub fn with_finish(mut self, finish: Finish) -> Self {
        // A body that is already complete reports at once: nothing will poll it to its end
        // for a HEAD response or a 204/304.
        self.finish = Some(finish);
        self
    }

    fn complete(&mut self, client_gone: bool) {
        if let Some(f) = self.finish.take() {
            f.finish(self.sent, client_gone);
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        ProxyBody::local(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::App(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    // A gRPC answer's status is in its trailers.
                    if let Some(r) = this.record_mut() {
                        r.note_grpc_status(t);
                    }
                }
                if this.is_end_stream() {
                    this.complete(false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = this.finish.as_mut() {
                    f.upstream_body_failed();
                }
                this.complete(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.complete(false);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::App(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::App(b) => b.size_hint(),
            Inner::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Local(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped with a report still pending: either the body was never polled because it was
        // empty (HEAD, 204, 304) or the client went away before the end.
        let client_gone = !self.is_end_stream();
        self.complete(client_gone);
    }
}
