//! The `fapi-fetch` host interface: requests and streamed response bodies.

use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::Resource;

use super::GuestState;
use super::bindings::openenergy::fapi::fapi_fetch::{
    self, FetchError, Header, Request, Response, TokenError,
};
use super::egress::{GuestBody, GuestError, GuestRequest, Interface};
use crate::policy;

/// The most a single `read` returns.
const MAX_READ: u32 = 1 << 20;

/// A response body owned by a guest (the `body` resource).
#[derive(Debug)]
pub struct BodyState {
    body: GuestBody,
    leftover: Bytes,
}

pub(super) fn to_fetch_error(e: GuestError) -> FetchError {
    match e {
        GuestError::Denied(m) => FetchError::Denied(m),
        GuestError::InvalidRequest(m) => FetchError::InvalidRequest(m),
        GuestError::Timeout => FetchError::Timeout,
        GuestError::TooLarge(n) => FetchError::TooLarge(n),
        GuestError::Unreachable(m) => FetchError::Unreachable(m),
        GuestError::TokenUnavailable { code, description } => {
            FetchError::TokenUnavailable(TokenError { code, description })
        }
        GuestError::LimitExceeded(m) => FetchError::LimitExceeded(m),
        GuestError::BodyInterrupted(m) => FetchError::BodyInterrupted(m),
    }
}

/// Response headers as the guest sees them.
pub(super) fn guest_headers(headers: &http::HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(n, v)| Header {
            name: n.as_str().to_owned(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

/// Turn a fetched response into the guest's `response`, its body into a resource in `table`.
pub(super) fn into_guest_response(
    table: &mut wasmtime::component::ResourceTable,
    response: crate::FapiResponse,
    mut body: GuestBody,
) -> wasmtime::Result<Response> {
    let status = response.status().as_u16();
    let headers = guest_headers(response.headers());
    let interaction_id = response.interaction_id().unwrap_or_default().to_owned();
    body.attach(response);
    let body = table.push(BodyState {
        body,
        leftover: Bytes::new(),
    })?;
    Ok(Response {
        status,
        headers,
        interaction_id,
        body,
    })
}

impl fapi_fetch::Host for GuestState {
    async fn fetch(&mut self, req: Request) -> wasmtime::Result<Result<Response, FetchError>> {
        let egress = self.egress.clone();
        let refuse = |m: String| {
            let e = GuestError::InvalidRequest(m);
            Ok(Err(to_fetch_error(egress.refuse_unsent(
                Interface::FapiFetch,
                &req.method,
                &req.url,
                e,
            ))))
        };
        let method = match policy::check_method(&req.method) {
            Ok(m) => m,
            Err(e) => return refuse(e),
        };
        let headers = match policy::check_headers(
            req.headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_slice())),
        ) {
            Ok(h) => h,
            Err(e) => return refuse(e),
        };
        let request = GuestRequest {
            method,
            url: req.url,
            headers,
            body: req.body.map(Bytes::from),
            timeout: req
                .timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            interface: Interface::FapiFetch,
        };
        match egress.send(request).await {
            Ok((response, body)) => Ok(Ok(into_guest_response(&mut self.table, response, body)?)),
            Err(e) => Ok(Err(to_fetch_error(e))),
        }
    }
}

impl fapi_fetch::HostBody for GuestState {
    async fn read(
        &mut self,
        this: Resource<BodyState>,
        max_bytes: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, FetchError>> {
        let max = max_bytes.clamp(1, MAX_READ) as usize;
        let state = self.table.get_mut(&this)?;
        if state.leftover.is_empty() {
            match state.body.next_chunk().await {
                None => return Ok(Ok(Vec::new())),
                Some(Err(e)) => return Ok(Err(to_fetch_error(e))),
                Some(Ok(chunk)) => state.leftover = chunk,
            }
        }
        let n = max.min(state.leftover.len());
        Ok(Ok(state.leftover.split_to(n).to_vec()))
    }

    async fn read_all(
        &mut self,
        this: Resource<BodyState>,
    ) -> wasmtime::Result<Result<Vec<u8>, FetchError>> {
        // Whole bodies are copied into guest memory: bound them by half of it as well.
        let limits = self.egress.limits();
        let limit = limits.max_response_body.min(limits.max_memory / 2);
        let state = self.table.get_mut(&this)?;
        let mut out = std::mem::take(&mut state.leftover).to_vec();
        loop {
            if out.len() as u64 > limit {
                // What was read is gone: the body cannot go on from here, so it ends with this
                // error (a later `read` must not return the rest as if it were the whole body).
                let why = format!("read-all: response larger than {limit} bytes");
                let e = state.body.fail(GuestError::TooLarge(limit), why);
                return Ok(Err(to_fetch_error(e)));
            }
            match state.body.next_chunk().await {
                None => return Ok(Ok(out)),
                Some(Err(e)) => return Ok(Err(to_fetch_error(e))),
                Some(Ok(chunk)) => out.extend_from_slice(&chunk),
            }
        }
    }

    async fn drop(&mut self, this: Resource<BodyState>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
