//! DPoP (RFC 9449) against the local federation, whose servers verify every proof (with ring,
//! independently of the host's signing) and record what they received: checklist rows DPOP-01 to
//! DPOP-08, each asserted from the servers' side (counters, received proofs), and the bad inputs,
//! each a clear error after an exact number of requests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;

use crate::common::{Fed, contains, fapi_host, logs};
use fapi_federation::{AsFault, DpFault, FederationConfig};
use fapi_host::{AuthProblem, Error, FapiClient};

/// A federation that requires DPoP (client configurations say `sender_constraint = "dpop"`) and
/// records the tokens it issues and the proofs it receives; `nonce`: nonces demanded, rotated
/// after `rotate_every` accepted proofs (0: only when the test says).
async fn dpop_fed(nonce: bool, rotate_every: u64) -> Fed {
    Fed::start(FederationConfig {
        dpop_required: true,
        dpop_nonce: nonce,
        dpop_nonce_rotate_every: rotate_every,
        record_issued_tokens: true,
        faults_enabled: true,
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await
}

/// A proof's header and claims.
fn decode(proof: &str) -> (Value, Value) {
    let mut it = proof.split('.');
    let mut part = || serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    (part(), part())
}

/// Assert that no proof the federation received and no token it issued is in `hay`.
fn assert_no_credentials(f: &Fed, place: &str, hay: &[u8]) {
    let proofs = f.fed.received_dpop_proofs();
    let tokens = f.fed.issued_tokens();
    assert!(
        !proofs.is_empty() && !tokens.is_empty(),
        "nothing to look for"
    );
    for (i, p) in proofs.iter().enumerate() {
        // The signature alone (86 characters) is unique to the proof.
        let sig = p.rsplit('.').next().unwrap();
        assert!(
            !contains(hay, sig.as_bytes()),
            "proof #{i} leaked into {place}"
        );
    }
    for (i, t) in tokens.iter().enumerate() {
        assert!(
            !contains(hay, t.as_bytes()),
            "token #{i} leaked into {place}"
        );
    }
}

/// DPOP-01, DPOP-02, DPOP-03, DPOP-04: one proof per request, public key only, fresh `jti`s,
/// `ath` on resource requests only, `token_type` DPoP, `Authorization: DPoP`, and the token bound
/// to the key (`cnf.jkt`) as the servers see it.
#[tokio::test]
async fn every_request_carries_one_proof_and_the_token_is_bound_to_the_key() {
    let f = dpop_fed(false, 0).await;
    let client = f.client();
    for _ in 0..2 {
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (200, 1));
    }
    let info = client.token_info().await.unwrap();
    assert_eq!(info.token_type, "DPoP");
    let jkt = info.dpop_thumbprint.clone().expect("a DPoP thumbprint");
    let introspection = client.introspect().await.unwrap();
    assert_eq!(introspection["cnf"]["jkt"], jkt.as_str());
    assert_eq!(introspection["token_type"], "DPoP");

    // What the provider received, echoed: one DPoP header, the DPoP scheme (DPOP-01, DPOP-04).
    let echo: Value = client
        .get(format!("{}/echo?x=1", f.fed.data_origin()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = echo["authorization"].as_str().unwrap();
    assert!(auth.starts_with("DPoP "), "the DPoP scheme");
    let proof = echo["dpop"].as_str().unwrap();
    assert!(!proof.contains(','), "exactly one DPoP header");

    // A library caller cannot give a DPoP header either: the one there is is the host's.
    let e = client
        .get(f.fed.data_url())
        .header("DPoP", "x.y.z")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");

    let c = f.fed.counters();
    assert_eq!(c.token_requests, 1, "{c:?}");
    assert_eq!(
        c.dpop_proofs_accepted, 4,
        "a token request and 3 GETs: {c:?}"
    );
    assert_eq!((c.dpop_proofs_refused, c.dpop_nonce_demands), (0, 0));
    let proofs = f.fed.received_dpop_proofs();
    assert_eq!(proofs.len(), 4);
    assert_eq!(proofs[3], proof);
    let mut jtis = std::collections::BTreeSet::new();
    for (i, p) in proofs.iter().enumerate() {
        let (h, c) = decode(p);
        assert_eq!(
            (h["typ"].as_str(), h["alg"].as_str()),
            (Some("dpop+jwt"), Some("ES256"))
        );
        assert!(h["jwk"].get("d").is_none(), "public key only");
        assert!(
            jtis.insert(c["jti"].as_str().unwrap().to_owned()),
            "a fresh jti"
        );
        if i == 0 {
            assert_eq!(c["htm"], "POST");
            assert_eq!(c["htu"], format!("{}/token", f.fed.issuer_url()));
            assert!(c.get("ath").is_none(), "no ath at the token endpoint");
        } else {
            assert_eq!(c["htm"], "GET");
            assert!(c["ath"].is_string(), "ath on resource requests");
        }
    }
    let (_, last) = decode(&proofs[3]);
    assert_eq!(
        last["htu"],
        format!("{}/echo", f.fed.data_origin()),
        "htu without the query"
    );
}

/// DPOP-04 on the server side: the token sent with the Bearer scheme is refused, with a DPoP
/// challenge.
#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    let f = dpop_fed(false, 0).await;
    let client = f.client();
    assert_eq!(
        client.get(f.fed.data_url()).send().await.unwrap().status(),
        200
    );
    let token = client.danger_reveal_token().await.unwrap();
    let consumer = f.fed.pki().client("consumer").unwrap();
    let http = f.fed.pki().http_client(Some(consumer)).unwrap();
    let r = http
        .get(f.fed.data_url())
        .header("authorization", format!("Bearer {}", token.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("DPoP error=\"invalid_token\""),
        "{challenge}"
    );
    assert_eq!(f.fed.counters().dpop_bound_sent_as_bearer, 1);
}

/// DPOP-08: one key per client (per authorization server): two clients, two keys; a registered
/// `dpop_key` is the key of every client loaded with it.
#[tokio::test]
async fn each_client_has_its_own_key_unless_one_is_registered() {
    let f = dpop_fed(false, 0).await;
    let a = f.client().token_info().await.unwrap().dpop_thumbprint;
    let b = f.client().token_info().await.unwrap().dpop_thumbprint;
    assert!(a.is_some() && b.is_some());
    assert_ne!(a, b, "a fresh key per client");

    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let path = f.path("dpop.key");
    std::fs::write(&path, pair.serialize_pem()).unwrap();
    let mut settings = f.settings();
    settings.auth.dpop_key = Some(path);
    let c1 = FapiClient::from_settings(&settings).unwrap().0;
    let c2 = FapiClient::from_settings(&settings).unwrap().0;
    assert_eq!(c1.get(f.fed.data_url()).send().await.unwrap().status(), 200);
    let k1 = c1.token_info().await.unwrap().dpop_thumbprint;
    assert_eq!(k1, c2.token_info().await.unwrap().dpop_thumbprint);
    assert_eq!(
        c1.introspect().await.unwrap()["cnf"]["jkt"],
        k1.unwrap().as_str()
    );
}

/// DPOP-05: the first token request and the first resource request are each answered with a
/// nonce demand and replayed once; nonces rotated in 200s are used without a demand; a nonce
/// rotated out of band costs one replay. Counted at the servers.
#[tokio::test]
async fn nonces_are_replayed_once_and_followed_when_they_rotate() {
    let f = dpop_fed(true, 2).await;
    let client = f.client();
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        attempts.push(r.attempts());
    }
    assert_eq!(
        attempts,
        [2, 1, 1, 1, 1],
        "one replay, then the rotations in 200s"
    );
    let c = f.fed.counters();
    assert_eq!(
        c.token_requests, 2,
        "the token request and its replay: {c:?}"
    );
    assert_eq!(c.tokens_issued, 1);
    assert_eq!(
        c.dpop_nonce_demands, 2,
        "one at the AS, one at the DP: {c:?}"
    );
    assert_eq!(c.dpop_proofs_accepted, 6, "{c:?}");
    assert_eq!(c.dpop_proofs_refused, 0);
    // The proofs carried the nonce of their own server.
    let proofs = f.fed.received_dpop_proofs();
    let nonce = |i: usize| decode(&proofs[i]).1["nonce"].as_str().map(str::to_owned);
    assert_eq!(nonce(0), None, "the first token request knew no nonce");
    assert!(
        nonce(1).is_some() && nonce(2).is_none(),
        "the DP's first request knew none"
    );
    assert_ne!(nonce(1), nonce(3), "one nonce per server");

    f.fed.rotate_dpop_nonces();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    assert_eq!(f.fed.counters().dpop_nonce_demands, 3);
}

/// DPOP-05: a nonce demanded again right after the replay with it is an error, never a loop, at
/// the AS and at the data provider.
#[tokio::test]
async fn a_nonce_demanded_twice_in_a_row_is_an_error() {
    let f = dpop_fed(true, 0).await;
    f.fed.set_as_fault(Some(AsFault::DpopNonceAlways));
    let e = f.client().get(f.fed.data_url()).send().await.unwrap_err();
    assert!(matches!(e, Error::Dpop(_)), "{e:?}");
    assert!(
        e.to_string().contains("nonce demanded twice in a row"),
        "{e}"
    );
    assert_eq!(f.fed.counters().token_requests, 2);
    assert_eq!(f.fed.counters().dp_requests, 0);

    f.fed.set_as_fault(None);
    f.fed.set_dp_fault(Some(DpFault::DpopNonceAlways));
    let client = f.client();
    let e = client.get(f.fed.data_url()).send().await.unwrap_err();
    assert!(
        e.to_string().contains("nonce demanded twice in a row"),
        "{e}"
    );
    assert_eq!(f.fed.counters().dp_requests, 2);
    assert_no_credentials(&f, "the error", e.to_string().as_bytes());
}

/// A refused proof, a Bearer answer to a DPoP request and a server without ES256: each a clear
/// error after an exact number of token requests.
#[tokio::test]
async fn refusals_and_unbound_tokens_are_clear_errors() {
    let f = dpop_fed(false, 0).await;
    f.fed.set_as_fault(Some(AsFault::DpopProofRefused));
    let e = f.client().token_info().await.unwrap_err();
    assert!(
        matches!(&e, Error::TokenRefused { status: 400, error, .. } if error == "invalid_dpop_proof"),
        "{e:?}"
    );
    assert!(e.to_string().contains("clock"), "the fix: {e}");
    assert_eq!(f.fed.counters().token_requests, 1);

    f.fed
        .set_as_fault(Some(AsFault::TokenType("Bearer".into())));
    let e = f.client().token_info().await.unwrap_err();
    assert!(matches!(e, Error::TokenResponse(_)), "{e:?}");
    assert!(e.to_string().contains("did not bind the token"), "{e}");
    assert_eq!(f.fed.counters().token_requests, 2);

    f.fed
        .set_as_fault(Some(AsFault::DpopAlgs(vec!["PS256".into()])));
    let e = f.client().token_info().await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert!(
        e.to_string().contains("dpop_signing_alg_values_supported")
            && e.to_string().contains("ES256"),
        "{e}"
    );
    assert_eq!(f.fed.counters().token_requests, 2, "none sent");
}

/// The `invalid_token` replay under DPoP: a new token and a fresh proof (never a reused `jti`),
/// once; a streamed body gets the known nonce up front, and a nonce demand comes back as its 401.
#[tokio::test]
async fn invalid_token_replays_and_streamed_bodies_under_dpop() {
    let f = dpop_fed(true, 0).await;
    let client = f.client();
    assert_eq!(
        client.get(f.fed.data_url()).send().await.unwrap().status(),
        200
    );
    f.fed.revoke_all_tokens();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    let c = f.fed.counters();
    assert_eq!(c.tokens_issued, 2, "{c:?}");
    assert_eq!(c.dpop_replays_refused, 0, "{c:?}");

    let upload = || {
        let request = fapi_host::FapiRequest {
            method: http::Method::PUT,
            url: url::Url::parse(&format!("{}/upload", f.fed.data_origin())).unwrap(),
            headers: http::HeaderMap::new(),
            body: None,
            interaction_id: None,
            timeout: None,
        };
        let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"abcd")));
        (
            request,
            fapi_host::StreamedBody::new(futures_util::stream::iter(chunks), Some(16)),
        )
    };
    let (req, body) = upload();
    let r = client.send_stream(req, body).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.attempts()),
        (200, 1),
        "the known nonce up front"
    );
    f.fed.rotate_dpop_nonces();
    let (req, body) = upload();
    let r = client.send_stream(req, body).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.attempts()),
        (401, 1),
        "not sent again"
    );
    assert_eq!(r.auth_problem(), Some(&AuthProblem::DpopNonce));
    let (req, body) = upload();
    let r = client.send_stream(req, body).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.attempts()),
        (200, 1),
        "the new nonce was kept"
    );
    assert_eq!(f.fed.counters().uploads_whole, 2);
    let logs = logs();
    let logs = logs.lock().unwrap();
    assert_no_credentials(&f, "the logs (every level)", &logs);
}

