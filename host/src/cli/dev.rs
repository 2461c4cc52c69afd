//! `fapi-host dev`: the local federation, like `vault server -dev`.

use std::path::PathBuf;
use std::time::Duration;

use super::EXIT_OK;
use crate::error::{Error, Result};

/// Arguments of `fapi-host dev`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  fapi-host dev --dir fapi-dev &\n  fapi-host --config fapi-dev/fapi.toml fetch \"$(jq -r .data_url fapi-dev/federation.json)\""
)]
pub struct DevArgs {
    /// Where the PKI, fapi.toml and federation.json are written (an existing PKI is reused).
    #[arg(long, default_value = "fapi-dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub token_ttl: u64,
    /// Port of the authorization server's mTLS listener (the issuer); 0 = a free port.
    #[arg(long, default_value_t = 0)]
    pub as_port: u16,
    /// Port of the data provider; 0 = a free port.
    #[arg(long, default_value_t = 0)]
    pub dp_port: u16,
    /// Port of the admin listener (plain HTTP: counters, revocation, faults); 0 = a free port.
    #[arg(long, default_value_t = 0)]
    pub admin_port: u16,
    /// Enable fault injection by query parameter (?fault=503...) and the /echo endpoint.
    #[arg(long)]
    pub faults: bool,
}

pub(super) async fn run(args: &DevArgs) -> Result<u8> {
    if args.token_ttl == 0 {
        return Err(Error::Config(
            "--token-ttl must be at least 1 second".into(),
        ));
    }
    let opts = fapi_federation::DevOptions {
        dir: args.dir.clone(),
        token_ttl: Duration::from_secs(args.token_ttl),
        as_port: args.as_port,
        dp_port: args.dp_port,
        admin_port: args.admin_port,
        faults_enabled: args.faults,
    };
    fapi_federation::run_dev(opts)
        .await
        .map_err(|e| Error::Config(format!("local federation: {e}")))?;
    Ok(EXIT_OK)
}
