//! `fapi-bench bare-proxy`: the least a credential-injecting reverse proxy built on the proxy's
//! HTTP stack (hyper serving; hyper's client over rustls sending, the proxy's own transport)
//! does — every request forwarded to the upstream with mTLS, a fixed bearer and a fresh
//! interaction id, the body streamed back; no policy, no key check, no token cache, no audit, no
//! metrics. `proxy-load` runs it as the floor of what `fapi-host proxy` can cost on this stack.

use std::convert::Infallible;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

/// Serve on 127.0.0.1 (the address is the first line printed) until killed; requests under
/// `/data/` go to `upstream` + the rest of the path, with the bearer from `FAPI_BENCH_BEARER`.
pub async fn run(cert: &Path, key: &Path, ca: &Path, upstream: String) {
    let client = fapi_host::forwarding::client(crate::compare::plain_tls(cert, key, ca));
    let bearer = http::HeaderValue::try_from(format!(
        "Bearer {}",
        std::env::var("FAPI_BENCH_BEARER").unwrap()
    ))
    .unwrap();
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
                    let up = http::Request::get(format!("{upstream}{rest}"))
                        .header("authorization", bearer)
                        .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
                        .body(fapi_host::forwarding::Body::default())
                        .unwrap();
                    Ok::<_, Infallible>(client.request(up).await.unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}
