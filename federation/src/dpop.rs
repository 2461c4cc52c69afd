//! DPoP (RFC 9449) on the servers' side: proofs verified the way section 4.3 says, with ring
//! (independently of the host, which signs through rustls), server nonces (section 8) and the
//! replay of a `jti` refused.
//!
//! What is checked, in order: one compact JWS; `typ` = `dpop+jwt`; `alg` one of ES256, PS256,
//! EdDSA (FAPI 2.0; never `none`, HS* or RS256); `jwk` a public key of that algorithm, with no
//! private member; the signature; `jti`; `htm`; `htu` equal to the request's URI without query
//! (a proof whose `htu` has a query, another scheme, host, port or path fails); `iat` no more than
//! [`IAT_FUTURE_SECS`] ahead nor [`IAT_PAST_SECS`] behind; `ath` equal to the token's hash on
//! resource requests and absent at the token endpoint; `nonce` equal to the current one when
//! nonces are demanded; then the `jti` not seen before.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::state::{IssuedTokens, bump};

/// The algorithms a proof may use (FAPI 2.0 section 5.4.1), as discovery lists them.
pub(crate) const ALGS: [&str; 3] = ["ES256", "PS256", "EdDSA"];

/// How far in the future a proof's `iat` may be (FAPI 2.0 section 5.3.2.1: 0 to 10 s).
pub(crate) const IAT_FUTURE_SECS: u64 = 10;

/// How old a proof's `iat` may be (FAPI 2.0: more than 60 s is refused).
pub(crate) const IAT_PAST_SECS: u64 = 60;

/// The largest proof read (real ones are well under 1 KiB with an EC key, 2 KiB with RSA).
const MAX_PROOF: usize = 8192;

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The proof is not acceptable: `invalid_dpop_proof`, with the reason.
    Invalid(String),
    /// Nonces are demanded and the proof has none, or an old one: `use_dpop_nonce`.
    UseNonce,
}

/// What a verified proof says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proof {
    /// The RFC 7638 thumbprint of its key (what a bound token's `cnf.jkt` must say).
    pub jkt: String,
    jti: String,
    nonce: Option<String>,
}

/// What a request must match: its method, its URI without query, and, on resource requests, the
/// access token it carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub htm: &'a str,
    pub htu: &'a str,
    pub token: Option<&'a str>,
    pub now: u64,
}

/// Check one proof's form, signature and claims (no state: the nonce and the replay are
/// [`Dpop::accept`]'s).
pub(crate) fn verify(proof: &str, expected: &Expected<'_>) -> Result<Proof, Refusal> {
    let bad = |why: &str| Refusal::Invalid(why.to_owned());
    if proof.len() > MAX_PROOF {
        return Err(bad("the proof is too large"));
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the proof is not a compact JWS"));
    };
    let decode = |s: &str| B64.decode(s).map_err(|_| bad("the proof is not base64url"));
    let header: Map<String, Value> = serde_json::from_slice(&decode(h64)?)
        .map_err(|_| bad("the proof's header is not a JSON object"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&decode(c64)?)
        .map_err(|_| bad("the proof's claims are not a JSON object"))?;
    let sig = decode(s64)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad("typ is not dpop+jwt"));
    }
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !ALGS.contains(&alg) {
        return Err(bad("alg is not one of ES256, PS256, EdDSA"));
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(bad("the header has no jwk"));
    };
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(bad("the jwk holds a private key member"));
    }
    let signed = &proof.as_bytes()[..h64.len() + 1 + c64.len()];
    verify_signature(alg, jwk, signed, &sig)?;
    let jkt = thumbprint(jwk).ok_or_else(|| bad("the jwk lacks a required member"))?;

    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = match text("jti") {
        Some(j) if !j.is_empty() && j.len() <= 256 => j.to_owned(),
        _ => return Err(bad("jti is missing")),
    };
    if text("htm") != Some(expected.htm) {
        return Err(bad("htm is not the request's method"));
    }
    if text("htu") != Some(expected.htu) {
        return Err(bad(
            "htu is not the request's URI without query and fragment",
        ));
    }
    let Some(iat) = claims.get("iat").and_then(Value::as_u64) else {
        return Err(bad("iat is missing"));
    };
    if iat > expected.now + IAT_FUTURE_SECS {
        return Err(bad("iat is in the future"));
    }
    if iat + IAT_PAST_SECS < expected.now {
        return Err(bad("iat is too old"));
    }
    match (expected.token, text("ath")) {
        (None, None) => {}
        (None, Some(_)) => return Err(bad("ath is not allowed at the token endpoint")),
        (Some(_), None) => return Err(bad("ath is missing")),
        (Some(token), Some(ath)) => {
            if ath != B64.encode(Sha256::digest(token.as_bytes())) {
                return Err(bad("ath is not the hash of the access token"));
            }
        }
    }
    Ok(Proof {
        jkt,
        jti,
        nonce: text("nonce").map(str::to_owned),
    })
}

