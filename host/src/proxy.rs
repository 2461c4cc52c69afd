//! `fapi-host proxy`: a local credential boundary for any program. A caller speaks plain HTTP to a
//! loopback address; the host sends each request on over mTLS with the token and a fresh
//! `x-fapi-interaction-id`, to the upstream its route names, and streams the answer back. The
//! caller never holds the key or a token.
//!
//! - Routes are the allow-list: `/NAME/` maps to `https://provider.example/api/`, and the URL
//!   built from the rest of the path is checked by the guests' policy (normalised, never outside
//!   the upstream's path, never the authorization server, at its address either).
//! - Callers are authenticated by a random local key, sent as `Authorization: Bearer KEY` and
//!   stripped before the request goes on.
//! - Credential headers of the caller's (`Cookie`, `x-fapi-*`, `DPoP`, `Proxy-Authorization`) are
//!   refused; the connection's own and the framing headers are dropped and set anew.
//! - Request bodies up to 64 KiB (by their `Content-Length`) are read whole, so that a request
//!   can be replayed after `invalid_token` or retried; larger and chunked bodies stream through,
//!   memory flat, within `--max-request-body-mib` and with `--caller-timeout-seconds` between
//!   chunks; a body cut off breaks the upstream request (it never sees a short complete one).
//! - Errors are JSON a caller can act on: 401 (no or wrong key), 400, 403 (policy), 404 (no
//!   route), 405, 408 (the caller stalled), 413, 502 (provider unreachable), 503 with
//!   `Retry-After` (no token), 504.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::client::{FapiClient, FapiRequest, StreamedBody};
use crate::error::{Error, Result};
use crate::policy::{
    HeaderBudget, HeaderCaller, HeaderOwner, MAX_HEADER_BYTES, Policy, bounded, refused_header,
    shown_url,
};
use crate::sandbox::{Audit, AuditEvent};

/// The largest request head read: the headers a caller may pass on, a request line with a long
/// URL, and the headers the proxy drops (its key, framing, hop-by-hop).
const MAX_HEAD: usize = MAX_HEADER_BYTES + (32 << 10);

/// One route: requests under `prefix` go to `upstream`, the rest of the path appended, with the
/// access token of `grant` when it names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The path prefix callers use, `/NAME/` (leading and trailing slash).
    pub prefix: String,
    /// The https URL the rest of the path is appended to (ending in `/`).
    pub upstream: url::Url,
    /// The grant whose access token the route's requests carry (a household's consent), if
    /// any; else the proxy's `--grant`, else the client's own token.
    pub grant: Option<String>,
}

/// How a route's grant is named on the command line: `--route /NAME/=URL,grant=GRANT`.
const GRANT_SUFFIX: &str = ",grant=";

impl std::str::FromStr for Route {
    type Err = Error;

    /// `/NAME/=https://provider.example/api/`, optionally followed by `,grant=GRANT`.
    fn from_str(s: &str) -> Result<Route> {
        let bad = |why: &str| {
            Error::Config(format!(
                "route {:?} {why}; write it as /NAME/=https://provider.example/path/ (with a \
                 grant: /NAME/=https://provider.example/path/,grant=GRANT)",
                bounded(s, crate::policy::MAX_QUOTED)
            ))
        };
        let (prefix, rest) = s.split_once('=').ok_or_else(|| bad("has no '='"))?;
        let (upstream, grant) = match rest.rsplit_once(GRANT_SUFFIX) {
            Some((u, g)) => (u, Some(g)),
            None => (rest, None),
        };
        let mut route = Route::new(prefix, upstream).map_err(|e| bad(&e))?;
        if let Some(g) = grant {
            route = route
                .with_grant(g)
                .map_err(|e| bad(&format!("names a bad grant ({e})")))?;
        }
        Ok(route)
    }
}

impl Route {
    /// A route from its prefix and upstream, checked: the prefix starts and ends with `/` and
    /// holds no `..`, `%` or `?`; the upstream is an https URL without query or fragment (a
    /// trailing `/` is added).
    pub fn new(prefix: &str, upstream: &str) -> std::result::Result<Route, String> {
        let prefix = prefix.trim();
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 3 {
            return Err("needs a prefix like /NAME/ (a slash at both ends)".into());
        }
        if prefix.contains("..") || prefix.contains(['%', '?', '#', '\\']) {
            return Err("has a prefix with '..', '%', '?', '#' or '\\'".into());
        }
        let mut upstream = url::Url::parse(upstream.trim())
            .map_err(|e| format!("has a bad upstream URL ({e})"))?;
        if upstream.scheme() != "https" {
            return Err("needs an https upstream".into());
        }
        if upstream.query().is_some() || upstream.fragment().is_some() {
            return Err("has an upstream with a query or fragment".into());
        }
        if !upstream.path().ends_with('/') {
            let path = format!("{}/", upstream.path());
            upstream.set_path(&path);
        }
        Ok(Route {
            prefix: prefix.to_owned(),
            upstream,
            grant: None,
        })
    }

