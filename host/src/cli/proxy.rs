//! `fapi-host proxy`: plain HTTP on a loopback address in, mTLS and the token out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Cli, EXIT_OK};
use crate::client::FapiClient;
use crate::error::{Error, Result};
use crate::proxy::{Proxy, ProxyOptions, Route, new_local_key, route_line, write_local_key};

/// `fapi-host proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The loopback address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "127.0.0.1:PORT")]
    pub listen: SocketAddr,
    /// A route: requests under /NAME/ go to the upstream URL, the rest of the path appended
    /// (repeatable).
    #[arg(
        long = "route",
        value_name = "/NAME/=https://provider.example/path/",
        required = true
    )]
    pub routes: Vec<Route>,
    /// Where to write the local key callers must send as `Authorization: Bearer KEY` (0600;
    /// default: proxy.key in the system's temporary directory, under a name with the port).
    #[arg(long, value_name = "FILE")]
    pub local_key_file: Option<PathBuf>,
    /// The largest request body a caller may send, MiB (default 16).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub max_request_body_mib: u64,
    /// Requests sent on at once; more wait (default 64).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_concurrent_requests: usize,
}

/// Serve until Ctrl-C or SIGTERM; then finish the requests in flight.
pub async fn run(cli: &Cli, args: &ProxyArgs) -> Result<u8> {
    if !args.listen.ip().is_loopback() {
        return Err(Error::Config(format!(
            "--listen {}: the proxy adds this client's credentials to every request, so it listens \
             on a loopback address only (127.0.0.1 or ::1)",
            args.listen
        )));
    }
    let settings = cli.settings()?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let key = new_local_key();
    let options = ProxyOptions {
        routes: args.routes.clone(),
        local_key: key.clone(),
        max_request_body: args.max_request_body_mib.saturating_mul(1 << 20),
        max_concurrent_requests: args.max_concurrent_requests,
    };
    let proxy = Arc::new(Proxy::new(client, options).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("the proxy's address: {e}")))?;
    let key_file = args.local_key_file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fapi-host-proxy-{}.key", addr.port()))
    });
    write_local_key(&key_file, &key)?;
    let origin = format!("http://{addr}");
    println!("fapi-host proxy: listening on {origin} (Ctrl-C to stop)");
    println!(
        "  local key in {} (send it as `Authorization: Bearer KEY`)",
        key_file.display()
    );
    for route in &args.routes {
        println!("{}", route_line(&origin, route));
    }
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        match term.as_mut() {
            Some(t) => {
                tokio::select! {
                    _ = t.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("proxy: stopping; finishing the requests in flight");
    };
    proxy.serve(listener, shutdown).await?;
    let _ = std::fs::remove_file(&key_file);
    Ok(EXIT_OK)
}
