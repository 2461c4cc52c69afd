//! The data provider: an Open Energy-style resource server. Every request needs a verified client
//! certificate and a certificate-bound bearer token (checked by [`crate::introspection`]); then the
//! current fault, if any, is applied; every response carries `Date` and `x-fapi-interaction-id`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::data;
use crate::dpop::{Expected, Refusal, Server};
use crate::faults::{self, DpFault};
use crate::introspection::{Denial, Introspector, check_answer};
use crate::state::{Shared, bump, now_secs};
use crate::tls::ConnInfo;

const INTERACTION_ID: HeaderName = HeaderName::from_static("x-fapi-interaction-id");
/// Piece size of a slow body.
const SLOW_PIECE: usize = 4096;
/// Rows above which computing the CSV length moves off the async threads.
const BLOCKING_ROWS: u64 = 100_000;

/// What the data provider's handlers share.
#[derive(Debug)]
pub(crate) struct DpState {
    pub introspector: Introspector,
    pub shared: Arc<Shared>,
    pub faults_enabled: bool,
    /// Target of `fault=redirect` without `location`.
    pub default_redirect: String,
    /// `https://127.0.0.1:<port>`: a DPoP proof's `htu` is this and the request's path.
    pub origin: String,
    /// Every token's `client_id` must be the Directory URL of the calling certificate (an
    /// external `ib1` issuer; ours issues default-profile tokens too).
    pub require_directory_url: bool,
}

type St = State<Arc<DpState>>;
type Pairs = Query<Vec<(String, String)>>;

/// The data provider router, guarded by [`guard`].
pub(crate) fn router(st: Arc<DpState>) -> Router {
    let mut r = Router::new()
        .route("/consumption.csv", get(consumption_csv))
        .route("/consumption.json", get(consumption_json))
        .route(
            "/consumption-edge-cases.csv",
            get(consumption_edge_cases_csv),
        )
        .route("/sized", get(sized))
        .route("/items/{id}", get(item))
        .route("/household.json", get(household))
        .route("/upload", post(upload).put(upload));
    if st.faults_enabled {
        r = r.route("/echo", get(echo));
    }
    r.fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" }))) })
        .layer(middleware::from_fn_with_state(st.clone(), guard))
        .with_state(st)
}

async fn guard(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    mut req: Request,
    next: Next,
) -> Response {
    bump(&st.shared.counters.dp_requests);
    let interaction = req
        .headers()
        .get(INTERACTION_ID)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok());
    let query_fault = if st.faults_enabled {
        let pairs = Pairs::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        faults::from_query(&pairs, &st.default_redirect)
    } else {
        None
    };
    let mut fault = st.shared.dp_fault();
    let dpop_scheme = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().get(..5))
        .is_some_and(|s| s.eq_ignore_ascii_case(b"dpop "));
    let authorized =
        if fault == Some(DpFault::DpopNonceAlways) && req.headers().contains_key("dpop") {
            if let Some(p) = req.headers().get("dpop").and_then(|v| v.to_str().ok()) {
                st.shared.dpop.received.record(p);
            }
            bump(&st.shared.dpop.counters.nonce_demands);
            st.shared.dpop.rotate(Server::Dp);
            Err(Denial::UseDpopNonce)
        } else {
            authorize(&st, &conn, req.method().as_str(), req.headers(), req.uri()).await
        };
    let mut resp = match authorized {
        Err(denial) => denial.into_response(),
        Ok(sub) => {
            req.extensions_mut().insert(Household(sub));
            if fault.is_none()
                && let Some((f, times)) = query_fault
            {
                let key = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
                if st.shared.fault_times.applies(key, times) {
                    fault = Some(f);
                }
            }
            apply_fault(fault.clone(), &conn, req, next).await
        }
    };
    let h = resp.headers_mut();
    // A request with the DPoP scheme is answered with DPoP challenges (RFC 9449 section 7.1).
    if dpop_scheme
        && let Some(v) = h.get(header::WWW_AUTHENTICATE)
        && let Some(rest) = v.as_bytes().strip_prefix(b"Bearer")
        && let Ok(v) = HeaderValue::from_bytes(&[b"DPoP", rest].concat())
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    let nonce = match fault {
        Some(DpFault::DpopNonceAlways) => st.shared.dpop.current(Server::Dp),
        _ => st.shared.dpop.nonce(Server::Dp),
    };
    if let Some(n) = nonce
        && let Ok(v) = HeaderValue::from_str(&n)
    {
        h.insert("dpop-nonce", v);
    }
    if fault != Some(DpFault::NoDate)
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
    {
        h.insert(header::DATE, v);
    }
    if fault != Some(DpFault::NoInteractionIdEcho)
        && let Some(v) = interaction
    {
        h.insert(INTERACTION_ID, v);
    }
    resp
}