    /// This route, its requests carrying grant `name`'s access token (the name checked).
    pub fn with_grant(mut self, name: &str) -> Result<Route> {
        crate::grants::check_grant_name(name)?;
        self.grant = Some(name.to_owned());
        Ok(self)
    }
}

/// Settings of a proxy.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The routes (at least one).
    pub routes: Vec<Route>,
    /// The key callers must send as `Authorization: Bearer KEY`.
    pub local_key: String,
    /// The largest request body a caller may send, in bytes.
    pub max_request_body: u64,
    /// Requests handled at once; more wait for a place.
    pub max_concurrent_requests: usize,
    /// How long a caller may take to send its request head, and then its body.
    pub caller_timeout: std::time::Duration,
    /// Where each request's audit record goes (the log at `-v`, and a file with `--audit`).
    pub audit: Arc<Audit>,
    /// Threads serving connections, each with a runtime and upstream connections of its own
    /// (at least one).
    pub threads: usize,
}

/// What requests go out with: a client (identity, TLS, token cache) per route, and the policy
/// the routes are checked by.
struct Upstream {
    /// Per serving thread, the client the requests of each route (by index) go out with: the
    /// guarded client, with the route's grant when it names one (one token source per grant,
    /// shared by its routes and the threads; one token cache for all). Each thread has its own
    /// connections to the providers, so that a request never waits on another thread's.
    clients: Vec<Vec<FapiClient>>,
    policy: Policy,
}

impl Upstream {
    /// The client for guests' egress of `client`, one per route with the route's grant, and the
    /// policy of `routes` against its authorization server (by name and address). A grant that
    /// cannot be used (unknown, another issuer's, ended) is an error naming its route.
    async fn new(client: FapiClient, routes: &[Route], threads: usize) -> Result<Upstream> {
        let issuer = url::Url::parse(&client.settings().issuer_url)
            .map_err(|e| Error::Config(format!("`issuer_url`: {e}")))?;
        let mut blocked = vec![issuer];
        blocked.extend(client.server_metadata().await?.endpoints());
        let allow: Vec<String> = routes.iter().map(|r| r.upstream.to_string()).collect();
        let limits = client.settings().sandbox.clone();
        // One token source per grant, for every thread.
        let mut grants: std::collections::HashMap<&str, FapiClient> =
            std::collections::HashMap::new();
        for route in routes {
            if let Some(name) = route.grant.as_deref()
                && !grants.contains_key(name)
            {
                let granted = client
                    .for_grant(name)
                    .map_err(|e| Error::Config(format!("route {}: {e}", route.prefix)))?;
                grants.insert(name, granted);
            }
        }
        // The authorization server's addresses and the routes' names resolved once; then each
        // thread gets connections of its own.
        let (policy, guarded) = crate::sandbox::guarded_egress(
            &client,
            Policy::new(&allow, &blocked)?,
            &blocked,
            &limits,
            true,
        )
        .await?;
        let mut clients = Vec::with_capacity(threads.max(1));
        for thread in 0..threads.max(1) {
            let guarded = match thread {
                0 => guarded.clone(),
                _ => guarded.with_own_connections(),
            };
            clients.push(
                routes
                    .iter()
                    .map(|route| match route.grant.as_deref() {
                        Some(name) => guarded.with_grant_of(&grants[name]),
                        None => guarded.clone(),
                    })
                    .collect(),
            );
        }
        Ok(Upstream { clients, policy })
    }
}

/// The proxy's metrics, in the Prometheus / OpenMetrics text format at the admin listener's
/// `/metrics`.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Histogram,
    token_failures: Counter,
    token_requests: Gauge,
    certificate_expiry_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    status: u16,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fapi_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route (its prefix, or none) and status",
            requests.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "upstream_seconds",
            "Time to the upstream's response head, token and retries included",
            upstream_seconds.clone(),
        );
        let token_failures = Counter::default();
        registry.register(
            "token_failures",
            "Requests answered 503 because no token could be had",
            token_failures.clone(),
        );
        let token_requests = Gauge::default();
        registry.register(
            "token_requests",
            "Token requests sent to the authorization server",
            token_requests.clone(),
        );
        let certificate_expiry_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the client certificate expires",
            certificate_expiry_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_seconds,
            token_failures,
            token_requests,
            certificate_expiry_seconds,
        }
    }
}

