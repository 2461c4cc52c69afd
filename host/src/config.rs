//! Configuration: the TOML file, environment variables and flags, validated into [`Settings`].
//!
//! Two layers: private serde structs that mirror the file (`deny_unknown_fields`, so a typo is an
//! error naming the key), then one validating step into plain runtime structs. Precedence is
//! flag > environment variable > file; the CLI's clap definitions merge the first two into
//! [`Overrides`]. Paths in the file are relative to the file; paths from flags and the environment
//! are relative to the working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::profile::{AssertionAudience, ClientAuth, Profile, SenderConstraint, TlsSuites};

/// The file read when neither `--config` nor `$FAPI_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "fapi.toml";

/// The longest token lifetime believed: a server's `expires_in` is capped to it, and
/// `default_token_lifetime_seconds` may not exceed it (one day).
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    client_id: Option<String>,
    issuer_url: Option<String>,
    requested_scopes: Option<String>,
    private_key: Option<PathBuf>,
    certificate: Option<PathBuf>,
    ca_bundle: Option<PathBuf>,
    private_key_passphrase_file: Option<PathBuf>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_pin_file: Option<PathBuf>,
    profile: Option<String>,
    token_endpoint_auth_method: Option<String>,
    client_assertion_audience: Option<String>,
    signing_key: Option<PathBuf>,
    signing_certificate: Option<PathBuf>,
    signing_kid: Option<String>,
    sender_constraint: Option<String>,
    dpop_key: Option<PathBuf>,
    redirect_uri: Option<String>,
    grants_dir: Option<PathBuf>,
    #[serde(default)]
    trust: FileTrust,
    #[serde(default)]
    client: FileClient,
    #[serde(default)]
    sandbox: FileSandbox,
    #[serde(default)]
    proxy: FileProxy,
}

/// `[trust]`: server trust anchors per endpoint class.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrust {
    system_roots: Option<bool>,
    #[serde(default)]
    authorization_server: Vec<PathBuf>,
    #[serde(default)]
    data_providers: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    #[serde(default)]
    route: Vec<FileRoute>,
}

/// `[[proxy.route]]`: `prefix = "/NAME/"`, `upstream = "https://..."`, optionally `grant =
/// "NAME"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    upstream: String,
    grant: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    retries: Option<u32>,
    timeout_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    interaction_id: Option<bool>,
    default_token_lifetime_seconds: Option<u64>,
    token_refresh_margin_seconds: Option<u64>,
    tls13_only: Option<bool>,
    tls_cipher_suites: Option<String>,
    max_retry_after_seconds: Option<u64>,
    #[serde(default)]
    resolve: BTreeMap<String, OneOrMany>,
}

/// An address, or a list of them (`[client.resolve]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSandbox {
    #[serde(default)]
    allow: Vec<String>,
    max_memory_mib: Option<u64>,
    max_cpu_seconds: Option<u64>,
    max_wall_seconds: Option<u64>,
    max_request_body_mib: Option<u64>,
    max_response_body_mib: Option<u64>,
    max_concurrent_requests: Option<u32>,
    max_requests: Option<u64>,
    max_output_mib: Option<u64>,
    max_handles: Option<u32>,
    #[serde(default)]
    allow_authorization_server_address: Vec<String>,
}

/// Settings given on the command line or in the environment; each one wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--client-id` / `FAPI_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `--issuer-url` / `FAPI_ISSUER_URL`.
    pub issuer_url: Option<String>,
    /// `--requested-scopes` / `FAPI_REQUESTED_SCOPES`.
    pub requested_scopes: Option<String>,
    /// `--private-key` / `FAPI_PRIVATE_KEY`.
    pub private_key: Option<PathBuf>,
    /// `--certificate` / `FAPI_CERTIFICATE`.
    pub certificate: Option<PathBuf>,
    /// `--ca-bundle` / `FAPI_CA_BUNDLE`.
    pub ca_bundle: Option<PathBuf>,
}

/// Options of the HTTP client and token handling (`[client]` in the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Retries of idempotent requests on 429, 502, 503, 504 and connection failures (default 3).
    pub retries: u32,
    /// Timeout of a whole request until the response head, and of a stall while reading a
    /// resource's body (default 30 s). Exchanges with the authorization server (discovery, token,
    /// introspection) must end within it, body included.
    pub timeout: Duration,
    /// Timeout of a TCP + TLS connection (default 10 s).
    pub connect_timeout: Duration,
    /// Send a fresh `x-fapi-interaction-id` with every request (default true).
    pub interaction_id: bool,
    /// Lifetime assumed for a token whose response has no `expires_in` (default 300 s; the file
    /// accepts 1 s to a day, and a longer one set here is taken as a day).
    pub default_token_lifetime: Duration,
    /// Refresh a token this long before it expires (default 30 s, at most half the lifetime).
    pub token_refresh_margin: Duration,
    /// Refuse TLS 1.2 (default false: TLS 1.3, and TLS 1.2 with the FAPI cipher suites).
    pub tls13_only: bool,
    /// The TLS 1.2 suites offered (`tls_cipher_suites`; default: the profile's).
    pub tls_suites: TlsSuites,
    /// The longest `Retry-After` waited for (default 60 s): a response asking for a longer wait
    /// is not retried (it is returned as it is; a token request fails with what it asked).
    pub max_retry_after: Duration,
    /// First backoff delay; doubled on each retry, with full jitter (default 250 ms).
    pub backoff_base: Duration,
    /// Names resolved to these addresses before the system resolver is asked, by every
    /// connection of the host (`[client.resolve]`, a hosts-file style table). Names are lower
    /// case, without a trailing dot.
    pub resolve: crate::net::ResolveOverrides,
    /// Retries of a token request on 429 and 503 and on connections that could not be made, TLS
    /// failures excepted (a 502 or 504 may come from a gateway that passed the request on) (default: `retries`, as set in the file). Separate so that `fapi-host batch`, which
    /// retries items itself and sets `retries` to 0, still retries its token requests.
    pub token_retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retries: 3,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            interaction_id: true,
            default_token_lifetime: Duration::from_secs(300),
            token_refresh_margin: Duration::from_secs(30),
            tls13_only: false,
            tls_suites: TlsSuites::Bcp195,
            max_retry_after: Duration::from_secs(60),
            backoff_base: Duration::from_millis(250),
            resolve: crate::net::ResolveOverrides::new(),
            token_retries: 3,
        }
    }
}

