//! `private_key_jwt` at the token endpoint (RFC 7523 section 3, OIDC Core section 9, FAPI 2.0
//! section 5.3.2.1): the checks an authorization server makes of a client assertion before it
//! believes who the client is. The signature is verified with ring, independently of the host's
//! signing path.
//!
//! In order: exactly one assertion (repeated parameters are refused before this), the exact
//! `client_assertion_type` URN, a compact JWS (three parts), an `alg` the server advertises
//! ([`SIGNING_ALGS`]), no `crit`, a signature by a key registered for the `iss` (its certificate's
//! key or a key given in [`PrivateKeyJwt::extra_keys`]; `jku`, `x5u` and `jwk` headers are never
//! followed), `iss` = `sub` = the client (and = the form's `client_id` when sent), `aud` the
//! issuer as a plain string (the token endpoint's URL only with
//! [`PrivateKeyJwt::accept_token_endpoint_audience`], the FAPI 1.0 rule), `exp` present and not
//! past, `iat` present and at most [`MAX_FUTURE`] ahead (so is `nbf`), and a `jti` never seen
//! before from this client while an assertion bearing it could be valid.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The algorithms the server accepts and advertises in
/// `token_endpoint_auth_signing_alg_values_supported` (FAPI 2.0 section 5.4.1: never RS256).
pub const SIGNING_ALGS: [&str; 3] = ["PS256", "ES256", "EdDSA"];

/// How far in the future `iat` (and `nbf`) may be: 10 s, FAPI 2.0 section 5.3.2.1-13's tolerance
/// (an assertion 60 s or more ahead must be refused).
pub const MAX_FUTURE: u64 = 10;

/// The token endpoint requires `private_key_jwt` (`FederationConfig::private_key_jwt`). mTLS is
/// still required: tokens stay bound to the certificate of the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrivateKeyJwt {
    /// Also accept `aud` = the token endpoint's URL, the FAPI 1.0 (UK Open Banking, CDR) rule.
    /// Default false: FAPI 2.0, the issuer as a plain string only.
    pub accept_token_endpoint_audience: bool,
    /// Keys registered for clients beside their certificate's key: (client id, DER
    /// SubjectPublicKeyInfo), for a client that signs with a key of its own (`signing_key`).
    pub extra_keys: Vec<(String, Vec<u8>)>,
}

/// Why an assertion was refused: the `error_description` of the `invalid_client` answer.
pub(crate) type Refusal = String;

/// The `jti`s seen, per client, each until the `exp` of its assertion (then it could not be
/// replayed anyway).
#[derive(Debug, Default)]
pub(crate) struct SeenJtis(Mutex<HashMap<(String, String), u64>>);

impl SeenJtis {
    /// Whether `jti` of `client` is new (then remembered until `exp`).
    fn first_use(&self, client: &str, jti: &str, exp: u64, now: u64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, e| *e >= now);
        }
        let key = (client.to_owned(), jti.to_owned());
        match seen.get(&key) {
            Some(e) if *e >= now => false,
            _ => {
                seen.insert(key, exp);
                true
            }
        }
    }
}

/// What a verification needs to know about the server.
pub(crate) struct Expected<'a> {
    pub issuer: &'a str,
    /// The URL of the token endpoint the request came to.
    pub token_endpoint: &'a str,
    pub rules: &'a PrivateKeyJwt,
    /// The algorithms advertised (the discovery fault may change them).
    pub algs: &'a [String],
    /// Registered keys (DER SubjectPublicKeyInfo) by client id.
    pub keys: &'a HashMap<String, Vec<Vec<u8>>>,
    pub now: u64,
}