/// A proxy ready to serve: its policy checked against the authorization server.
pub struct Proxy {
    metrics: Metrics,
    /// The identity, token cache and policy requests go out with; replaced whole by
    /// [`Proxy::reload`] (a request in flight keeps the one it started with).
    upstream: std::sync::RwLock<Arc<Upstream>>,
    options: ProxyOptions,
    in_flight: Semaphore,
    /// `http://ADDRESS`, for rewriting redirects into a route.
    origin: std::sync::OnceLock<String>,
    /// `Bearer KEY`, as a TCP caller must send it (built once, not per request).
    expected_key: Vec<u8>,
    /// The metrics' `route` label of each route (its prefix), then `none`: shared, not
    /// allocated per request.
    route_labels: Vec<Arc<str>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.options.routes)
            .finish_non_exhaustive()
    }
}

type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A JSON error response: `{"error": kind, "message": text}`.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(Outcome {
        error: Some(format!("{kind}: {message}")),
        ..Outcome::default()
    });
    response
}

/// What a request came to, for its audit record: put in the response's extensions by the code
/// that decided it.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// The upstream URL, when the request went there.
    url: Option<String>,
    /// The `x-fapi-interaction-id` sent with it.
    interaction_id: Option<String>,
    /// Why it was refused or failed.
    error: Option<String>,
}

/// A response body that writes the request's audit record when it is done with (sent whole, cut,
/// or dropped by a caller that went away): the bytes sent and the time to the end.
struct Audited {
    inner: ProxyBody,
    audit: Arc<Audit>,
    caller: String,
    method: String,
    /// The URL sent to, or the path asked for when nothing was sent.
    url: String,
    status: u16,
    outcome: Outcome,
    started: std::time::Instant,
    bytes: u64,
    /// The body came to its end (the caller got all of it).
    ended: bool,
    /// The length the response head declared, if it did (hyper stops reading a body there).
    declared: Option<u64>,
    body_error: Option<String>,
}

impl http_body::Body for Audited {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                self.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                if Some(self.bytes) == self.declared {
                    self.ended = true;
                }
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                self.body_error = Some(format!("the response body broke off: {e}"));
            }
            std::task::Poll::Ready(None) => self.ended = true,
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        use http_body::Body as _;
        let error = match (&self.outcome.error, &self.body_error) {
            (Some(e), _) | (None, Some(e)) => Some(e.clone()),
            (None, None)
                if !self.ended
                    && !self.inner.is_end_stream()
                    && self.inner.size_hint().exact() != Some(0)
                    && self.outcome.url.is_some() =>
            {
                Some("the caller left before the end of the body".to_owned())
            }
            (None, None) => None,
        };
        self.audit.record(&AuditEvent {
            guest: &self.caller,
            interface: "proxy",
            decision: if self.outcome.url.is_some() {
                "allow"
            } else {
                "deny"
            },
            method: &self.method,
            url: &self.url,
            status: Some(self.status),
            bytes: self.bytes,
            duration_ms: self.started.elapsed().as_millis() as u64,
            interaction_id: self.outcome.interaction_id.as_deref(),
            error,
        });
    }
}

/// Where the proxy listens: a loopback TCP address (callers give the local key) or a Unix socket
/// (mode 0600; a caller is trusted when the kernel says it runs as the proxy's own user).
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener on a loopback address.
    Tcp(TcpListener),
    /// A Unix socket listener, its path, and the user id that may connect.
    Unix(tokio::net::UnixListener, std::path::PathBuf, u32),
}

/// Who is on the other end of a connection.
#[derive(Debug)]
enum Caller {
    /// A TCP peer: it must give the local key.
    Tcp(SocketAddr),
    /// The proxy's own user on the Unix socket: trusted.
    Owner,
    /// Another user on the Unix socket (its permissions were loosened): refused.
    Stranger(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Tcp(a) => write!(f, "{a}"),
            Caller::Owner => f.write_str("unix socket (owner)"),
            Caller::Stranger(_) => f.write_str("unix socket (another user)"),
        }
    }
}

