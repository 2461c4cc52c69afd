//! JSON Web Signatures the host makes (RFC 7515, compact form): client assertions (RFC 7523) and
//! DPoP proofs (RFC 9449).
//!
//! A [`JwsKey`] signs through a rustls [`SigningKey`], so every key the host can hold signs JWTs
//! the way it signs handshakes: a PEM key, an encrypted PKCS#8 key, a key in a PKCS#11 token (the
//! token signs; the key never leaves it), or a DPoP key made at start. Algorithms are the ones
//! FAPI 2.0 allows (section 5.4.1, checklist CRY-01, PKJ-03, DPOP-02): PS256 for RSA keys, ES256
//! for P-256, EdDSA for Ed25519; never RS256, HS* or `none`, and no JWS from any other key (a
//! P-384 key, good for TLS, signs no FAPI JWS). ECDSA signatures come from rustls in ASN.1
//! DER and are re-encoded as JWS's fixed-size `r || s`.
//!
//! The signed text is a credential for its short life (an assertion authenticates the client, a
//! proof carries the token's binding): it is returned in [`Zeroizing`], and nothing here logs it.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A JWS algorithm the host signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PSS with SHA-256 (RSA keys).
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn scheme(self) -> SignatureScheme {
        match self {
            Alg::Ps256 => SignatureScheme::RSA_PSS_SHA256,
            Alg::Es256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            Alg::EdDsa => SignatureScheme::ED25519,
        }
    }

    /// The length of one of `r` and `s` in a JWS ECDSA signature.
    fn ecdsa_half(self) -> Option<usize> {
        match self {
            Alg::Es256 => Some(32),
            Alg::Ps256 | Alg::EdDsa => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key that signs JWSs: its algorithm, its public JWK and the JWK's RFC 7638 thumbprint.
#[derive(Clone)]
pub struct JwsKey {
    key: Arc<dyn SigningKey>,
    alg: Alg,
    jwk: Value,
    thumbprint: String,
}

impl fmt::Debug for JwsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwsKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl JwsKey {
    /// A signer for `key`, whose public half is `spki` (DER SubjectPublicKeyInfo, e.g. from its
    /// certificate). `name` names the key in errors (a file, a URI, "the DPoP key").
    pub fn new(key: Arc<dyn SigningKey>, spki: &[u8], name: &str) -> Result<JwsKey> {
        let (jwk, alg) = public_jwk(spki, name)?;
        let thumbprint = jwk_thumbprint(&jwk);
        if key.choose_scheme(&[alg.scheme()]).is_none() {
            return Err(Error::Credentials(format!(
                "{name}: the key cannot sign {alg} for its {} public key; give a key of the \
                 certificate it belongs to",
                jwk["kty"].as_str().unwrap_or("?")
            )));
        }
        Ok(JwsKey {
            key,
            alg,
            jwk,
            thumbprint,
        })
    }

    /// A fresh P-256 key, made now and held only in memory (a DPoP key, RFC 9449 section 2).
    pub fn generate_p256(name: &str) -> Result<JwsKey> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Credentials(format!("{name}: making a P-256 key: {e}")))?;
        let pkcs8 = Zeroizing::new(pair.serialize_der());
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8.as_slice().into());
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| Error::Credentials(format!("{name}: loading the P-256 key: {e}")))?;
        JwsKey::new(
            key,
            &rcgen::PublicKeyData::subject_public_key_info(&pair),
            name,
        )
    }

    /// The algorithm of every signature of this key.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public key as a JWK (`kty` and its public members only; never a private member).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): DPoP's `jkt`, and the default `kid`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// Refuse this key's algorithm when a server lists the ones it accepts and this one is not
    /// among them (`what` names the metadata field, for the message).
    pub fn check_supported(&self, supported: Option<&[String]>, what: &str) -> Result<()> {
        match supported {
            Some(list) if !list.iter().any(|a| a == self.alg.name()) => {
                Err(Error::Config(format!(
                    "the authorization server's {what} is {list:?}, without {}, the only \
                     algorithm of this {} key that FAPI allows (never RS256 or none): register a \
                     key of a type the server accepts",
                    self.alg,
                    self.jwk["kty"].as_str().unwrap_or("?")
                )))
            }
            _ => Ok(()),
        }
    }

    /// Sign `claims` with a header of `alg`, then `header`'s members (`typ`, `kid`, `jwk`, ...).
    pub fn sign(&self, header: Map<String, Value>, claims: &Value) -> Result<Zeroizing<String>> {
        self.sign_encoded(&self.encoded_header(header)?, claims)
    }

    /// The base64url of a header of `alg`, then `header`'s members: made once for a header that
    /// never changes (a DPoP key's `typ` and `jwk`), then given to [`JwsKey::sign_encoded`].
    pub fn encoded_header(&self, header: Map<String, Value>) -> Result<String> {
        let mut h = Map::new();
        h.insert("alg".into(), Value::from(self.alg.name()));
        h.extend(header);
        let header = serde_json::to_vec(&Value::Object(h))
            .map_err(|e| Error::Credentials(format!("encoding a JWS header: {e}")))?;
        Ok(B64.encode(header))
    }

    /// Sign `claims` under a header made by [`JwsKey::encoded_header`] of this key.
    pub fn sign_encoded(
        &self,
        encoded_header: &str,
        claims: &impl serde::Serialize,
    ) -> Result<Zeroizing<String>> {
        let claims = Zeroizing::new(
            serde_json::to_vec(claims)
                .map_err(|e| Error::Credentials(format!("encoding JWS claims: {e}")))?,
        );
        let mut out = Zeroizing::new(String::with_capacity(512));
        out.push_str(encoded_header);
        out.push('.');
        B64.encode_string(&*claims, &mut out);
        let signer = self
            .key
            .choose_scheme(&[self.alg.scheme()])
            .ok_or_else(|| Error::Credentials(format!("the key cannot sign {}", self.alg)))?;
        let signature = signer
            .sign(out.as_bytes())
            .map_err(|e| Error::Credentials(format!("signing a {} JWS: {e}", self.alg)))?;
        let signature = match self.alg.ecdsa_half() {
            Some(half) => ecdsa_der_to_fixed(&signature, half)?,
            None => signature,
        };
        out.push('.');
        B64.encode_string(&signature, &mut out);
        Ok(out)
    }
}

