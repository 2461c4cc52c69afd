//! `fapi-bench bare-proxy`: the least a credential-injecting reverse proxy built on the host's
//! HTTP stack (hyper serving, reqwest with rustls sending) does — every request forwarded to the
//! upstream with mTLS, a fixed bearer and a fresh interaction id, the body streamed back; no
//! policy, no key check, no token cache, no audit, no metrics. `proxy-load` runs it as the floor
//! of what `fapi-host proxy` can cost on this stack.

use std::convert::Infallible;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;

/// Serve on 127.0.0.1 (the address is the first line printed) until killed; requests under
/// `/data/` go to `upstream` + the rest of the path, with the bearer from `FAPI_BENCH_BEARER`.
pub async fn run(cert: &Path, key: &Path, ca: &Path, upstream: String) {
    let client = crate::setup::plain_client(crate::compare::plain_tls(cert, key, ca), 256);
    let bearer: Arc<str> = format!("Bearer {}", std::env::var("FAPI_BENCH_BEARER").unwrap()).into();
    let upstream: Arc<str> = upstream.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (client, bearer, upstream) = (client.clone(), bearer.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let (client, bearer, upstream) = (client.clone(), bearer.clone(), upstream.clone());
                async move {
                    let rest = req.uri().path().strip_prefix("/data/").unwrap_or("");
                    let r = client
                        .get(format!("{upstream}{rest}"))
                        .header("authorization", &*bearer)
                        .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
                        .send()
                        .await
                        .unwrap();
                    let mut response = http::Response::builder().status(r.status());
                    if let Some(len) = r.content_length() {
                        response = response.header("content-length", len);
                    }
                    let body = StreamBody::new(r.bytes_stream().map_ok(Frame::data)).boxed();
                    Ok::<_, Infallible>(response.body(body).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}