/// An accepted connection, out of the accepting runtime's reactor so that the thread serving it
/// registers it with its own.
enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    /// The stream, registered with the current runtime.
    fn register(self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Accepted::Tcp(s) => Box::new(tokio::net::TcpStream::from_std(s)?),
            Accepted::Unix(s) => Box::new(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

/// A connection's byte stream, whichever listener it came from.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Listener {
    /// Bind a loopback TCP address; anything else is refused.
    pub async fn tcp(addr: SocketAddr) -> Result<Listener> {
        if !addr.ip().is_loopback() {
            return Err(Error::Config(format!(
                "--listen {addr}: the proxy adds this client's credentials to every request, so it \
                 listens on a loopback address (127.0.0.1 or ::1) or a Unix socket (unix:PATH) only"
            )));
        }
        TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))
    }

    /// The address a TCP listener listens on (`None` for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Bind a Unix socket at `path` (a stale socket there is replaced), readable and writable by
    /// this user only.
    pub fn unix(path: &std::path::Path) -> Result<Listener> {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
        let io = |what: &str, e: std::io::Error| {
            Error::Io(format!("{what} the socket {}: {e}", path.display()))
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::Config(format!(
                    "--listen unix:{}: a file that is not a socket is there; choose another path",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| io("cannot replace", e))?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| io("cannot bind", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("cannot restrict", e))?;
        let owner = std::fs::metadata(path)
            .map_err(|e| io("cannot read", e))?
            .uid();
        Ok(Listener::Unix(listener, path.to_owned(), owner))
    }

    /// `http://ADDRESS` for TCP (what a redirect is rewritten to); nothing usable for a socket.
    fn origin(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default(),
            Listener::Unix(..) => "http://localhost".into(),
        }
    }

    /// The next connection and who made it.
    async fn accept(&self) -> std::io::Result<(Accepted, Caller)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Accepted::Tcp(s.into_std()?), Caller::Tcp(peer)))
            }
            Listener::Unix(l, _, owner) => {
                let (s, _) = l.accept().await?;
                // The kernel's word on who connected: the socket's mode keeps others out, and a
                // mode loosened later (or a connection queued before it was set) is caught here.
                let caller = match s.peer_cred() {
                    Ok(c) if c.uid() == *owner => Caller::Owner,
                    Ok(c) => Caller::Stranger(format!(
                        "this proxy serves its own user (uid {owner}) on its Unix socket, not uid {}",
                        c.uid()
                    )),
                    Err(e) => {
                        Caller::Stranger(format!("the caller's credentials are unknown ({e})"))
                    }
                };
                Ok((Accepted::Unix(s.into_std()?), caller))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path, _) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Headers of the connection itself (RFC 9110 section 7.6.1), never passed on either way, and
/// `Expect`: the proxy answers a caller's `100-continue` itself when it starts reading the body,
/// and sends the body on at once.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "expect"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// The headers a `Connection` header names, which belong to that connection only.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The threads that serve connections, each running a single-threaded runtime (as nginx runs a
/// worker process per core): a connection, its requests and their upstream connections stay on
/// one thread, with no hand-over between threads per request.
struct ServingThreads {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl ServingThreads {
    fn start(n: usize) -> Result<ServingThreads> {
        let mut threads = ServingThreads {
            handles: Vec::new(),
            stop: Vec::new(),
            joins: Vec::new(),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Io(format!("cannot start a serving thread's runtime: {e}")))?;
            threads.handles.push(runtime.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            threads.stop.push(tx);
            let join = std::thread::Builder::new()
                .name(format!("fapi-proxy-{i}"))
                .spawn(move || {
                    // Runs the connections spawned onto it until told to stop.
                    runtime.block_on(async {
                        let _ = rx.await;
                    });
                })
                .map_err(|e| Error::Io(format!("cannot start a serving thread: {e}")))?;
            threads.joins.push(join);
        }
        Ok(threads)
    }

    /// Stop the threads (their connections have ended) and wait for them.
    async fn stop(self) {
        drop(self.stop);
        let joins = self.joins;
        let _ = tokio::task::spawn_blocking(move || {
            for j in joins {
                let _ = j.join();
            }
        })
        .await;
    }
}

impl Proxy {
    /// A proxy sending through `client`. Discovery runs now: every upstream is an allow-list
    /// entry of the guests' policy, so that an upstream on the authorization server (by name or
    /// address) is a configuration error.
    pub async fn new(client: FapiClient, options: ProxyOptions) -> Result<Proxy> {
        if options.routes.is_empty() {
            return Err(Error::Config(
                "no route: give at least one --route /NAME/=https://provider.example/path/ or a \
                 [[proxy.route]] table (prefix, upstream) in the configuration"
                    .into(),
            ));
        }
        let upstream = Upstream::new(client, &options.routes, options.threads).await?;
        let in_flight = Semaphore::new(options.max_concurrent_requests.max(1));
        let route_labels = (options.routes.iter().map(|r| r.prefix.as_str()))
            .chain(["none"])
            .map(Arc::from)
            .collect();
        Ok(Proxy {
            expected_key: format!("Bearer {}", options.local_key).into_bytes(),
            route_labels,
            metrics: Metrics::new(),
            upstream: std::sync::RwLock::new(Arc::new(upstream)),
            options,
            in_flight,
            origin: std::sync::OnceLock::new(),
        })
    }