fn verify_signature(
    alg: &str,
    jwk: &Map<String, Value>,
    signed: &[u8],
    sig: &[u8],
) -> Result<(), Refusal> {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| Refusal::Invalid(format!("the jwk lacks {name}")))
    };
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let ok = match (alg, kty, crv) {
        ("ES256", "EC", "P-256") => {
            let (x, y) = (member("x")?, member("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(Refusal::Invalid("the jwk is not a P-256 point".into()));
            }
            let point = [&[4u8][..], &x, &y].concat();
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, sig)
                .is_ok()
        }
        ("PS256", "RSA", _) => RsaPublicKeyComponents {
            n: member("n")?,
            e: member("e")?,
        }
        .verify(&signature::RSA_PSS_2048_8192_SHA256, signed, sig)
        .is_ok(),
        ("EdDSA", "OKP", "Ed25519") => UnparsedPublicKey::new(&signature::ED25519, member("x")?)
            .verify(signed, sig)
            .is_ok(),
        _ => {
            return Err(Refusal::Invalid(
                "the jwk's key type does not fit alg".into(),
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::Invalid("the signature does not verify".into()))
    }
}

/// RFC 7638: SHA-256 over the required members in lexical order, base64url.
pub(crate) fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        "EC" => &["crv", "kty", "x", "y"],
        _ => return None,
    };
    let mut text = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = jwk.get(*m)?.as_str()?;
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::from(*m).to_string());
        text.push(':');
        text.push_str(&Value::from(v).to_string());
    }
    text.push('}');
    Some(B64.encode(Sha256::digest(text.as_bytes())))
}

/// One server's nonce: the current value and how many proofs it has let through.
#[derive(Debug)]
struct Nonce {
    current: String,
    accepted: u64,
}

fn fresh_nonce() -> String {
    B64.encode(rand::random::<[u8; 16]>())
}

/// Nonces (one per server: the AS's and the data provider's), seen `jti`s, the record of the
/// proofs received, and the DPoP counters.
#[derive(Debug)]
pub(crate) struct Dpop {
    /// Demand a nonce in every proof.
    pub nonce_required: bool,
    /// Rotate a server's nonce after this many proofs it let through (0: never); the new one goes
    /// out in the response to the last of them.
    pub rotate_every: u64,
    nonces: Mutex<HashMap<Server, Nonce>>,
    /// `jti` -> when it may be forgotten (its `iat` window has passed).
    seen: Mutex<HashMap<String, u64>>,
    /// Every proof received, in clear, when recording (tests' leak searches).
    pub received: IssuedTokens,
    pub counters: DpopCounters,
}

/// Which server a nonce belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Server {
    /// The authorization server (its token endpoint).
    As,
    /// The data provider.
    Dp,
}

/// DPoP counters, in [`crate::Counters`].
#[derive(Debug, Default)]
pub(crate) struct DpopCounters {
    pub accepted: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub nonce_demands: std::sync::atomic::AtomicU64,
    pub replays: std::sync::atomic::AtomicU64,
    pub bearer_refused: std::sync::atomic::AtomicU64,
}

impl Default for Dpop {
    fn default() -> Dpop {
        Dpop::new(false, 0, IssuedTokens::default())
    }
}

impl Dpop {
    pub(crate) fn new(nonce_required: bool, rotate_every: u64, received: IssuedTokens) -> Dpop {
        let nonces = [Server::As, Server::Dp]
            .into_iter()
            .map(|s| {
                (
                    s,
                    Nonce {
                        current: fresh_nonce(),
                        accepted: 0,
                    },
                )
            })
            .collect();
        Dpop {
            nonce_required,
            rotate_every,
            nonces: Mutex::new(nonces),
            seen: Mutex::new(HashMap::new()),
            received,
            counters: DpopCounters::default(),
        }
    }

