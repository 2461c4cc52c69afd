//! One path out of the sandbox for both guest interfaces: policy, per-guest budget, the native
//! client (token, mTLS, replay, retries), response size limit, and the audit log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Method};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::audit::{Audit, AuditEvent};
use crate::client::{FapiClient, FapiRequest, FapiResponse};
use crate::config::SandboxSettings;
use crate::error::Error;
use crate::policy::{Denial, HeaderCaller, MAX_QUOTED, MAX_QUOTED_NAME, Policy, bounded};

/// What went wrong with a guest request, before it is mapped to a guest-visible error type.
/// No variant carries credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GuestError {
    Denied(String),
    InvalidRequest(String),
    Timeout,
    TooLarge(u64),
    Unreachable(String),
    TokenUnavailable {
        code: String,
        description: Option<String>,
    },
    LimitExceeded(String),
    BodyInterrupted(String),
}

impl GuestError {
    fn kind(&self) -> &'static str {
        match self {
            GuestError::Denied(_) => "denied",
            GuestError::InvalidRequest(_) => "invalid-request",
            GuestError::Timeout => "timeout",
            GuestError::TooLarge(_) => "too-large",
            GuestError::Unreachable(_) => "unreachable",
            GuestError::TokenUnavailable { .. } => "token-unavailable",
            GuestError::LimitExceeded(_) => "limit-exceeded",
            GuestError::BodyInterrupted(_) => "body-interrupted",
        }
    }

    fn from_client(e: Error) -> GuestError {
        match e {
            Error::TokenRefused {
                error, description, ..
            } => GuestError::TokenUnavailable {
                code: error,
                description,
            },
            Error::TokenResponse(m) => GuestError::TokenUnavailable {
                code: "server_error".into(),
                description: Some(m),
            },
            Error::Discovery(m) => GuestError::TokenUnavailable {
                code: "discovery_failed".into(),
                description: Some(m),
            },
            Error::TokenUnreachable { message, .. } => GuestError::TokenUnavailable {
                code: "authorization_server_unreachable".into(),
                description: Some(message),
            },
            Error::Config(m) | Error::Credentials(m) => GuestError::TokenUnavailable {
                code: "host_configuration".into(),
                description: Some(m),
            },
            Error::Timeout(_) => GuestError::Timeout,
            Error::Tls(m) | Error::Network(m) => GuestError::Unreachable(m),
            Error::InvalidRequest(m) => GuestError::InvalidRequest(m),
            Error::Denied(m) => GuestError::Denied(m),
            Error::TooLarge(m) => GuestError::Unreachable(m),
            Error::Io(m) | Error::Component(m) => GuestError::Unreachable(m),
            Error::Dpop(m) => GuestError::TokenUnavailable {
                code: "dpop".into(),
                description: Some(m),
            },
            // Which grant the host uses is not the guest's to know.
            Error::Grant(_) => GuestError::TokenUnavailable {
                code: "host_configuration".into(),
                description: Some("the host's grant cannot be used (see the host's log)".into()),
            },
            Error::ConsentEnded(_) => GuestError::TokenUnavailable {
                code: "consent_ended".into(),
                description: Some("the household's consent has ended or was revoked".into()),
            },
        }
    }
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestError::Denied(m)
            | GuestError::InvalidRequest(m)
            | GuestError::Unreachable(m)
            | GuestError::LimitExceeded(m)
            | GuestError::BodyInterrupted(m) => write!(f, "{}: {m}", self.kind()),
            GuestError::Timeout => f.write_str("timeout"),
            GuestError::TooLarge(n) => write!(f, "too-large: over {n} bytes"),
            GuestError::TokenUnavailable { code, description } => write!(
                f,
                "token-unavailable: {code}{}",
                crate::error::describe(description)
            ),
        }
    }
}

/// Which guest interface a request came through (for the audit log).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Interface {
    FapiFetch,
    WasiHttp,
}

impl Interface {
    fn name(self) -> &'static str {
        match self {
            Interface::FapiFetch => "fapi-fetch",
            Interface::WasiHttp => "wasi-http",
        }
    }
}