    /// The upstream requests go out with now.
    fn upstream(&self) -> Arc<Upstream> {
        self.upstream
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take a new identity (the key and certificate `settings` name, read again): a new client,
    /// whose token cache starts empty, so that no token bound to the old certificate is sent
    /// again; requests in flight finish with the old one. If the new pair cannot be used
    /// (unreadable, not matching, expired, discovery failing), the old identity stays and the
    /// error says why. Returns the new certificate's subject and expiry.
    pub async fn reload(
        &self,
        settings: &crate::config::Settings,
    ) -> Result<(String, std::time::SystemTime)> {
        let (client, _) = FapiClient::from_settings(settings)?;
        let identity = (
            client.identity().subject().to_owned(),
            client.identity().not_after(),
        );
        let fresh = Upstream::new(client, &self.options.routes, self.options.threads).await?;
        *self.upstream.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(identity)
    }

    /// Serve callers on `listener` until `shutdown` resolves; then stop accepting and let the
    /// requests in flight finish (each connection is closed after its current response).
    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let _ = self.origin.set(listener.origin());
        let (stop_tx, stop_rx) = watch::channel(false);
        let threads = ServingThreads::start(self.options.threads)?;
        let mut connections = tokio::task::JoinSet::new();
        let mut next = 0;
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (io, caller) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("proxy: accepting a connection failed: {e}");
                    continue;
                }
            };
            let this = self.clone();
            let stop = stop_rx.clone();
            let caller_timeout = self.options.caller_timeout;
            // Connections go round the serving threads; all of a connection's work (its
            // requests, their upstream connections) stays on its thread.
            let thread = next % threads.handles.len();
            next = next.wrapping_add(1);
            connections.spawn_on(
                async move {
                    let io = match io.register() {
                        Ok(io) => io,
                        Err(e) => {
                            tracing::warn!("proxy: taking a connection failed: {e}");
                            return;
                        }
                    };
                    let caller = Arc::new(caller);
                    let service = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        let caller = caller.clone();
                        async move { Ok::<_, Infallible>(this.handle(req, &caller, thread).await) }
                    });
                    // A head larger than the headers the policy passes (plus a request line) is
                    // refused before it is buffered whole.
                    crate::local_http::serve_connection(
                        io,
                        service,
                        caller_timeout,
                        MAX_HEAD,
                        stop,
                    )
                    .await;
                },
                &threads.handles[thread],
            );
            // Reap finished connections as we go.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = stop_tx.send(true);
        while connections.join_next().await.is_some() {}
        threads.stop().await;
        Ok(())
    }

    /// One caller's request.
    async fn handle(
        &self,
        req: Request<Incoming>,
        caller: &Caller,
        thread: usize,
    ) -> Response<ProxyBody> {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let route = (self.options.routes.iter())
            .position(|r| req.uri().path().starts_with(&r.prefix))
            .unwrap_or(self.options.routes.len());
        // The record is built only where it goes somewhere (a file, or the log at -v), and the
        // path kept only for it or the log line.
        let recording = self.options.audit.is_recording();
        let path = if recording || tracing::enabled!(tracing::Level::INFO) {
            req.uri().path().to_owned()
        } else {
            String::new()
        };
        let response = match caller {
            Caller::Stranger(why) => error_response(StatusCode::FORBIDDEN, "not_the_owner", why),
            _ => (self.forward(req, matches!(caller, Caller::Owner), recording, thread)).await,
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: self.route_labels[route].clone(),
                status: response.status().as_u16(),
            })
            .inc();
        tracing::info!(
            peer = %caller, %method, path = %bounded(&path, crate::policy::MAX_QUOTED),
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "proxy"
        );
        if !recording {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let outcome = parts.extensions.remove::<Outcome>().unwrap_or_default();
        let url = match &outcome.url {
            Some(u) => shown_url(u).into_owned(),
            None => bounded(&path, crate::policy::MAX_QUOTED).into_owned(),
        };
        let audited = Audited {
            inner: body,
            audit: self.options.audit.clone(),
            caller: caller.to_string(),
            method: bounded(method.as_str(), crate::policy::MAX_QUOTED_NAME).into_owned(),
            url,
            status: parts.status.as_u16(),
            outcome,
            started,
            bytes: 0,
            // No body goes to the caller for HEAD, 204 and 304, whatever the head declares.
            ended: method == Method::HEAD
                || parts.status == StatusCode::NO_CONTENT
                || parts.status == StatusCode::NOT_MODIFIED,
            declared: parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            body_error: None,
        };
        Response::from_parts(parts, audited.boxed_unsync())
    }

    /// Check and send on a caller's request; `trusted` when the socket's permissions and peer
    /// vouch for the caller (a Unix socket of this user's), else it must give the local key.
    /// `recording`: an audit record is made of it, which needs the [`Outcome`].
    async fn forward(
        &self,
        req: Request<Incoming>,
        trusted: bool,
        recording: bool,
        thread: usize,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        // The caller's key: required over TCP, compared in constant time, never passed on.
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !trusted && !given.is_some_and(|g| same_key(g, &self.expected_key)) {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the proxy's local key as `Authorization: Bearer KEY` (the key is in the file \
                 the proxy printed at start)",
            );
        }
        if parts.method == Method::CONNECT {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CONNECT is not served: send plain requests to a route",
            );
        }
        if let Err(why) = crate::policy::check_parsed_method(&parts.method) {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &why);
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "absolute_form",
                "send the path of a route (GET /NAME/file.csv), not an absolute URL",
            );
        }
        let path = parts.uri.path();
        let Some(route_index) = self
            .options
            .routes
            .iter()
            .position(|r| path.starts_with(&r.prefix))
        else {
            return error_response(
                StatusCode::NOT_FOUND,
                "no_route",
                &format!(
                    "no route for {}; routes: {}",
                    bounded(path, crate::policy::MAX_QUOTED),
                    self.options
                        .routes
                        .iter()
                        .map(|r| r.prefix.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        let route = &self.options.routes[route_index];
        // The route's upstream, its path extended by the rest of the caller's: only the path is
        // parsed (with dot segments resolved as in a whole URL), not the scheme and host again.
        let mut target = route.upstream.clone();
        target.set_path(&[route.upstream.path(), &path[route.prefix.len()..]].concat());
        target.set_query(parts.uri.query());
        let upstream = self.upstream();
        let url = match upstream.policy.check_parsed(target) {
            Ok(u) => u,
            Err(d) => {
                return error_response(StatusCode::FORBIDDEN, "denied", &d.to_string());
            }
        };
        let mut headers = HeaderMap::new();
        let connection_named = connection_named(&parts.headers);
        let mut budget = HeaderBudget::default();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if n == "authorization" || hop_by_hop(n) || connection_named.iter().any(|c| c == n) {
                continue;
            }
            // The limits guests have: what a caller may pass on is what a plugin may.
            if let Err(why) = budget.take(n.len(), value.len()) {
                return error_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    &why,
                );
            }
            match refused_header(HeaderCaller::Guest, name) {
                Some(rule) if rule.owner == HeaderOwner::Credentials => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "header_refused",
                        &format!(
                            "header {} is set by the host and cannot be given ({})",
                            bounded(n, crate::policy::MAX_QUOTED_NAME),
                            rule.owner.reason()
                        ),
                    );
                }
                // Host, framing: set anew for the upstream.
                Some(_) => continue,
                None => {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let limit = self.options.max_request_body;
        let timeout = self.options.caller_timeout;
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("request bodies are limited to {limit} bytes (--max-request-body-mib)"),
            )
        };
        let length = http_body::Body::size_hint(&body).exact();
        if length.is_some_and(|n| n > limit) {
            return too_large();
        }
        let request = |body: Option<Bytes>| FapiRequest {
            method: parts.method.clone(),
            url,
            headers,
            body,
            interaction_id: None,
            timeout: None,
        };
        // Small bodies are held whole, so that the client may replay or retry their request;
        // the others go on as they arrive, memory flat.
        let (request, streamed) = match length {
            // No body (a GET, say): nothing to wait for.
            Some(0) => (request(None), None),
            Some(n) if n <= COLLECT_MAX => {
                let body = match read_whole(body, timeout).await {
                    Ok(b) => b,
                    Err(response) => return response,
                };
                (request((!body.is_empty()).then_some(body)), None)
            }
            _ => {
                let fault = Arc::new(AtomicU8::new(BODY_OK));
                let stream = caller_stream(body, limit, timeout, fault.clone());
                (
                    request(None),
                    Some((StreamedBody::new(stream, length), fault)),
                )
            }
        };
        let Ok(_permit) = self.in_flight.acquire().await else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "stopping", "shutting down");
        };
        let asked = std::time::Instant::now();
        let client = &upstream.clients[thread][route_index];
        let sent = match streamed {
            None => client.send(request).await,
            Some((body, fault)) => {
                let sent = client.send_stream(request, body).await;
                // The caller's body broke off before the upstream answered: say why to the
                // caller (the upstream saw a broken request, never a short complete one).
                match (&sent, fault.load(Ordering::Relaxed)) {
                    (Err(_), BODY_TOO_LARGE) => return too_large(),
                    (Err(_), BODY_STALLED) => return caller_stalled(timeout),
                    (Err(_), BODY_BROKEN) => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            "body",
                            "reading the request body failed: the caller's connection broke off",
                        );
                    }
                    _ => sent,
                }
            }
        };
        self.metrics
            .upstream_seconds
            .observe(asked.elapsed().as_secs_f64());
        let mut upstream = match sent {
            Ok(r) => r,
            Err(e) => return self.failure(&e),
        };
        let outcome = recording.then(|| Outcome {
            url: Some(upstream.url().to_string()),
            interaction_id: upstream.interaction_id().map(str::to_owned),
            error: None,
        });
        let mut response_headers = upstream.take_headers();
        let status = upstream.status();
        let stream = upstream
            .into_stream()
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        *response.status_mut() = status;
        response_headers.retain_hop_by_hop();
        if let Some(location) = response_headers.get(header::LOCATION)
            && let Some(rewritten) = self.rewrite_location(location)
        {
            response_headers.insert(header::LOCATION, rewritten);
        }
        *response.headers_mut() = response_headers;
        if let Some(outcome) = outcome {
            response.extensions_mut().insert(outcome);
        }
        response
    }

    /// Serve the admin endpoints on `listener` until `stop` changes: `/healthz` (the proxy runs),
    /// `/readyz` (a token can be had now: 200, else 503 with the reason) and `/metrics`.
    pub async fn serve_admin(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.admin(req.uri().path()).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn admin(&self, path: &str) -> Response<ProxyBody> {
        let json = |status: StatusCode, v: serde_json::Value| {
            let mut r = Response::new(
                Full::new(Bytes::from(v.to_string()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        match path {
            "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
            "/readyz" => {
                let upstream = self.upstream();
                let limit = upstream.clients[0][0].settings().client.timeout;
                // A token for every route (each grant's, with grants).
                let every_route = async {
                    for (route, client) in self.options.routes.iter().zip(&upstream.clients[0]) {
                        client
                            .warm_token()
                            .await
                            .map_err(|e| format!("route {}: {e}", route.prefix))?;
                    }
                    Ok::<(), String>(())
                };
                match tokio::time::timeout(limit, every_route).await {
                    Ok(Ok(())) => json(StatusCode::OK, serde_json::json!({ "ready": true })),
                    Ok(Err(e)) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "ready": false, "error": e }),
                    ),
                    Err(_) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "ready": false, "error": "no token within the timeout" }),
                    ),
                }
            }
            "/metrics" => {
                let m = &self.metrics;
                let client = self.upstream().clients[0][0].clone();
                m.token_requests
                    .set(i64::try_from(client.token_requests()).unwrap_or(i64::MAX));
                let expiry = client.identity().not_after();
                let left = match expiry.duration_since(std::time::SystemTime::now()) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
                m.certificate_expiry_seconds.set(left);
                let mut text = String::new();
                if prometheus_client::encoding::text::encode(&mut text, &m.registry).is_err() {
                    return error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics",
                        "encoding failed",
                    );
                }
                let mut r = Response::new(
                    Full::new(Bytes::from(text))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin listener serves /healthz, /readyz and /metrics",
            ),
        }
    }

    /// A `Location` inside a route, as the caller reaches it through the proxy.
    fn rewrite_location(&self, location: &HeaderValue) -> Option<HeaderValue> {
        let location = location.to_str().ok()?;
        let route = self
            .options
            .routes
            .iter()
            .find(|r| location.starts_with(r.upstream.as_str()))?;
        let rest = &location[route.upstream.as_str().len()..];
        let origin = self.origin.get()?;
        HeaderValue::from_str(&format!("{origin}{}{rest}", route.prefix)).ok()
    }

    /// The response for a request the host could not complete: what the caller can do about it.
    fn failure(&self, e: &Error) -> Response<ProxyBody> {
        let message = e.to_string();
        match e {
            Error::Denied(_) => error_response(StatusCode::FORBIDDEN, "denied", &message),
            Error::InvalidRequest(_) => {
                error_response(StatusCode::BAD_REQUEST, "invalid_request", &message)
            }
            Error::Timeout(_) => error_response(StatusCode::GATEWAY_TIMEOUT, "timeout", &message),
            Error::Tls(_) | Error::Network(_) | Error::TooLarge(_) => {
                error_response(StatusCode::BAD_GATEWAY, "upstream_unreachable", &message)
            }
            Error::TokenRefused { .. }
            | Error::TokenResponse(_)
            | Error::TokenUnreachable { .. }
            | Error::Discovery(_)
            | Error::Config(_)
            | Error::Credentials(_)
            | Error::Dpop(_)
            | Error::Grant(_) => {
                self.metrics.token_failures.inc();
                let mut r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "token_unavailable",
                    &message,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
            // The household's consent ended: no token will come until it is given again, so
            // not 503 (which says "try later"), but 403, naming `grant add NAME`.
            Error::ConsentEnded(_) => {
                self.metrics.token_failures.inc();
                error_response(StatusCode::FORBIDDEN, "consent_ended", &message)
            }
            Error::Io(_) | Error::Component(_) => {
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &message)
            }
        }
    }
}