/// Verify the assertion of a token request's form; the client id it authenticates.
pub(crate) fn verify(
    pairs: &[(String, String)],
    expected: &Expected<'_>,
    seen: &SeenJtis,
) -> Result<String, Refusal> {
    let param = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    match param("client_assertion_type") {
        Some(JWT_BEARER) => {}
        Some(_) => return Err(format!("client_assertion_type must be {JWT_BEARER}")),
        None => {
            return Err(format!(
                "this server requires private_key_jwt: client_assertion_type {JWT_BEARER} and a \
                 client_assertion"
            ));
        }
    }
    let jws = param("client_assertion").ok_or("client_assertion is missing")?;
    let parts: Vec<&str> = jws.split('.').collect();
    let [header_b64, claims_b64, sig_b64] = parts[..] else {
        return Err("client_assertion is not a compact JWS (three parts)".into());
    };
    let json = |part: &str, what: &str| -> Result<serde_json::Map<String, Value>, Refusal> {
        let bytes = B64
            .decode(part)
            .map_err(|_| format!("the assertion's {what} is not base64url"))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(o)) => Ok(o),
            _ => Err(format!("the assertion's {what} is not a JSON object")),
        }
    };
    let header = json(header_b64, "header")?;
    let claims = json(claims_b64, "claims")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !expected.algs.iter().any(|a| a == alg) {
        return Err(format!(
            "alg {alg:?} is not one of token_endpoint_auth_signing_alg_values_supported {:?}",
            expected.algs
        ));
    }
    if header.contains_key("crit") {
        return Err("the assertion's header has crit, which this server does not support".into());
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let Some(iss) = text("iss") else {
        return Err("the assertion has no iss".into());
    };
    if text("sub") != Some(iss) {
        return Err("the assertion's sub must equal its iss (the client_id)".into());
    }
    if let Some(id) = param("client_id")
        && id != iss
    {
        return Err("the assertion's iss is not the client_id of the request".into());
    }
    let keys = expected
        .keys
        .get(iss)
        .ok_or_else(|| format!("unknown client {iss:?}"))?;
    let signature = B64
        .decode(sig_b64)
        .map_err(|_| "the assertion's signature is not base64url".to_owned())?;
    let input = &jws[..header_b64.len() + 1 + claims_b64.len()];
    let verified = keys.iter().any(|spki| {
        verifier(alg, spki).is_some_and(|(algorithm, raw)| {
            UnparsedPublicKey::new(algorithm, raw)
                .verify(input.as_bytes(), &signature)
                .is_ok()
        })
    });
    if !verified {
        return Err(format!(
            "the assertion's signature does not verify with a {alg} key registered for {iss}"
        ));
    }
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == expected.issuer => {}
        Some(Value::String(aud))
            if aud == expected.token_endpoint && expected.rules.accept_token_endpoint_audience => {}
        Some(Value::String(aud)) if aud == expected.token_endpoint => {
            return Err(
                "aud is the token endpoint; this server (FAPI 2.0) requires its issuer identifier"
                    .into(),
            );
        }
        Some(Value::Array(_)) => {
            return Err("aud is an array; FAPI 2.0 requires the issuer as a plain string".into());
        }
        _ => return Err("aud must be this server's issuer identifier".into()),
    }
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let now = expected.now;
    let Some(exp) = number("exp") else {
        return Err("the assertion has no exp (a number of seconds)".into());
    };
    if exp <= now {
        return Err("the assertion has expired (exp is past)".into());
    }
    let Some(iat) = number("iat") else {
        return Err("the assertion has no iat (a number of seconds)".into());
    };
    for (name, t) in [("iat", Some(iat)), ("nbf", number("nbf"))] {
        if let Some(t) = t
            && t > now + MAX_FUTURE
        {
            return Err(format!(
                "the assertion's {name} is {} s in the future (at most {MAX_FUTURE} s is \
                 tolerated): check the client's clock",
                t - now
            ));
        }
    }
    let jti = match text("jti") {
        Some(j) if !j.is_empty() => j,
        _ => return Err("the assertion has no jti".into()),
    };
    if !seen.first_use(iss, jti, exp, now) {
        return Err("the assertion's jti was used before (a replay)".into());
    }
    Ok(iss.to_owned())
}

/// ring's algorithm for `alg` and the raw public key of `spki`, when the key is of `alg`'s type.
fn verifier(alg: &str, spki: &[u8]) -> Option<(&'static dyn VerificationAlgorithm, Vec<u8>)> {
    let (_, info) = SubjectPublicKeyInfo::from_der(spki).ok()?;
    let raw = info.subject_public_key.data.to_vec();
    if info.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        return (alg == "EdDSA").then_some((&signature::ED25519, raw));
    }
    match (alg, info.parsed().ok()?) {
        ("PS256", PublicKey::RSA(_)) => Some((&signature::RSA_PSS_2048_8192_SHA256, raw)),
        ("ES256", PublicKey::EC(p)) if p.data().len() == 65 => {
            Some((&signature::ECDSA_P256_SHA256_FIXED, raw))
        }
        ("ES384", PublicKey::EC(p)) if p.data().len() == 97 => {
            Some((&signature::ECDSA_P384_SHA384_FIXED, raw))
        }
        _ => None,
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn certificate_key(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.public_key().raw.to_vec())
}
