//! Starting, observing and stopping the whole federation: the two AS listeners, the data provider
//! and the admin listener, all on 127.0.0.1 and on the current tokio runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::assertion::{PrivateKeyJwt, certificate_key};
use crate::auth_server::{self, AsListener, AsState};
use crate::consent::{self, ConsentCounters, ConsentState, Ib1Options};
use crate::data_provider::{self, DpState};
use crate::faults::{AsFault, DpFault};
use crate::identity::ClientIdentity;
use crate::introspection::Introspector;
use crate::pki::{Pki, REGISTERED, write_file};
use crate::state::{Counters, IssuedTokens, Shared};
use crate::tls::{self, ServeOpts};
use crate::{Error, admin};

/// An authorization server elsewhere that the data provider should use instead of ours.
#[derive(Clone, Debug)]
pub struct ExternalIssuer {
    /// Its issuer URL (discovery is fetched from `<issuer_url>/.well-known/openid-configuration`, or
    /// on a 404 there from the RFC 8414 location, `/.well-known/oauth-authorization-server` + path).
    pub issuer_url: String,
    /// PEM of the CA(s) that issued its server certificate and its clients' certificates.
    pub ca_pem: String,
    /// The identity the data provider introspects with (its `client_id` goes in the form body).
    pub provider: ClientIdentity,
}

/// How to run the federation. `Default` gives the values documented on each field.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Lifetime of issued tokens (`expires_in`). Default 300 s.
    pub token_ttl: Duration,
    /// Default false: fault query parameters are ignored and `/echo` answers 404.
    pub faults_enabled: bool,
    /// Port of the AS mTLS listener (the issuer). 0 = a free port (default).
    pub as_port: u16,
    /// Port of the AS plain TLS listener. 0 = a free port (default).
    pub as_plain_port: u16,
    /// Port of the data provider. 0 = a free port (default).
    pub dp_port: u16,
    /// Port of the admin listener (plain HTTP). 0 = a free port (default).
    pub admin_port: u16,
    /// Introspect at this AS instead of ours; ours is then not started. Default `None`.
    pub external_issuer: Option<ExternalIssuer>,
    /// Longest time the data provider reuses an introspection answer (never past `exp`). Default 60 s.
    pub introspection_cache_ttl: Duration,
    /// **For tests only.** Keep every access token our AS issues, in clear, for
    /// [`Federation::issued_tokens`], so that a test can search everything a client printed, logged
    /// or wrote for every token it was given (a client process of its own included). Default
    /// false: otherwise tokens are kept only as SHA-256 digests. `fapi-host dev` never sets it.
    /// The client assertions the token endpoint receives are recorded too
    /// ([`Federation::received_assertions`]).
    pub record_issued_tokens: bool,
    /// The token endpoint requires RFC 7523 `private_key_jwt` (verified with the client's
    /// certificate key, or a key of [`PrivateKeyJwt::extra_keys`]) instead of `tls_client_auth`;
    /// mTLS is still required and tokens are still bound to the certificate. Discovery then lists
    /// only `private_key_jwt`. Default `None`: `tls_client_auth`.
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// DPoP (RFC 9449) required: the AS refuses token requests without a proof
    /// (`invalid_dpop_proof`), and [`Federation::write_client_config`] writes `sender_constraint
    /// = "dpop"`. Proofs are verified whenever they come, whatever this says. Default false.
    pub dpop_required: bool,
    /// Demand a server nonce in every DPoP proof, at the AS and the data provider (one nonce
    /// each, in a `DPoP-Nonce` header of every response). Default false.
    pub dpop_nonce: bool,
    /// With `dpop_nonce`: a server's nonce is replaced after this many proofs it accepted, the new
    /// one sent in the answer to the last of them (a 200). 0 (default): only by
    /// [`Federation::rotate_dpop_nonces`].
    pub dpop_nonce_rotate_every: u64,
    /// The `ib1` profile (the consent flow, [`Ib1Options`]): the issuer becomes
    /// `https://127.0.0.1:PORT/accounts`, with PAR, a consent page, `authorization_code` and
    /// rotating `refresh_token` grants on the mTLS listener; what the default profile serves stays
    /// as it is (the data provider still introspects at it). With
    /// [`FederationConfig::external_issuer`] (an `ib1` authorization server elsewhere; the options
    /// are then unused), the data provider refuses every token whose `client_id` is not the
    /// Directory URL of the calling certificate, and client configurations say
    /// `profile = "ib1"`. Default `None`.
    pub ib1: Option<Ib1Options>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            token_ttl: Duration::from_secs(300),
            faults_enabled: false,
            as_port: 0,
            as_plain_port: 0,
            dp_port: 0,
            admin_port: 0,
            external_issuer: None,
            introspection_cache_ttl: Duration::from_secs(60),
            record_issued_tokens: false,
            private_key_jwt: None,
            dpop_required: false,
            dpop_nonce: false,
            dpop_nonce_rotate_every: 0,
            ib1: None,
        }
    }
}

