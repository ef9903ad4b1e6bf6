//! The one error enum of the request path and the one function that turns it into a response.
//!
//! Reason codes follow Envoy's response flags; statuses follow nginx, HAProxy and Linkerd (502 for
//! a refused upstream) and keep 503 for tandem's own refusals, so "the app is down" and "the proxy
//! is full" look different to an operator.
//!
//! | reason | status | when |
//! | --- | --- | --- |
//! | `UF` | 502 (504 if the connect timed out) | could not connect to the upstream |
//! | `UC` | 502 | upstream closed or reset before a full response |
//! | `UPE` | 502 | upstream sent an invalid response |
//! | `UT` | 504 | upstream response timed out |
//! | `UO` | 503 | overloaded: max in-flight or max connections reached |
//! | `NR` | 404 (403 when denied by policy) | outbound: no upstream matches, or policy denies it |
//! | `URX` | 503 | outbound: retries exhausted |
//! | `DPE` | 400/405/408/413/414/417/431/501 | the client sent something invalid, too large or too slow, a method (`CONNECT` inbound), an expectation or a transfer coding tandem does not serve |
//! | `DC` | (none) | the client went away mid-request |
//! | `LR` | (none) | tandem cut the request itself (local reset): its connection was still open at the drain deadline, or at a second stop signal |
//!
//! A gRPC request (`content-type: application/grpc`, [`crate::base::grpc::is_grpc`]) gets the
//! same error as a gRPC answer, as Envoy and Linkerd give it: HTTP 200, trailers-only (the
//! head ends the stream), `grpc-status` from the table in [`crate::base::grpc`],
//! `grpc-message` with the one-line text, and `x-tandem-error` as always.

use crate::base::grpc;
use crate::base::reason::Reason;
use crate::telemetry::record::RequestRecord;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;

/// The header that marks every response tandem makes itself.
pub const ERROR_HEADER: &str = "x-tandem-error";
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Everything that can go wrong on the request path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream connect failed (UF): {cause} by {upstream}")]
    ConnectFailed { upstream: String, cause: String },
    #[error("upstream connect timed out (UF): no answer from {upstream} within {timeout_ms}ms")]
    ConnectTimeout { upstream: String, timeout_ms: u64 },
    #[error("upstream closed the connection (UC): {upstream} closed or reset before a full response")]
    UpstreamClosed { upstream: String },
    #[error("upstream protocol error (UPE): {upstream} sent an invalid response: {cause}")]
    UpstreamProtocol { upstream: String, cause: String },
    #[error("upstream timed out (UT): no response from {upstream} within {timeout_ms}ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u64 },
    #[error("overloaded (UO): {limit} requests already in flight")]
    TooManyRequests { limit: usize },
    #[error("no route (NR): {what}")]
    NoRoute { what: String },
    #[error("denied (NR): {what} is not allowed by outbound policy")]
    Denied { what: String },
    #[error("retries exhausted (URX): {upstream}")]
    RetriesExhausted { upstream: String },
    #[error("bad request (DPE): {what}")]
    BadRequest { what: String },
    #[error("request header fields too large (DPE): {what}")]
    HeadersTooLarge { what: String },
    #[error("request timeout (DPE): {what}")]
    RequestTimeout { what: String },
    #[error("payload too large (DPE): {what}")]
    PayloadTooLarge { what: String },
    #[error("URI too long (DPE): {what}")]
    UriTooLong { what: String },
    #[error("method not allowed (DPE): {what}")]
    MethodNotAllowed { what: String },
    #[error("not implemented (DPE): {what}")]
    NotImplemented { what: String },
    #[error("expectation failed (DPE): {what}")]
    ExpectationFailed { what: String },
}

impl ProxyError {
    /// The reason code of this error.
    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout { .. } => Reason::UF,
            ProxyError::UpstreamClosed { .. } => Reason::UC,
            ProxyError::UpstreamProtocol { .. } => Reason::UPE,
            ProxyError::UpstreamTimeout { .. } => Reason::UT,
            ProxyError::TooManyRequests { .. } => Reason::UO,
            ProxyError::NoRoute { .. } | ProxyError::Denied { .. } => Reason::NR,
            ProxyError::RetriesExhausted { .. } => Reason::URX,
            ProxyError::BadRequest { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::RequestTimeout { .. }
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::NotImplemented { .. }
            | ProxyError::ExpectationFailed { .. } => Reason::DPE,
        }
    }

    /// The status of the response tandem answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamClosed { .. }
            | ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::TooManyRequests { .. } | ProxyError::RetriesExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ExpectationFailed { .. } => StatusCode::EXPECTATION_FAILED,
        }
    }

    /// The `grpc-status` a gRPC client is answered with (the table in [`crate::base::grpc`]).
    pub fn grpc_status(&self) -> u16 {
        grpc::status_for(self.reason(), self.status().as_u16())
    }

    /// The status of the answer as sent: 200 for a gRPC request (its status is in
    /// `grpc-status`), [`ProxyError::status`] otherwise.
    pub fn answer_status(&self, grpc: bool) -> StatusCode {
        if grpc {
            StatusCode::OK
        } else {
            self.status()
        }
    }

    /// Classifies an error from the pooled upstream client.
    pub fn from_client(err: &hyper_util::client::legacy::Error, upstream: SocketAddr, connect_timeout_ms: u64) -> Self {
        Self::from_client_named(err, upstream.to_string(), connect_timeout_ms)
    }

    /// Like [`ProxyError::from_client`], for an upstream known by name (outbound: the authority).
    pub fn from_client_named(
        err: &hyper_util::client::legacy::Error,
        upstream: String,
        connect_timeout_ms: u64,
    ) -> Self {
        if err.is_connect() {
            let io = find_io_error(err);
            if let Some(io) = io {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return ProxyError::ConnectTimeout { upstream, timeout_ms: connect_timeout_ms };
                }
                return ProxyError::ConnectFailed { upstream, cause: describe_io(io) };
            }
            return ProxyError::ConnectFailed { upstream, cause: "connection failed".to_owned() };
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return ProxyError::UpstreamProtocol { upstream, cause: h.to_string() };
                }
                if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                    return ProxyError::UpstreamClosed { upstream };
                }
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                if h2.is_go_away() || h2.is_reset() || h2.is_io() {
                    return ProxyError::UpstreamClosed { upstream };
                }
                return ProxyError::UpstreamProtocol { upstream, cause: h2.to_string() };
            }
            source = e.source();
        }
        ProxyError::UpstreamClosed { upstream }
    }
}

