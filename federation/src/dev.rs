//! `fapi-host dev`: run the federation on fixed or free ports, with a reusable PKI and ready-made
//! configuration files, until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pki::write_file;
use crate::{
    ClientIdentity, Error, ExternalIssuer, Federation, FederationConfig, Pki, PrivateKeyJwt,
    subject_dn,
};

/// Options of `fapi-host dev`. `Default`: `./fapi-dev`, 300 s tokens, free ports, faults off.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Where the PKI, `fapi.toml` and `federation.json` live.
    pub dir: PathBuf,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// AS mTLS (issuer) port; 0 = free.
    pub as_port: u16,
    /// Data provider port; 0 = free.
    pub dp_port: u16,
    /// Admin port; 0 = free.
    pub admin_port: u16,
    /// Enable per-request fault query parameters and `/echo`.
    pub faults_enabled: bool,
    /// DPoP-bound tokens (RFC 9449): [`crate::FederationConfig::dpop_required`].
    pub dpop: bool,
    /// Demand DPoP nonces: [`crate::FederationConfig::dpop_nonce`].
    pub dpop_nonce: bool,
    /// Let the data provider introspect at this authorization server instead of starting ours.
    pub external_issuer: Option<DevExternalIssuer>,
    /// `fapi-host dev --auth private_key_jwt`: the token endpoint requires client assertions
    /// ([`crate::FederationConfig::private_key_jwt`]) and `fapi.toml` says
    /// `token_endpoint_auth_method = "private_key_jwt"`. Default `None`: `tls_client_auth`.
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// `fapi-host dev --profile ib1`: the consent flow ([`crate::FederationConfig::ib1`]) and a
    /// `fapi.toml` with `profile = "ib1"`. Default `None`: the Open Energy-style federation.
    pub ib1: Option<crate::Ib1Options>,
}

/// `fapi-host dev --issuer URL`: an authorization server elsewhere (for example an independent
/// OpenID provider) that issues the tokens the data provider accepts.
#[derive(Clone, Debug, Default)]
pub struct DevExternalIssuer {
    /// Its issuer URL, exactly as its discovery document says.
    pub issuer_url: String,
    /// PEM file of the CA(s) of its server certificate and of its clients' certificates (trusted
    /// by the data provider too). `None`: the federation's own CA (`DIR/ca.pem`), for an AS that
    /// serves a certificate from the local PKI (`DIR/server.pem`).
    pub ca_file: Option<PathBuf>,
    /// The client id the data provider introspects as. `None`: `fapi-dev-provider`.
    pub provider_client_id: Option<String>,
    /// Certificate and key (PEM) the data provider introspects with. `None`: `DIR/provider.pem`
    /// and `DIR/provider.key`.
    pub provider_cert_and_key: Option<(PathBuf, PathBuf)>,
}

impl DevExternalIssuer {
    fn resolve(&self, pki: &Pki) -> Result<ExternalIssuer, Error> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io("read", p, e));
        let ca_pem = match &self.ca_file {
            Some(f) => read(f)?,
            None => pki.ca_pem().to_owned(),
        };
        let mut provider = pki
            .client("provider")
            .cloned()
            .ok_or_else(|| Error::UnknownClient("provider".into()))?;
        if let Some((cert, key)) = &self.provider_cert_and_key {
            provider.cert_pem = read(cert)?;
            provider.key_pem = read(key)?;
            let der = provider.cert_der()?;
            provider.subject_dn = subject_dn(&der)
                .ok_or_else(|| Error::pem(cert.display().to_string(), "unparseable certificate"))?;
            provider.key_der()?;
        }
        if let Some(id) = &self.provider_client_id {
            provider.client_id.clone_from(id);
        }
        let provider: ClientIdentity = provider;
        Ok(ExternalIssuer {
            issuer_url: self.issuer_url.clone(),
            ca_pem,
            provider,
        })
    }
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            dir: PathBuf::from("fapi-dev"),
            token_ttl: Duration::from_secs(300),
            as_port: 0,
            dp_port: 0,
            admin_port: 0,
            faults_enabled: false,
            dpop: false,
            dpop_nonce: false,
            external_issuer: None,
            private_key_jwt: None,
            ib1: None,
        }
    }
}

