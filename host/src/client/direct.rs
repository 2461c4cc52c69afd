//! The connections `fapi-host proxy` forwards on: hyper's HTTP/1.1 client and its connection
//! pool, over rustls with the client's own TLS configuration (its identity and the data
//! providers' anchors) and its own name resolution (`[client.resolve]`, and the guard that keeps
//! the authorization server's addresses out of reach).
//!
//! The same requests as through reqwest, with less work each: no URL parsed again, no redirect
//! or retry layers (the client does neither), no body adapters. What reqwest's builder set for
//! the other clients holds here too: HTTPS only, no system proxy, its TCP settings, the connect
//! timeout over the TCP connection and the TLS handshake, up to 256 idle connections per origin
//! (closed after 90 s idle), and (added by the client) the User-Agent and `Accept: */*` when the
//! request has none. The read timeout is the caller's ([`super::FapiResponse`] bounds the wait
//! for each chunk).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::ClientOptions;
use crate::net::Resolver;

/// An error of a connection or a request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body: whole, or streamed as it arrives.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An HTTP/1.1 client over mTLS: a pool of connections, each made by `Connector`. Cheap to
/// clone (the clones share the pool). Its connections are driven on the runtime that made them.
#[derive(Clone)]
pub struct Direct(Arc<Pooled>);

/// A pool and the connector that fills it.
struct Pooled {
    client: hyper_util::client::legacy::Client<Connector, Body>,
    connector: Connector,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl Direct {
    /// A client over `tls` (its identity and anchors), resolving names with `resolver`, with
    /// `options`' connect timeout.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        options: &ClientOptions,
        resolver: Resolver,
    ) -> Direct {
        let connector = Connector::new(
            tokio_rustls::TlsConnector::from(tls),
            resolver,
            options.connect_timeout,
        );
        Direct::pooling(connector)
    }

    /// The same client with a pool of its own: connections made the same way, none shared.
    pub(crate) fn with_own_pool(&self) -> Direct {
        Direct::pooling(self.0.connector.clone())
    }

    fn pooling(connector: Connector) -> Direct {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        Direct(Arc::new(Pooled { client, connector }))
    }

    /// Send `request` (an absolute `https` URI); the response's head.
    pub fn request(
        &self,
        request: http::Request<Body>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.0.client.request(request)
    }
}

/// The `User-Agent` of a request that has none.
const USER_AGENT: &str = concat!("fapi-host/", env!("CARGO_PKG_VERSION"));

/// The request of `method` to `url` with `headers`, plus the `User-Agent` and `Accept: */*` when
/// they are absent (as reqwest's client adds them), and a body: `stream` as it comes, else
/// `whole`, else none.
pub(crate) fn request<S>(
    method: &http::Method,
    url: &url::Url,
    mut headers: http::HeaderMap,
    whole: &Option<Bytes>,
    stream: Option<S>,
) -> Result<http::Request<Body>, http::uri::InvalidUri>
where
    S: futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    use http::header::{ACCEPT, USER_AGENT as UA};
    use http_body_util::BodyExt as _;
    let uri: http::Uri = url.as_str().parse()?;
    if !headers.contains_key(UA) {
        headers.insert(UA, http::HeaderValue::from_static(USER_AGENT));
    }
    if !headers.contains_key(ACCEPT) {
        headers.insert(ACCEPT, http::HeaderValue::from_static("*/*"));
    }
    let body: Body = match (whole, stream) {
        (_, Some(stream)) => http_body_util::StreamBody::new(futures_util::TryStreamExt::map_ok(
            stream,
            hyper::body::Frame::data,
        ))
        .boxed_unsync(),
        (Some(whole), None) => http_body_util::Full::new(whole.clone())
            .map_err(|never| match never {})
            .boxed_unsync(),
        (None, None) => http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Makes a connection: TCP by hyper's `HttpConnector` (as reqwest's: an IP address in the URL
/// taken as it is, a name resolved by the client's [`Resolver`], each address tried in turn, no
/// Nagle delay, TCP keep-alive probes after 15 s idle every 15 s, 3 of them), then TLS with the
/// URL's host as the server name; both within the connect timeout.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector<Names>,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Connector {
    fn new(tls: tokio_rustls::TlsConnector, resolver: Resolver, timeout: Duration) -> Connector {
        let mut tcp = HttpConnector::new_with_resolver(Names(resolver));
        // The scheme is checked here: https only.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(15)));
        tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
        tcp.set_keepalive_retries(Some(3));
        Connector { tcp, tls, timeout }
    }
}

/// A connection that was not made within the connect timeout.
#[derive(Debug)]
pub(crate) struct ConnectTimeout(Duration);

impl std::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no connection within {:?} (`connect_timeout_seconds`)",
            self.0
        )
    }
}

impl std::error::Error for ConnectTimeout {}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (this, timeout) = (self.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, this.connect(uri)).await {
                Ok(connected) => connected.map(TokioIo::new),
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

impl Connector {
    async fn connect(mut self, uri: http::Uri) -> Result<Stream, BoxError> {
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err("only https URLs are sent (mutual TLS on every connection)".into());
        }
        let host = uri.host().ok_or("the URL has no host")?;
        // An IPv6 address comes in brackets.
        let host = (host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))).unwrap_or(host);
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
        let tcp = tower_service::Service::call(&mut self.tcp, uri).await?;
        // rustls reads 4 KiB at a time: the buffer under it takes what has arrived in one read.
        let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp.into_inner());
        Ok(Stream(self.tls.connect(server_name, tcp).await?))
    }
}

/// The client's [`Resolver`] as `HttpConnector` asks: its table, the system's resolver, and
/// the guard that refuses the authorization server's addresses (`AddressDenied`).
#[derive(Clone)]
struct Names(Resolver);

impl tower_service::Service<Name> for Names {
    type Response = reqwest::dns::Addrs;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.0.clone();
        Box::pin(async move {
            let name: reqwest::dns::Name = name.as_str().parse()?;
            reqwest::dns::Resolve::resolve(&resolver, name).await
        })
    }
}

/// A TLS connection to a data provider.
#[derive(Debug)]
pub struct Stream(TlsStream<tokio::io::BufReader<TcpStream>>);

/// The read buffer under each connection's TLS: two TLS records of the largest size.
const READ_BUFFER: usize = 2 * (16 * 1024 + 256);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
