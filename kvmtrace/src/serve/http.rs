//! The HTTP side of `serve`: hyper 1 (HTTP/1.1) on kvmtrace's tokio runtime, with three answers:
//! GET /metrics (OpenMetrics text when the scraper asks for it, as Prometheus does, else the
//! Prometheus text format 0.0.4; both encoded by prometheus-client), GET /healthz ("ok"), and
//! 404 / 405 for anything else. A client gets 10 s to send its request headers.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding, registry::Registry};
use tokio::net::TcpListener;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let r = respond(
                    req.method(),
                    req.uri().path(),
                    req.headers().get(ACCEPT),
                    &registry,
                );
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("HTTP connection: {e}");
            }
        });
    }
}

/// The answer to one request.
fn respond(
    method: &Method,
    path: &str,
    accept: Option<&HeaderValue>,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        return plain(StatusCode::OK, "ok");
    }
    let openmetrics = accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (encoding::text::encode(&mut body, registry), OPENMETRICS)
    } else {
        (
            encoding::prometheus_text::encode(&mut body, registry),
            encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::with_prefix("kvmtrace");
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("things", "Things", c);
        r
    }

    fn answer(method: Method, path: &str, accept: Option<&'static str>) -> (u16, String, String) {
        let r = respond(
            &method,
            path,
            accept.map(HeaderValue::from_static).as_ref(),
            &registry(),
        );
        let status = r.status().as_u16();
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn metrics_in_the_format_asked_for() {
        let (status, ct, body) = answer(Method::GET, "/metrics", None);
        assert_eq!(
            (status, ct.as_str()),
            (200, encoding::prometheus_text::CONTENT_TYPE)
        );
        assert_eq!(
            body,
            "# HELP kvmtrace_things_total Things.\n# TYPE kvmtrace_things_total counter\nkvmtrace_things_total 3\n"
        );
        // What Prometheus sends.
        let (status, ct, body) = answer(
            Method::GET,
            "/metrics",
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
        );
        assert_eq!((status, ct.as_str()), (200, OPENMETRICS));
        assert_eq!(
            body,
            "# HELP kvmtrace_things Things.\n# TYPE kvmtrace_things counter\nkvmtrace_things_total 3\n# EOF\n"
        );
    }

    #[test]
    fn health_and_everything_else() {
        assert_eq!(answer(Method::GET, "/healthz", None).0, 200);
        assert_eq!(answer(Method::GET, "/healthz", None).2, "ok");
        assert_eq!(answer(Method::GET, "/", None).0, 404);
        assert_eq!(answer(Method::POST, "/metrics", None).0, 405);
    }
}
