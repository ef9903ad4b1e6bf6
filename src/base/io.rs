//! The one byte-stream wrapper: [`Metered`] counts what a stream moves each way, notes every
//! byte as activity (for idle timeouts and the drain's quiet check), and remembers whether the
//! stream failed (so a tunnel's log line can say whose side ended it).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that counts its bytes (see the module doc).
pub struct Metered<T> {
    inner: T,
    /// Bytes read from and written to `inner`.
    pub read: u64,
    pub written: u64,
    /// A read or write on `inner` failed.
    pub failed: bool,
    activity: Arc<AtomicU64>,
}

impl<T> Metered<T> {
    pub fn new(inner: T, activity: Arc<AtomicU64>) -> Self {
        Self { inner, read: 0, written: 0, failed: false, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn note<R>(&mut self, r: &Poll<io::Result<R>>) {
        if let Poll::Ready(Err(_)) = r {
            self.failed = true;
        }
    }

    fn moved(&mut self, n: usize, written: bool) {
        if n > 0 {
            if written {
                self.written += n as u64;
            } else {
                self.read += n as u64;
            }
            self.activity.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.moved(n, false);
        self.note(&r);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.moved(n, true);
        }
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.moved(n, true);
        }
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_each_way_are_counted_and_noted_as_activity() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Arc::new(AtomicU64::new(0));
        let mut m = Metered::new(a, activity.clone());
        m.write_all(b"hello").await.expect("write");
        b.write_all(b"hi").await.expect("write");
        let mut got = [0u8; 2];
        m.read_exact(&mut got).await.expect("read");
        assert_eq!((m.written, m.read, activity.load(Ordering::Relaxed), m.failed), (5, 2, 7, false));
    }
}