/// `fapi-host -vv fetch` under DPoP with nonces: the data on stdout, and no proof and no token
/// in anything it printed.
#[tokio::test]
async fn the_fetch_command_works_under_dpop_and_prints_no_proof() {
    let f = dpop_fed(true, 1).await;
    let config = f.config.to_str().unwrap().to_owned();
    let url = f.fed.data_url();
    let dir = f.dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fapi_host(&["--config", &config, "-vv", "fetch", &url], &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(out.starts_with(b"postcode,"), "the data");
    let c = f.fed.counters();
    assert_eq!(
        (c.dpop_nonce_demands, c.dpop_proofs_accepted),
        (2, 2),
        "{c:?}"
    );
    assert_no_credentials(&f, "stdout", &out);
    assert_no_credentials(&f, "stderr (-vv)", &err);

    // `fapi-host token`: the token's type and the key it is bound to, never the token.
    for json in [false, true] {
        let config = f.config.to_str().unwrap().to_owned();
        let dir = f.dir.path().to_owned();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let mut args = vec!["--config", config.as_str(), "token"];
            if json {
                args.push("--json");
            }
            fapi_host(&args, &dir)
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        let text = String::from_utf8_lossy(&out);
        if json {
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["token_type"], "DPoP");
            assert_eq!(v["dpop_thumbprint"].as_str().map(str::len), Some(43), "{v}");
        } else {
            assert!(text.contains("token_type:             DPoP"), "{text}");
            assert!(text.contains("DPoP key thumbprint:"), "{text}");
        }
        assert_no_credentials(&f, "fapi-host token", &out);
    }
}

