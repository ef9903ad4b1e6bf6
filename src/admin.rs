//! The admin listener (default `[::]:15020`: IPv4 and IPv6).
//!
//! | method | path | who | what |
//! | --- | --- | --- | --- |
//! | GET | `/live` | anyone | 200 while the process is healthy |
//! | GET | `/ready` | anyone | 200 once every listener is bound; 503 while starting or draining |
//! | GET | `/ready/app` | anyone | runs the app readiness check (`readiness.app`): 200, or 503 with the reason |
//! | GET | `/metrics` | anyone | Prometheus text format |
//! | POST | `/shutdown` | loopback | starts the same stop as SIGTERM |
//! | POST | `/reopen-logs` | loopback | reopens the access-log file (after an external rotation); 200 once done, 500 with the reason if it failed |
//! | POST | `/reload` | loopback | the same reload as SIGHUP ([`crate::reload`]): 200 with the keys that changed, 409 with the problems (invalid, or a key that needs a restart), 500 if a file it names could not be opened; plain text, one per line |
//! | GET | `/config` | loopback | the configuration in force (after the last reload) as YAML, secrets masked |
//! | GET | `/log-level` | loopback | the current diagnostics filter |
//! | PUT | `/log-level` | loopback | sets the diagnostics filter from the request body (`debug`, `tandem=trace`) |
//!
//! Everything but `/live`, `/ready`, `/ready/app` and `/metrics` answers 403 to a peer that is not
//! on loopback (an unknown path too, so a remote caller learns nothing). Admin requests are not
//! access-logged and not counted in the HTTP metrics.
//!
//! `GET /config` masks secrets: a key whose name contains `key`, `password`, `secret` or `token`
//! shows `***` instead of its value, unless the value is a file path (`inbound.tls.key:
//! /etc/tandem/tls.key` names where the key is, which an operator needs to see).

use crate::lifecycle::shutdown::Shutdown;
use crate::reload::{Outcome, Reloader};
use crate::telemetry::logging::LogControl;
use crate::telemetry::Telemetry;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything the admin endpoints read or act on.
pub struct AdminState {
    pub telemetry: Arc<Telemetry>,
    pub shutdown: Shutdown,
    /// True once every listener is bound; false again when a stop begins.
    pub ready: Arc<AtomicBool>,
    /// The configuration in force (`/config`, the app check) and its reload.
    pub reload: Arc<Reloader>,
    pub log: Option<LogControl>,
    pub app: SocketAddr,
}

impl AdminState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_draining()
    }
}

/// The admin service for one connection.
#[derive(Clone)]
pub struct AdminService {
    state: Arc<AdminState>,
    peer: SocketAddr,
}

