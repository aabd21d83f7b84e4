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
