//! Interception of standard `wasi:http/outgoing-handler` requests: the same egress as
//! `fapi-fetch` (policy, budget, token, mTLS, audit), behind the `WasiHttpHooks` of wasmtime 48.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use http::uri::Scheme;
use http_body::Frame;
use http_body_util::{BodyExt as _, LengthLimitError, Limited, StreamBody};
use wasmtime_wasi_http::{
    Error as HttpErr, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks,
};

use super::egress::{Egress, GuestError, GuestRequest, Interface};
use crate::error::describe;
use crate::policy;

/// The hooks of one guest.
pub(crate) struct EgressHooks {
    pub(crate) egress: Arc<Egress>,
}

/// Made once: wasmtime-wasi-http asks for the filter for every header a guest sets.
static FORBIDDEN: LazyLock<ForbiddenHeaderFilter> =
    LazyLock::new(|| Arc::new(policy::forbidden_header));

type IoFuture = Box<dyn Future<Output = Result<(), HttpErr>> + Send>;

fn to_http_error(e: GuestError) -> HttpErr {
    match e {
        GuestError::Denied(_) => HttpErr::HttpRequestDenied,
        GuestError::InvalidRequest(m) => {
            HttpErr::InternalError(Some(format!("invalid request: {m}")))
        }
        GuestError::Timeout => HttpErr::HttpResponseTimeout,
        GuestError::TooLarge(n) => HttpErr::HttpResponseBodySize(Some(n)),
        GuestError::Unreachable(m) => HttpErr::InternalError(Some(format!("unreachable: {m}"))),
        GuestError::TokenUnavailable { code, description } => HttpErr::InternalError(Some(
            format!("token unavailable: {code}{}", describe(&description)),
        )),
        GuestError::LimitExceeded(_) => HttpErr::ConnectionLimitReached,
        GuestError::BodyInterrupted(_) => HttpErr::ConnectionTerminated,
    }
}

impl WasiHttpHooks for EgressHooks {
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        FORBIDDEN.clone()
    }

    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        *scheme == Scheme::HTTPS
    }

    fn set_host_header(&mut self) -> bool {
        // The host sets Host from the (checked) URL itself.
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpErr>> + Send>
    {
        let egress = self.egress.clone();
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            // The same header rules as fapi-fetch: the filter above has already refused the
            // host's headers; this enforces the count and size limits.
            let headers = policy::check_headers(
                parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes())),
            )
            .map_err(|m| {
                let e = GuestError::InvalidRequest(m);
                egress.refuse_unsent(Interface::WasiHttp, parts.method.as_str(), &url, e);
                HttpErr::HttpRequestHeaderSectionSize(None)
            })?;
            let timeout = options
                .and_then(|o| o.first_byte_timeout)
                .map(|t| t.max(Duration::from_millis(1)));
            let mut request = GuestRequest {
                method: parts.method,
                url,
                headers,
                body: None,
                timeout,
                interface: Interface::WasiHttp,
            };
            // Admitted (counted, checked, a place in flight taken) before the body is read, so
            // that the bodies held in host memory are at most the requests in flight.
            let admitted = egress.admit(&request).map_err(to_http_error)?;
            let limit = egress.limits().max_request_body;
            let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                .collect()
                .await
                .map_err(|e| {
                    let too_large = e.downcast_ref::<LengthLimitError>().is_some();
                    let (refusal, out) = if too_large {
                        (
                            GuestError::TooLarge(limit),
                            HttpErr::HttpRequestBodySize(Some(limit)),
                        )
                    } else {
                        let m = format!("the request body failed before its end: {e}");
                        (
                            GuestError::InvalidRequest(m.clone()),
                            HttpErr::InternalError(Some(format!("invalid request: {m}"))),
                        )
                    };
                    egress.refuse(
                        Interface::WasiHttp,
                        request.method.as_str(),
                        &request.url,
                        refusal,
                    );
                    out
                })?
                .to_bytes();
            request.body = (!body.is_empty()).then_some(body);
            let (mut response, mut guest_body) = egress
                .send_admitted(request, admitted)
                .await
                .map_err(to_http_error)?;
            let status = response.status();
            let headers = response.take_headers();
            guest_body.attach(response);
            let stream = guest_body.map(|r| r.map(Frame::data).map_err(to_http_error));
            let mut out = http::Response::new(StreamBody::new(stream).boxed_unsync());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok((out, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}
