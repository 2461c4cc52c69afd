//! `fapi-host check`: one line per check, with the fix for each failure.
//!
//! After the files and the credentials: the profile and its settings, the TLS in use and each
//! class of server's trust anchors; after discovery, the profile's requirements one by one against
//! the server's metadata ([`crate::profile::requirements`]); then the token.

use rustls_pki_types::pem::PemObject as _;

use super::{Cli, EXIT_CHECK, EXIT_OK, outln};
use crate::client::FapiClient;
use crate::config::Settings;
use crate::credentials::Identity;
use crate::error::Result;
use crate::profile::{ClientAuth, Finding, Level};
use crate::time::fmt_time;
use crate::trust::TrustClass;

/// The lines of the report; each write fails only when stdout is closed (the command then stops).
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) -> Result<()> {
        outln!("ok    {what}: {detail}")
    }
    fn warn(&self, what: &str, detail: impl std::fmt::Display) -> Result<()> {
        outln!("warn  {what}: {detail}")
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) -> Result<()> {
        self.failed = true;
        outln!("FAIL  {what}: {detail}")
    }
    fn finding(&mut self, f: &Finding) -> Result<()> {
        match f.level {
            Level::Ok => self.ok(f.what, &f.detail),
            Level::Warn => self.warn(f.what, &f.detail),
            Level::Fail => self.fail(f.what, &f.detail),
        }
    }
    fn code(&self) -> u8 {
        if self.failed { EXIT_CHECK } else { EXIT_OK }
    }
}

/// The PKCS#11 key, step by step: module, token, PIN, key, public key, test signature. False
/// when a step failed (reported with its fix).
fn check_pkcs11(r: &mut Report, settings: &crate::config::Settings) -> Result<bool> {
    let mut passed: Vec<(&'static str, String)> = Vec::new();
    let mut current = crate::pkcs11::Step::Uri.label();
    let loaded = crate::pkcs11::identity(settings, &mut |step, detail| match detail {
        None => current = step.label(),
        Some(d) => passed.push((step.label(), d.to_owned())),
    });
    for (what, detail) in &passed {
        r.ok(what, detail)?;
    }
    match loaded {
        Ok(_) => Ok(true),
        Err(e) => {
            r.fail(current, e)?;
            Ok(false)
        }
    }
}

/// `value` when it is the profile's, else `value (set; the profile's is default)`.
fn against(value: &str, default: &str) -> String {
    if value == default {
        value.to_owned()
    } else {
        format!("{value} (set; the profile's is {default})")
    }
}

/// The profile and the value of each of its keys.
fn profile_line(settings: &Settings) -> String {
    let d = settings.profile.defaults();
    let a = &settings.auth;
    let mut parts = vec![
        format!(
            "token_endpoint_auth_method {}",
            against(a.client_auth.name(), d.client_auth.name())
        ),
        format!(
            "sender_constraint {}",
            against(a.sender_constraint.name(), d.sender_constraint.name())
        ),
    ];
    if a.client_auth == ClientAuth::PrivateKeyJwt {
        parts.push(format!(
            "client_assertion_audience {}",
            against(a.assertion_audience.name(), d.assertion_audience.name())
        ));
    }
    parts.push(format!(
        "tls_cipher_suites {}",
        against(settings.client.tls_suites.name(), d.tls_suites.name())
    ));
    let roots = |b: bool| if b { "true" } else { "false" };
    parts.push(format!(
        "[trust] system_roots {}",
        against(roots(settings.trust.system_roots), roots(d.system_roots))
    ));
    format!("{}: {}", settings.profile, parts.join(", "))
}

/// The TLS versions and TLS 1.2 suites offered.
fn tls_line(settings: &Settings) -> String {
    if settings.client.tls13_only {
        return "TLS 1.3 only (`tls13_only`)".into();
    }
    let suites = settings.client.tls_suites;
    let names: Vec<String> = crate::tls::tls12_suites(suites)
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    format!(
        "TLS 1.3, and TLS 1.2 with `tls_cipher_suites = \"{}\"`: {}",
        suites.name(),
        names.join(", ")
    )
}

/// The subjects (RFC 4514) of the certificates of the PEM files a class trusts besides the system
/// roots, each with the setting it comes from.
fn anchor_subjects(settings: &Settings, class: TrustClass) -> Vec<(String, String)> {
    let key = format!("`[trust] {}`", class.key());
    let files = settings
        .ca_bundle
        .iter()
        .map(|p| ("`ca_bundle`".to_owned(), p))
        .chain(
            class
                .files(&settings.trust)
                .iter()
                .map(|p| (key.clone(), p)),
        );
    let mut out = Vec::new();
    for (from, path) in files {
        let Ok(pem) = std::fs::read(path) else {
            continue;
        };
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) {
                out.push((from.clone(), cert.subject().to_string()));
            }
        }
    }
    out
}

