//! `fapi-host serve`: answer HTTP callers on a loopback address with a service component, one
//! fresh instance per request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Cli, EXIT_OK, SandboxArgs, outln};
use crate::client::FapiClient;
use crate::error::Result;
use crate::sandbox::Sandbox;
use crate::serve::{ServeOptions, Server, bind};

/// Arguments of `fapi-host serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each request gets a fresh instance of the component, under the sandbox limits of one \
`run` (--max-memory-mib, --max-cpu-seconds, --max-wall-seconds, ...). Callers are not authenticated: \
only loopback addresses are accepted.\n\nExample:\n  fapi-host --config fapi.toml serve --allow \
https://data.example/ --env CSV_URL=https://data.example/consumption.csv serve_summary.wasm"
)]
pub struct ServeArgs {
    /// Sandbox grants and limits, as for `run` (the limits apply to each request).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Where to listen: a loopback address and port (port 0: any free port, printed at start).
    /// Other addresses are refused.
    #[arg(long, value_name = "127.0.0.1:PORT", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Requests answered at once, each in its own instance; a caller beyond them gets 503.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_instances: u32,
    /// The largest request body a caller may send, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub max_caller_body_mib: u64,
    /// How long a caller may take to send its request head, seconds.
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub caller_timeout_seconds: u64,
    /// On SIGTERM or Ctrl-C, how long the requests in flight may take to finish, seconds.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Every request the service makes carries grant NAME's access token (a household's
    /// consent: fapi-host grant add NAME); the service cannot see or switch grants. Required
    /// under profile "ib1".
    #[arg(long, value_name = "NAME")]
    pub grant: Option<String>,
    /// The component: it exports wasi:http/incoming-handler@0.2.12 (world
    /// openenergy:fapi/http-service of wit/fapi.wit).
    #[arg(value_name = "COMPONENT.wasm")]
    pub component: PathBuf,
}

/// Serve until Ctrl-C or SIGTERM; then finish the requests in flight, up to --drain-seconds.
pub(super) async fn run(cli: &Cli, args: &ServeArgs) -> Result<u8> {
    let mut settings = cli.settings()?;
    args.sandbox.apply(&mut settings.sandbox)?;
    let options = args.sandbox.options()?;
    // Before anything slow, so that a wrong address is the first thing said.
    let listener = bind(args.listen).await?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    if let Some(e) = client.missing_grant(
        args.grant.is_some(),
        "name the grant the service's requests carry with serve --grant NAME",
    ) {
        return Err(e);
    }
    let client = match &args.grant {
        Some(name) => client.for_grant(name)?,
        None => client,
    };
    let sandbox = Arc::new(Sandbox::new(client, options).await?);
    let plugin = sandbox.load(&args.component)?;
    let name = plugin.name().to_owned();
    let server = Arc::new(Server::new(
        sandbox,
        plugin,
        ServeOptions {
            max_body: args.max_caller_body_mib.saturating_mul(1 << 20),
            max_instances: args.max_concurrent_instances,
            caller_timeout: Duration::from_secs(args.caller_timeout_seconds),
            drain: Duration::from_secs(args.drain_seconds),
        },
    )?);
    let addr = listener
        .local_addr()
        .map_err(|e| crate::error::Error::Io(format!("the listener's address: {e}")))?;
    outln!("fapi-host serve: listening on http://{addr} (Ctrl-C or SIGTERM to stop)")?;
    outln!(
        "  {name}: a fresh instance per request, at most {} at once",
        args.max_concurrent_instances
    )?;
    let shutdown = async {
        super::stop_signal().await;
        tracing::info!("serve: stopping; finishing the requests in flight");
    };
    server.serve(listener, shutdown).await;
    Ok(EXIT_OK)
}
