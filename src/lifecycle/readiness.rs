//! App readiness, checked by tandem because an app bound to loopback cannot be probed by the
//! kubelet: a TCP connect (default), an HTTP path answering 2xx, a file appearing on a shared
//! volume (the seed's technique), or nothing.

use crate::config::AppCheck;
use bytes::Bytes;
use http_body_util::Empty;
use std::net::SocketAddr;
use std::time::Duration;

/// How long one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

impl AppCheck {
    /// Runs the check against the app at `app`; `Err` says why it is not ready.
    pub async fn check(&self, app: SocketAddr) -> Result<(), String> {
        match self {
            AppCheck::None => Ok(()),
            AppCheck::Tcp => match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(app)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp connect to {app}: {e}")),
                Err(_) => Err(format!("tcp connect to {app}: timed out")),
            },
            AppCheck::File(p) => match tokio::fs::metadata(p).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{}: {e}", p.display())),
            },
            AppCheck::Http(path) => match tokio::time::timeout(CHECK_TIMEOUT, http_check(app, path)).await {
                Ok(r) => r,
                Err(_) => Err(format!("GET {path} on {app}: timed out")),
            },
        }
    }
}

async fn http_check(app: SocketAddr, path: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(app).await.map_err(|e| format!("connect to {app}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {app}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, app.to_string())
        .header(http::header::USER_AGENT, "tandem-readiness")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("GET {path} on {app}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} on {app} answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse() {
        assert_eq!(AppCheck::parse("tcp"), Ok(AppCheck::Tcp));
        assert_eq!(AppCheck::parse("http:/healthz"), Ok(AppCheck::Http("/healthz".into())));
        assert_eq!(AppCheck::parse("file:/shared/ready"), Ok(AppCheck::File("/shared/ready".into())));
        assert!(AppCheck::parse("http:healthz").is_err());
        assert!(AppCheck::parse("icmp").is_err());
    }
}
