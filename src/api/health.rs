//! etcd's HTTP health endpoints, served beside gRPC on the client port and
//! alone on `--listen-metrics-urls`.
//!
//! What each path answers, as etcd 3.5 (`server/etcdserver/api/etcdhttp`):
//!
//! | path | checks | 200 body | 503 body |
//! |---|---|---|---|
//! | `/health` | leader known (skipped with `?serializable=true`), then a read | `{"health":"true","reason":""}` | `{"health":"false","reason":"RAFT NO LEADER"}` or `"RANGE ERROR:<err>"`, plus `\n` |
//! | `/livez` | `serializable_read` | `ok\n` | `[-]serializable_read failed: <err>\n` + `\n` |
//! | `/readyz` | `data_corruption`, `serializable_read`, `linearizable_read` | `ok\n` | one `[+]`/`[-]` line per check + `\n` |
//! | `/version` | none (client port only) | `{"etcdserver":"3.5.17","etcdcluster":"3.5.0","oxcd":"<ver>"}` | |
//!
//! `/livez` and `/readyz` take `?verbose` (list the checks on success too) and
//! `?exclude=<check>`; `/livez/<check>` and `/readyz/<check>` run one check.
//! A method other than GET gets 405 `Method Not Allowed`; an unknown path 404
//! `404 page not found`, both as Go's net/http words them.
//!
//! On the client port the router is tonic's own (an axum router): gRPC
//! services own `/<package.Service>/*`, these paths sit beside them, and the
//! fallback answers by content type (gRPC's UNIMPLEMENTED for
//! `application/grpc*`, 404 for the rest). The server accepts HTTP/1.1 as well
//! as HTTP/2 on that port, so `curl http://host:2379/health` works as on etcd.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Response, StatusCode, Uri};
use axum::routing::any;
use axum::Router;

use super::Context;
use crate::config::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::error::Error;
use crate::proto::etcdserverpb::RangeRequest;

/// oxcd's own version, reported beside etcd's in `/version`.
pub const OXCD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The client port's routes: tonic's gRPC routes plus the health paths and
/// `/version`.
pub fn client_routes(grpc: tonic::service::Routes, ctx: Context) -> tonic::service::Routes {
    let router = health_paths(grpc.into_axum_router(), ctx)
        .route("/version", any(version))
        .fallback(client_fallback);
    tonic::service::Routes::from(router)
}

/// The `--listen-metrics-urls` listener's routes: the health paths only (etcd
/// serves `/version` on the client port alone).
pub fn metrics_routes(ctx: Context) -> tonic::service::Routes {
    tonic::service::Routes::from(health_paths(Router::new(), ctx).fallback(not_found))
}

fn health_paths(router: Router, ctx: Context) -> Router {
    let mut router = router;
    let c = ctx.clone();
    router = router.route(
        "/health",
        any(move |m: Method, u: Uri| {
            let c = c.clone();
            async move { health(&c, &m, &u).await }
        }),
    );
    for (root, checks) in [("/livez", LIVEZ), ("/readyz", READYZ)] {
        let c = ctx.clone();
        router = router.route(
            root,
            any(move |m: Method, u: Uri| {
                let c = c.clone();
                async move {
                    let excluded = query_values(&u, "exclude");
                    let run: Vec<Check> = checks
                        .iter()
                        .copied()
                        .filter(|ch| !excluded.iter().any(|e| e == ch.name()))
                        .collect();
                    checks_response(&c, &m, &u, &run).await
                }
            }),
        );
        for &check in checks {
            let c = ctx.clone();
            router = router.route(
                &format!("{root}/{}", check.name()),
                any(move |m: Method, u: Uri| {
                    let c = c.clone();
                    async move { checks_response(&c, &m, &u, &[check]).await }
                }),
            );
        }
    }
    router
}

/// etcd's `/health`.
async fn health(ctx: &Context, method: &Method, uri: &Uri) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed();
    }
    let serializable = query_values(uri, "serializable")
        .first()
        .is_some_and(|v| v == "true");
    let reason = if !serializable && ctx.metrics.borrow().current_leader.is_none() {
        Some("RAFT NO LEADER".to_string())
    } else {
        read_check(ctx, serializable)
            .await
            .err()
            .map(|e| format!("RANGE ERROR:{e}"))
    };
    match reason {
        None => text(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Some(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{{\"health\":\"false\",\"reason\":{}}}\n",
                json_string(&reason)
            ),
        ),
    }
}

/// One check of `/livez` or `/readyz`.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// No CORRUPT alarm is active (oxcd raises none yet).
    DataCorruption,
    /// This member's store answers a read.
    SerializableRead,
    /// The cluster confirms a read index and this member catches up to it.
    LinearizableRead,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    async fn run(self, ctx: &Context) -> Result<(), Error> {
        match self {
            Check::DataCorruption => Ok(()),
            Check::SerializableRead => read_check(ctx, true).await,
            Check::LinearizableRead => read_check(ctx, false).await,
        }
    }
}

/// etcd's `/livez` and `/readyz` handler: every check in order, one line each.
async fn checks_response(
    ctx: &Context,
    method: &Method,
    uri: &Uri,
    checks: &[Check],
) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed();
    }
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(ctx).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        // Go's http.Error appends a newline to the message.
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{report}\n"));
    }
    let verbose = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("verbose")));
    let body = if verbose {
        format!("{report}ok\n")
    } else {
        "ok\n".to_string()
    };
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// etcd's health read: a keys-only range of one key, serializable (this
/// member's store) or linearizable (after the ReadIndex barrier), bounded
/// by the request timeout.
async fn read_check(ctx: &Context, serializable: bool) -> Result<(), Error> {
    if !serializable {
        match tokio::time::timeout(ctx.request_timeout, ctx.read_barrier()).await {
            Err(_) => return Err(Error::Timeout),
            Ok(r) => r?,
        }
    }
    let req = RangeRequest {
        key: vec![0],
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    ctx.store.range(&req).map(|_| ()).map_err(Error::from)
}

async fn version(method: Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let body = format!(
        r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}","oxcd":"{OXCD_VERSION}"}}"#
    );
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Requests no route took: gRPC calls to an unknown service get gRPC's
/// UNIMPLEMENTED (what tonic answers alone), anything else Go's 404.
async fn client_fallback(headers: HeaderMap) -> Response<Body> {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    not_found().await
}

async fn not_found() -> Response<Body> {
    let mut resp = text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    resp.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn method_not_allowed() -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed\n".into(),
    );
    let h = resp.headers_mut();
    h.insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    h.insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Every value of `name` in the URI's query (no percent-decoding: the
/// values these endpoints take are plain words).
fn query_values(uri: &Uri, name: &str) -> Vec<String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
        .collect()
}

/// A JSON string literal (the reasons hold error messages of our own).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let u: Uri = "/readyz?exclude=a&exclude=&exclude=b&verbose"
            .parse()
            .unwrap();
        assert_eq!(query_values(&u, "exclude"), ["a", "b"]);
        assert!(query_values(&u, "verbose").is_empty());
        let u: Uri = "/health?serializable=true".parse().unwrap();
        assert_eq!(query_values(&u, "serializable"), ["true"]);
    }

    #[test]
    fn json_strings_escape_as_go_does() {
        assert_eq!(json_string(r#"a"b<c>"#), r#""a\"b\u003cc\u003e""#);
    }
}