/// The `[sandbox]` table: egress allow-list and guest limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSettings {
    /// URL prefixes that guests may call (`allow = [...]`).
    pub allow: Vec<String>,
    /// Guest linear memory, in bytes (default 256 MiB).
    pub max_memory: u64,
    /// CPU time a guest may spend executing, measured in epoch ticks (default 30 s).
    pub max_cpu: Duration,
    /// Wall time of a whole run (default 120 s).
    pub max_wall: Duration,
    /// Largest request body a guest may send, in bytes (default 16 MiB).
    pub max_request_body: u64,
    /// Largest response body a guest may read, in bytes (default 1 GiB; streaming reads are
    /// bounded in memory whatever this is).
    pub max_response_body: u64,
    /// Requests a guest may have in flight at once (default 8).
    pub max_concurrent_requests: u32,
    /// Requests a guest may make in one run (default 10,000).
    pub max_requests: u64,
    /// Resource handles a guest may hold at once, in the component model's tables and the host's
    /// (default 100,000): past it the guest is stopped, with a message naming this setting.
    pub max_handles: u32,
    /// Origins (`https://host:port/`) that share an address and port with the authorization
    /// server (virtual hosts) and that guests may still reach by that name. Each must also be
    /// allowed. Off by default: see the README's threat model for the risk.
    pub allow_authorization_server_address: Vec<String>,
    /// Largest output a batch processor may return for one item, in bytes (default 128 MiB):
    /// the item fails beyond it. Outputs are held in memory until written, so the batch holds at
    /// most about `--concurrency` times this.
    pub max_output: u64,
}

impl SandboxSettings {
    /// Refuse limits that would stop every guest before it starts: each is at least 1 of its
    /// unit. The message names the file key and the flag.
    pub fn check(&self) -> Result<()> {
        let zero = [
            (self.max_memory == 0, "max_memory_mib", "--max-memory-mib"),
            (
                self.max_cpu.is_zero(),
                "max_cpu_seconds",
                "--max-cpu-seconds",
            ),
            (
                self.max_wall.is_zero(),
                "max_wall_seconds",
                "--max-wall-seconds",
            ),
            (
                self.max_concurrent_requests == 0,
                "max_concurrent_requests",
                "--max-concurrent-requests",
            ),
            (self.max_requests == 0, "max_requests", "--max-requests"),
            (self.max_output == 0, "max_output_mib", "--max-output-mib"),
            (self.max_handles == 0, "max_handles", "--max-handles"),
        ];
        match zero.iter().find(|(is_zero, ..)| *is_zero) {
            Some((_, key, flag)) => Err(Error::Config(format!(
                "[sandbox] {key} (or {flag}) is 0, which would stop every guest: give at least 1"
            ))),
            None => Ok(()),
        }
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            allow: Vec::new(),
            max_memory: 256 << 20,
            max_cpu: Duration::from_secs(30),
            max_wall: Duration::from_secs(120),
            max_request_body: 16 << 20,
            max_response_body: 1 << 30,
            max_concurrent_requests: 8,
            max_requests: 10_000,
            max_handles: 100_000,
            allow_authorization_server_address: Vec::new(),
            max_output: 128 << 20,
        }
    }
}

/// How the client authenticates and binds its tokens: the profile's defaults with the file's
/// keys over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// `token_endpoint_auth_method`.
    pub client_auth: ClientAuth,
    /// `client_assertion_audience`: the `aud` of a `private_key_jwt` assertion.
    pub assertion_audience: AssertionAudience,
    /// `signing_key`: the key that signs client assertions when it is not the transport key (PEM
    /// file or PKCS#11 URI, as `private_key`).
    pub signing_key: Option<PathBuf>,
    /// `signing_certificate`: the certificate of `signing_key`, checked to match it.
    pub signing_certificate: Option<PathBuf>,
    /// `signing_kid`: the `kid` of the assertion's header (default: the RFC 7638 thumbprint of
    /// the signing key).
    pub signing_kid: Option<String>,
    /// `sender_constraint`.
    pub sender_constraint: SenderConstraint,
    /// `dpop_key`: a DPoP key registered in advance (PEM); without it a fresh one is made at
    /// start.
    pub dpop_key: Option<PathBuf>,
}

/// `[trust]`: which anchors verify which class of server. `ca_bundle` is added to both classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustSettings {
    /// Whether the system's roots verify servers (default: the profile's; `false` for `cdr`).
    pub system_roots: bool,
    /// PEM bundles of anchors for the authorization server alone.
    pub authorization_server: Vec<PathBuf>,
    /// PEM bundles of anchors for the data providers (every other server) alone.
    pub data_providers: Vec<PathBuf>,
}