/// One line per class of server: the anchors it is verified against, and a warning when they hold
/// the CA that issued this client's certificate (checklist TLS-06: a client CA is no server
/// anchor unless it issues the servers' certificates too).
fn trust_lines(r: &mut Report, settings: &Settings, identity: &Identity) -> Result<()> {
    for class in TrustClass::ALL {
        let what = match class {
            TrustClass::AuthorizationServer => "trust (authorization server)",
            TrustClass::DataProviders => "trust (data providers)",
        };
        let anchors = match crate::trust::class_roots(settings, class) {
            Ok(roots) => roots.len(),
            Err(e) => {
                r.fail(what, e)?;
                continue;
            }
        };
        let mut sources = Vec::new();
        if settings.ca_bundle.is_some() {
            sources.push("`ca_bundle`".to_owned());
        }
        let files = class.files(&settings.trust);
        if !files.is_empty() {
            sources.push(format!(
                "`[trust] {}` ({} file(s))",
                class.key(),
                files.len()
            ));
        }
        let own = format!("{anchors} certificate(s) from {}", sources.join(" and "));
        let detail = match (anchors, settings.trust.system_roots) {
            (0, true) => "the system roots alone".to_owned(),
            (_, true) => format!("{own}, then the system roots"),
            (_, false) => format!("{own}; not the system roots (`[trust] system_roots = false`)"),
        };
        let client_ca = anchor_subjects(settings, class)
            .into_iter()
            .find(|(_, subject)| subject == identity.issuer());
        match client_ca {
            None => r.ok(what, detail)?,
            Some((from, subject)) => r.warn(
                what,
                format!(
                    "{detail}; but {from} holds the CA that issued this client's certificate \
                     ({subject}), so servers it certifies are trusted {as_what}: keep it there \
                     only if it issues servers' certificates too (as the local federation's \
                     does)",
                    as_what = match class {
                        TrustClass::AuthorizationServer => "as the authorization server",
                        TrustClass::DataProviders => "as data providers",
                    },
                ),
            )?,
        }
    }
    Ok(())
}

