//! Fault injection: what the authorization server and the data provider can be told to get wrong.
//!
//! Faults are set programmatically ([`crate::Federation::set_as_fault`], [`crate::Federation::set_dp_fault`]),
//! over the admin listener (JSON, the serde form of these enums, durations in milliseconds), or, for
//! the data provider and only when `faults_enabled`, per request with query parameters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault of the authorization server. JSON form (admin `PUT /as-fault`): `"http_endpoints"`,
/// `{"issuer_mismatch":"https://x"}`, `{"slow_token":1500}` (milliseconds), `{"token_endpoint_status":500}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsFault {
    /// Discovery's `issuer` says this instead of the real issuer.
    IssuerMismatch(String),
    /// Discovery advertises `http://` endpoints (top level and aliases).
    HttpEndpoints,
    /// The top-level endpoints point at the mTLS listener and there are no `mtls_endpoint_aliases`.
    NoAliases,
    /// `token_endpoint_auth_methods_supported` lacks `tls_client_auth`.
    NoTlsClientAuth,
    /// Token responses have no `expires_in`.
    OmitExpiresIn,
    /// Token responses carry this `token_type`.
    TokenType(String),
    /// The token endpoint answers this status with an HTML body.
    TokenEndpointStatus(u16),
    /// The token endpoint answers 200 with a body that is not JSON.
    MalformedJson,
    /// The token endpoint waits this long before answering.
    SlowToken(#[serde(with = "millis")] Duration),
    /// The token endpoint answers 401 `invalid_client` whatever is presented.
    InvalidClient,
    /// Token responses report this `expires_in` (the stored token still lives `token_ttl`).
    ExpiresIn(i64),
    /// Discovery's `token_endpoint_auth_signing_alg_values_supported` is this list, and the
    /// token endpoint accepts assertions of these algorithms only.
    SigningAlgs(Vec<String>),
    /// The token endpoint's clock is this many seconds off (negative: behind): client assertions
    /// are judged by it, and its refusals carry a `Date` header from it.
    ClockSkew(i64),
    /// Discovery's `dpop_signing_alg_values_supported` is this list.
    DpopAlgs(Vec<String>),
    /// Every token request with a DPoP proof is answered 400 `use_dpop_nonce` with a new nonce.
    DpopNonceAlways,
    /// Every token request with a DPoP proof is answered 400 `invalid_dpop_proof`.
    DpopProofRefused,
    /// Discovery's `grant_types_supported` is this list.
    GrantTypes(Vec<String>),
}

/// A fault of the data provider, applied after the request has been authorised. JSON form
/// (admin `PUT /dp-fault`): `{"status":{"code":503,"retry_after":2}}`, `{"slow_body":100}`
/// (milliseconds per 4 KiB chunk), `{"slow_head":100}` (milliseconds before the head), `"reset_mid_body"`, `{"redirect":"https://..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpFault {
    /// Answer this status (JSON error body), with `Retry-After: <s>` when given.
    Status {
        /// The HTTP status code.
        code: u16,
        /// Seconds for `Retry-After`.
        retry_after: Option<u64>,
    },
    /// Wait this long before answering (no response head until then).
    SlowHead(#[serde(with = "millis")] Duration),
    /// Send the body in 4 KiB chunks, waiting this long before each.
    SlowBody(#[serde(with = "millis")] Duration),
    /// Send part of the body, then reset the TCP connection (RST).
    ResetMidBody,
    /// Announce the full `Content-Length`, send half the body, then close.
    TruncatedBody,
    /// Answer 401 `invalid_token` although the token is fine.
    InvalidToken,
    /// Answer 307 with this `Location`.
    Redirect(String),
    /// Omit the `Date` header.
    NoDate,
    /// Omit the `x-fapi-interaction-id` header.
    NoInteractionIdEcho,
    /// Every request with a DPoP proof is answered 401 `DPoP error="use_dpop_nonce"` with a new
    /// nonce (before the token is looked at).
    DpopNonceAlways,
}

/// Parse a per-request fault from query parameters (`fault`, `retry_after`, `delay_ms`, `location`).
/// Returns the fault and `fault_times` (None = every time). Unknown `fault` values are ignored.
pub(crate) fn from_query(
    params: &[(String, String)],
    default_location: &str,
) -> Option<(DpFault, Option<u64>)> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let retry_after = get("retry_after").and_then(|v| v.parse().ok());
    let fault = match get("fault")? {
        code @ ("429" | "500" | "502" | "503" | "504") => DpFault::Status {
            code: code.parse().ok()?,
            retry_after,
        },
        "slow" => DpFault::SlowBody(Duration::from_millis(
            get("delay_ms").and_then(|v| v.parse().ok()).unwrap_or(100),
        )),
        "slow_head" => DpFault::SlowHead(Duration::from_millis(
            get("delay_ms").and_then(|v| v.parse().ok()).unwrap_or(100),
        )),
        "reset" => DpFault::ResetMidBody,
        "truncate" => DpFault::TruncatedBody,
        "invalid_token" => DpFault::InvalidToken,
        "redirect" => DpFault::Redirect(get("location").unwrap_or(default_location).to_owned()),
        _ => return None,
    };
    Some((fault, get("fault_times").and_then(|v| v.parse().ok())))
}

/// Counts requests per exact path+query so `fault_times=n` applies to the first n only.
#[derive(Debug, Default)]
pub(crate) struct FaultTimes {
    seen: Mutex<HashMap<String, u64>>,
}

impl FaultTimes {
    /// Record one more request for `key`; true when the fault still applies.
    pub(crate) fn applies(&self, key: &str, times: Option<u64>) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        let n = seen.entry(key.to_owned()).or_insert(0);
        *n += 1;
        times.is_none_or(|t| *n <= t)
    }
}

mod millis {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn parses_query_faults() {
        let (f, t) = from_query(
            &q(&[("fault", "503"), ("retry_after", "2"), ("fault_times", "1")]),
            "x",
        )
        .expect("fault");
        assert_eq!(
            f,
            DpFault::Status {
                code: 503,
                retry_after: Some(2)
            }
        );
        assert_eq!(t, Some(1));
        let (f, _) =
            from_query(&q(&[("fault", "redirect")]), "https://d/elsewhere").expect("fault");
        assert_eq!(f, DpFault::Redirect("https://d/elsewhere".into()));
        assert!(from_query(&q(&[("rows", "5")]), "x").is_none());
    }

    #[test]
    fn fault_times_counts_per_key() {
        let ft = FaultTimes::default();
        assert!(ft.applies("/a?x", Some(1)));
        assert!(!ft.applies("/a?x", Some(1)));
        assert!(ft.applies("/b", Some(1)));
        assert!(ft.applies("/c", None));
        assert!(ft.applies("/c", None));
    }

    #[test]
    fn serde_forms_are_stable() {
        let j =
            serde_json::to_string(&AsFault::SlowToken(Duration::from_millis(1500))).expect("ser");
        assert_eq!(j, r#"{"slow_token":1500}"#);
        let f: DpFault =
            serde_json::from_str(r#"{"status":{"code":503,"retry_after":2}}"#).expect("de");
        assert_eq!(
            f,
            DpFault::Status {
                code: 503,
                retry_after: Some(2)
            }
        );
        let f: DpFault = serde_json::from_str(r#""reset_mid_body""#).expect("de");
        assert_eq!(f, DpFault::ResetMidBody);
    }
}