/// Request bodies with a `Content-Length` up to this are read whole before they go on (so that
/// the client may replay or retry their request); larger and chunked ones are streamed.
const COLLECT_MAX: u64 = 64 * 1024;

/// How a streamed caller body ended, when it did not end well.
const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_STALLED: u8 = 2;
const BODY_BROKEN: u8 = 3;

fn caller_stalled(timeout: std::time::Duration) -> Response<ProxyBody> {
    error_response(
        StatusCode::REQUEST_TIMEOUT,
        "caller_timeout",
        &format!(
            "the request body did not arrive within {} s (--caller-timeout-seconds)",
            timeout.as_secs()
        ),
    )
}

/// A small body, whole, within the caller timeout.
async fn read_whole(
    body: Incoming,
    timeout: std::time::Duration,
) -> std::result::Result<Bytes, Response<ProxyBody>> {
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(caller_stalled(timeout)),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "body",
            &format!("reading the request body failed: {e}"),
        )),
    }
}

/// The caller's body as it arrives: an error (and `fault` set) once it passes `limit` bytes,
/// once `idle` passes without a chunk, or when the caller's connection breaks. Trailers are
/// dropped, as every other header of the caller's framing.
fn caller_stream(
    body: Incoming,
    limit: u64,
    idle: std::time::Duration,
    fault: Arc<AtomicU8>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold((body, 0u64), move |(mut body, seen)| {
        let fault = fault.clone();
        let fail = move |code: u8, why: String| {
            fault.store(code, Ordering::Relaxed);
            Err(std::io::Error::other(why))
        };
        async move {
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        return fail(
                            BODY_STALLED,
                            format!("the caller sent nothing for {} s", idle.as_secs()),
                        );
                    }
                    Ok(None) => return Ok(None),
                    Ok(Some(Err(e))) => return fail(BODY_BROKEN, e.to_string()),
                    Ok(Some(Ok(frame))) => frame,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let seen = seen + data.len() as u64;
                if seen > limit {
                    return fail(BODY_TOO_LARGE, format!("over {limit} bytes"));
                }
                return Ok(Some((data, (body, seen))));
            }
        }
    })
}

