//! `fapi-host serve`: a service component (it exports `wasi:http/incoming-handler`) answers plain
//! HTTP callers on a loopback address. Each request gets a fresh instance of the component,
//! pre-instantiated once, under the sandbox's limits of one run; its requests out go through the
//! sandbox's egress policy, mTLS and token, as a plugin's do.
//!
//! - Loopback only: callers are not authenticated, and whatever the service answers was fetched
//!   with this client's credentials.
//! - The caller's request head is bounded in size ([`MAX_HEAD_BYTES`]) and time
//!   ([`ServeOptions::caller_timeout`]); its body in size ([`ServeOptions::max_body`]; the
//!   instance's wall-time limit bounds how long it may take).
//! - At most [`ServeOptions::max_instances`] instances at once (an instance still writing its
//!   body counts); a caller beyond that gets 503 with `Retry-After` at once, so that waiting
//!   callers hold no memory.
//! - A guest that traps or hits a limit gives its caller a 500 naming the cause; the server and
//!   the other requests carry on.
//! - On shutdown: no new connection is accepted, each connection closes after its current
//!   response, and the instances running are given [`ServeOptions::drain`] to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::error::{Error, Result};
use crate::policy::{MAX_QUOTED, bounded};
use crate::sandbox::{Plugin, SERVICE_WORLD, Sandbox, ServiceBody, error_response};

/// The largest request head (target and headers) a caller may send; beyond it the caller gets
/// 431 and no instance runs.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the server treats its callers.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The largest request body a caller may send, bytes.
    pub max_body: u64,
    /// Instances running at once (one per request being answered).
    pub max_instances: u32,
    /// How long a caller may take to send its request head.
    pub caller_timeout: Duration,
    /// How long the requests in flight may take to finish after a shutdown begins.
    pub drain: Duration,
}

/// Bind `addr`, which must be a loopback address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(Error::Config(format!(
            "--listen {addr}: serve does not authenticate its callers and its service answers \
             with data fetched with this client's credentials, so it listens on a loopback \
             address only (127.0.0.1 or [::1]); to serve others, put an authenticating reverse \
             proxy in front of it"
        )));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))
}

/// A service ready to answer callers.
pub struct Server {
    sandbox: Arc<Sandbox>,
    plugin: Plugin,
    options: ServeOptions,
    instances: Arc<Semaphore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("plugin", &self.plugin)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server of `plugin`, which must be a service (see [`Plugin::is_service`]).
    pub fn new(sandbox: Arc<Sandbox>, plugin: Plugin, options: ServeOptions) -> Result<Server> {
        if !plugin.is_service() {
            return Err(Error::Component(format!(
                "{} is {}; `fapi-host serve` runs components that export \
                 wasi:http/incoming-handler@0.2.12: build it against the world {SERVICE_WORLD} \
                 of wit/fapi.wit",
                plugin.name(),
                plugin.kind_and_command()
            )));
        }
        let instances = Arc::new(Semaphore::new(options.max_instances.max(1) as usize));
        Ok(Server {
            sandbox,
            plugin,
            options,
            instances,
        })
    }

    /// Serve callers on `listener` until `shutdown` resolves; then stop accepting, let each
    /// connection finish its current response, and wait for the instances running, up to
    /// [`ServeOptions::drain`]. Returns whether everything finished within it (what had not is
    /// dropped: its caller's connection is cut).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> bool {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (io, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("serve: accepting a connection failed: {e}");
                        // Out of file descriptors, say: do not spin on the error.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            let stop = stop_rx.clone();
            let caller_timeout = self.options.caller_timeout;
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req, peer).await) }
                });
                crate::local_http::serve_connection(
                    io,
                    service,
                    caller_timeout,
                    MAX_HEAD_BYTES,
                    stop,
                )
                .await;
            });
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let running = self.options.max_instances.max(1);
        let drained = tokio::time::timeout(self.options.drain, async {
            while connections.join_next().await.is_some() {}
            // Every permit back: no instance runs (one may outlive its connection).
            let _ = self.instances.acquire_many(running).await;
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                "serve: requests still running after {:?} (--drain-seconds) were stopped",
                self.options.drain
            );
        }
        drained
    }

    /// One caller's request.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ServiceBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = bounded(req.uri().path(), MAX_QUOTED).into_owned();
        tracing::debug!(%peer, %method, %path, "serve: request began");
        let response = self.answer(req).await;
        tracing::info!(
            %peer, %method, %path, status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "serve"
        );
        response
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<ServiceBody> {
        // hyper's buffer limit bounds memory, but a head that arrives in one large read can pass
        // it: the size itself is checked here, before any instance runs.
        let head = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
            + req
                .headers()
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head > MAX_HEAD_BYTES {
            return error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
                &format!("request heads are limited to {MAX_HEAD_BYTES} bytes"),
            );
        }
        let max_body = self.options.max_body;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("request bodies are limited to {max_body} bytes (--max-caller-body-mib)"),
            );
        }
        let Ok(permit) = self.instances.clone().try_acquire_owned() else {
            let mut busy = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                &format!(
                    "{} requests are being answered, the most at once \
                     (--max-concurrent-instances); try again shortly",
                    self.options.max_instances
                ),
            );
            busy.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return busy;
        };
        match self
            .sandbox
            .serve_request(&self.plugin, req, max_body, permit)
            .await
        {
            Ok(response) => response,
            Err(e) => error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    }
}