/// `fapi-host -vv batch` under DPoP with nonces: every item read with one token, every item's
/// proof accepted once (the first requests in flight each replayed once with the provider's
/// nonce), and no proof and no token in what it printed or in any file it wrote.
#[tokio::test]
async fn the_batch_command_works_under_dpop() {
    let f = dpop_fed(true, 0).await;
    let o = f.fed.data_origin();
    let input = f.path("items.txt");
    let lines: String = (0..20).map(|i| format!("{o}/items/{i}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let out_dir = f.path("out");
    let args: Vec<String> = [
        "--config",
        f.config.to_str().unwrap(),
        "-vv",
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dir = f.dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fapi_host(&args, &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let c = f.fed.counters();
    assert_eq!(c.tokens_issued, 1, "{c:?}");
    assert_eq!(c.dpop_proofs_accepted, 1 + 20, "{c:?}");
    assert_eq!(c.dpop_proofs_refused, 0, "{c:?}");
    assert!(c.dpop_nonce_demands >= 2, "{c:?}");
    assert_no_credentials(&f, "stdout", &out);
    assert_no_credentials(&f, "stderr (-vv)", &err);
    let mut files = 0;
    let mut stack = vec![out_dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                assert_no_credentials(&f, &p.display().to_string(), &std::fs::read(&p).unwrap());
            }
        }
    }
    assert!(files >= 20, "{files} files written");
}

/// The federation as a DPoP test harness, proofs made by hand and sent over the consumer's mTLS:
/// what its servers refuse (DPOP-02: a `jwk` with `d`, HS256; DPOP-03: `htu` with a query or
/// another scheme, `ath` at the token endpoint, a reused `jti`, `ath` of another token; DPOP-07:
/// `iat` 61 s behind or 11 s ahead), each with its reason, and what they accept (10 s ahead).
#[tokio::test]
async fn the_servers_refuse_bad_proofs_as_rfc_9449_says() {
    use fapi_host::jws::JwsKey;
    use serde_json::{Map, json};

    let f = dpop_fed(false, 0).await;
    let consumer = f.fed.pki().client("consumer").unwrap();
    let http = f.fed.pki().http_client(Some(consumer)).unwrap();
    let token_url = format!("{}/token", f.fed.issuer_url());
    let key = JwsKey::generate_p256("a test key").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let proof = |jwk: Value, claims: Value| {
        let mut header = Map::new();
        header.insert("typ".into(), "dpop+jwt".into());
        header.insert("jwk".into(), jwk);
        let mut c = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST",
            "htu": token_url, "iat": now});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        key.sign(header, &c).unwrap().as_str().to_owned()
    };
    let ask = |proof: String| {
        let http = http.clone();
        let url = token_url.clone();
        let client_id = consumer.client_id.clone();
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("dpop", proof)
                .body(format!(
                    "grant_type=client_credentials&client_id={client_id}"
                ))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, v)
        }
    };
    let jwk = key.jwk().clone();
    let mut with_d = jwk.clone();
    with_d["d"] = json!("AAAA");
    let good = proof(jwk.clone(), json!({}));
    let (h, rest) = good.split_once('.').unwrap();
    let mut hs = decode(&good).0;
    hs["alg"] = json!("HS256");
    let hs256 = format!("{}.{rest}", B64.encode(hs.to_string()));
    assert_ne!(h, hs256.split('.').next().unwrap());
    let cases = [
        (proof(with_d, json!({})), "private"),
        (hs256, "alg"),
        (
            proof(jwk.clone(), json!({"htu": format!("{token_url}?a=1")})),
            "htu",
        ),
        (
            proof(
                jwk.clone(),
                json!({"htu": token_url.replace("https:", "http:")}),
            ),
            "htu",
        ),
        (proof(jwk.clone(), json!({"ath": "abc"})), "ath"),
        // Well past the window on either side (the exact bounds are the federation's unit
        // test): the requests before these may take seconds on a loaded machine.
        (proof(jwk.clone(), json!({"iat": now - 75})), "old"),
        (proof(jwk.clone(), json!({"iat": now + 25})), "future"),
        (proof(jwk.clone(), json!({"htm": "GET"})), "htm"),
    ];
    let n = cases.len() as u64;
    for (p, why) in cases {
        let (status, v) = ask(p).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{why}: {v}"
        );
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{why}: {v}"
        );
    }
    // Accepted: 10 s ahead is within FAPI 2.0's window; the same proof again is a replay.
    let ahead = proof(jwk.clone(), json!({"iat": now + 10}));
    let (status, v) = ask(ahead.clone()).await;
    assert_eq!(
        (status, v["token_type"].as_str()),
        (200, Some("DPoP")),
        "{v}"
    );
    let (status, v) = ask(ahead).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("jti"),
        "{v}"
    );
    let c = f.fed.counters();
    assert_eq!(
        (c.dpop_proofs_refused, c.dpop_replays_refused),
        (n + 1, 1),
        "{c:?}"
    );
    assert_eq!(c.tokens_issued, 1);

    // At the data provider, with the token bound to the harness's key: a proof whose `ath` is
    // not the token's hash.
    let token = f.fed.issued_tokens()[0].clone();
    let data = f.fed.data_url();
    let rs_proof = |ath: &str| {
        let mut header = Map::new();
        header.insert("typ".into(), "dpop+jwt".into());
        header.insert("jwk".into(), jwk.clone());
        let c = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
            "htu": data, "iat": now, "ath": ath});
        key.sign(header, &c).unwrap().as_str().to_owned()
    };
    let r = http
        .get(&data)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", rs_proof("not-the-hash"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("DPoP error=\"invalid_dpop_proof\"") && challenge.contains("ath"),
        "{challenge}"
    );
}
