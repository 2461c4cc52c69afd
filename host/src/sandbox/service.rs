//! Services: a component that exports `wasi:http/incoming-handler` answers one caller request per
//! fresh instance (`fapi-host serve`), under the limits of one `run` per request.
//!
//! The instance runs in a task of its own: it may go on writing the response body after it has
//! set the response head, while the caller reads. A guest that stops (trap, limit) before it set a
//! response gives the caller a 500 naming the cause; one that stops after cuts the body short
//! (the connection is closed, so that a caller cannot take a partial body for a whole one).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use super::{Plugin, PluginKind, Sandbox, Stdio, stopped_because};
use crate::error::{Error, Result};

/// The world of `wit/fapi.wit` a service is built against.
pub const SERVICE_WORLD: &str = "openenergy:fapi/http-service";

/// The body of a service's response: what the guest writes, as it writes it.
pub type ServiceBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A response the host makes itself (the guest stopped, the caller's request was refused):
/// `{"error": kind, "message": text}` with `status`. `message` names the cause and the setting
/// that would change it; it never holds a credential (the guest never had one).
pub fn error_response(
    status: http::StatusCode,
    kind: &str,
    message: &str,
) -> http::Response<ServiceBody> {
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl Sandbox {
    /// Hand one caller request to a service, in a fresh instance with the limits of a run
    /// (memory, CPU, wall time, handles, and its own budget of requests out). The caller's body
    /// is given to the guest as it arrives, up to `max_body` bytes (beyond it the guest's read
    /// fails). Returns the guest's response, whose body streams while the instance runs on, or a
    /// 500 naming why the guest gave none; `Err` only when the request could not be handed over.
    ///
    /// `permit` is held until the instance ends, so that whoever handed it out counts instances
    /// that still write a body after their response began.
    pub async fn serve_request<P: Send + 'static>(
        &self,
        plugin: &Plugin,
        request: http::Request<Incoming>,
        max_body: u64,
        permit: P,
    ) -> Result<http::Response<ServiceBody>> {
        let PluginKind::Service(pre) = &plugin.kind else {
            return Err(Error::Component(format!(
                "{} is {}, not a service: `fapi-host serve` runs components that export \
                 wasi:http/incoming-handler@0.2.12 (world {SERVICE_WORLD} of wit/fapi.wit)",
                plugin.name,
                plugin.kind_and_command()
            )));
        };
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let request = request.map(|body| {
            Limited::new(body, limit).map_err(move |e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body))
                } else {
                    wasmtime_wasi_http::Error::InternalError(Some(format!(
                        "the caller's body failed: {e}"
                    )))
                }
            })
        });
        let (mut store, _) = self.store(plugin, &[], Stdio::Inherit)?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let handed = {
            let mut http = store.data_mut().http();
            http.new_incoming_request(Scheme::Http, request)
                .and_then(|req| Ok((req, http.new_response_outparam(sender)?)))
        };
        let (req, out) = handed.map_err(|e| {
            Error::InvalidRequest(format!(
                "the request cannot be handed to the service: {}",
                super::wasm_error_chain(&e)
            ))
        })?;
        let pre = pre.clone();
        let limits = self.limits.clone();
        let name = plugin.name.clone();
        let stopped_flag = Arc::new(AtomicBool::new(false));
        let flag = stopped_flag.clone();
        let instance = tokio::spawn(async move {
            let _permit = permit;
            let result = {
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                };
                tokio::time::timeout(limits.max_wall, run).await
            };
            let stopped = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(stopped_because(&limits, &store, &e)),
                Err(_) => Some(format!(
                    "the guest ran longer than {:?} of wall time ([sandbox] max_wall_seconds / \
                     --max-wall-seconds)",
                    limits.max_wall
                )),
            };
            if let Some(why) = &stopped {
                tracing::warn!("serve: {name} was stopped: {why}");
                // Before the store goes, so that a body it ends is seen as cut (Guarded).
                flag.store(true, Ordering::SeqCst);
            }
            drop(store);
            stopped
        });
        Ok(match receiver.await {
            Ok(Ok(response)) => response.map(|inner| {
                Guarded {
                    inner,
                    stopped: stopped_flag,
                }
                .boxed_unsync()
            }),
            Ok(Err(code)) => error_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "service_error",
                &format!("the service answered with an error: {}", describe(&code)),
            ),
            // The guest dropped its response-outparam unset: it returned, or it was stopped.
            Err(_) => {
                let message = match instance.await {
                    Ok(Some(why)) => why,
                    Ok(None) => "the service returned without setting a response \
                                 (response-outparam.set was never called)"
                        .to_owned(),
                    Err(e) => format!("the service's task failed: {e}"),
                };
                error_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "guest_stopped",
                    &message,
                )
            }
        })
    }
}

/// An error code a guest answered with, in a line (its text is the guest's, cut short).
fn describe(code: &ErrorCode) -> String {
    crate::policy::bounded(&format!("{code:?}"), crate::policy::MAX_QUOTED).into_owned()
}

/// A guest's response body that ends in an error, not cleanly, when its instance was stopped
/// (trap, limit) before it finished the body: wasmtime ends the body of a dropped instance as if
/// it were whole, and a caller must never take a body cut short for a whole one. The error makes
/// hyper close the connection without the last chunk.
struct Guarded {
    inner: ServiceBody,
    stopped: Arc<AtomicBool>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) if self.stopped.load(Ordering::SeqCst) => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the service was stopped before it finished its response body".into(),
                )))))
            }
            other => other,
        }
    }
}