pub(super) async fn run(cli: &Cli) -> Result<u8> {
    let mut r = Report { failed: false };
    let settings = match cli.settings() {
        Ok(s) => {
            let from = s
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "flags and environment".into());
            r.ok("configuration", format!("read from {from}"))?;
            r.ok("profile", profile_line(&s))?;
            r.ok("TLS", tls_line(&s))?;
            s
        }
        Err(e) => {
            r.fail("configuration", e)?;
            return Ok(r.code());
        }
    };
    let mut files_ok = true;
    let key_file = settings
        .pkcs11_uri()
        .is_none()
        .then_some(&settings.private_key);
    let cert_file = (!settings
        .certificate
        .to_str()
        .is_some_and(|c| c.starts_with("pkcs11:")))
    .then_some(&settings.certificate);
    for (name, path) in [
        ("certificate", cert_file),
        ("private_key", key_file),
        ("ca_bundle", settings.ca_bundle.as_ref()),
    ] {
        let Some(path) = path else { continue };
        match std::fs::File::open(path) {
            Ok(_) => r.ok(name, format!("{} is readable", path.display()))?,
            Err(e) => {
                files_ok = false;
                r.fail(
                    name,
                    format!(
                        "{} cannot be read ({e}): fix the path or the permissions",
                        path.display()
                    ),
                )?;
            }
        }
    }
    if !files_ok {
        return Ok(r.code());
    }
    if settings.pkcs11_uri().is_some() && !check_pkcs11(&mut r, &settings)? {
        return Ok(r.code());
    }
    if settings.profile == crate::profile::Profile::Ib1
        && let Ok((id, _)) = crate::credentials::Identity::from_settings(&settings)
    {
        // The key's own problems are reported by the next step.
        let mut resolved = settings.clone();
        match resolved.resolve_client_id(id.uri_sans()) {
            Ok(()) => r.ok(
                "client_id",
                format!(
                    "{} (the certificate's Directory URL){}",
                    resolved.client_id,
                    if settings.client_id.is_empty() {
                        ", taken from the certificate"
                    } else {
                        ""
                    }
                ),
            )?,
            Err(e) => {
                r.fail("client_id", e)?;
                return Ok(r.code());
            }
        }
    }
    let client = match FapiClient::from_settings(&settings) {
        Ok((client, warnings)) => {
            let id = client.identity();
            r.ok(
                "key and certificate",
                format!(
                    "{} key matches the certificate for {}",
                    id.key_description(),
                    id.subject()
                ),
            )?;
            r.ok(
                "validity",
                format!(
                    "valid from {} until {}",
                    fmt_time(id.not_before()),
                    fmt_time(id.not_after())
                ),
            )?;
            r.ok(
                "chain",
                format!(
                    "{} certificate(s) sent, leaf issued by {}; thumbprint (x5t#S256) {}",
                    id.chain_len(),
                    id.issuer(),
                    id.thumbprint()
                ),
            )?;
            for w in warnings {
                r.warn("credentials", w)?;
            }
            trust_lines(&mut r, &settings, client.identity())?;
            client
        }
        Err(e) => {
            r.fail("key and certificate", e)?;
            return Ok(r.code());
        }
    };
    match client.discover().await {
        Ok((m, warnings)) => {
            r.ok("discovery", format!("issuer {} matches", m.issuer))?;
            r.ok(
                "token endpoint",
                format!(
                    "{}{}",
                    m.token_endpoint,
                    if m.token_endpoint_is_alias {
                        " (mtls_endpoint_aliases)"
                    } else {
                        ""
                    }
                ),
            )?;
            // Which TLS the authorization server speaks with this client (the token
            // endpoint's, as the token manager reaches it).
            let shook = match crate::tls::client_configs(client.identity(), &settings) {
                Ok(configs) => {
                    crate::tls::handshake(
                        configs.authorization_server,
                        &m.token_endpoint,
                        &settings.client.resolve,
                        settings.client.connect_timeout.max(settings.client.timeout),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match shook {
                Ok(n) => r.ok(
                    "TLS with the authorization server",
                    format!("{n} (token endpoint)"),
                )?,
                Err(e) => r.fail("TLS with the authorization server", e)?,
            }
            // The profile's requirements, one by one, against the document as it is.
            match client.discovery_document().await {
                Ok(doc) => {
                    let key = client.assertion_alg();
                    for f in crate::profile::requirements(&settings.auth, key, &doc) {
                        r.finding(&f)?;
                    }
                }
                Err(e) => r.fail("discovery document", e)?,
            }
            for w in warnings {
                // Said on the line above; and under ib1 no client_credentials is expected.
                let expected = w.kind == crate::WarningKind::ClientCredentialsNotListed
                    && settings.profile.needs_grant();
                if w.kind != crate::WarningKind::AuthMethodsAbsent && !expected {
                    r.warn("discovery", w)?;
                }
            }
        }
        Err(e) => {
            r.fail("discovery", e)?;
            return Ok(r.code());
        }
    }
    if settings.profile.needs_grant() {
        let checked = match client.as_http() {
            Ok(http) => {
                crate::consent::consent_metadata(
                    &http,
                    &settings.issuer_url,
                    settings.client.timeout,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match checked {
            Ok(m) => r.ok(
                "consent",
                format!(
                    "pushed authorization requests at {}, PKCE S256, consent page at {}",
                    m.par_endpoint, m.authorization_endpoint
                ),
            )?,
            Err(e) => r.fail("consent", e)?,
        }
        r.ok(
            "token",
            "profile \"ib1\": tokens come from a household's consent, not from this check \
             (fapi-host grant add NAME; fapi-host grant list)",
        )?;
        return Ok(r.code());
    }
    match client.token_info().await {
        Ok(info) => {
            r.ok(
                "token",
                format!("obtained, expires in {} s", info.expires_in),
            )?;
            let requested = settings.scopes();
            let missing: Vec<_> = requested
                .iter()
                .filter(|s| !info.scope.contains(s))
                .collect();
            if missing.is_empty() {
                r.ok(
                    "scopes",
                    format!("granted as requested: {}", info.scope.join(" ")),
                )?;
            } else {
                r.fail(
                    "scopes",
                    format!(
                        "requested {} but granted {}; missing {:?}: ask the directory to grant them to {}",
                        requested.join(" "),
                        info.scope.join(" "),
                        missing,
                        settings.client_id
                    ),
                )?;
            }
        }
        Err(e) => r.fail("token", e)?,
    }
    Ok(r.code())
}