impl ProxyError {
    /// Classifies a failed TCP connect to `upstream` (`TimedOut` is the connect timeout).
    pub fn from_connect(io: &std::io::Error, upstream: SocketAddr, connect_timeout_ms: u64) -> Self {
        let upstream = upstream.to_string();
        if io.kind() == std::io::ErrorKind::TimedOut {
            return ProxyError::ConnectTimeout { upstream, timeout_ms: connect_timeout_ms };
        }
        ProxyError::ConnectFailed { upstream, cause: describe_io(io) }
    }
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = e.source();
    }
    None
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        _ => {
            // io::Error's Display appends "(os error N)"; keep the human part.
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_ascii_lowercase(),
                None => s,
            }
        }
    }
}

/// Notes `err` as the answer in a request's record: the status sent, the reason, and for a gRPC
/// request the `grpc-status` it is given. True if the request is gRPC (answer it in that form).
pub fn note_error(err: &ProxyError, record: Option<&mut RequestRecord>) -> bool {
    let Some(r) = record else { return false };
    r.response_code = err.answer_status(r.grpc).as_u16();
    r.response_flags = Some(err.reason());
    if r.grpc {
        r.grpc_status = Some(err.grpc_status());
    }
    r.grpc
}

/// The one function that maps an error to the response tandem sends: its status, the
/// `x-tandem-error` header, and a one-line plain-text body; to a gRPC request (`grpc`), HTTP 200
/// with no body and the error in `grpc-status` and `grpc-message` (a trailers-only answer).
pub fn error_response<B: From<Bytes>>(err: &ProxyError, grpc: bool) -> Response<B> {
    if grpc {
        let mut resp = Response::new(B::from(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(&GRPC_STATUS, HeaderValue::from(err.grpc_status()));
        // Visible ASCII only after the encoding: always a valid value.
        if let Ok(v) = HeaderValue::from_maybe_shared(grpc::encode_message(&err.to_string())) {
            h.insert(&GRPC_MESSAGE, v);
        }
        h.insert(ERROR_HEADER, HeaderValue::from_static(err.reason().as_str()));
        return resp;
    }
    let mut body = err.to_string();
    body.push('\n');
    let mut resp = Response::new(B::from(Bytes::from(body)));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(err.reason().as_str()));
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_design_table() {
        let u = || "127.0.0.1:1".to_owned();
        let cases = [
            (ProxyError::ConnectFailed { upstream: u(), cause: "connection refused".into() }, 502, "UF"),
            (ProxyError::ConnectTimeout { upstream: u(), timeout_ms: 5 }, 504, "UF"),
            (ProxyError::UpstreamClosed { upstream: u() }, 502, "UC"),
            (ProxyError::UpstreamProtocol { upstream: u(), cause: "x".into() }, 502, "UPE"),
            (ProxyError::UpstreamTimeout { upstream: u(), timeout_ms: 5 }, 504, "UT"),
            (ProxyError::TooManyRequests { limit: 1 }, 503, "UO"),
            (ProxyError::NoRoute { what: "x".into() }, 404, "NR"),
            (ProxyError::RetriesExhausted { upstream: u() }, 503, "URX"),
            (ProxyError::BadRequest { what: "x".into() }, 400, "DPE"),
            (ProxyError::HeadersTooLarge { what: "x".into() }, 431, "DPE"),
        ];
        for (err, status, code) in cases {
            let resp: Response<Bytes> = error_response(&err, false);
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert_eq!(resp.headers()[ERROR_HEADER], code);
            let body = resp.body();
            assert!(body.ends_with(b"\n") && !body[..body.len() - 1].contains(&b'\n'));
        }
    }

    #[test]
    fn a_grpc_request_gets_a_trailers_only_answer() {
        let err = ProxyError::UpstreamTimeout { upstream: "127.0.0.1:8080".into(), timeout_ms: 250 };
        let resp: Response<Bytes> = error_response(&err, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.body().is_empty());
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "4");
        assert_eq!(h["grpc-message"], "upstream timed out (UT): no response from 127.0.0.1:8080 within 250ms");
        assert_eq!(h[ERROR_HEADER], "UT");
        assert_eq!(err.answer_status(true), StatusCode::OK);
        assert_eq!(err.answer_status(false), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn the_body_names_the_upstream() {
        let err = ProxyError::ConnectFailed { upstream: "127.0.0.1:8080".into(), cause: "connection refused".into() };
        assert_eq!(err.to_string(), "upstream connect failed (UF): connection refused by 127.0.0.1:8080");
    }
}