/// Quote for a POSIX shell.
fn sh(p: &str) -> String {
    if p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=".contains(&b))
    {
        p.to_owned()
    } else {
        format!("'{}'", p.replace('\'', r"'\''"))
    }
}

/// Write `fapi.toml` and `federation.json` into `dir` (absolute); return the summary to print.
pub(crate) fn write_dev_files(fed: &Federation, dir: &Path) -> Result<String, Error> {
    let config = fed.write_client_config_as(dir, "consumer", "fapi.toml")?;
    let consumer = fed
        .pki()
        .client("consumer")
        .ok_or_else(|| Error::UnknownClient("consumer".into()))?;
    let path = |f: &str| dir.join(f).display().to_string();
    let external = fed.is_external_issuer();
    let ca_file = if external { "ca-bundle.pem" } else { "ca.pem" };
    let (key, cert, ca, cfg) = (
        path("consumer.key"),
        path("consumer.pem"),
        path(ca_file),
        config.display().to_string(),
    );
    let ib1 = fed.is_ib1();
    let info = serde_json::json!({
        "profile": if ib1 { "ib1" } else { "open-energy" },
        "issuer_url": fed.issuer_url(),
        "data_url": fed.data_url(),
        "data_json_url": fed.data_json_url(),
        "admin_url": fed.admin_url(),
        "client_id": if ib1 { crate::directory_url(&consumer.client_id) } else { consumer.client_id.clone() },
        "requested_scopes": if ib1 { crate::LICENCE } else { "directory:software consumption:read" },
        "private_key": key,
        "certificate": cert,
        "ca_bundle": ca,
        "config": cfg,
    });
    let pretty = serde_json::to_string_pretty(&info).unwrap_or_default();
    write_file(&dir.join("federation.json"), &pretty, false)?;
    let tls = format!(
        "--cacert {} --cert {} --key {}",
        sh(&ca),
        sh(&cert),
        sh(&key)
    );
    if external {
        let summary = format!(
            "fapi-host dev: local {style} data provider running (Ctrl-C to stop)\n\
             \n  issuer (external) {issuer}\n  data (CSV)         {data}\n  data (JSON)        {json}\n  admin (HTTP)       {admin}\n\
             \n  files in {dir}: ca-bundle.pem, consumer.pem, consumer.key, fapi.toml, federation.json\n\
             \nThe data provider introspects at the external issuer as its provider client; the consumer\n\
             ({client}) must be registered there.\n\
             \n{how}\n",
            style = if ib1 { "IB1" } else { "Open Energy-style" },
            issuer = fed.issuer_url(),
            data = fed.data_url(),
            json = fed.data_json_url(),
            admin = fed.admin_url(),
            dir = dir.display(),
            client = if ib1 {
                format!(
                    "client_id {}, tls_client_auth by that URI SAN",
                    crate::directory_url(&consumer.client_id)
                )
            } else {
                format!(
                    "{}, tls_client_auth, subject DN {}",
                    consumer.client_id, consumer.subject_dn
                )
            },
            how = if ib1 {
                format!(
                    "Ask a household's consent, then fetch with it:\n  fapi-host --config {cfgq} grant add home\n  \
                     fapi-host --config {cfgq} fetch --grant home {data}",
                    cfgq = sh(&cfg),
                    data = fed.data_url(),
                )
            } else {
                format!(
                    "Fetch with fapi-host:\n  fapi-host --config {} fetch {}",
                    sh(&cfg),
                    fed.data_url()
                )
            },
        );
        return Ok(summary);
    }
    if ib1 {
        let summary = format!(
            "fapi-host dev: local IB1 Trust Framework federation running: consent with PAR, PKCE \
             and refresh tokens (Ctrl-C to stop)\n\
             \n  issuer (AS, mTLS)  {issuer}\n  metadata           {metadata}\n  data (CSV)         {data}\n  data (JSON)        {json}\n  admin (HTTP)       {admin}\n\
             \n  files in {dir}: ca.pem, consumer.pem, consumer.key, fapi.toml, federation.json\n\
             \nThe client id is the certificate's Directory URL ({client}).\n\
             \nAsk a household's consent, then fetch with it:\n  fapi-host --config {cfgq} grant add home\n  \
             fapi-host --config {cfgq} fetch --grant home {data}\n",
            issuer = fed.issuer_url(),
            metadata = fed.issuer_url().replacen(
                crate::ISSUER_PATH,
                "/.well-known/oauth-authorization-server/accounts",
                1
            ),
            data = fed.data_url(),
            json = fed.data_json_url(),
            admin = fed.admin_url(),
            dir = dir.display(),
            cfgq = sh(&cfg),
            client = crate::directory_url(&consumer.client_id),
        );
        return Ok(summary);
    }
    if let Some(p) = fed.private_key_jwt() {
        let summary = format!(
            "fapi-host dev: local federation running, token endpoint with private_key_jwt over \
             mTLS (Ctrl-C to stop)\n\
             \n  issuer (AS, mTLS)  {issuer}\n  data (CSV)         {data}\n  data (JSON)        {json}\n  admin (HTTP)       {admin}\n\
             \n  files in {dir}: ca.pem, consumer.pem, consumer.key, fapi.toml, federation.json\n\
             \nClient assertions: signed by the client's certificate key, aud = {aud}, iat at most \
             10 s ahead, exp required, jti single-use; algorithms PS256, ES256, EdDSA.\n\
             \nFetch with fapi-host:\n  fapi-host --config {cfgq} fetch {data}\n",
            issuer = fed.issuer_url(),
            data = fed.data_url(),
            json = fed.data_json_url(),
            admin = fed.admin_url(),
            dir = dir.display(),
            cfgq = sh(&cfg),
            aud = if p.accept_token_endpoint_audience {
                "the issuer or the token endpoint's URL"
            } else {
                "the issuer"
            },
        );
        return Ok(summary);
    }
    let summary = format!(
        "fapi-host dev: local Open Energy-style federation running (Ctrl-C to stop)\n\
         \n  issuer (AS, mTLS)  {issuer}\n  data (CSV)         {data}\n  data (JSON)        {json}\n  admin (HTTP)       {admin}\n\
         \n  files in {dir}: ca.pem, consumer.pem, consumer.key, fapi.toml, federation.json\n\
         \nFetch with fapi-host:\n  fapi-host --config {cfgq} fetch {data}\n\
         \nOr with curl:\n  TOKEN=$(curl -sS {tls} -d grant_type=client_credentials -d client_id={client} \
         --data-urlencode 'scope=directory:software consumption:read' {issuer}/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n  \
         curl -sS {tls} -H \"Authorization: Bearer $TOKEN\" {data}\n",
        issuer = fed.issuer_url(),
        data = fed.data_url(),
        json = fed.data_json_url(),
        admin = fed.admin_url(),
        dir = dir.display(),
        cfgq = sh(&cfg),
        client = consumer.client_id,
    );
    Ok(summary)
}

