//! A gRPC client channel straight onto one HTTP/2 connection.
//!
//! tonic's `Channel` puts a tower `Buffer` in front of the connection: every
//! call is queued to a worker task, which hands it to hyper's connection
//! task, which writes it. [`Direct`] hands the call to the connection task
//! from the caller's own task: one task hand-off fewer per call.
//! It connects lazily, with Nagle off and writes coalesced until a flush
//! (as the servers' accepted connections, `coalesce`), and connects again
//! on the next call once the connection has closed.
//!
//! A request's body is read one frame ahead ([`OneAhead`]), so that hyper
//! learns the body has ended together with its last frame: a unary call
//! leaves as HEADERS and one DATA frame carrying END_STREAM, as grpc-go
//! sends it, not with a second, empty DATA frame to end the stream. tonic's
//! server answers a unary call only once the stream has ended, so that
//! second frame cost the server a second wake-up per call, and often the
//! client a second write.
//!
//! Unlike tonic's channel it does not enforce a request's `grpc-timeout`
//! on the client side: callers bound their calls themselves. Every failure
//! to connect or to carry a call is `Unavailable`, as gRPC specifies for
//! transport failures.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;
use tonic::codegen::http::uri::{Authority, Scheme};
use tonic::codegen::http::{Request, Response, Uri};

use crate::coalesce::Coalesced;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn unavailable(e: impl std::fmt::Display) -> BoxError {
    Box::new(tonic::Status::unavailable(e.to_string()))
}

/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Direct {
    inner: Arc<Inner>,
}

struct Inner {
    authority: Authority,
    host: String,
    port: u16,
    connect_timeout: Duration,
    keep_alive: Option<Duration>,
    /// The open connection's sender, if any.
    conn: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting, so that concurrent callers share one attempt.
    connecting: tokio::sync::Mutex<()>,
}

impl Direct {
    /// A channel to `url` (`http://host:port`) that connects on first use.
    pub fn lazy(
        url: &str,
        connect_timeout: Duration,
        keep_alive: Option<Duration>,
    ) -> Result<Direct, BoxError> {
        let uri: Uri = url.parse()?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("{url}: only http:// URLs are supported").into());
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url}: no host"))?;
        // An IPv6 literal comes bracketed.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Direct {
            inner: Arc::new(Inner {
                port: authority.port_u16().unwrap_or(80),
                authority,
                host,
                connect_timeout,
                keep_alive,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        let conn = self.inner.conn.lock().unwrap();
        conn.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let inner = &self.inner;
        let connect = async {
            let stream = TcpStream::connect((inner.host.as_str(), inner.port)).await?;
            stream.set_nodelay(true)?;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(inner.keep_alive);
            let io = TokioIo::new(Coalesced::new(stream));
            Ok::<_, BoxError>(builder.handshake(io).await?)
        };
        let (send, conn) = tokio::time::timeout(inner.connect_timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection closed");
            }
        });
        *inner.conn.lock().unwrap() = Some(send.clone());
        Ok(send)
    }

    async fn send(
        self,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        // tonic's generated clients give only the path.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.inner.authority.clone());
        *req.uri_mut() = Uri::from_parts(parts)?;
        let req = req.map(|body| Body::new(OneAhead::new(body)));
        let mut send = self.sender().await.map_err(unavailable)?;
        send.ready().await.map_err(unavailable)?;
        send.send_request(req).await.map_err(unavailable)
    }
}

impl tower::Service<Request<Body>> for Direct {
    type Response = Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

/// A body read one frame ahead: each frame is handed out only with the
/// next one already asked for, so that [`HttpBody::is_end_stream`] is true
/// as soon as the last frame has been handed out. (hyper sets END_STREAM on
/// a DATA frame only if the body says so once that frame is out.) Frames
/// pass unchanged and in order; nothing is buffered beyond one frame.
struct OneAhead {
    inner: Body,
    /// The frame (or error) read ahead, to hand out next.
    ahead: Option<Result<Frame<Bytes>, tonic::Status>>,
    /// The inner body has ended.
    ended: bool,
}

impl OneAhead {
    fn new(inner: Body) -> Self {
        let ended = inner.is_end_stream();
        OneAhead {
            inner,
            ahead: None,
            ended,
        }
    }

    /// Asks the inner body for its next frame; not ready is fine (its
    /// waker is registered, and the next poll asks again).
    fn look_ahead(&mut self, cx: &mut Context<'_>) {
        if self.ahead.is_none() && !self.ended {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(next)) => self.ahead = Some(next),
                Poll::Pending => {}
            }
        }
    }
}

impl HttpBody for OneAhead {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        this.look_ahead(cx);
        let Some(frame) = this.ahead.take() else {
            return if this.ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        };
        if frame.is_ok() {
            this.look_ahead(cx);
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ahead.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(Ok(frame)) = &self.ahead {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                hint.set_lower(hint.lower() + n);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + n);
                }
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{kv_client::KvClient, PutRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const END_STREAM: u8 = 0x1;

    /// Reads one HTTP/2 frame: (type, flags, stream id, payload).
    async fn frame(s: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        (head[3], head[4], stream, payload)
    }

    /// A unary call reaches the wire as HEADERS and a single DATA frame
    /// that ends the stream: read frame by frame off a real socket.
    #[tokio::test]
    async fn a_unary_call_ends_its_stream_on_its_data_frame() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let direct = Direct::lazy(&url, Duration::from_secs(5), None).unwrap();
        let call = tokio::spawn(async move {
            let req = PutRequest {
                key: b"k".to_vec(),
                value: vec![7u8; 300],
                ..Default::default()
            };
            KvClient::new(direct).put(req).await
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // Our SETTINGS (none), and the ack of the client's.
        s.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut data = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (kind, flags, stream, payload) = frame(&mut s).await;
                if stream == 0 || !(kind == HEADERS || kind == DATA) {
                    continue;
                }
                if kind == HEADERS {
                    assert_eq!(flags & END_STREAM, 0, "a unary call carries a message");
                    continue;
                }
                data.push((payload.len(), flags & END_STREAM != 0));
                if flags & END_STREAM != 0 {
                    return;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream never ended: {data:?}");
        // gRPC framing: 5 bytes of prefix, then the encoded PutRequest.
        assert_eq!(data.len(), 1, "DATA frames (length, END_STREAM): {data:?}");
        assert!(
            data[0].0 > 300,
            "the message rides on the ending frame: {data:?}"
        );
        call.abort();
    }

    /// Frames pass through in order, and the end is known with the last.
    #[tokio::test]
    async fn one_ahead_keeps_frames_and_knows_the_end_with_the_last() {
        /// Hands out its frames, one per poll.
        struct Frames(std::collections::VecDeque<&'static str>);
        impl HttpBody for Frames {
            type Data = Bytes;
            type Error = tonic::Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
                Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
            }
        }
        let body = Body::new(Frames(["a", "bc", "def"].into()));
        let mut body = OneAhead::new(body);
        let mut seen = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.unwrap().into_data().unwrap();
            seen.push((
                String::from_utf8(data.to_vec()).unwrap(),
                body.is_end_stream(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("a".to_string(), false),
                ("bc".to_string(), false),
                ("def".to_string(), true)
            ]
        );
    }
}