/// A guest's way out: shared by its fapi-fetch and wasi:http paths, so that one budget covers both.
#[derive(Debug)]
pub(crate) struct Egress {
    client: FapiClient,
    policy: Arc<Policy>,
    audit: Arc<Audit>,
    in_flight: Arc<Semaphore>,
    requests: AtomicU64,
    limits: SandboxSettings,
    /// Shared with every pending audit record (a reference count, not a copy, per request).
    guest: Arc<str>,
}

/// A request as the guest gave it, already parsed.
pub(crate) struct GuestRequest {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub timeout: Option<Duration>,
    pub interface: Interface,
}

impl Egress {
    pub(crate) fn new(
        client: FapiClient,
        policy: Arc<Policy>,
        audit: Arc<Audit>,
        limits: SandboxSettings,
        guest: String,
    ) -> Egress {
        Egress {
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests as usize)),
            requests: AtomicU64::new(0),
            client,
            policy,
            audit,
            limits,
            guest: guest.into(),
        }
    }

    pub(crate) fn limits(&self) -> &SandboxSettings {
        &self.limits
    }

    fn deny(&self, req: &GuestRequest, err: GuestError) -> GuestError {
        self.refuse(req.interface, req.method.as_str(), &req.url, err)
    }

    /// Record a refused request: a log line and an audit record, with the method and URL as the
    /// guest gave them, bounded like every guest string (`policy::bounded`). Past the request budget
    /// only the first refusal is recorded, so that a guest looping on refused requests cannot fill
    /// the log or the audit file.
    pub(crate) fn refuse(
        &self,
        interface: Interface,
        method: &str,
        url: &str,
        err: GuestError,
    ) -> GuestError {
        if self.requests.load(Ordering::Relaxed) > self.limits.max_requests.saturating_add(1) {
            return err;
        }
        tracing::warn!(guest = %self.guest, interface = interface.name(), "request refused: {err}");
        self.audit.record(&AuditEvent {
            guest: &self.guest,
            interface: interface.name(),
            decision: "deny",
            method: bounded(method, MAX_QUOTED_NAME).as_ref(),
            url: bounded(url, MAX_QUOTED).as_ref(),
            status: None,
            bytes: 0,
            duration_ms: 0,
            interaction_id: None,
            error: Some(err.to_string()),
        });
        err
    }

    /// Count a request against the run's total, whether it is then allowed or refused.
    fn count(&self) -> Result<(), GuestError> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_requests {
            return Err(GuestError::LimitExceeded(format!(
                "more than {} requests in this run ([sandbox] max_requests / --max-requests)",
                self.limits.max_requests
            )));
        }
        Ok(())
    }

    /// Refuse a request the guest could not even state (a bad method, header or body), counting
    /// it like any other.
    pub(crate) fn refuse_unsent(
        &self,
        interface: Interface,
        method: &str,
        url: &str,
        err: GuestError,
    ) -> GuestError {
        let err = self.count().err().unwrap_or(err);
        self.refuse(interface, method, url, err)
    }

    /// A body for a response the host fetched itself with `method` (batch items handed to a
    /// processor). It takes no in-flight permit of the guest's budget. If the body fails (breaks
    /// off, or is larger than the guest may read), the failure is put in `watch`, so that the
    /// host knows the guest did not get the whole body, whatever it makes of the error.
    pub(crate) fn adopt(
        &self,
        response: &FapiResponse,
        method: Method,
        watch: BodyWatch,
    ) -> GuestBody {
        GuestBody {
            stream: None,
            limit: self.limits.max_response_body,
            read: 0,
            failed: None,
            watch: Some(watch),
            _permit: None,
            record: PendingAudit {
                audit: self.audit.clone(),
                guest: self.guest.clone(),
                interface: "batch",
                method,
                url: response.url().to_string(),
                status: response.status().as_u16(),
                interaction_id: response.interaction_id().map(str::to_owned),
                started: Instant::now(),
                bytes: 0,
                error: None,
            },
        }
    }

    /// Check and send a guest request. The returned body holds the in-flight permit until it is
    /// finished or dropped, and writes the audit record then.
    pub(crate) async fn send(
        &self,
        req: GuestRequest,
    ) -> Result<(FapiResponse, GuestBody), GuestError> {
        let admitted = self.admit(&req)?;
        self.send_admitted(req, admitted).await
    }

    /// Everything that decides whether a request may go out, before its body is read: counted
    /// against the run's total, policy, method, headers, body size (when known), and a place
    /// among the requests in flight. A request refused here is recorded.
    pub(crate) fn admit(&self, req: &GuestRequest) -> Result<Admitted, GuestError> {
        self.count().map_err(|e| self.deny(req, e))?;
        let url = match self.policy.check_url(&req.url) {
            Ok(u) => u,
            Err(d @ Denial::Invalid(_)) => {
                return Err(self.deny(req, GuestError::InvalidRequest(d.to_string())));
            }
            Err(d) => return Err(self.deny(req, GuestError::Denied(d.to_string()))),
        };
        // One rule for both interfaces (wasi:http lets a guest name any method, TRACE included).
        if let Err(m) = crate::policy::check_parsed_method(&req.method) {
            return Err(self.deny(req, GuestError::InvalidRequest(m)));
        }
        for name in req.headers.keys() {
            if let Some(why) = crate::policy::header_refusal(HeaderCaller::Guest, name) {
                return Err(self.deny(req, GuestError::InvalidRequest(why)));
            }
        }
        if let Some(b) = &req.body
            && b.len() as u64 > self.limits.max_request_body
        {
            return Err(self.deny(req, GuestError::TooLarge(self.limits.max_request_body)));
        }
        let permit = match self.in_flight.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let e = GuestError::LimitExceeded(format!(
                    "more than {} requests in flight ([sandbox] max_concurrent_requests / --max-concurrent-requests); finish or drop a response body first",
                    self.limits.max_concurrent_requests
                ));
                return Err(self.deny(req, e));
            }
        };
        Ok(Admitted { url, permit })
    }

    /// Send a request [`Egress::admit`] let through (its body read since, if it has one). The
    /// guest's timeout bounds the whole request: the token, every attempt and the waits between
    /// them.
    pub(crate) async fn send_admitted(
        &self,
        req: GuestRequest,
        admitted: Admitted,
    ) -> Result<(FapiResponse, GuestBody), GuestError> {
        // The body's size was checked by `admit` (fapi-fetch) or bounded as it was read (wasi:http).
        let Admitted { url, permit } = admitted;
        let started = Instant::now();
        let sent = match req.timeout {
            Some(t) => tokio::time::timeout(t, self.through_client(&req, url))
                .await
                .unwrap_or_else(|_| Err(Error::Timeout(String::new()))),
            None => self.through_client(&req, url).await,
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                drop(permit);
                return Err(self.deny(&req, GuestError::from_client(e)));
            }
        };
        let record = PendingAudit {
            audit: self.audit.clone(),
            guest: self.guest.clone(),
            interface: req.interface.name(),
            method: req.method.clone(),
            url: response.url().to_string(),
            status: response.status().as_u16(),
            interaction_id: response.interaction_id().map(str::to_owned),
            started,
            bytes: 0,
            error: None,
        };
        let body = GuestBody {
            stream: None,
            limit: self.limits.max_response_body,
            read: 0,
            failed: None,
            watch: None,
            _permit: Some(permit),
            record,
        };
        Ok((response, body))
    }

    /// Send through the client, which retries an idempotent request as its settings say.
    async fn through_client(
        &self,
        req: &GuestRequest,
        url: url::Url,
    ) -> crate::error::Result<FapiResponse> {
        self.client
            .send(FapiRequest {
                method: req.method.clone(),
                url,
                headers: req.headers.clone(),
                body: req.body.clone(),
                interaction_id: None,
                timeout: req.timeout,
            })
            .await
    }
}

