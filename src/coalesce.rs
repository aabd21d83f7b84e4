//! Write coalescing for the gRPC servers' connections.
//!
//! hyper runs each HTTP/2 request as its own task; when one finishes, the
//! connection task is woken (tokio runs it next) and writes and flushes
//! that one response. With many requests in flight on a connection, that
//! is one `writev` (one trip through the loopback TCP stack, on both
//! ends) per response: measured, 18,500 `writev` for 20,000 ranges.
//! grpc-go, etcd's server, flushes only when its writer has nothing more
//! queued.
//!
//! [`Coalesced`] does the same under h2: writes go to a buffer, and a
//! flush first yields once, so that the requests already runnable finish
//! and queue their responses, then writes everything in one call. Nothing
//! waits for a timer: with nothing else to run, the yield costs one extra
//! poll of the connection.
//!
//! ```text
//! h2 write r1 ─► buffer         h2 flush ─► yield ─► (r2, r3 finish) ─►
//! h2 write r2, r3 ─► buffer     h2 flush ─► writev(r1 r2 r3)
//! ```

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Past this many buffered bytes a write drains the buffer first.
const HIGH_WATER: usize = 64 * 1024;

/// A connection whose writes are buffered until a flush, and whose flushes
/// let other runnable tasks go first once.
pub struct Coalesced<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
    /// This flush has already yielded once.
    yielded: bool,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out the whole buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // A burst's buffer is not kept: an idle connection holds no memory.
        if self.buf.capacity() > HIGH_WATER {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written < self.buf.len() {
            if !self.yielded {
                // Let the tasks that are ready add their responses first;
                // this task is polled again after them.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_drain(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes reach the peer only at a flush, whole and in order, and
    /// writes past the high-water mark are not lost.
    #[tokio::test]
    async fn writes_arrive_at_flush_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesced::new(a);
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(early.is_err(), "bytes reached the peer before a flush");
        w.flush().await.unwrap();
        let mut got = [0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");

        let big: Vec<u8> = (0..3 * HIGH_WATER).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 3 * HIGH_WATER];
            b.read_exact(&mut all).await.unwrap();
            all
        });
        for chunk in big.chunks(1000) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), big);
    }
}