/// Validated settings of one client identity.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The OAuth client id registered for the certificate. Under profile `ib1` it may be left
    /// out of the file: it is then empty here until [`Settings::resolve_client_id`] takes it from
    /// the certificate's URI SAN (the Directory URL), as building a client does.
    pub client_id: String,
    /// The issuer, exactly as configured (compared code point by code point with discovery's).
    pub issuer_url: String,
    /// Requested scopes, space-separated as in the reference client.
    pub requested_scopes: String,
    /// PEM private key file (plain or encrypted PKCS#8), or a PKCS#11 URI (`pkcs11:token=...`,
    /// see [`Settings::pkcs11_uri`]).
    pub private_key: PathBuf,
    /// PEM certificate chain file, leaf first.
    pub certificate: PathBuf,
    /// Extra trust anchors for servers, added to the system roots.
    pub ca_bundle: Option<PathBuf>,
    /// File holding the passphrase of an encrypted PKCS#8 `private_key` (mode 0600 or stricter);
    /// else `$FAPI_PRIVATE_KEY_PASSPHRASE`, read when the key is loaded.
    pub private_key_passphrase_file: Option<PathBuf>,
    /// The PKCS#11 module (shared library) of a `pkcs11:` `private_key`, unless the URI names one
    /// with `module-path`.
    pub pkcs11_module: Option<PathBuf>,
    /// File holding the token's user PIN (mode 0600 or stricter); else `$FAPI_PKCS11_PIN`, read
    /// when the key is loaded. Never a flag: a command line is visible to every user.
    pub pkcs11_pin_file: Option<PathBuf>,
    /// The ecosystem profile (`profile`; default `open-energy`).
    pub profile: Profile,
    /// Client authentication and sender constraint.
    pub auth: AuthSettings,
    /// Server trust anchors per endpoint class.
    pub trust: TrustSettings,
    /// HTTP client and token options.
    pub client: ClientOptions,
    /// The sandbox table.
    pub sandbox: SandboxSettings,
    /// `[[proxy.route]]` tables of `fapi-host proxy`: (prefix, upstream, grant), checked when
    /// the proxy starts.
    pub proxy_routes: Vec<(String, String, Option<String>)>,
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
    /// `redirect_uri`: where the household's browser is sent back with the authorization code
    /// (`fapi-host grant add`). `None` (the default): a loopback `http://127.0.0.1:PORT/callback`
    /// (RFC 8252 section 7.3), the port chosen when the callback listener starts.
    pub redirect_uri: Option<String>,
    /// `grants_dir`: the grant store (default: `$XDG_DATA_HOME/fapi-host/grants`, else
    /// `~/.local/share/fapi-host/grants`, else `./fapi-host-grants`).
    pub grants_dir: PathBuf,
}

/// The default grant store: `$XDG_DATA_HOME/fapi-host/grants`, else
/// `$HOME/.local/share/fapi-host/grants`, else `fapi-host-grants` in the working directory.
pub fn default_grants_dir() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_DATA_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local").join("share"))
        })
        .map(|d| d.join("fapi-host").join("grants"))
        .unwrap_or_else(|| PathBuf::from("fapi-host-grants"))
}