/// RFC 6750 + OE request validation: certificate, exactly one Authorization header (Bearer, or
/// DPoP with exactly one verified proof: RFC 9449 section 7), no token in the query, then
/// introspection, and the token's bindings.
async fn authorize(
    st: &DpState,
    conn: &ConnInfo,
    method: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Option<String>, Denial> {
    let Some(cert) = &conn.peer_cert else {
        return Err(Denial::NoCredentials);
    };
    let pairs = Pairs::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    if pairs.iter().any(|(k, _)| k == "access_token") {
        return Err(Denial::InvalidRequest(
            "access tokens are not accepted in the query",
        ));
    }
    let mut auths = headers.get_all(header::AUTHORIZATION).iter();
    let first = auths.next();
    if auths.next().is_some() {
        return Err(Denial::InvalidRequest("more than one Authorization header"));
    }
    let Some(value) = first else {
        return Err(Denial::NoCredentials);
    };
    let value = value
        .to_str()
        .map_err(|_| Denial::InvalidRequest("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    if !dpop && !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::InvalidRequest(
            "only the Bearer and DPoP schemes are accepted",
        ));
    }
    let token = token.trim();
    if !is_b64token(token) {
        return Err(Denial::InvalidRequest("malformed bearer token"));
    }
    let mut proofs = headers.get_all("dpop").iter();
    let (first, second) = (proofs.next(), proofs.next());
    if second.is_some() {
        return Err(Denial::InvalidDpopProof("more than one DPoP header".into()));
    }
    let proof_jkt = match (dpop, first) {
        (false, _) => None,
        (true, None) => return Err(Denial::InvalidDpopProof("no DPoP header".into())),
        (true, Some(proof)) => {
            let htu = format!("{}{}", st.origin, uri.path());
            let expected = Expected {
                htm: method,
                htu: &htu,
                token: Some(token),
                now: now_secs(),
            };
            let proof = proof.to_str().unwrap_or("");
            match st.shared.dpop.accept(Server::Dp, proof, &expected) {
                Ok(p) => Some(p.jkt),
                Err(Refusal::UseNonce) => return Err(Denial::UseDpopNonce),
                Err(Refusal::Invalid(why)) => return Err(Denial::InvalidDpopProof(why)),
            }
        }
    };
    let answer = st.introspector.introspect(token).await.map_err(|e| {
        tracing::warn!("introspection failed: {e}");
        Denial::Unavailable
    })?;
    let checked = check_answer(&answer, cert, now_secs(), proof_jkt.as_deref()).and_then(|()| {
        if st.require_directory_url {
            crate::consent::require_directory_url(&answer, cert).map_err(Denial::InvalidToken)
        } else {
            Ok(())
        }
    });
    if checked == Err(Denial::DpopBoundAsBearer) {
        bump(&st.shared.dpop.counters.bearer_refused);
    }
    checked.map(|()| answer.get("sub").and_then(Value::as_str).map(str::to_owned))
}

/// The household whose consent the request's token carries (its introspected `sub`), if any.
#[derive(Clone)]
struct Household(Option<String>);

/// `/household.json`: `{"household": NAME}`, the household whose consent the token carries
/// (the client's id for a `client_credentials` token): a test tells the data of one household from
/// another's by it.
async fn household(Extension(h): Extension<Household>) -> Response {
    Json(json!({ "household": h.0 })).into_response()
}

/// RFC 6750 §2.1 `b64token`.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

async fn apply_fault(
    fault: Option<DpFault>,
    conn: &ConnInfo,
    req: Request,
    next: Next,
) -> Response {
    match fault {
        None | Some(DpFault::NoDate | DpFault::NoInteractionIdEcho | DpFault::DpopNonceAlways) => {
            next.run(req).await
        }
        Some(DpFault::Status { code, retry_after }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = (
                status,
                Json(json!({ "error": "injected_fault", "status": code })),
            )
                .into_response();
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            resp
        }
        Some(DpFault::InvalidToken) => Denial::InvalidToken("token rejected").into_response(),
        Some(DpFault::Redirect(location)) => {
            let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Some(DpFault::SlowHead(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(req).await
        }
        Some(DpFault::SlowBody(delay)) => {
            let resp = next.run(req).await;
            rebody(resp, |body, len| (slow_body(body, delay), len))
        }
        Some(DpFault::ResetMidBody) => {
            let resp = next.run(req).await;
            let conn = conn.clone();
            rebody(resp, move |body, len| {
                let len = len.unwrap_or(2);
                (cut_body(body, len / 2, Some(conn)), Some(len))
            })
        }
        Some(DpFault::TruncatedBody) => {
            let resp = next.run(req).await;
            rebody(resp, |body, len| {
                let len = len.unwrap_or(0).max(1);
                (cut_body(body, len / 2, None), Some(len))
            })
        }
    }
}

/// Replace a response's body; `f` gets the body and its known length and returns the new body
/// and the `Content-Length` to announce.
fn rebody(resp: Response, f: impl FnOnce(Body, Option<u64>) -> (Body, Option<u64>)) -> Response {
    let (mut parts, body) = resp.into_parts();
    let len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .or_else(|| body.size_hint().exact());
    let (body, announced) = f(body, len);
    if let Some(n) = announced {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Response::from_parts(parts, body)
}

fn slow_body(body: Body, delay: Duration) -> Body {
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), Bytes::new()),
        move |(mut s, mut pending)| async move {
            while pending.is_empty() {
                match s.next().await? {
                    Ok(b) => pending = b,
                    Err(e) => return Some((Err(std::io::Error::other(e)), (s, Bytes::new()))),
                }
            }
            tokio::time::sleep(delay).await;
            let piece = pending.split_to(pending.len().min(SLOW_PIECE));
            Some((Ok(piece), (s, pending)))
        },
    );
    Body::from_stream(stream)
}