/// Resolve the authorization server's hosts, refuse an allow entry that reaches one of its
/// addresses and ports (a configuration error naming both), and build the client guests send
/// through, which refuses such an address when it connects. Returns the policy, now also
/// comparing IP addresses in URLs with the authorization server's, and that client (sending on
/// hyper's client directly when `direct`, as `fapi-host proxy` does; through reqwest otherwise).
pub(crate) async fn guarded(
    client: &FapiClient,
    policy: Policy,
    authorization_server: &[url::Url],
    limits: &SandboxSettings,
    direct: bool,
) -> crate::error::Result<(Policy, FapiClient)> {
    let resolver = crate::net::Resolver::new(client.settings().client.resolve.clone());
    let (addresses, unresolved) =
        crate::net::AuthorizationServerAddresses::resolve(authorization_server, &resolver).await;
    for name in &unresolved {
        tracing::warn!(
            "the authorization server's host {name} could not be resolved: guests are kept from it by name only"
        );
    }
    let clash = |entry: &str, at: std::net::SocketAddr, url: &str| {
        Error::Config(format!(
            "egress allow entry {entry:?} reaches the authorization server: it goes to {at}, an \
             address of {} (guests may never reach it, under any name); remove the entry, or if \
             a data provider really shares that address and port (virtual hosts), list its origin \
             in `[sandbox] allow_authorization_server_address` too (see the README for the risk)",
            crate::policy::shown_url(url)
        ))
    };
    for (ip, port, entry) in policy.allowed_addresses() {
        if let Some(url) = addresses.blocks(ip, port) {
            return Err(clash(entry, std::net::SocketAddr::new(ip, port), url));
        }
    }
    let addresses = Arc::new(addresses);
    let policy = policy.with_addresses(
        addresses.clone(),
        &limits.allow_authorization_server_address,
    )?;
    for (name, port, entry) in policy.allowed_names() {
        if policy.is_shared(name, port) {
            continue;
        }
        match resolver.lookup(name).await {
            Ok(ips) => {
                if let Some((ip, url)) = ips
                    .iter()
                    .find_map(|ip| addresses.blocks(*ip, port).map(|u| (*ip, u)))
                {
                    return Err(clash(entry, std::net::SocketAddr::new(ip, port), url));
                }
            }
            // Checked again whenever a guest connects.
            Err(e) => tracing::debug!("allow entry {entry}: {e}"),
        }
    }
    let shared = policy
        .allowed_names()
        .into_iter()
        .filter(|(name, port, _)| policy.is_shared(name, *port))
        .map(|(name, port, _)| (name.to_owned(), port))
        .collect();
    let guests = client.guarded(&policy.allowed_ports(), addresses, shared, direct)?;
    Ok((policy, guests))
}