/// A running federation. Dropping it stops every server (tasks aborted, listeners closed).
#[derive(Debug)]
pub struct Federation {
    pki: Pki,
    shared: Arc<Shared>,
    issuer_url: String,
    external_ca_pem: Option<String>,
    private_key_jwt: Option<PrivateKeyJwt>,
    data_origin: String,
    admin_url: String,
    tasks: Vec<JoinHandle<()>>,
    /// The `ib1` authorization server, when started with [`FederationConfig::ib1`].
    consent: Option<Arc<ConsentState>>,
    /// [`FederationConfig::ib1`] was given (with an external issuer: the data provider requires
    /// Directory URLs, and client configurations say `profile = "ib1"`).
    ib1: bool,
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn origin(listener: &tokio::net::TcpListener, scheme: &str) -> Result<String, Error> {
    let port = listener
        .local_addr()
        .map_err(|source| Error::Bind { port: 0, source })?
        .port();
    Ok(format!("{scheme}://127.0.0.1:{port}"))
}

impl Federation {
    /// Start every server on the current tokio runtime and wait until the data provider has
    /// discovered our AS.
    pub async fn start(pki: Pki, cfg: FederationConfig) -> Result<Federation, Error> {
        let shared = Arc::new(Shared {
            issued: if cfg.record_issued_tokens {
                IssuedTokens::recording()
            } else {
                IssuedTokens::default()
            },
            assertions: if cfg.record_issued_tokens {
                IssuedTokens::recording()
            } else {
                IssuedTokens::default()
            },
            dpop: crate::dpop::Dpop::new(
                cfg.dpop_nonce,
                cfg.dpop_nonce_rotate_every,
                if cfg.record_issued_tokens {
                    IssuedTokens::recording()
                } else {
                    IssuedTokens::default()
                },
            ),
            dpop_required: cfg.dpop_required,
            ..Shared::default()
        });
        let ca = pki.ca_der();
        let (chain, key) = pki.server_chain()?;
        let mut fed = Federation {
            pki,
            shared: shared.clone(),
            issuer_url: String::new(),
            external_ca_pem: None,
            private_key_jwt: cfg.private_key_jwt.clone(),
            data_origin: String::new(),
            admin_url: String::new(),
            tasks: Vec::new(),
            consent: None,
            ib1: cfg.ib1.is_some(),
        };
        let as_opts = ServeOpts {
            auto_date: true,
            resettable: false,
        };

        // Authorization server, or the external one's details.
        let mut trusted = vec![ca.clone()];
        let (provider, redirect_origin) = match &cfg.external_issuer {
            None => {
                let plain = tls::bind(cfg.as_plain_port).await?;
                let mtls = tls::bind(cfg.as_port).await?;
                let mut client_keys: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
                for (name, client_id, _) in REGISTERED {
                    if let Some(c) = fed.pki.client(name) {
                        let key = certificate_key(&c.cert_der()?)
                            .ok_or_else(|| Error::pem(name, "unparseable certificate"))?;
                        client_keys
                            .entry(client_id.to_owned())
                            .or_default()
                            .push(key);
                    }
                }
                for (client_id, key) in cfg.private_key_jwt.iter().flat_map(|p| &p.extra_keys) {
                    client_keys
                        .entry(client_id.clone())
                        .or_default()
                        .push(key.clone());
                }
                let st = Arc::new(AsState {
                    issuer: origin(&mtls, "https")?,
                    plain_origin: origin(&plain, "https")?,
                    token_ttl: cfg.token_ttl,
                    shared: shared.clone(),
                    private_key_jwt: cfg.private_key_jwt.clone(),
                    client_keys,
                });
                fed.issuer_url = st.issuer.clone();
                // The top-level endpoints accept a client certificate too (the seed's client
                // ignores the aliases); a connection without one is still served.
                let plain_cfg = tls::server_config(chain.clone(), key.clone_key(), Some(&trusted))?;
                let mtls_cfg = tls::server_config(chain.clone(), key.clone_key(), Some(&trusted))?;
                let plain_router = auth_server::router(st.clone(), AsListener::Plain);
                fed.tasks
                    .push(tls::spawn_https(plain, plain_cfg, plain_router, as_opts));
                let mut mtls_router = auth_server::router(st.clone(), AsListener::Mtls);
                if let Some(options) = &cfg.ib1 {
                    let consent = Arc::new(ConsentState::new(
                        &st.issuer,
                        cfg.token_ttl,
                        options.clone(),
                        shared.clone(),
                    ));
                    mtls_router = mtls_router.merge(consent::router(consent.clone()));
                    fed.consent = Some(consent);
                }
                fed.tasks
                    .push(tls::spawn_https(mtls, mtls_cfg, mtls_router, as_opts));
                let provider = fed
                    .pki
                    .client("provider")
                    .cloned()
                    .ok_or_else(|| Error::UnknownClient("provider".into()))?;
                (provider, st.plain_origin.clone())
            }
            Some(ext) => {
                fed.issuer_url = ext.issuer_url.trim_end_matches('/').to_owned();
                fed.external_ca_pem = Some(ext.ca_pem.clone());
                for cert in CertificateDer::pem_slice_iter(ext.ca_pem.as_bytes()) {
                    trusted.push(cert.map_err(|e| Error::pem("external CA", e))?);
                }
                (ext.provider.clone(), fed.issuer_url.clone())
            }
        };

        // Data provider.
        let dp = tls::bind(cfg.dp_port).await?;
        fed.data_origin = origin(&dp, "https")?;
        // The data provider trusts the AS's server certificate through its CA (the client CA
        // unless the PKI has a server CA of its own).
        let mut as_anchors = trusted.clone();
        if fed.pki.server_ca_pem() != fed.pki.ca_pem() {
            as_anchors.push(fed.pki.server_ca_der());
        }
        let introspector = Introspector {
            // Under ib1 too, the data provider introspects at the issuer without a path.
            issuer: fed.issuer_url.clone(),
            http: tls::http_client(tls::client_config(&as_anchors, Some(&provider))?)?,
            client_id: provider.client_id.clone(),
            endpoint: OnceCell::new(),
            cache_ttl: cfg.introspection_cache_ttl,
            shared: shared.clone(),
        };
        let dp_state = Arc::new(DpState {
            introspector,
            shared: shared.clone(),
            faults_enabled: cfg.faults_enabled,
            default_redirect: format!("{redirect_origin}/elsewhere"),
            origin: fed.data_origin.clone(),
            require_directory_url: cfg.ib1.is_some() && cfg.external_issuer.is_some(),
        });
        let dp_cfg = tls::server_config(chain, key, Some(&trusted))?;
        let dp_opts = ServeOpts {
            auto_date: false,
            resettable: true,
        };
        fed.tasks.push(tls::spawn_https(
            dp,
            dp_cfg,
            data_provider::router(dp_state.clone()),
            dp_opts,
        ));

        // Admin.
        let admin_listener = tls::bind(cfg.admin_port).await?;
        fed.admin_url = origin(&admin_listener, "http")?;
        fed.tasks
            .push(tls::spawn_http(admin_listener, admin::router(shared)));

        if cfg.external_issuer.is_none() {
            // Discover now, before a test can set a discovery fault meant for the client.
            dp_state.introspector.endpoint().await?;
        }
        if let Some(c) = &fed.consent {
            fed.issuer_url.clone_from(&c.issuer);
        }
        tracing::info!(issuer = %fed.issuer_url, data = %fed.data_origin, admin = %fed.admin_url, "federation started");
        Ok(fed)
    }

