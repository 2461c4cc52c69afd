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
    /// DPoP-bound tokens (RFC 9449): the authorization server requires a DPoP proof with every
    /// token request, and fapi.toml says `sender_constraint = "dpop"`.
    #[arg(long)]
    pub dpop: bool,
    /// Demand a DPoP nonce in every proof (the authorization server and the data provider, each
    /// its own), sent in every response's DPoP-Nonce header.
    #[arg(long)]
    pub dpop_nonce: bool,
    /// Use this external authorization server (its issuer URL) instead of starting ours: the data
    /// provider introspects there, and fapi.toml points the consumer at it.
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// PEM file of the CA(s) of the external issuer's server and client certificates (default:
    /// DIR/ca.pem, for an issuer serving DIR/server.pem).
    #[arg(long, value_name = "FILE", requires = "issuer")]
    pub issuer_ca: Option<PathBuf>,
    /// Client id the data provider introspects as at the external issuer (default: fapi-dev-provider).
    #[arg(long, value_name = "ID", requires = "issuer")]
    pub provider_client_id: Option<String>,
    /// Certificate (PEM) the data provider introspects with (default: DIR/provider.pem).
    #[arg(long, value_name = "FILE", requires_all = ["issuer", "provider_key"])]
    pub provider_cert: Option<PathBuf>,
    /// Private key (PEM) for --provider-cert (default: DIR/provider.key).
    #[arg(long, value_name = "FILE", requires = "provider_cert")]
    pub provider_key: Option<PathBuf>,
    /// How the token endpoint authenticates clients: tls_client_auth (the certificate), or
    /// private_key_jwt (a signed client assertion over mTLS; tokens stay certificate-bound).
    #[arg(
        long,
        default_value = "tls_client_auth",
        value_name = "METHOD",
        value_parser = ["tls_client_auth", "private_key_jwt"],
        conflicts_with = "issuer"
    )]
    pub auth: String,
    /// With --auth private_key_jwt, also accept assertions whose aud is the token endpoint's URL
    /// (FAPI 1.0 ecosystems); by default only the issuer (FAPI 2.0).
    #[arg(long)]
    pub accept_token_endpoint_aud: bool,
    /// The federation's profile: open-energy (client_credentials), or ib1 (a household's consent:
    /// PAR, a consent page, authorization codes with PKCE, rotating refresh tokens, under the
    /// issuer https://127.0.0.1:PORT/accounts). With --issuer, an ib1 authorization server
    /// elsewhere: the data provider then takes only tokens whose client_id is the calling
    /// certificate's Directory URL, and fapi.toml says profile = "ib1".
    #[arg(
        long,
        default_value = "open-energy",
        value_name = "PROFILE",
        value_parser = ["open-energy", "ib1"],
        conflicts_with = "auth"
    )]
    pub profile: String,
}

pub(super) async fn run(args: &DevArgs) -> Result<u8> {
    if args.token_ttl == 0 {
        return Err(Error::Config(
            "--token-ttl must be at least 1 second".into(),
        ));
    }
    let external_issuer = match &args.issuer {
        None => None,
        Some(url) => {
            let parsed = url::Url::parse(url)
                .map_err(|e| Error::Config(format!("--issuer {url:?} is not a URL: {e}")))?;
            if parsed.scheme() != "https" {
                return Err(Error::Config(format!(
                    "--issuer {url:?} must be an https URL"
                )));
            }
            Some(fapi_federation::DevExternalIssuer {
                issuer_url: url.clone(),
                ca_file: args.issuer_ca.clone(),
                provider_client_id: args.provider_client_id.clone(),
                provider_cert_and_key: args.provider_cert.clone().zip(args.provider_key.clone()),
            })
        }
    };
    let private_key_jwt = match args.auth.parse::<crate::profile::ClientAuth>()? {
        crate::profile::ClientAuth::TlsClientAuth if args.accept_token_endpoint_aud => {
            return Err(Error::Config(
                "--accept-token-endpoint-aud needs --auth private_key_jwt".into(),
            ));
        }
        crate::profile::ClientAuth::TlsClientAuth => None,
        crate::profile::ClientAuth::PrivateKeyJwt => Some(fapi_federation::PrivateKeyJwt {
            accept_token_endpoint_audience: args.accept_token_endpoint_aud,
            extra_keys: Vec::new(),
        }),
    };
    let opts = fapi_federation::DevOptions {
        dir: args.dir.clone(),
        token_ttl: Duration::from_secs(args.token_ttl),
        as_port: args.as_port,
        dp_port: args.dp_port,
        admin_port: args.admin_port,
        faults_enabled: args.faults,
        dpop: args.dpop,
        dpop_nonce: args.dpop_nonce,
        external_issuer,
        private_key_jwt,
        ib1: (args.profile == "ib1").then(fapi_federation::Ib1Options::default),
    };
    fapi_federation::run_dev(opts)
        .await
        .map_err(|e| Error::Config(format!("local federation: {e}")))?;
    Ok(EXIT_OK)
}