impl Settings {
    /// Read the configuration: `explicit` (from `--config` or `$FAPI_CONFIG`) must exist; without
    /// it `./fapi.toml` is read when present. Then apply `overrides` and validate.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Settings> {
        let (file, source) = match explicit {
            Some(path) => (read_file(path)?, Some(path.to_path_buf())),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.exists() {
                    (read_file(default)?, Some(default.to_path_buf()))
                } else {
                    (FileConfig::default(), None)
                }
            }
        };
        Settings::from_parts(file, source, overrides)
    }

    /// Parse a configuration from TOML text; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Settings> {
        let file = parse(text, "<inline>")?;
        Settings::from_parts(file, Some(base_dir.join("inline.toml")), overrides)
    }

    fn from_parts(
        file: FileConfig,
        source: Option<PathBuf>,
        overrides: &Overrides,
    ) -> Result<Settings> {
        let base = source
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let origin = match &source {
            Some(p) => format!("in {} or ", p.display()),
            None => String::from("in fapi.toml or "),
        };
        let missing = |key: &str, env: &str| {
            Error::Config(format!(
                "`{key}` is not set: set it {origin}with --{} or ${env}",
                key.replace('_', "-")
            ))
        };
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let profile: Profile = match &file.profile {
            Some(p) => p.parse()?,
            None => Profile::default(),
        };
        let client_id = match overrides.client_id.clone().or(file.client_id) {
            Some(id) => {
                if id.trim().is_empty() {
                    return Err(Error::Config("`client_id` is empty".into()));
                }
                id
            }
            // Taken from the certificate's URI SAN when the identity is loaded.
            None if profile == Profile::Ib1 => String::new(),
            None => return Err(missing("client_id", "FAPI_CLIENT_ID")),
        };
        let issuer_url = overrides
            .issuer_url
            .clone()
            .or(file.issuer_url)
            .ok_or_else(|| missing("issuer_url", "FAPI_ISSUER_URL"))?;
        let requested_scopes = overrides
            .requested_scopes
            .clone()
            .or(file.requested_scopes)
            .ok_or_else(|| missing("requested_scopes", "FAPI_REQUESTED_SCOPES"))?;
        let private_key = match (&overrides.private_key, file.private_key) {
            (Some(p), _) => p.clone(),
            // A PKCS#11 URI is not a path.
            (None, Some(p)) if is_pkcs11_uri(&p) => p,
            (None, Some(p)) => rel(p),
            (None, None) => return Err(missing("private_key", "FAPI_PRIVATE_KEY")),
        };
        let certificate = match (&overrides.certificate, file.certificate) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) if is_pkcs11_uri(&p) => p,
            (None, Some(p)) => rel(p),
            (None, None) => return Err(missing("certificate", "FAPI_CERTIFICATE")),
        };
        let ca_bundle = match (&overrides.ca_bundle, file.ca_bundle) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => Some(rel(p)),
            (None, None) => None,
        };
        // PKCS#11 URIs are checked now (a `pin-value` in one is refused, never repeated).
        for p in [&private_key, &certificate] {
            if let Some(uri) = p.to_str().filter(|_| is_pkcs11_uri(p)) {
                crate::pkcs11::Pkcs11Uri::parse(uri)?;
            }
        }
        if is_pkcs11_uri(&certificate) && !is_pkcs11_uri(&private_key) {
            return Err(Error::Config(
                "`certificate` is a PKCS#11 URI but `private_key` is not: a certificate is read \
                 from the token of a key in that token; give the certificate's PEM file"
                    .into(),
            ));
        }
        let private_key_passphrase_file = file.private_key_passphrase_file.map(rel);
        let pkcs11_module = file.pkcs11_module.map(rel);
        let pkcs11_pin_file = file.pkcs11_pin_file.map(rel);

        validate_issuer(&issuer_url)?;
        if requested_scopes.split_whitespace().next().is_none() {
            return Err(Error::Config(
                "`requested_scopes` is empty: give the space-separated scopes to request, e.g. \"directory:software\"".into(),
            ));
        }

        let pd = profile.defaults();
        let auth = AuthSettings {
            client_auth: parsed(&file.token_endpoint_auth_method)?.unwrap_or(pd.client_auth),
            assertion_audience: parsed(&file.client_assertion_audience)?
                .unwrap_or(pd.assertion_audience),
            signing_key: match file.signing_key {
                Some(p) if is_pkcs11_uri(&p) => Some(p),
                p => p.map(rel),
            },
            signing_certificate: file.signing_certificate.map(rel),
            signing_kid: file.signing_kid,
            sender_constraint: parsed(&file.sender_constraint)?.unwrap_or(pd.sender_constraint),
            dpop_key: file.dpop_key.map(rel),
        };
        if auth.dpop_key.is_some() && auth.sender_constraint != SenderConstraint::Dpop {
            return Err(Error::Config(format!(
                "`dpop_key` is set but `sender_constraint` is \"{}\": the key would never be \
                 used; set `sender_constraint = \"dpop\"`, or remove `dpop_key`",
                auth.sender_constraint.name()
            )));
        }
        if profile == Profile::Cdr && auth.client_auth == ClientAuth::TlsClientAuth {
            return Err(Error::Config(
                "`token_endpoint_auth_method` = \"tls_client_auth\" under profile \"cdr\": the \
                 Consumer Data Right does not accept mTLS as client authentication; use \
                 \"private_key_jwt\" (the profile's default) or remove the key"
                    .into(),
            ));
        }
        if profile == Profile::Ib1
            && (auth.client_auth != ClientAuth::TlsClientAuth
                || auth.sender_constraint != SenderConstraint::Mtls)
        {
            return Err(Error::Config(format!(
                "profile \"ib1\" with `token_endpoint_auth_method` = \"{}\" and \
                 `sender_constraint` = \"{}\": the IB1 Trust Framework authenticates clients with \
                 their certificate (tls_client_auth) and binds tokens to it (mtls); remove those \
                 keys",
                auth.client_auth.name(),
                auth.sender_constraint.name()
            )));
        }
        let trust = TrustSettings {
            system_roots: file.trust.system_roots.unwrap_or(pd.system_roots),
            authorization_server: file
                .trust
                .authorization_server
                .into_iter()
                .map(rel)
                .collect(),
            data_providers: file.trust.data_providers.into_iter().map(rel).collect(),
        };
        crate::trust::require_anchors(&trust, ca_bundle.as_deref())?;

        let c = file.client;
        let d = ClientOptions::default();
        let secs = Duration::from_secs;
        let client = ClientOptions {
            retries: c.retries.unwrap_or(d.retries),
            token_retries: c.retries.unwrap_or(d.retries),
            timeout: c.timeout_seconds.map(secs).unwrap_or(d.timeout),
            connect_timeout: c
                .connect_timeout_seconds
                .map(secs)
                .unwrap_or(d.connect_timeout),
            interaction_id: c.interaction_id.unwrap_or(d.interaction_id),
            default_token_lifetime: c
                .default_token_lifetime_seconds
                .map(secs)
                .unwrap_or(d.default_token_lifetime),
            token_refresh_margin: c
                .token_refresh_margin_seconds
                .map(secs)
                .unwrap_or(d.token_refresh_margin),
            tls13_only: c.tls13_only.unwrap_or(pd.tls13_only),
            tls_suites: parsed(&c.tls_cipher_suites)?.unwrap_or(pd.tls_suites),
            max_retry_after: c
                .max_retry_after_seconds
                .map(secs)
                .unwrap_or(d.max_retry_after),
            resolve: resolve_table(c.resolve)?,
            ..d
        };
        if client.timeout.is_zero() || client.connect_timeout.is_zero() {
            return Err(Error::Config(
                "[client] timeouts must be at least 1 second".into(),
            ));
        }
        if let Some(v) = c.max_retry_after_seconds
            && v > MAX_TOKEN_LIFETIME.as_secs()
        {
            return Err(Error::Config(format!(
                "[client] max_retry_after_seconds = {v} is out of range: give 0 to {} (a day; 0 \
                 never waits for a Retry-After), or leave it out for 60",
                MAX_TOKEN_LIFETIME.as_secs()
            )));
        }
        if let Some(v) = c.default_token_lifetime_seconds
            && !(1..=MAX_TOKEN_LIFETIME.as_secs()).contains(&v)
        {
            return Err(Error::Config(format!(
                "[client] default_token_lifetime_seconds = {v} is out of range: give 1 to {} \
                 (a day, the longest `expires_in` honoured), or leave it out for 300",
                MAX_TOKEN_LIFETIME.as_secs()
            )));
        }

        let s = file.sandbox;
        let sd = SandboxSettings::default();
        let mib = |v: u64| v.saturating_mul(1 << 20);
        let sandbox = SandboxSettings {
            allow: s.allow,
            max_memory: s.max_memory_mib.map(mib).unwrap_or(sd.max_memory),
            max_cpu: s.max_cpu_seconds.map(secs).unwrap_or(sd.max_cpu),
            max_wall: s.max_wall_seconds.map(secs).unwrap_or(sd.max_wall),
            max_request_body: s
                .max_request_body_mib
                .map(mib)
                .unwrap_or(sd.max_request_body),
            max_response_body: s
                .max_response_body_mib
                .map(mib)
                .unwrap_or(sd.max_response_body),
            max_concurrent_requests: s
                .max_concurrent_requests
                .unwrap_or(sd.max_concurrent_requests),
            max_requests: s.max_requests.unwrap_or(sd.max_requests),
            max_handles: s.max_handles.unwrap_or(sd.max_handles),
            allow_authorization_server_address: s.allow_authorization_server_address,
            max_output: s.max_output_mib.map(mib).unwrap_or(sd.max_output),
        };
        sandbox.check()?;

        Ok(Settings {
            client_id,
            issuer_url,
            requested_scopes,
            private_key,
            certificate,
            ca_bundle,
            private_key_passphrase_file,
            pkcs11_module,
            pkcs11_pin_file,
            profile,
            auth,
            trust,
            client,
            sandbox,
            proxy_routes: file
                .proxy
                .route
                .into_iter()
                .map(|r| (r.prefix, r.upstream, r.grant))
                .collect(),
            source,
            redirect_uri: file.redirect_uri.map(check_redirect_uri).transpose()?,
            grants_dir: file.grants_dir.map(rel).unwrap_or_else(default_grants_dir),
        })
    }

    /// Under profile `ib1`, the client id is the Directory URL that the certificate carries as its
    /// single URI SAN: set it from `uri_sans` when the configuration left it out, and refuse a
    /// configured one that differs (or a certificate without exactly one URI SAN). Other profiles:
    /// nothing to do.
    pub fn resolve_client_id(&mut self, uri_sans: &[String]) -> Result<()> {
        if self.profile != Profile::Ib1 {
            return Ok(());
        }
        let san = match uri_sans {
            [one] => one,
            [] => {
                return Err(Error::Config(format!(
                    "profile \"ib1\": the certificate {} has no URI SAN; an IB1 client \
                     certificate carries the client's Directory URL as its one URI SAN: use the \
                     certificate the Directory issued",
                    self.certificate.display()
                )));
            }
            _ => {
                return Err(Error::Config(format!(
                    "profile \"ib1\": the certificate {} has {} URI SANs; an IB1 client \
                     certificate carries exactly one (the Directory URL)",
                    self.certificate.display(),
                    uri_sans.len()
                )));
            }
        };
        if self.client_id.is_empty() {
            self.client_id.clone_from(san);
            return Ok(());
        }
        if self.client_id != *san {
            return Err(Error::Config(format!(
                "profile \"ib1\": `client_id` = {:?} is not the certificate's Directory URL \
                 {san:?} (its URI SAN): set `client_id` to it, or leave `client_id` out to take \
                 it from the certificate",
                self.client_id
            )));
        }
        Ok(())
    }

    /// The `private_key` setting when it is a PKCS#11 URI (`pkcs11:...`) rather than a file.
    pub fn pkcs11_uri(&self) -> Option<&str> {
        if is_pkcs11_uri(&self.private_key) {
            self.private_key.to_str()
        } else {
            None
        }
    }

    /// The requested scopes as a list.
    pub fn scopes(&self) -> Vec<String> {
        self.requested_scopes
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// `[client.resolve]`: each name with one address or a list; an entry that is not an IP address
/// is an error naming it.
fn resolve_table(table: BTreeMap<String, OneOrMany>) -> Result<crate::net::ResolveOverrides> {
    let out = crate::net::ResolveOverrides::new();
    for (name, addresses) in table {
        let list = match addresses {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(l) => l,
        };
        if list.is_empty() {
            return Err(Error::Config(format!(
                "[client.resolve] {name:?} has no address: give one, e.g. \"127.0.0.1\", or remove it"
            )));
        }
        let mut ips = Vec::with_capacity(list.len());
        for a in &list {
            let ip = a.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
                Error::Config(format!(
                    "[client.resolve] {name:?} = {a:?} is not an IP address (write e.g. \"127.0.0.1\" or \"::1\")"
                ))
            })?;
            ips.push(ip);
        }
        out.insert(&name, ips);
    }
    Ok(out)
}