    /// [`Pki::generate`] and [`FederationConfig::default`].
    pub async fn start_default() -> Result<Federation, Error> {
        Self::start(Pki::generate()?, FederationConfig::default()).await
    }

    /// The federation's PKI.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// `https://127.0.0.1:<as_port>`: exactly what discovery's `issuer` says (the mTLS listener).
    pub fn issuer_url(&self) -> String {
        self.issuer_url.clone()
    }

    /// Whether the data provider introspects at an external issuer (ours is then not running).
    pub fn is_external_issuer(&self) -> bool {
        self.external_ca_pem.is_some()
    }

    /// `https://127.0.0.1:<dp_port>`.
    pub fn data_origin(&self) -> String {
        self.data_origin.clone()
    }

    /// The CSV dataset: `data_origin() + "/consumption.csv"`.
    pub fn data_url(&self) -> String {
        format!("{}/consumption.csv", self.data_origin)
    }

    /// The JSON dataset: `data_origin() + "/consumption.json"`.
    pub fn data_json_url(&self) -> String {
        format!("{}/consumption.json", self.data_origin)
    }

    /// `https://127.0.0.1:<port>/household.json`: `{"household": NAME}`, the household whose
    /// consent the request's token carries (`ib1`; the client's id for a `client_credentials`
    /// token).
    pub fn household_url(&self) -> String {
        format!("{}/household.json", self.data_origin)
    }

