//! One HTTP/1.1 connection of the host's local servers (`proxy`, `serve`): the caller's head
//! bounded in time and size, and a graceful close when the server stops.

use std::time::Duration;

use hyper::body::Incoming;
use tokio::sync::watch;

/// Serve `service` on `io` until the caller closes or `stop` turns true (then the request in
/// flight finishes and the connection closes). A caller that never finishes its request head is
/// cut off after `head_timeout` (hyper answers 408); a head larger than `max_head` bytes is
/// refused (431) before it is buffered whole.
pub(crate) async fn serve_connection<I, S>(
    io: I,
    service: S,
    head_timeout: Duration,
    max_head: usize,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(max_head)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
