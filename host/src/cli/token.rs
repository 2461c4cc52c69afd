//! `fapi-host token` and `fapi-host introspect`.

use super::{Cli, EXIT_OK, outln};
use crate::client::FapiClient;
use crate::error::{Error, Result};
use crate::time::fmt_time;

/// Arguments of `fapi-host token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,

    /// DANGEROUS: also print the access token itself. Whoever reads it can call the data
    /// providers as this client until it expires; it ends up in terminal scrollback and logs.
    #[arg(long)]
    pub reveal_token: bool,
}

/// Arguments of `fapi-host introspect`.
#[derive(Debug, clap::Args)]
pub struct IntrospectArgs {
    /// Print the raw JSON (default: the same JSON, pretty-printed).
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn token(cli: &Cli, args: &TokenArgs) -> Result<u8> {
    let (client, _) = FapiClient::from_settings(&cli.settings()?)?;
    let info = client.token_info().await?;
    if args.json {
        let mut v =
            serde_json::to_value(&info).map_err(|e| Error::Io(format!("encoding JSON: {e}")))?;
        if args.reveal_token {
            v["access_token"] =
                serde_json::Value::String(client.danger_reveal_token().await?.to_string());
        }
        outln!("{v}")?;
    } else {
        outln!("token_type:             {}", info.token_type)?;
        outln!("scope:                  {}", info.scope.join(" "))?;
        outln!(
            "expires:                {} (in {} s{})",
            fmt_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(info.expires_at)),
            info.expires_in,
            if info.expires_in_from_server {
                ""
            } else {
                ", assumed: no expires_in"
            }
        )?;
        outln!("certificate thumbprint: {}", info.certificate_thumbprint)?;
        if let Some(jkt) = &info.dpop_thumbprint {
            outln!("DPoP key thumbprint:    {jkt} (cnf.jkt)")?;
        }
        outln!("token endpoint:         {}", info.token_endpoint)?;
        if args.reveal_token {
            outln!(
                "access_token:           {}",
                client.danger_reveal_token().await?.as_str()
            )?;
        }
    }
    Ok(EXIT_OK)
}

pub(super) async fn introspect(cli: &Cli, args: &IntrospectArgs) -> Result<u8> {
    let (client, _) = FapiClient::from_settings(&cli.settings()?)?;
    let v = client.introspect().await?;
    if args.json {
        outln!("{v}")?;
    } else {
        outln!(
            "{}",
            serde_json::to_string_pretty(&v)
                .map_err(|e| Error::Io(format!("encoding JSON: {e}")))?
        )?;
    }
    Ok(EXIT_OK)
}
