//! `fapi-host proxy`: plain HTTP on a loopback address in, mTLS and the token out.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Cli, EXIT_OK};
use crate::client::FapiClient;
use crate::error::{Error, Result};
use crate::proxy::{
    Listener, Proxy, ProxyOptions, Route, new_local_key, route_line, write_local_key,
};
use crate::sandbox::Audit;

/// `fapi-host proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Where to listen: a loopback address and port (port 0: any free port, printed at start),
    /// or `unix:PATH` for a Unix socket (mode 0600, for this user's programs, no key needed).
    #[arg(long, value_name = "127.0.0.1:PORT|unix:PATH")]
    pub listen: String,
    /// A route: requests under /NAME/ go to the upstream URL, the rest of the path appended
    /// (repeatable). `,grant=GRANT` after the URL: the route's requests carry grant GRANT's
    /// access token (a household's consent: fapi-host grant add GRANT).
    #[arg(
        long = "route",
        value_name = "/NAME/=https://provider.example/path/[,grant=GRANT]",
        required = true
    )]
    pub routes: Vec<Route>,
    /// The grant whose access token the requests of every route that names none carry (a
    /// household's consent: fapi-host grant add NAME). Under profile "ib1" every route needs a
    /// grant, its own or this one.
    #[arg(long, value_name = "NAME")]
    pub grant: Option<String>,
    /// Where to write the local key callers must send as `Authorization: Bearer KEY` (0600;
    /// default: proxy.key in the system's temporary directory, under a name with the port).
    #[arg(long, value_name = "FILE")]
    pub local_key_file: Option<PathBuf>,
    /// The largest request body a caller may send, MiB (default 16). Bodies over 64 KiB and
    /// chunked ones stream through, memory flat; a smaller limit bounds what an upstream gets.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub max_request_body_mib: u64,
    /// Requests sent on at once; more wait (default 64).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// Threads serving connections, each with its own runtime and upstream connections (default
    /// 1, as nginx's `worker_processes`: on a machine its callers share, one thread serves many
    /// ready connections per wake-up; give more for a machine of its own). A connection stays on
    /// one thread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// An admin listener (a loopback address): /healthz, /readyz (a token can be had) and
    /// /metrics (Prometheus). Off by default.
    #[arg(long, value_name = "127.0.0.1:PORT")]
    pub admin: Option<std::net::SocketAddr>,
    /// How long a caller may take to send its request head, then its body (a small body whole; a
    /// streamed one, between chunks), seconds (default 30).
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub caller_timeout_seconds: u64,
    /// Append one JSON line per request to FILE (caller, method, URL, status, bytes, time,
    /// interaction id, error; never a credential). Records also go to the log at -v.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
}