/// Send `limit` bytes of `body`, wait for them to be flushed, then end (truncation: hyper closes
/// the connection because the announced length was not reached) or, with `reset`, abort the
/// connection with an RST.
fn cut_body(body: Body, limit: u64, reset: Option<ConnInfo>) -> Body {
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut s, sent, done)| {
            let reset = reset.clone();
            async move {
                if done {
                    return None;
                }
                if sent < limit
                    && let Some(Ok(mut b)) = s.next().await
                {
                    b.truncate(
                        usize::try_from(limit - sent)
                            .unwrap_or(usize::MAX)
                            .min(b.len()),
                    );
                    let n = b.len() as u64;
                    return Some((Ok(b), (s, sent + n, false)));
                }
                // Give hyper time to flush what was sent before the connection ends.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let conn = reset?;
                conn.arm_reset();
                Some((
                    Err(std::io::Error::other("injected connection reset")),
                    (s, sent, true),
                ))
            }
        },
    );
    Body::from_stream(stream)
}

fn rows_param(pairs: &[(String, String)]) -> Result<Option<u64>, Box<Response>> {
    match pairs.iter().find(|(k, _)| k == "rows") {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| Box::new(bad_param("rows"))),
    }
}

fn bad_param(name: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": "invalid_request", "error_description": format!("{name} must be a non-negative integer") })),
    )
        .into_response()
}

fn with_type(mut resp: Response, content_type: &'static str) -> Response {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn consumption_csv(Query(pairs): Pairs) -> Response {
    let rows = match rows_param(&pairs) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let resp = match rows {
        None => data::csv(data::DEFAULT_ROWS).into_response(),
        Some(rows) => {
            let len = if rows > BLOCKING_ROWS {
                tokio::task::spawn_blocking(move || data::csv_len(rows))
                    .await
                    .unwrap_or(0)
            } else {
                data::csv_len(rows)
            };
            let stream = futures_util::stream::unfold(Some(0u64), move |from| async move {
                let from = from?;
                let (chunk, next) = data::csv_chunk(from, rows);
                Some((
                    Ok::<_, std::io::Error>(chunk),
                    (next < rows).then_some(next),
                ))
            });
            let mut resp = Body::from_stream(stream).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
    };
    with_type(resp, "text/csv; charset=utf-8")
}

async fn consumption_edge_cases_csv() -> Response {
    with_type(
        data::EDGE_CASES_CSV.into_response(),
        "text/csv; charset=utf-8",
    )
}

async fn consumption_json(Query(pairs): Pairs) -> Response {
    let rows = match rows_param(&pairs) {
        Ok(r) => r.unwrap_or(data::DEFAULT_ROWS).min(BLOCKING_ROWS),
        Err(resp) => return *resp,
    };
    with_type(data::json(rows).into_response(), "application/json")
}

async fn sized(Query(pairs): Pairs) -> Response {
    let Some(total) = pairs
        .iter()
        .find(|(k, _)| k == "bytes")
        .and_then(|(_, v)| v.parse::<u64>().ok())
    else {
        return bad_param("bytes");
    };
    let chunks = total.div_ceil(data::CHUNK as u64);
    let stream = futures_util::stream::iter(0..chunks)
        .map(move |k| Ok::<_, std::io::Error>(data::sized_chunk(k, total)));
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    with_type(resp, "application/octet-stream")
}

async fn item(Path(id): Path<String>) -> Response {
    if id.len() > 256 {
        return bad_param("id");
    }
    Json(data::item(&id)).into_response()
}

/// Read the body to its end: `{bytes, sha256}` of what arrived, and the upload counted whole; a
/// body that breaks off is counted broken (tests check that a cut upload never arrives whole).
async fn upload(State(st): St, req: Request) -> Response {
    let counters = &st.shared.counters;
    let mut stream = req.into_body().into_data_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                n += b.len() as u64;
                hasher.update(&b);
            }
            Err(_) => {
                bump(&counters.uploads_broken);
                return StatusCode::BAD_REQUEST.into_response();
            }
        }
    }
    bump(&counters.uploads_whole);
    let hex = hasher.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    Json(json!({ "bytes": n, "sha256": hex })).into_response()
}

/// The request headers as received (lower-case names; repeated headers joined with ", ").
async fn echo(headers: HeaderMap) -> Json<Value> {
    let mut out = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        out.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    Json(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token_syntax() {
        assert!(is_b64token("abc-_.~+/=="));
        assert!(!is_b64token(""));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("a\"b"));
    }
}