/// A key's value parsed into its enum (the error names the key and lists the choices).
fn parsed<T: std::str::FromStr<Err = Error>>(value: &Option<String>) -> Result<Option<T>> {
    value.as_deref().map(str::parse).transpose()
}

fn is_pkcs11_uri(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("pkcs11:"))
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the configuration file {}: {e} (give another with --config FILE or $FAPI_CONFIG)",
            path.display()
        ))
    })?;
    parse(&text, &path.display().to_string())
}

fn parse(text: &str, name: &str) -> Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        // toml's message names the unknown key or the bad value and shows the line.
        Error::Config(format!("{name}: {}", e.to_string().trim_end()))
    })
}

/// `redirect_uri`: an absolute `https` URL, or `http` on a loopback address (RFC 8252 section
/// 7.3), without a fragment.
fn check_redirect_uri(uri: String) -> Result<String> {
    let url = url::Url::parse(&uri).map_err(|e| {
        Error::Config(format!(
            "`redirect_uri` {uri:?} is not a URL ({e}); leave it out for a loopback \
             http://127.0.0.1:PORT/callback"
        ))
    })?;
    let loopback = matches!(
        url.host(),
        Some(url::Host::Ipv4(a)) if a.is_loopback()
    ) || matches!(url.host(), Some(url::Host::Ipv6(a)) if a.is_loopback());
    if url.fragment().is_some() || !(url.scheme() == "https" || url.scheme() == "http" && loopback)
    {
        return Err(Error::Config(format!(
            "`redirect_uri` {uri:?} must be https, or http on 127.0.0.1 (RFC 8252), without a \
             fragment"
        )));
    }
    Ok(uri)
}

