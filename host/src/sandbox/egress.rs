//! One path out of the sandbox for both guest interfaces: policy, per-guest budget, the native
//! client (token, mTLS, replay, retries), response size limit, and the audit log.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::policy::{Denial, Policy};

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
            Error::TooLarge(m) => GuestError::Unreachable(m),
            Error::Io(m) | Error::Component(m) => GuestError::Unreachable(m),
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

    /// Record a refused request: a log line and an audit record, with the URL as the guest gave
    /// it (shortened when it is longer than any URL the policy accepts). Past the request budget
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
            method: shortened(method, 32).as_ref(),
            url: shortened(url, crate::policy::MAX_URL).as_ref(),
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

    /// A body for a response the host fetched itself (batch items handed to a processor). It
    /// takes no in-flight permit of the guest's budget.
    pub(crate) fn adopt(&self, response: &FapiResponse) -> GuestBody {
        GuestBody {
            stream: None,
            limit: self.limits.max_response_body,
            read: 0,
            _permit: None,
            record: PendingAudit {
                audit: self.audit.clone(),
                guest: self.guest.clone(),
                interface: "batch",
                method: Method::GET,
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
            if crate::policy::forbidden_header(name) {
                let e = GuestError::InvalidRequest(format!(
                    "header {name} is set by the host and cannot be given"
                ));
                return Err(self.deny(req, e));
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
        let Admitted { url, permit } = admitted;
        if let Some(b) = &req.body
            && b.len() as u64 > self.limits.max_request_body
        {
            return Err(self.deny(&req, GuestError::TooLarge(self.limits.max_request_body)));
        }
        let started = Instant::now();
        let request = FapiRequest {
            method: req.method.clone(),
            url,
            headers: req.headers.clone(),
            body: req.body.clone(),
            interaction_id: None,
            timeout: req.timeout,
        };
        let sent = match req.timeout {
            Some(t) => tokio::time::timeout(t, self.client.send(request))
                .await
                .unwrap_or_else(|_| Err(Error::Timeout(String::new()))),
            None => self.client.send(request).await,
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
            _permit: Some(permit),
            record,
        };
        Ok((response, body))
    }
}

/// A request let through by [`Egress::admit`]: its checked URL and its place in flight.
pub(crate) struct Admitted {
    url: url::Url,
    permit: OwnedSemaphorePermit,
}

/// `text`, or its first bytes and its length when it is longer than `max`.
fn shortened(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len()).into()
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
            url: &self.url,
            status: Some(self.status),
            bytes: self.bytes,
            duration_ms: self.started.elapsed().as_millis() as u64,
            interaction_id: self.interaction_id.as_deref(),
            error: self.error.clone(),
        });
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = crate::error::Result<Bytes>> + Send>>;

/// A response body on its way to a guest: counts bytes, enforces the size limit, holds the
/// in-flight permit, and writes the audit record when dropped.
pub(crate) struct GuestBody {
    stream: Option<ByteStream>,
    limit: u64,
    read: u64,
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
                    self.stream = None;
                    self.record.error = Some(format!("response larger than {} bytes", self.limit));
                    Some(Err(GuestError::TooLarge(self.limit)))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(e)) => {
                self.stream = None;
                let msg = e.to_string();
                self.record.error = Some(msg.clone());
                Some(Err(match e {
                    Error::Timeout(_) => GuestError::Timeout,
                    _ => GuestError::BodyInterrupted(msg),
                }))
            }
        }
    }

    /// The next chunk, None at the end.
    pub(crate) async fn next_chunk(&mut self) -> Option<Result<Bytes, GuestError>> {
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
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(item) => Poll::Ready(self.account(item)),
        }
    }
}