    /// `http://127.0.0.1:<admin_port>`.
    pub fn admin_url(&self) -> String {
        self.admin_url.clone()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.snapshot()
    }

    /// Every access token our AS has issued so far, in clear, oldest first (to every client; none
    /// when the data provider uses an [`ExternalIssuer`]). **For tests only**: a leak search looks
    /// for each of them.
    ///
    /// # Panics
    ///
    /// When the federation was started without [`FederationConfig::record_issued_tokens`]: an
    /// empty list would make a search for leaked tokens pass without looking for anything.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.issued.all().unwrap_or_else(|| {
            panic!("Federation::issued_tokens needs FederationConfig::record_issued_tokens = true")
        })
    }

    /// Every client assertion our token endpoint has received so far (accepted or refused), in
    /// clear, oldest first. **For tests only**: a leak search looks for each of them.
    ///
    /// # Panics
    ///
    /// When the federation was started without [`FederationConfig::record_issued_tokens`].
    pub fn received_assertions(&self) -> Vec<String> {
        self.shared.assertions.all().unwrap_or_else(|| {
            panic!(
                "Federation::received_assertions needs FederationConfig::record_issued_tokens = true"
            )
        })
    }

    /// Every DPoP proof our servers received so far (AS and data provider, accepted or not), in
    /// clear, oldest first. **For tests only**, as [`Federation::issued_tokens`].
    ///
    /// # Panics
    ///
    /// When the federation was started without [`FederationConfig::record_issued_tokens`].
    pub fn received_dpop_proofs(&self) -> Vec<String> {
        self.shared.dpop.received.all().unwrap_or_else(|| {
            panic!(
                "Federation::received_dpop_proofs needs FederationConfig::record_issued_tokens = true"
            )
        })
    }

    /// The consent flow's counters (`ib1`); `None` without [`FederationConfig::ib1`].
    pub fn consent_counters(&self) -> Option<ConsentCounters> {
        self.consent.as_ref().map(|c| c.counters())
    }

    /// Whether the federation serves the `ib1` profile ([`FederationConfig::ib1`]): our consent
    /// server runs, or the data provider takes an external `ib1` issuer's tokens.
    pub fn is_ib1(&self) -> bool {
        self.ib1
    }

    /// Whether the token endpoint requires `private_key_jwt`, and with which rules.
    pub fn private_key_jwt(&self) -> Option<&PrivateKeyJwt> {
        self.private_key_jwt.as_ref()
    }

    /// Replace the DPoP nonces of the AS and of the data provider: a proof with an old one is
    /// answered `use_dpop_nonce` with the new one.
    pub fn rotate_dpop_nonces(&self) {
        self.shared.dpop.rotate(crate::dpop::Server::As);
        self.shared.dpop.rotate(crate::dpop::Server::Dp);
        if let Ok(mut cache) = self.shared.introspection_cache.lock() {
            // Not needed for nonces; kept so a rotation is also a clean slate for tests.
            cache.clear();
        }
    }

    /// Hold every token request at the token endpoint (counted, then answered only once this is
    /// called again with `false`): a refresh in flight for as long as a test needs, with no
    /// timing to guess.
    pub fn hold_token_requests(&self, held: bool) {
        self.shared.token_gate.set_held(held);
    }

    /// Set or clear the AS fault (works whatever `faults_enabled` says).
    pub fn set_as_fault(&self, f: Option<AsFault>) {
        self.shared.set_as_fault(f);
    }

    /// Set or clear the fault applied to every data provider request.
    pub fn set_dp_fault(&self, f: Option<DpFault>) {
        self.shared.set_dp_fault(f);
    }

    /// The household's browser on the consent page at `url` (an authorization URL `fapi-host
    /// grant add` printed): it approves as `household` (the `sub` of the tokens it yields, what
    /// [`Federation::household_url`] answers) and returns the address it is sent back to (the
    /// client's redirect URI with the code). `ib1` only.
    pub async fn approve_consent(&self, url: &str, household: &str) -> Result<String, Error> {
        let fail = |why: String| Error::HttpClient(format!("consent at {url}: {why}"));
        let browser = self.pki.http_client(None)?;
        let html = browser
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail(e.to_string()))?
            .text()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let request_uri = html
            .split("name=\"request_uri\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or_else(|| fail("no request_uri in the consent page".into()))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("request_uri", request_uri)
            .append_pair("decision", "approve")
            .append_pair("household", household)
            .finish();
        let resp = browser
            .post(format!("{}/authorize", self.issuer_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        resp.headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("answered {} without a Location", resp.status())))
    }

    /// The household withdraws every consent it gave, at the authorization server: the grants
    /// end (refresh tokens refused with `invalid_grant`, access tokens revoked). Returns how
    /// many grants ended. `ib1` only (0 otherwise).
    pub fn withdraw_consent(&self, household: &str) -> usize {
        self.consent.as_ref().map_or(0, |c| c.withdraw(household))
    }

    /// Revoke every token issued so far and empty the data provider's introspection cache.
    pub fn revoke_all_tokens(&self) {
        self.shared.revoke_all();
    }

    /// Write a ready client configuration for `client` ("consumer", "consumer-b", "limited",
    /// "provider") to `dir/<client>.toml`, with `<client>.pem`, `<client>.key` (0600) and the CA
    /// bundle beside it; paths in the file are relative to it. Returns the file's path.
    ///
    /// The bundle (`ca_bundle`, which verifies every server) holds the CA of the federation's
    /// server certificate ([`Pki::server_ca_pem`]) and, with an [`ExternalIssuer`], its CAs;
    /// never the CA that issues client certificates unless that CA issues the server certificate
    /// too (the default [`Pki::generate`]).
    pub fn write_client_config(&self, dir: &Path, client: &str) -> Result<PathBuf, Error> {
        self.write_client_config_as(dir, client, &format!("{client}.toml"))
    }

    pub(crate) fn write_client_config_as(
        &self,
        dir: &Path,
        client: &str,
        file_name: &str,
    ) -> Result<PathBuf, Error> {
        let id = self
            .pki
            .client(client)
            .ok_or_else(|| Error::UnknownClient(client.to_owned()))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let cert_file = format!("{client}.pem");
        let key_file = format!("{client}.key");
        write_file(&dir.join(&cert_file), &id.cert_pem, false)?;
        write_file(&dir.join(&key_file), &id.key_pem, true)?;
        let ca_file = match &self.external_ca_pem {
            None => {
                write_file(&dir.join("ca.pem"), self.pki.server_ca_pem(), false)?;
                "ca.pem"
            }
            Some(ext) => {
                let bundle = format!("{}\n{ext}", self.pki.server_ca_pem().trim_end());
                write_file(&dir.join("ca-bundle.pem"), &bundle, false)?;
                "ca-bundle.pem"
            }
        };
        let scopes = REGISTERED
            .iter()
            .find(|(name, _, _)| *name == client)
            .map_or("", |(_, _, s)| *s);
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let auth = match &self.private_key_jwt {
            None => "",
            Some(p) if p.accept_token_endpoint_audience => {
                "token_endpoint_auth_method = \"private_key_jwt\"\nclient_assertion_audience = \"token_endpoint\"\n"
            }
            Some(_) => "token_endpoint_auth_method = \"private_key_jwt\"\n",
        };
        let dpop = if self.shared.dpop_required {
            "sender_constraint = \"dpop\"\n"
        } else {
            ""
        };
        let toml = if self.ib1 {
            // ib1: the client id is the certificate's Directory URL; tokens come from grants.
            format!(
                "# Written by fapi-federation for the local federation (profile ib1); paths are relative to this file.\n\
                 # client_id is the certificate's URI SAN: {}\n\
                 profile = \"ib1\"\nissuer_url = {}\nrequested_scopes = {}\nprivate_key = {}\ncertificate = {}\nca_bundle = {}\n\n\
                 [sandbox]\nallow = [{}]\n",
                crate::consent::directory_url(&id.client_id),
                s(&self.issuer_url),
                s(crate::consent::LICENCE),
                s(&key_file),
                s(&cert_file),
                s(ca_file),
                s(&format!("{}/", self.data_origin)),
            )
        } else {
            format!(
                "# Written by fapi-federation for the local federation; paths are relative to this file.\n\
             client_id = {}\nissuer_url = {}\nrequested_scopes = {}\nprivate_key = {}\ncertificate = {}\nca_bundle = {}\n{auth}{dpop}\n\
             [sandbox]\nallow = [{}]\n",
                s(&id.client_id),
                s(&self.issuer_url),
                s(scopes),
                s(&key_file),
                s(&cert_file),
                s(ca_file),
                s(&format!("{}/", self.data_origin)),
            )
        };
        let path = dir.join(file_name);
        write_file(&path, &toml, false)?;
        Ok(path)
    }

    /// Stop every server and wait until their tasks have ended.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        tasks.iter().for_each(JoinHandle::abort);
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token for `client` from the mTLS token endpoint.
    async fn token(fed: &Federation, client: &str) -> String {
        let id = fed.pki().client(client).expect("registered");
        let http = fed.pki().http_client(Some(id)).expect("a client");
        let bytes = http
            .post(format!("{}/token", fed.issuer_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={}",
                id.client_id
            ))
            .send()
            .await
            .expect("the token endpoint answers")
            .bytes()
            .await
            .expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        body["access_token"].as_str().expect("a token").to_owned()
    }

    #[tokio::test]
    async fn issued_tokens_are_recorded_only_when_asked() {
        let cfg = FederationConfig {
            record_issued_tokens: true,
            ..FederationConfig::default()
        };
        let fed = Federation::start(Pki::generate().expect("pki"), cfg)
            .await
            .expect("start");
        let a = token(&fed, "consumer").await;
        let b = token(&fed, "consumer-b").await;
        assert_eq!(fed.issued_tokens(), [a.clone(), b.clone()]);
        // Debug output (of the whole federation) names no token.
        let debug = format!("{fed:?}");
        assert!(
            debug.contains("IssuedTokens(2 recorded, redacted)"),
            "{debug}"
        );
        assert!(!debug.contains(&a) && !debug.contains(&b), "{debug}");

        // Off by default: nothing kept, and asking is a mistake, not an empty list.
        let fed = Federation::start_default().await.expect("start");
        token(&fed, "consumer").await;
        assert_eq!(fed.counters().tokens_issued, 1);
        assert!(format!("{fed:?}").contains("IssuedTokens(off)"));
        let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fed.issued_tokens()));
        assert!(asked.is_err(), "issued_tokens without record_issued_tokens");
    }
}