fn validate_issuer(issuer: &str) -> Result<()> {
    let url = url::Url::parse(issuer).map_err(|e| {
        Error::Config(format!(
            "`issuer_url` {issuer:?} is not a URL ({e}); it looks like https://auth.example.org"
        ))
    })?;
    if url.scheme() != "https" {
        return Err(Error::Config(format!(
            "`issuer_url` {issuer:?} must use https (FAPI requires TLS for every call)"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Config(format!(
            "`issuer_url` {issuer:?} must not have a query or fragment"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
client_id = "abc"
issuer_url = "https://auth.example.org"
requested_scopes = "directory:software"
private_key = "certs/a.key"
certificate = "certs/a.pem"
"#;

    /// A DPoP key without DPoP is a half-configured pair: an error naming both keys.
    /// The README's configuration and its profile example, as a user would combine them (the
    /// profile's keys at the top, its `[trust]` table after the others), are one valid
    /// configuration that means what the README says.
    #[test]
    fn the_readmes_configuration_examples_parse_as_documented() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap_or_default())
            .collect();
        assert!(blocks.len() >= 2, "the README's toml blocks");
        let main = blocks[0];
        let profile = blocks
            .iter()
            .find(|b| b.contains("profile = \"fapi2\""))
            .expect("the profile example");
        let (top, tables) = profile.split_at(profile.find("\n[").map_or(profile.len(), |i| i + 1));
        let text = format!("{top}\n{main}\n{tables}");
        let s = Settings::from_toml(&text, Path::new("/etc/fapi"), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s.profile, Profile::Fapi2);
        assert_eq!(s.auth.client_auth, ClientAuth::PrivateKeyJwt);
        assert_eq!(s.auth.sender_constraint, SenderConstraint::Dpop);
        assert_eq!(s.auth.signing_kid.as_deref(), Some("2026-12-signing"));
        assert_eq!(
            s.auth.signing_key.as_deref(),
            Some(Path::new("/etc/fapi/certs/signing.key"))
        );
        assert!(!s.trust.system_roots);
        assert_eq!(s.trust.authorization_server.len(), 1);
        assert_eq!(s.trust.data_providers.len(), 1);
        assert_eq!(s.client.retries, 3);
        assert_eq!(s.client.tls_suites, TlsSuites::Bcp195);
    }

    #[test]
    fn ib1_refuses_client_assertions_and_dpop() {
        for key in [
            "token_endpoint_auth_method = \"private_key_jwt\"",
            "sender_constraint = \"dpop\"",
        ] {
            let text = format!(
                "profile = \"ib1\"\n{key}\nclient_id = \"https://d/m/1\"\nissuer_url = \"https://as.example/a\"\nrequested_scopes = \"x\"\nprivate_key = \"k\"\ncertificate = \"c\"\n"
            );
            let e = Settings::from_toml(&text, Path::new("/tmp"), &Overrides::default())
                .expect_err(key)
                .to_string();
            assert!(e.contains("ib1") && e.contains("tls_client_auth"), "{e}");
        }
    }

    #[test]
    fn a_dpop_key_needs_the_dpop_sender_constraint() {
        let e = Settings::from_toml(
            &format!("{BASE}dpop_key = \"dpop.key\"\n"),
            Path::new("/etc/fapi"),
            &Overrides::default(),
        )
        .expect_err("dpop_key without sender_constraint = dpop")
        .to_string();
        assert!(
            e.contains("`dpop_key`") && e.contains("sender_constraint = \"dpop\""),
            "{e}"
        );
        let s = Settings::from_toml(
            &format!("{BASE}sender_constraint = \"dpop\"\ndpop_key = \"dpop.key\"\n"),
            Path::new("/etc/fapi"),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(s.auth.sender_constraint, SenderConstraint::Dpop);
        assert_eq!(
            s.auth.dpop_key.as_deref(),
            Some(Path::new("/etc/fapi/dpop.key"))
        );
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let s = Settings::from_toml(BASE, Path::new("/etc/fapi"), &Overrides::default())
            .expect("valid");
        assert_eq!(s.private_key, Path::new("/etc/fapi/certs/a.key"));
        assert_eq!(s.certificate, Path::new("/etc/fapi/certs/a.pem"));
        assert_eq!(s.ca_bundle, None);
        assert_eq!(s.client, ClientOptions::default());
        assert_eq!(s.scopes(), vec!["directory:software"]);
    }

    /// TLS-06: with the system roots off (profile "cdr"'s default), each class needs anchors:
    /// refused at start by name, accepted with both classes' files (paths relative to the file).
    #[test]
    fn without_system_roots_a_class_without_anchors_is_a_configuration_error() {
        let dir = Path::new("/etc/fapi");
        let none = Overrides::default();
        let cdr = format!("{BASE}profile = \"cdr\"\n");
        let e = Settings::from_toml(&cdr, dir, &none)
            .expect_err("no anchors at all")
            .to_string();
        assert!(
            e.starts_with("configuration error: `[trust] system_roots = false`"),
            "{e}"
        );
        assert!(
            e.contains("`[trust] authorization_server = [\"ca.pem\"]`"),
            "{e}"
        );

        let only_dp = format!("{cdr}[trust]\ndata_providers = [\"dp.pem\"]\n");
        let e = Settings::from_toml(&only_dp, dir, &none)
            .expect_err("no anchors for the authorization server")
            .to_string();
        assert!(e.contains("no anchors for the authorization server"), "{e}");

        let both = format!(
            "{cdr}[trust]\ndata_providers = [\"dp.pem\"]\nauthorization_server = [\"as.pem\"]\n"
        );
        let s = Settings::from_toml(&both, dir, &none).expect("both classes have anchors");
        assert!(!s.trust.system_roots);
        assert_eq!(s.trust.data_providers, [Path::new("/etc/fapi/dp.pem")]);
        assert_eq!(
            s.trust.authorization_server,
            [Path::new("/etc/fapi/as.pem")]
        );

        // `ca_bundle` serves both classes; the system roots on serve both too.
        let bundle = format!("ca_bundle = \"ca.pem\"\n{cdr}");
        assert!(Settings::from_toml(&bundle, dir, &none).is_ok());
        let on = format!("{cdr}[trust]\nsystem_roots = true\n");
        assert!(Settings::from_toml(&on, dir, &none).is_ok());
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = format!("{BASE}\nclient_secret = \"x\"\n");
        let err = Settings::from_toml(&text, Path::new("/"), &Overrides::default())
            .expect_err("unknown key");
        assert!(err.to_string().contains("client_secret"), "{err}");
        let text = format!("{BASE}\n[sandbox]\nallow_all = true\n");
        let err = Settings::from_toml(&text, Path::new("/"), &Overrides::default())
            .expect_err("unknown key");
        assert!(err.to_string().contains("allow_all"), "{err}");
    }

    #[test]
    fn overrides_win_and_are_not_rebased() {
        let o = Overrides {
            client_id: Some("other".into()),
            private_key: Some(PathBuf::from("k.pem")),
            ..Overrides::default()
        };
        let s = Settings::from_toml(BASE, Path::new("/etc/fapi"), &o).expect("valid");
        assert_eq!(s.client_id, "other");
        assert_eq!(s.private_key, Path::new("k.pem"));
    }

    #[test]
    fn missing_setting_names_the_key_flag_and_variable() {
        let text = BASE.replace("client_id = \"abc\"", "");
        let err =
            Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("client_id")
                && msg.contains("--client-id")
                && msg.contains("FAPI_CLIENT_ID"),
            "{msg}"
        );
    }

    #[test]
    fn issuer_must_be_https() {
        let text = BASE.replace("https://auth", "http://auth");
        let err = Settings::from_toml(&text, Path::new("/"), &Overrides::default())
            .expect_err("http issuer");
        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn default_token_lifetime_must_be_one_second_to_a_day() {
        // 0: a token per request; 3e11 s: past what a date can show; i64::MAX (the largest TOML
        // integer): past what an `Instant` can hold.
        for bad in [0, 86_401, 300_000_000_000, i64::MAX] {
            let text = format!("{BASE}\n[client]\ndefault_token_lifetime_seconds = {bad}\n");
            let err = Settings::from_toml(&text, Path::new("/"), &Overrides::default())
                .expect_err("out of range");
            let msg = err.to_string();
            assert!(matches!(err, Error::Config(_)), "{bad}: {msg}");
            assert!(
                msg.contains("default_token_lifetime_seconds") && msg.contains("1 to 86400"),
                "{bad}: {msg}"
            );
        }
        for good in [1u64, 300, 86_400] {
            let text = format!("{BASE}\n[client]\ndefault_token_lifetime_seconds = {good}\n");
            let s =
                Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect("valid");
            assert_eq!(s.client.default_token_lifetime, Duration::from_secs(good));
        }
    }

    #[test]
    fn max_retry_after_is_zero_to_a_day() {
        for bad in [86_401, i64::MAX] {
            let text = format!("{BASE}\n[client]\nmax_retry_after_seconds = {bad}\n");
            let err = Settings::from_toml(&text, Path::new("/"), &Overrides::default())
                .expect_err("out of range");
            let msg = err.to_string();
            assert!(
                msg.contains("max_retry_after_seconds") && msg.contains("0 to 86400"),
                "{bad}: {msg}"
            );
        }
        for good in [0u64, 5, 86_400] {
            let text = format!("{BASE}\n[client]\nmax_retry_after_seconds = {good}\n");
            let s =
                Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect("valid");
            assert_eq!(s.client.max_retry_after, Duration::from_secs(good));
        }
        let s = Settings::from_toml(BASE, Path::new("/"), &Overrides::default()).expect("valid");
        assert_eq!(s.client.max_retry_after, Duration::from_secs(60));
    }

    #[test]
    fn sandbox_limits_of_zero_are_refused_with_their_key() {
        for key in [
            "max_memory_mib",
            "max_cpu_seconds",
            "max_wall_seconds",
            "max_concurrent_requests",
            "max_requests",
            "max_handles",
            "max_output_mib",
        ] {
            let text = format!("{BASE}\n[sandbox]\n{key} = 0\n");
            let err =
                Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
            let text = format!("{BASE}\n[sandbox]\n{key} = 1\n");
            Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect(key);
        }
    }

    #[test]
    fn the_resolve_table_takes_addresses_and_names_a_bad_one() {
        let base = BASE;
        let s = Settings::from_toml(
            &format!("{base}\n[client.resolve]\n\"Data.Example.\" = \"127.0.0.1\"\n\"two.example\" = [\"::1\", \"[::2]\"]\n"),
            Path::new("/etc/fapi"),
            &Overrides::default(),
        )
        .expect("valid");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("an address");
        assert_eq!(
            s.client.resolve.get("data.example"),
            Some(vec![ip("127.0.0.1")])
        );
        assert_eq!(
            s.client.resolve.get("TWO.example"),
            Some(vec![ip("::1"), ip("::2")])
        );
        for (bad, says) in [
            ("\"a.example\" = \"not-an-ip\"", "is not an IP address"),
            ("\"a.example\" = []", "has no address"),
        ] {
            let e = Settings::from_toml(
                &format!("{base}\n[client.resolve]\n{bad}\n"),
                Path::new("/etc/fapi"),
                &Overrides::default(),
            )
            .expect_err(bad)
            .to_string();
            assert!(e.contains(says) && e.contains("a.example"), "{e}");
        }
    }

    #[test]
    fn key_source_settings_are_read_and_a_pkcs11_uri_is_not_a_path() {
        let text = BASE.replace(
            "private_key = \"certs/a.key\"",
            "private_key = \"pkcs11:token=fapi;object=client\"\npkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"\npkcs11_pin_file = \"pin\"\nprivate_key_passphrase_file = \"pass\"",
        );
        let s = Settings::from_toml(&text, Path::new("/etc/fapi"), &Overrides::default())
            .expect("valid");
        assert_eq!(s.pkcs11_uri(), Some("pkcs11:token=fapi;object=client"));
        assert_eq!(
            s.pkcs11_module.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            s.pkcs11_pin_file.as_deref(),
            Some(Path::new("/etc/fapi/pin"))
        );
        assert_eq!(
            s.private_key_passphrase_file.as_deref(),
            Some(Path::new("/etc/fapi/pass"))
        );
        let s = Settings::from_toml(BASE, Path::new("/etc/fapi"), &Overrides::default())
            .expect("valid");
        assert_eq!(s.pkcs11_uri(), None);
    }

    #[test]
    fn ib1_takes_the_client_id_from_the_certificate_and_refuses_another() {
        let text = format!(
            "profile = \"ib1\"\ngrants_dir = \"g\"\n{}",
            BASE.replace("client_id = \"abc\"", "")
        );
        let mut s =
            Settings::from_toml(&text, Path::new("/etc/fapi"), &Overrides::default()).expect("ib1");
        assert_eq!(s.client_id, "");
        assert!(s.client.tls13_only);
        assert_eq!(s.grants_dir, Path::new("/etc/fapi/g"));
        assert_eq!(s.redirect_uri, None);
        let url = "https://directory.example/member/1".to_owned();
        s.resolve_client_id(std::slice::from_ref(&url))
            .expect("taken");
        assert_eq!(s.client_id, url);
        s.client_id = "abc".into();
        let e = s
            .resolve_client_id(&[url])
            .expect_err("another id")
            .to_string();
        assert!(e.contains("\"abc\"") && e.contains("URI SAN"), "{e}");
        let e = s.resolve_client_id(&[]).expect_err("no SAN").to_string();
        assert!(e.contains("no URI SAN"), "{e}");
        // Elsewhere the client id stays required.
        let text = BASE.replace("client_id = \"abc\"", "");
        assert!(Settings::from_toml(&text, Path::new("/"), &Overrides::default()).is_err());
        let text = format!("redirect_uri = \"http://example.org/cb\"\n{BASE}");
        let e =
            Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect_err("http");
        assert!(e.to_string().contains("redirect_uri"), "{e}");
    }

    #[test]
    fn sandbox_table_is_read() {
        let text = format!(
            "{BASE}\n[sandbox]\nallow = [\"https://data.example/\"]\nmax_memory_mib = 64\nmax_output_mib = 3\n[client]\nretries = 0\n"
        );
        let s = Settings::from_toml(&text, Path::new("/"), &Overrides::default()).expect("valid");
        assert_eq!(s.sandbox.allow, vec!["https://data.example/"]);
        assert_eq!(s.sandbox.max_memory, 64 << 20);
        assert_eq!(s.sandbox.max_output, 3 << 20);
        assert_eq!(s.client.retries, 0);
    }
}