/// Dropping the headers of one connection from a response's.
trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    fn retain_hop_by_hop(&mut self) {
        let named = connection_named(self);
        let drop: Vec<http::HeaderName> = self
            .keys()
            .filter(|k| hop_by_hop(k.as_str()) || named.iter().any(|n| n == k.as_str()))
            .cloned()
            .collect();
        for k in drop {
            self.remove(k);
        }
    }
}

/// A new random local key: 32 bytes, hex.
pub fn new_local_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write the local key to `path`, readable by its owner only (0600), replacing what was there.
pub fn write_local_key(path: &std::path::Path, key: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::Io(format!(
                "cannot write the local key to {}: {e}",
                path.display()
            ))
        })?;
    f.write_all(key.as_bytes()).map_err(|e| {
        Error::Io(format!(
            "cannot write the local key to {}: {e}",
            path.display()
        ))
    })
}

/// The URL of a route as callers use it (for the start-up summary), with its grant's name.
pub fn route_line(origin: &str, route: &Route) -> String {
    let grant = match &route.grant {
        Some(g) => format!("  (grant {g})"),
        None => String::new(),
    };
    format!(
        "  {origin}{}  ->  {}{grant}",
        route.prefix,
        shown_url(route.upstream.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_checked() {
        let r: Route = "/data/=https://provider.example/api"
            .parse()
            .expect("valid");
        assert_eq!(r.prefix, "/data/");
        assert_eq!(r.upstream.as_str(), "https://provider.example/api/");
        for bad in [
            "data=https://p.example/",
            "/data=https://p.example/",
            "/d/=http://p.example/",
            "/d/=https://p.example/?q=1",
            "/../=https://p.example/",
            "/a%2f/=https://p.example/",
            "no-equals",
            "/d/=https://p.example/,grant=",
            "/d/=https://p.example/,grant=../x",
        ] {
            let e = bad.parse::<Route>().expect_err(bad).to_string();
            assert!(e.contains("/NAME/=https://"), "{bad}: {e}");
        }
        let r: Route = "/home-1/=https://provider.example/api/,grant=home-1"
            .parse()
            .expect("valid");
        assert_eq!(r.upstream.as_str(), "https://provider.example/api/");
        assert_eq!(r.grant.as_deref(), Some("home-1"));
        assert_eq!(r.prefix, "/home-1/");
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"Bearer abc", b"Bearer abc"));
        assert!(!same_key(b"Bearer abd", b"Bearer abc"));
        assert!(!same_key(b"Bearer ab", b"Bearer abc"));
        assert_eq!(new_local_key().len(), 64);
        assert_ne!(new_local_key(), new_local_key());
    }
}