    /// The current nonce of `server`, when nonces are demanded (for the `DPoP-Nonce` header of
    /// every response).
    pub(crate) fn nonce(&self, server: Server) -> Option<String> {
        if !self.nonce_required {
            return None;
        }
        self.table().get(&server).map(|n| n.current.clone())
    }

    /// The current nonce of `server`, whether or not nonces are demanded (for a fault's answer).
    pub(crate) fn current(&self, server: Server) -> Option<String> {
        self.table().get(&server).map(|n| n.current.clone())
    }

    /// A new nonce for `server`, returned: the old one is refused from now on.
    pub(crate) fn rotate(&self, server: Server) -> String {
        let fresh = fresh_nonce();
        if let Some(n) = self.table().get_mut(&server) {
            n.current = fresh.clone();
        }
        fresh
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Server, Nonce>> {
        self.nonces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verify `proof` for `server`, then its nonce and its `jti`; counted either way.
    pub(crate) fn accept(
        &self,
        server: Server,
        proof: &str,
        expected: &Expected<'_>,
    ) -> Result<Proof, Refusal> {
        self.received.record(proof);
        let c = &self.counters;
        // A replay is refused before its nonce counts; its `jti` is kept only once accepted.
        let verified = verify(proof, expected)
            .and_then(|p| self.check_replay(p, expected.now))
            .and_then(|p| self.check_nonce(server, p))
            .inspect(|p| self.remember_jti(p, expected.now));
        match &verified {
            Ok(_) => bump(&c.accepted),
            Err(Refusal::UseNonce) => bump(&c.nonce_demands),
            Err(Refusal::Invalid(_)) => bump(&c.refused),
        }
        verified
    }

    fn check_nonce(&self, server: Server, proof: Proof) -> Result<Proof, Refusal> {
        if !self.nonce_required {
            return Ok(proof);
        }
        let mut table = self.table();
        let Some(n) = table.get_mut(&server) else {
            return Err(Refusal::UseNonce);
        };
        if proof.nonce.as_deref() != Some(n.current.as_str()) {
            return Err(Refusal::UseNonce);
        }
        n.accepted += 1;
        if self.rotate_every > 0 && n.accepted % self.rotate_every == 0 {
            n.current = fresh_nonce();
        }
        Ok(proof)
    }

    fn check_replay(&self, proof: Proof, now: u64) -> Result<Proof, Refusal> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, until| *until > now);
        }
        if seen.contains_key(&proof.jti) {
            bump(&self.counters.replays);
            return Err(Refusal::Invalid("the proof's jti was used before".into()));
        }
        Ok(proof)
    }

    fn remember_jti(&self, proof: &Proof, now: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(proof.jti.clone(), now + IAT_PAST_SECS + IAT_FUTURE_SECS + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An ES256 proof signed by a ring key, with `claims` and `header` over the defaults.
    fn proof(
        pair: &signature::EcdsaKeyPair,
        header: Value,
        claims: Value,
        mutate_jwk: impl FnOnce(&mut Value),
    ) -> String {
        use ring::signature::KeyPair as _;
        let point = pair.public_key().as_ref();
        let mut jwk = json!({"kty": "EC", "crv": "P-256",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
        mutate_jwk(&mut jwk);
        let mut h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        merge(&mut h, header);
        let mut c = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
            "htu": "https://rs.example/data", "iat": 1000});
        merge(&mut c, claims);
        let input = format!(
            "{}.{}",
            B64.encode(h.to_string()),
            B64.encode(c.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = pair.sign(&rng, input.as_bytes()).expect("signs");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn merge(into: &mut Value, from: Value) {
        if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    a.insert(k, v);
                }
            }
        }
    }

    fn key() -> signature::EcdsaKeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("a key");
        signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("a key")
    }

    const GET: Expected<'static> = Expected {
        htm: "GET",
        htu: "https://rs.example/data",
        token: None,
        now: 1000,
    };

    fn refused(p: &str, e: &Expected<'_>) -> String {
        match verify(p, e) {
            Err(Refusal::Invalid(why)) => why,
            other => panic!("accepted or not refused as invalid: {other:?}"),
        }
    }

    /// DPOP-02, DPOP-03, DPOP-07: what a server refuses.
    #[test]
    fn proofs_are_checked_as_rfc_9449_says() {
        let k = key();
        let ok = proof(&k, json!({}), json!({}), |_| {});
        assert!(verify(&ok, &GET).is_ok());
        let cases: Vec<(String, &str)> = vec![
            (proof(&k, json!({"typ": "JWT"}), json!({}), |_| {}), "typ"),
            (proof(&k, json!({"alg": "RS256"}), json!({}), |_| {}), "alg"),
            (proof(&k, json!({"alg": "HS256"}), json!({}), |_| {}), "alg"),
            (
                proof(&k, json!({}), json!({}), |j| j["d"] = json!("AAAA")),
                "private",
            ),
            (
                proof(
                    &k,
                    json!({}),
                    json!({"htu": "https://rs.example/data?x=1"}),
                    |_| {},
                ),
                "htu",
            ),
            (
                proof(
                    &k,
                    json!({}),
                    json!({"htu": "http://rs.example/data"}),
                    |_| {},
                ),
                "htu",
            ),
            (proof(&k, json!({}), json!({"htm": "POST"}), |_| {}), "htm"),
            (proof(&k, json!({}), json!({"iat": 1011}), |_| {}), "future"),
            (proof(&k, json!({}), json!({"iat": 939}), |_| {}), "old"),
            (proof(&k, json!({}), json!({"jti": null}), |_| {}), "jti"),
            (proof(&k, json!({}), json!({"ath": "x"}), |_| {}), "ath"),
        ];
        for (p, why) in cases {
            let got = refused(&p, &GET);
            assert!(got.contains(why), "{why}: {got}");
        }
        // Another key's signature.
        let other = proof(&key(), json!({}), json!({}), |_| {});
        let (a, _) = ok.rsplit_once('.').unwrap_or_default();
        let (_, s) = other.rsplit_once('.').unwrap_or_default();
        assert!(refused(&format!("{a}.{s}"), &GET).contains("signature"));
        // Within the window: 10 s ahead, 60 s behind.
        for iat in [1010, 940] {
            assert!(verify(&proof(&k, json!({}), json!({"iat": iat}), |_| {}), &GET).is_ok());
        }
        // ath on resource requests.
        let rs = Expected {
            token: Some("tok"),
            ..GET
        };
        assert!(refused(&ok, &rs).contains("ath is missing"));
        let with_ath = proof(
            &k,
            json!({}),
            json!({"ath": "GnZ0607njffhrEOak8P6jjyUV4TU3sn9jjARc4svHWI"}),
            |_| {},
        );
        assert!(verify(&with_ath, &rs).is_ok());
        let other_token = Expected {
            token: Some("tok2"),
            ..GET
        };
        assert!(refused(&with_ath, &other_token).contains("hash"));
    }

    /// DPOP-03, DPOP-05: a replayed jti is refused; a demanded nonce must be the current one.
    #[test]
    fn replays_and_nonces() {
        let k = key();
        let d = Dpop::new(true, 2, IssuedTokens::recording());
        let no_nonce = proof(&k, json!({}), json!({}), |_| {});
        assert_eq!(
            d.accept(Server::Dp, &no_nonce, &GET),
            Err(Refusal::UseNonce)
        );
        let n = d.nonce(Server::Dp).expect("a nonce");
        assert_ne!(
            Some(&n),
            d.nonce(Server::As).as_ref(),
            "one nonce per server"
        );
        let p1 = proof(&k, json!({}), json!({"nonce": n}), |_| {});
        assert!(d.accept(Server::Dp, &p1, &GET).is_ok());
        assert!(
            matches!(d.accept(Server::Dp, &p1, &GET), Err(Refusal::Invalid(w)) if w.contains("jti"))
        );
        let p2 = proof(&k, json!({}), json!({"nonce": n}), |_| {});
        assert!(d.accept(Server::Dp, &p2, &GET).is_ok());
        // Rotated after two: the old nonce is refused.
        let n2 = d.nonce(Server::Dp).expect("a nonce");
        assert_ne!(n, n2);
        let p3 = proof(&k, json!({}), json!({"nonce": n}), |_| {});
        assert_eq!(d.accept(Server::Dp, &p3, &GET), Err(Refusal::UseNonce));
        let c = &d.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            (
                get(&c.accepted),
                get(&c.nonce_demands),
                get(&c.refused),
                get(&c.replays)
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(d.received.all().map(|v| v.len()), Some(5));
    }

    #[test]
    fn rfc_7638_thumbprint() {
        // RFC 7638 section 3.1's example key.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        let Value::Object(jwk) = jwk else {
            unreachable!()
        };
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }
}