/// A request let through by [`Egress::admit`]: its checked URL and its place in flight.
pub(crate) struct Admitted {
    url: url::Url,
    permit: OwnedSemaphorePermit,
}

struct PendingAudit {
    audit: Arc<Audit>,
    guest: Arc<str>,
    interface: &'static str,
    method: Method,
    url: String,
    status: u16,
    interaction_id: Option<String>,
    started: Instant,
    bytes: u64,
    error: Option<String>,
}

impl Drop for PendingAudit {
    fn drop(&mut self) {
        self.audit.record(&AuditEvent {
            guest: &self.guest,
            interface: self.interface,
            decision: "allow",
            method: self.method.as_str(),
            url: &bounded(&self.url, MAX_QUOTED),
            status: Some(self.status),
            bytes: self.bytes,
            duration_ms: self.started.elapsed().as_millis() as u64,
            interaction_id: self.interaction_id.as_deref(),
            error: self.error.clone(),
        });
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = crate::error::Result<Bytes>> + Send>>;

/// Why a body the host fetched itself did not reach the guest whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// It broke off (connection reset, truncated, stalled past the client's timeout): the
    /// message says how. Transient: fetching it again may succeed.
    Broken(String),
    /// It was larger than the guest may read: this many bytes (`max_response_body`, or for
    /// `read-all` half the memory limit when lower).
    TooLarge(u64),
}

/// Where the first failure of a body the host fetched itself is reported.
pub(crate) type BodyWatch = Arc<OnceLock<BodyFailure>>;

/// A response body on its way to a guest: counts bytes, enforces the size limit, holds the
/// in-flight permit, and writes the audit record when dropped. Its first error is final: every
/// later read returns it again, never an end that a guest could take for the whole body.
pub(crate) struct GuestBody {
    stream: Option<ByteStream>,
    limit: u64,
    read: u64,
    /// The error that ended the body, returned by every later read.
    failed: Option<GuestError>,
    /// For a body the host fetched itself (a batch item): where its failure is reported to the
    /// host.
    watch: Option<BodyWatch>,
    _permit: Option<OwnedSemaphorePermit>,
    record: PendingAudit,
}

impl std::fmt::Debug for GuestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBody")
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl GuestBody {
    /// Attach the response's byte stream.
    pub(crate) fn attach(&mut self, response: FapiResponse) {
        self.stream = Some(Box::pin(response.into_stream()));
    }

    /// End the body with `err` (`why` for the audit record): the stream is dropped (releasing
    /// the connection) and every later read returns `err`.
    pub(crate) fn fail(&mut self, err: GuestError, why: String) -> GuestError {
        if let Some(watch) = &self.watch {
            let _ = watch.set(match err {
                GuestError::TooLarge(limit) => BodyFailure::TooLarge(limit),
                _ => BodyFailure::Broken(why.clone()),
            });
        }
        self.stream = None;
        self.record.error.get_or_insert(why);
        self.failed = Some(err.clone());
        err
    }

    fn account(
        &mut self,
        item: Option<crate::error::Result<Bytes>>,
    ) -> Option<Result<Bytes, GuestError>> {
        match item {
            None => None,
            Some(Ok(chunk)) => {
                self.read += chunk.len() as u64;
                self.record.bytes = self.read;
                if self.read > self.limit {
                    let why = format!("response larger than {} bytes", self.limit);
                    Some(Err(self.fail(GuestError::TooLarge(self.limit), why)))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(e)) => {
                let msg = e.to_string();
                let err = match e {
                    Error::Timeout(_) => GuestError::Timeout,
                    _ => GuestError::BodyInterrupted(msg.clone()),
                };
                Some(Err(self.fail(err, msg)))
            }
        }
    }

    /// The next chunk, None at the end; after an error, that error again.
    pub(crate) async fn next_chunk(&mut self) -> Option<Result<Bytes, GuestError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let item = {
            let stream = self.stream.as_mut()?;
            futures_util::StreamExt::next(stream).await
        };
        self.account(item)
    }
}

impl Stream for GuestBody {
    type Item = Result<Bytes, GuestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Some(Err(e.clone())));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(item) => Poll::Ready(self.account(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body over `items`, with `limit` bytes allowed and a watch as batch items have.
    fn body(items: Vec<crate::error::Result<Bytes>>, limit: u64) -> (GuestBody, BodyWatch) {
        let watch = Arc::new(OnceLock::new());
        let body = GuestBody {
            stream: Some(Box::pin(futures_util::stream::iter(items))),
            limit,
            read: 0,
            failed: None,
            watch: Some(watch.clone()),
            _permit: None,
            record: PendingAudit {
                audit: Arc::new(Audit::log_only()),
                guest: "test".into(),
                interface: "batch",
                method: Method::GET,
                url: "https://data.example/x".into(),
                status: 200,
                interaction_id: None,
                started: Instant::now(),
                bytes: 0,
                error: None,
            },
        };
        (body, watch)
    }

    #[tokio::test]
    async fn a_body_error_is_returned_by_every_later_read_and_reported() {
        let (mut b, watch) = body(
            vec![
                Ok(Bytes::from_static(b"first")),
                Err(Error::Network("reset".into())),
                Ok(Bytes::from_static(b"never seen")),
            ],
            1 << 20,
        );
        assert_eq!(b.next_chunk().await, Some(Ok(Bytes::from_static(b"first"))));
        for _ in 0..3 {
            assert!(
                matches!(
                    b.next_chunk().await,
                    Some(Err(GuestError::BodyInterrupted(_)))
                ),
                "a read after the error must not look like the end of the body"
            );
        }
        assert!(
            matches!(watch.get(), Some(BodyFailure::Broken(m)) if m.contains("reset")),
            "{watch:?}"
        );
        // The same through the Stream interface (wasi:http).
        let next = futures_util::StreamExt::next(&mut b).await;
        assert!(matches!(next, Some(Err(GuestError::BodyInterrupted(_)))));

        let (mut b, watch) = body(vec![Err(Error::Timeout("stalled".into()))], 1 << 20);
        assert_eq!(b.next_chunk().await, Some(Err(GuestError::Timeout)));
        assert_eq!(b.next_chunk().await, Some(Err(GuestError::Timeout)));
        assert!(matches!(watch.get(), Some(BodyFailure::Broken(_))));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_stays_too_large() {
        let (mut b, watch) = body(
            vec![
                Ok(Bytes::from_static(b"0123456789")),
                Ok(Bytes::from_static(b"end")),
            ],
            4,
        );
        assert_eq!(b.next_chunk().await, Some(Err(GuestError::TooLarge(4))));
        assert_eq!(b.next_chunk().await, Some(Err(GuestError::TooLarge(4))));
        assert_eq!(watch.get(), Some(&BodyFailure::TooLarge(4)));
    }
}