/// The JWK of a DER SubjectPublicKeyInfo, and the one algorithm the host signs with for it.
fn public_jwk(spki: &[u8], name: &str) -> Result<(Value, Alg)> {
    let bad = |why: &str| Error::Credentials(format!("{name}: {why}"));
    let (_, info) = SubjectPublicKeyInfo::from_der(spki)
        .map_err(|_| bad("the public key is not a DER SubjectPublicKeyInfo"))?;
    if info.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        let raw = &info.subject_public_key.data;
        return Ok((
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(raw)}),
            Alg::EdDsa,
        ));
    }
    match info
        .parsed()
        .map_err(|_| bad("the public key cannot be parsed"))?
    {
        PublicKey::RSA(rsa) => {
            let n = strip_zeros(rsa.modulus);
            if n.len() * 8 < 2048 {
                return Err(bad("an RSA key of under 2048 bits cannot sign for FAPI"));
            }
            Ok((
                json!({"kty": "RSA", "n": B64.encode(n), "e": B64.encode(strip_zeros(rsa.exponent))}),
                Alg::Ps256,
            ))
        }
        PublicKey::EC(point) => {
            // An uncompressed point: 0x04 || x || y, each half the curve's size.
            let (crv, alg, half) = match point.data().len() {
                65 => ("P-256", Alg::Es256, 32),
                97 => {
                    return Err(bad(
                        "a P-384 key signs no JWS FAPI allows (PS256, ES256, EdDSA): give a \
                         P-256, Ed25519 or RSA (2048 bits or more) key as `signing_key`",
                    ));
                }
                _ => {
                    return Err(bad(
                        "an EC key on a curve other than P-256 (or a compressed point): FAPI's \
                         JWS algorithms are PS256, ES256 and EdDSA",
                    ));
                }
            };
            let data = point.data();
            if data[0] != 4 {
                return Err(bad("an EC public key that is not an uncompressed point"));
            }
            Ok((
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": B64.encode(&data[1..1 + half]),
                    "y": B64.encode(&data[1 + half..]),
                }),
                alg,
            ))
        }
        _ => Err(bad(
            "a key type FAPI does not sign with: use RSA (2048 bits or more), P-256 or Ed25519",
        )),
    }
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 over its required members, in lexical order,
/// without white space.
pub fn jwk_thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["crv", "kty", "x", "y"],
    };
    // serde_json's Map keeps keys sorted (no `preserve_order`), and writes no white space.
    let required: Map<String, Value> = members
        .iter()
        .map(|m| ((*m).to_owned(), jwk[*m].clone()))
        .collect();
    let text = Value::Object(required).to_string();
    B64.encode(Sha256::digest(text.as_bytes()))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// An ASN.1 DER ECDSA signature (`SEQUENCE { INTEGER r, INTEGER s }`) as JWS's `r || s`, each
