//! `fapi-host check`: one line per check, with the fix for each failure.

use super::{Cli, EXIT_CHECK, EXIT_OK, outln};
use crate::client::FapiClient;
use crate::error::Result;
use crate::time::fmt_time;

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
            match &m.auth_methods_supported {
                Some(methods) => r.ok(
                    "auth method",
                    format!("tls_client_auth is supported ({})", methods.join(", ")),
                )?,
                None => r.warn(
                    "auth method",
                    format!(
                        "the discovery document {}",
                        crate::discovery::ABSENT_AUTH_METHODS
                    ),
                )?,
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