impl AdminService {
    pub fn new(state: Arc<AdminState>, peer: SocketAddr) -> Self {
        Self { state, peer }
    }
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(handle(state, peer, req).await) })
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Whether a peer may use the mutating endpoints: loopback, including IPv4-mapped IPv6.
pub fn is_loopback(peer: &SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

async fn handle(state: Arc<AdminState>, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let public = matches!(path, "/live" | "/ready" | "/ready/app" | "/metrics");
    if !public && !is_loopback(&peer) {
        return reply(StatusCode::FORBIDDEN, format!("{path} answers loopback callers only\n"));
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/live") => reply(StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if state.is_ready() {
                reply(StatusCode::OK, "ready\n")
            } else if state.shutdown.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/ready/app") => match state.reload.app_check().check(state.app).await {
            Ok(()) => reply(StatusCode::OK, "app ready\n"),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("app not ready: {why}\n")),
        },
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut r = reply(StatusCode::OK, state.telemetry.render_metrics().await);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        (&Method::POST, "/shutdown") => {
            if state.shutdown.trigger() {
                tracing::info!(%peer, "stop requested through POST /shutdown");
            }
            reply(StatusCode::OK, "draining\n")
        }
        (&Method::POST, "/reopen-logs") => {
            if state.telemetry.access_log.enabled() {
                match state.telemetry.reopen_access_log().await {
                    Ok(()) => reply(StatusCode::OK, "access log reopened\n"),
                    Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            } else {
                reply(StatusCode::OK, "access log is off\n")
            }
        }
        (&Method::POST, "/reload") => {
            let outcome = state.reload.reload("POST /reload").await;
            let (status, lines) = match outcome {
                Outcome::Applied(keys) if keys.is_empty() => (StatusCode::OK, vec!["nothing changed".to_owned()]),
                Outcome::Applied(keys) => (StatusCode::OK, keys.into_iter().map(|k| format!("changed: {k}")).collect()),
                Outcome::Refused(why) => (StatusCode::CONFLICT, why),
                Outcome::Failed(why) => (StatusCode::INTERNAL_SERVER_ERROR, why),
            };
            let mut body = lines.join("\n");
            body.push('\n');
            reply(status, body)
        }
        (&Method::GET, "/config") => {
            let mut r = reply(StatusCode::OK, masked_yaml(&state.reload.yaml()));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
            r
        }
        (&Method::GET, "/log-level") => match &state.log {
            Some(l) => reply(StatusCode::OK, format!("{}\n", l.current())),
            None => reply(StatusCode::NOT_FOUND, "diagnostics are not reloadable in this process\n"),
        },
        (&Method::PUT, "/log-level") => {
            let Some(l) = &state.log else {
                return reply(StatusCode::NOT_FOUND, "diagnostics are not reloadable in this process\n");
            };
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            let level = String::from_utf8_lossy(&body).trim().to_owned();
            if level.is_empty() {
                return reply(StatusCode::BAD_REQUEST, "empty filter; send one such as `info` or `tandem=debug`\n");
            }
            match l.set(&level) {
                Ok(()) => {
                    tracing::info!(%peer, filter = %level, "log level changed");
                    reply(StatusCode::OK, format!("{level}\n"))
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("invalid filter {level:?}: {e}\n")),
            }
        }
        (
            _,
            "/live" | "/ready" | "/ready/app" | "/metrics" | "/shutdown" | "/reopen-logs" | "/reload" | "/config"
            | "/log-level",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found; endpoints: /live /ready /ready/app /metrics /shutdown /reopen-logs /reload /config /log-level\n",
        ),
    }
}

/// Key-name fragments that mark a value as secret in `GET /config`.
pub const SECRET_KEY_PARTS: [&str; 4] = ["key", "password", "secret", "token"];

/// The configuration YAML with secrets masked (see the module doc). YAML that does not parse is
/// not shown at all.
pub fn masked_yaml(yaml: &str) -> String {
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(yaml) {
        Ok(mut v) => {
            mask_secrets(&mut v, false);
            serde_yaml_ng::to_string(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
        }
        Err(e) => format!("# cannot render: {e}\n"),
    }
}

/// Replaces secret values in a configuration tree with `***`; `secret` is true under a key that
/// names a secret (every scalar below it is masked).
pub fn mask_secrets(v: &mut serde_yaml_ng::Value, secret: bool) {
    use serde_yaml_ng::Value;
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let named_secret = k.as_str().is_some_and(|k| {
                    let k = k.to_ascii_lowercase();
                    SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
                });
                mask_secrets(child, secret || named_secret);
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|c| mask_secrets(c, secret)),
        Value::Tagged(t) => mask_secrets(&mut t.value, secret),
        Value::String(s) if secret && !s.is_empty() && !is_file_path(s) => *v = Value::String("***".into()),
        Value::Number(_) if secret => *v = Value::String("***".into()),
        _ => {}
    }
}

/// Whether a value names a file rather than holding a secret: absolute, or explicitly relative.
fn is_file_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_includes_mapped_ipv6() {
        assert!(is_loopback(&"127.0.0.1:1".parse().expect("addr")));
        assert!(is_loopback(&"[::1]:1".parse().expect("addr")));
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().expect("addr")));
        assert!(!is_loopback(&"10.0.0.1:1".parse().expect("addr")));
        assert!(!is_loopback(&"[::ffff:10.0.0.1]:1".parse().expect("addr")));
    }
}
