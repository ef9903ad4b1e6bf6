//! `tandem echo`: the load-test target and test app. It answers every request with a JSON echo of
//! its method, path, query and headers, shaped by query parameters:
//!
//! | parameter | effect |
//! | --- | --- |
//! | `status=404` | answer with that status |
//! | `delay=250ms` | wait that long before answering |
//! | `size=16384` (or `16KiB`) | answer with a body of that many bytes instead of the echo |
//! | `chunked=1` | send the body chunked (no `Content-Length`) |
//! | `echo_body=1` | stream the request body back as the response body |
//!
//! `GET /health` answers 200 `ok`.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest `size=` honoured (1 GiB), so a typo cannot ask for terabytes.
pub const MAX_SIZE: u64 = 1 << 30;

/// The echo service (stateless; one per connection costs nothing).
#[derive(Clone, Copy, Default)]
pub struct EchoService;

impl hyper::service::Service<Request<Incoming>> for EchoService {
    type Response = Response<EchoBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EchoBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(async move { Ok(handle(req).await) })
    }
}

/// The parsed query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub status: Option<StatusCode>,
    pub delay: Option<Duration>,
    pub size: Option<u64>,
    pub chunked: bool,
    pub echo_body: bool,
}

impl Params {
    /// Parses the query string; a bad value is an error naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut p = Params::default();
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "status" => {
                    let code: u16 = v.parse().map_err(|_| format!("status: not a number: {v:?}"))?;
                    p.status = Some(
                        StatusCode::from_u16(code)
                            .ok()
                            .filter(|s| s.as_u16() >= 200)
                            .ok_or_else(|| format!("status: {code} is not a final status (200-999)"))?,
                    );
                }
                "delay" => {
                    p.delay =
                        Some(crate::config::parse_duration(v).ok_or_else(|| format!("delay: invalid duration {v:?}"))?)
                }
                "size" => {
                    let n = crate::config::parse_size(v).ok_or_else(|| format!("size: invalid size {v:?}"))?;
                    if n > MAX_SIZE {
                        return Err(format!("size: {n} is over the limit of {MAX_SIZE}"));
                    }
                    p.size = Some(n);
                }
                "chunked" => p.chunked = truthy(v),
                "echo_body" => p.echo_body = truthy(v),
                _ => {}
            }
        }
        Ok(p)
    }
}

fn truthy(v: &str) -> bool {
    matches!(v, "" | "1" | "true" | "yes")
}

async fn handle(req: Request<Incoming>) -> Response<EchoBody> {
    if req.uri().path() == "/health" {
        return text(StatusCode::OK, Bytes::from_static(b"ok\n"));
    }
    let params = match Params::parse(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, Bytes::from(format!("{e}\n"))),
    };
    if let Some(d) = params.delay {
        tokio::time::sleep(d).await;
    }
    let status = params.status.unwrap_or(StatusCode::OK);
    let mut builder = Response::builder().status(status);
    let body = if params.echo_body {
        builder = builder.header(header::CONTENT_TYPE, "application/octet-stream");
        // Echo trailers too: gRPC-style tests send them.
        EchoBody::Stream(req.into_body())
    } else if let Some(n) = params.size {
        builder = builder.header(header::CONTENT_TYPE, "application/octet-stream");
        EchoBody::Sized { remaining: n, chunked: params.chunked }
    } else {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
        let json = echo_json(&req);
        if params.chunked {
            EchoBody::Chunked(Some(Bytes::from(json)))
        } else {
            EchoBody::Full(Some(Bytes::from(json)))
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(b"cannot build response\n")))
}

fn echo_json(req: &Request<Incoming>) -> Vec<u8> {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(a)) => a.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = serde_json::Value::Array(vec![first, v]);
            }
            None => {
                headers.insert(name.as_str().to_owned(), v);
            }
        }
    }
    let doc = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut out = serde_json::to_vec(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

fn text(status: StatusCode, body: Bytes) -> Response<EchoBody> {
    let mut r = Response::new(EchoBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Bodies the echo app sends.
pub enum EchoBody {
    Full(Option<Bytes>),
    /// Sent without a length, so the connection uses chunked encoding.
    Chunked(Option<Bytes>),
    /// `size=` bytes of filler, in 64 KiB frames.
    Sized {
        remaining: u64,
        chunked: bool,
    },
    /// The request body, streamed back.
    Stream(Incoming),
}

const FILL: &[u8] = &[b'x'; 64 * 1024];

impl Body for EchoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            EchoBody::Full(b) | EchoBody::Chunked(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            EchoBody::Sized { remaining, .. } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(FILL.len() as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
            }
            EchoBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EchoBody::Full(b) | EchoBody::Chunked(b) => b.is_none(),
            EchoBody::Sized { remaining, .. } => *remaining == 0,
            EchoBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EchoBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            EchoBody::Full(None) => SizeHint::with_exact(0),
            EchoBody::Sized { remaining, chunked: false } => SizeHint::with_exact(*remaining),
            EchoBody::Stream(b) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_bad_ones_are_named() {
        let p = Params::parse(Some("status=418&delay=250ms&size=16KiB&chunked=1")).expect("valid");
        assert_eq!(p.status, Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(p.delay, Some(Duration::from_millis(250)));
        assert_eq!(p.size, Some(16384));
        assert!(p.chunked && !p.echo_body);
        assert!(Params::parse(Some("status=abc")).unwrap_err().starts_with("status:"));
        assert!(Params::parse(Some("status=100")).unwrap_err().starts_with("status:"));
        assert!(Params::parse(Some("delay=soon")).unwrap_err().starts_with("delay:"));
        assert!(Params::parse(Some("size=2GiB")).unwrap_err().starts_with("size:"));
    }
}