/// Ctrl-C and SIGTERM, both registered before this returns, so that a signal sent as soon as the
/// summary is printed stops the federation cleanly instead of killing the process.
fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Generate-or-reuse the PKI in `opts.dir`, start the federation, write `fapi.toml` (consumer
/// configuration) and `federation.json` (absolute paths), print where everything is with a ready
/// `fapi-host` command and the two curl commands, then run until Ctrl-C or SIGTERM and shut down.
pub async fn run_dev(opts: DevOptions) -> Result<(), Error> {
    let dir = std::path::absolute(&opts.dir).map_err(|e| Error::io("resolve", &opts.dir, e))?;
    let pki = Pki::load_or_generate(&dir)?;
    let external_issuer = match &opts.external_issuer {
        Some(ext) => Some(ext.resolve(&pki)?),
        None => None,
    };
    let cfg = FederationConfig {
        token_ttl: opts.token_ttl,
        faults_enabled: opts.faults_enabled,
        as_port: opts.as_port,
        dp_port: opts.dp_port,
        admin_port: opts.admin_port,
        external_issuer,
        private_key_jwt: opts.private_key_jwt.clone(),
        dpop_required: opts.dpop,
        dpop_nonce: opts.dpop_nonce,
        ib1: opts.ib1.clone(),
        ..FederationConfig::default()
    };
    let stop = shutdown_signal()?;
    let fed = Federation::start(pki, cfg).await?;
    let summary = write_dev_files(&fed, &dir)?;
    println!("{summary}");
    stop.await;
    println!("fapi-host dev: shutting down");
    fed.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_files_are_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_generate(dir.path()).expect("pki");
        let fed = Federation::start(pki, FederationConfig::default())
            .await
            .expect("start");
        let summary = write_dev_files(&fed, dir.path()).expect("files");
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("federation.json")).expect("read"),
        )
        .expect("json");
        for k in [
            "issuer_url",
            "data_url",
            "data_json_url",
            "admin_url",
            "client_id",
            "requested_scopes",
            "private_key",
            "certificate",
            "ca_bundle",
            "config",
        ] {
            assert!(info.get(k).is_some(), "{k}");
        }
        assert_eq!(info["issuer_url"], fed.issuer_url());
        assert!(Path::new(info["config"].as_str().expect("str")).is_absolute());
        let toml = std::fs::read_to_string(dir.path().join("fapi.toml")).expect("toml");
        assert!(toml.contains("private_key = \"consumer.key\""));
        assert!(summary.contains(&format!("fetch {}", fed.data_url())));
        assert!(summary.contains("curl"));
        assert_eq!(sh("a b'c"), "'a b'\\''c'");
    }

    #[tokio::test]
    async fn ib1_files_name_the_profile_and_leave_the_client_id_to_the_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_generate(dir.path()).expect("pki");
        let cfg = FederationConfig {
            ib1: Some(crate::Ib1Options::default()),
            ..FederationConfig::default()
        };
        let fed = Federation::start(pki, cfg).await.expect("start");
        assert!(
            fed.issuer_url().ends_with("/accounts"),
            "{}",
            fed.issuer_url()
        );
        let summary = write_dev_files(&fed, dir.path()).expect("files");
        assert!(summary.contains("grant add home"), "{summary}");
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("federation.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(info["profile"], "ib1");
        assert_eq!(info["issuer_url"], fed.issuer_url());
        let toml = std::fs::read_to_string(dir.path().join("fapi.toml")).expect("toml");
        assert!(
            toml.contains("profile = \"ib1\"") && !toml.contains("\nclient_id"),
            "{toml}"
        );
        // The PKI written is reused: its client certificates carry their Directory URLs.
        let again = Pki::load_or_generate(dir.path()).expect("reload");
        assert_eq!(
            again.client("consumer").expect("consumer").cert_pem,
            fed.pki().client("consumer").expect("consumer").cert_pem
        );
    }

    #[tokio::test]
    async fn external_issuer_files_point_at_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_generate(dir.path()).expect("pki");
        let other = Pki::generate().expect("other pki");
        let ca_file = dir.path().join("other-ca.pem");
        std::fs::write(&ca_file, other.ca_pem()).expect("write");
        let ext = DevExternalIssuer {
            issuer_url: "https://127.0.0.1:9/".into(),
            ca_file: Some(ca_file),
            provider_client_id: Some("dp-at-the-other-as".into()),
            provider_cert_and_key: None,
        }
        .resolve(&pki)
        .expect("resolve");
        assert_eq!(ext.provider.client_id, "dp-at-the-other-as");
        assert_eq!(
            ext.provider.cert_pem,
            pki.client("provider").expect("provider").cert_pem
        );
        let cfg = FederationConfig {
            external_issuer: Some(ext),
            ..FederationConfig::default()
        };
        let fed = Federation::start(pki, cfg).await.expect("start");
        assert_eq!(fed.issuer_url(), "https://127.0.0.1:9");
        let summary = write_dev_files(&fed, dir.path()).expect("files");
        assert!(
            summary.contains("issuer (external) https://127.0.0.1:9\n"),
            "{summary}"
        );
        assert!(!summary.contains("curl"), "{summary}");
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("federation.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(info["issuer_url"], "https://127.0.0.1:9");
        let bundle =
            std::fs::read_to_string(info["ca_bundle"].as_str().expect("str")).expect("bundle");
        assert!(bundle.contains(other.ca_pem().trim()));
        let toml = std::fs::read_to_string(dir.path().join("fapi.toml")).expect("toml");
        assert!(
            toml.contains("issuer_url = \"https://127.0.0.1:9\""),
            "{toml}"
        );
    }
}