/// Serve until Ctrl-C or SIGTERM; then finish the requests in flight.
pub async fn run(cli: &Cli, args: &ProxyArgs) -> Result<u8> {
    let settings = cli.settings()?;
    let mut routes = Vec::new();
    for (prefix, upstream, grant) in &settings.proxy_routes {
        let route = Route::new(prefix, upstream).map_err(|why| {
            Error::Config(format!(
                "[[proxy.route]] prefix = {prefix:?}, upstream = {upstream:?}: the route {why}"
            ))
        })?;
        routes.push(match grant {
            Some(g) => route.with_grant(g).map_err(|e| {
                Error::Config(format!("[[proxy.route]] prefix = {prefix:?}: grant {e}"))
            })?,
            None => route,
        });
    }
    routes.extend(args.routes.iter().cloned());
    if let Some(g) = &args.grant {
        crate::grants::check_grant_name(g)?;
        for r in routes.iter_mut().filter(|r| r.grant.is_none()) {
            r.grant = Some(g.clone());
        }
    }
    let (client, _) = FapiClient::from_settings(&settings)?;
    if let Some(r) = routes.iter().find(|r| r.grant.is_none()) {
        let what = format!(
            "route {} names no grant; give it one (--route {}=URL,grant=NAME, or grant = \"NAME\" \
             in its [[proxy.route]] table), or give every route one with --grant NAME",
            r.prefix, r.prefix
        );
        if let Some(e) = client.missing_grant(false, &what) {
            return Err(e);
        }
    }
    let key = new_local_key();
    let options = ProxyOptions {
        routes: routes.clone(),
        local_key: key.clone(),
        max_request_body: args.max_request_body_mib.saturating_mul(1 << 20),
        max_concurrent_requests: args.max_concurrent_requests,
        caller_timeout: std::time::Duration::from_secs(args.caller_timeout_seconds),
        threads: usize::from(args.threads),
        audit: Arc::new(match &args.audit {
            Some(path) => Audit::to_file(path)?,
            None => Audit::log_only(),
        }),
    };
    let listener = match args.listen.strip_prefix("unix:") {
        Some(path) => Listener::unix(std::path::Path::new(path))?,
        None => {
            let addr = args.listen.parse().map_err(|_| {
                Error::Config(format!(
                    "--listen {:?}: give 127.0.0.1:PORT, [::1]:PORT or unix:PATH",
                    args.listen
                ))
            })?;
            Listener::tcp(addr).await?
        }
    };
    let proxy = Arc::new(Proxy::new(client, options).await?);
    let (origin, key_file) = match &listener {
        Listener::Tcp(l) => {
            let addr = l
                .local_addr()
                .map_err(|e| Error::Io(format!("the proxy's address: {e}")))?;
            let file = args.local_key_file.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("fapi-host-proxy-{}.key", addr.port()))
            });
            write_local_key(&file, &key)?;
            (format!("http://{addr}"), Some(file))
        }
        Listener::Unix(_, path, _) => (format!("unix:{}", path.display()), None),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Bound before anything is printed: a caller that reads the first line may use both.
    let admin = if let Some(addr) = args.admin {
        if !addr.ip().is_loopback() {
            return Err(Error::Config(format!(
                "--admin {addr}: the admin listener has no authentication; give a loopback address"
            )));
        }
        let admin = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("cannot listen on {addr} (--admin): {e}")))?;
        let bound = admin
            .local_addr()
            .map_err(|e| Error::Io(format!("the admin listener's address: {e}")))?;
        tokio::spawn(proxy.clone().serve_admin(admin, stop_rx));
        Some(bound)
    } else {
        None
    };
    println!("fapi-host proxy: listening on {origin} (Ctrl-C to stop)");
    match &key_file {
        Some(f) => println!(
            "  local key in {} (send it as `Authorization: Bearer KEY`)",
            f.display()
        ),
        None => println!("  for this user's programs only (the socket is 0600); no key needed"),
    }
    for route in &routes {
        println!("{}", route_line(&origin, route));
    }
    if let Some(bound) = admin {
        println!("  admin: http://{bound}/healthz, /readyz, /metrics");
    }
    let shutdown = async {
        super::stop_signal().await;
        tracing::info!("proxy: stopping; finishing the requests in flight");
        let _ = stop_tx.send(true);
    };
    // The key and certificate files, watched for a new pair (a key in a token has no file).
    let mut watched = vec![settings.certificate.clone()];
    if settings.pkcs11_uri().is_none() {
        watched.push(settings.private_key.clone());
    }
    watched.retain(|p| p.is_file());
    tokio::select! {
        served = proxy.clone().serve(listener, shutdown) => served?,
        () = reload_on_change(cli, &proxy, &watched) => {}
    }
    if let Some(f) = key_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(EXIT_OK)
}

/// The modification times of `files` (None for one that cannot be read).
fn modified(files: &[PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Take a new key and certificate without a restart: on SIGHUP, and when one of `files` changes
/// (looked at every 2 s). A pair that cannot be used leaves the current identity in place, with
/// a warning saying why. Never returns.
async fn reload_on_change(cli: &Cli, proxy: &Proxy, files: &[PathBuf]) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = modified(files);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                if modified(files) == seen {
                    continue;
                }
                // A writer may still be at it: let the pair settle before reading it.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        seen = modified(files);
        let reloaded = match cli.settings() {
            Ok(settings) => proxy.reload(&settings).await,
            Err(e) => Err(e),
        };
        match reloaded {
            Ok((subject, until)) => tracing::warn!(
                "proxy: took the new key and certificate ({subject}, valid until {}); tokens \
                 of the old certificate are no longer sent",
                httpdate::fmt_http_date(until)
            ),
            Err(e) => tracing::warn!("proxy: kept the previous key and certificate: {e}"),
        }
    }
}