/// left-padded to `half` bytes (RFC 7518 section 3.4).
fn ecdsa_der_to_fixed(der: &[u8], half: usize) -> Result<Vec<u8>> {
    use x509_parser::der_parser::der::{parse_der_integer, parse_der_sequence_defined_g};
    let bad = || Error::Credentials("the key's ECDSA signature is not ASN.1 DER".into());
    let (rest, (r, s)) = parse_der_sequence_defined_g(|i, _| {
        let (i, r) = parse_der_integer(i)?;
        let (i, s) = parse_der_integer(i)?;
        Ok((i, (r, s)))
    })(der)
    .map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let mut out = vec![0u8; 2 * half];
    for (k, int) in [r, s].iter().enumerate() {
        let bytes = strip_zeros(int.as_slice().map_err(|_| bad())?);
        if bytes.len() > half {
            return Err(bad());
        }
        let end = (k + 1) * half;
        out[end - bytes.len()..end].copy_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_of(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, JwsKey) {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
        let key = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let jws = JwsKey::new(
            key,
            &rcgen::PublicKeyData::subject_public_key_info(&pair),
            "test key",
        )
        .unwrap();
        (pair, jws)
    }

    /// Verify a compact JWS with ring, as a server would (independently of the signing path).
    fn verify(
        jws: &str,
        pair: &rcgen::KeyPair,
        alg: &'static dyn ring::signature::VerificationAlgorithm,
    ) {
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let sig = B64.decode(sig).unwrap();
        ring::signature::UnparsedPublicKey::new(alg, pair.public_key_raw())
            .verify(input.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn a_p384_key_signs_no_fapi_jws() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
        let key = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
        let e = JwsKey::new(key, &spki, "k").unwrap_err().to_string();
        assert!(e.contains("P-384") && e.contains("ES256"), "{e}");
    }

    #[test]
    fn es256_signatures_are_fixed_size_and_verify() {
        for (alg, ring_alg, len, name) in [(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            64,
            "ES256",
        )] {
            let (pair, key) = key_of(alg);
            // Enough signatures that some r or s has a leading zero byte, which DER drops.
            for i in 0..64 {
                let jws = key.sign(Map::new(), &json!({"i": i})).unwrap();
                let sig = B64.decode(jws.rsplit_once('.').unwrap().1).unwrap();
                assert_eq!(sig.len(), len);
                verify(&jws, &pair, ring_alg);
            }
            let header: Value = serde_json::from_slice(
                &B64.decode(
                    key.sign(Map::new(), &json!({}))
                        .unwrap()
                        .split('.')
                        .next()
                        .unwrap(),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(header["alg"], name);
            assert!(key.jwk().get("d").is_none());
        }
    }

    #[test]
    fn ed25519_signs_eddsa() {
        let (pair, key) = key_of(&rcgen::PKCS_ED25519);
        assert_eq!(key.alg(), Alg::EdDsa);
        let jws = key.sign(Map::new(), &json!({"a": 1})).unwrap();
        verify(&jws, &pair, &ring::signature::ED25519);
    }

    #[test]
    fn rfc7638_thumbprint_of_its_example_key() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn dpop_keys_are_fresh_p256_keys_with_public_jwks() {
        let a = JwsKey::generate_p256("the DPoP key").unwrap();
        let b = JwsKey::generate_p256("the DPoP key").unwrap();
        assert_eq!(a.alg(), Alg::Es256);
        assert_ne!(a.thumbprint(), b.thumbprint());
        assert_eq!(a.jwk()["crv"], "P-256");
        assert!(a.jwk().get("d").is_none());
    }

    #[test]
    fn an_algorithm_the_server_does_not_list_is_refused_by_name() {
        let key = JwsKey::generate_p256("k").unwrap();
        let listed = vec!["RS256".to_owned(), "PS256".to_owned()];
        let e = key
            .check_supported(
                Some(&listed),
                "token_endpoint_auth_signing_alg_values_supported",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("ES256") && e.contains("RS256"), "{e}");
        key.check_supported(Some(&["ES256".to_owned()]), "x")
            .unwrap();
        key.check_supported(None, "x").unwrap();
    }

    #[test]
    fn a_malformed_der_signature_is_an_error() {
        assert!(ecdsa_der_to_fixed(&[0x30, 0x03, 0x02, 0x01], 32).is_err());
        assert!(ecdsa_der_to_fixed(&[], 32).is_err());
    }
}
