//! TLS configuration (ring provider only) and the accept loops that serve an axum router over
//! HTTPS or plain HTTP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::identity::ClientIdentity;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider: ring, passed explicitly (never the process default).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for ca in cas {
        store
            .add(ca.clone())
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// A server configuration. With `client_cas`, a client certificate is requested and verified
/// against those CAs, but a connection without one is allowed (endpoints answer it properly).
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<ServerConfig>, Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match client_cas {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(cas)?, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration trusting only `cas`, presenting `identity` when given.
pub(crate) fn client_config(
    cas: &[CertificateDer<'static>],
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots(cas)?);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der()?], id.key_der()?)
            .map_err(|e| Error::Tls(e.to_string()))?,
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A reqwest client on a preconfigured rustls config: redirects off, HTTPS only, no proxy.
pub(crate) fn http_client(cfg: ClientConfig) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::HttpClient(e.without_url().to_string()))
}

/// Per-connection facts handed to handlers as an axum extension.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The verified client leaf certificate, if the client presented one.
    pub peer_cert: Option<CertificateDer<'static>>,
    /// A second handle on the TCP socket, used to turn the close into an RST (reset fault).
    reset_handle: Arc<Mutex<Option<std::net::TcpStream>>>,
}

impl ConnInfo {
    /// Make the coming close of this connection an RST instead of a FIN (SO_LINGER 0).
    pub(crate) fn arm_reset(&self) {
        let taken = self
            .reset_handle
            .lock()
            .map(|mut g| g.take())
            .unwrap_or_default();
        if let Some(dup) = taken {
            // Closing this duplicate descriptor does not close the connection: hyper's still does.
            let sock = tokio::net::TcpSocket::from_std_stream(dup);
            if let Err(e) = sock.set_zero_linger() {
                tracing::debug!("SO_LINGER 0 failed: {e}");
            }
        }
    }
}

/// Bind 127.0.0.1:`port` (0 = a free port).
pub(crate) async fn bind(port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| Error::Bind { port, source })
}

/// How a listener serves HTTP.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeOpts {
    /// Let hyper add `Date` (the data provider adds its own, so a fault can omit it).
    pub auto_date: bool,
    /// Keep a duplicate socket handle per connection so a handler can force an RST.
    pub resettable: bool,
}

/// Serve `router` over TLS on `listener` until the returned task is aborted; aborting it also ends
/// every connection it accepted.
pub(crate) fn spawn_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    opts: ServeOpts,
) -> JoinHandle<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let router = router.clone();
                    conns.spawn(serve_tls_conn(acceptor, tcp, peer, router, opts));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

async fn serve_tls_conn(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    opts: ServeOpts,
) {
    let _ = tcp.set_nodelay(true);
    let mut reset_handle = None;
    let tcp = if opts.resettable {
        match tcp.into_std().and_then(|s| {
            let dup = s.try_clone()?;
            Ok((tokio::net::TcpStream::from_std(s)?, dup))
        }) {
            Ok((tcp, dup)) => {
                reset_handle = Some(dup);
                tcp
            }
            Err(e) => {
                tracing::debug!("{peer}: cannot duplicate socket: {e}");
                return;
            }
        }
    } else {
        tcp
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("{peer}: TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let info = ConnInfo {
        peer_cert,
        reset_handle: Arc::new(Mutex::new(reset_handle)),
    };
    let svc = TowerToHyperService::new(router.layer(Extension(info)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.auto_date_header(opts.auto_date);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
        tracing::debug!("{peer}: connection ended: {e}");
    }
}

/// Serve `router` over plain HTTP (the admin listener).
pub(crate) fn spawn_http(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let svc = TowerToHyperService::new(router.clone());
                    conns.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

/// An HTTPS server on 127.0.0.1 with `config` that answers the first request of every connection
/// with `200 body` and closes it: each request is a full handshake, for probing what a client
/// presents and signs. Returns its origin (`https://127.0.0.1:PORT`) and its accept task.
pub async fn one_reply_server(
    config: Arc<ServerConfig>,
    body: &'static str,
) -> Result<(String, JoinHandle<()>), Error> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let acceptor = TlsAcceptor::from(config);
    let bind = |source| Error::Bind { port: 0, source };
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(bind)?;
    let origin = format!("https://{}", listener.local_addr().map_err(bind)?);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((origin, task))
}
