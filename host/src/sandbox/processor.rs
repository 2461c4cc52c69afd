//! Batch processors: `process(item, body)` in a fresh instance per item.

use std::sync::{Arc, OnceLock};

use super::bindings::exports::openenergy::fapi::processor::Item;
use super::egress::BodyFailure;
use super::{GuestState, Plugin, PluginKind, Sandbox, Stdio};
use crate::client::{FapiClient, FapiResponse};
use crate::error::{Error, Result};

/// What the batch tells a processor about an item.
#[derive(Clone, Debug)]
pub struct ProcessItem {
    /// Position in the input.
    pub index: u64,
    /// Method of the request that fetched the item (for the audit record).
    pub method: http::Method,
    /// URL fetched.
    pub url: String,
    /// Output file name.
    pub name: String,
}

/// How processing one item ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// The bytes to write.
    Output(Vec<u8>),
    /// The processor returned an error message (cut to its first 4 KiB).
    Failed(String),
    /// The host stopped the processor (trap or limit).
    Stopped(String),
    /// The body the processor was given broke off (connection reset, truncated, stalled longer
    /// than the client's timeout): whatever the processor returned was made from part of it. A
    /// transient failure, like a body cut short without a processor.
    BodyBroken(String),
    /// The body was larger than the processor may read (`max_response_body`, or half its memory
    /// for `read-all`), which it tried to: whatever it returned was made from part of it.
    BodyTooLarge {
        /// The limit it hit, in bytes.
        limit: u64,
    },
    /// The processor returned more than `[sandbox] max_output_mib`: nothing is written.
    TooLarge {
        /// Bytes it returned.
        bytes: u64,
        /// The limit, in bytes.
        limit: u64,
    },
}

/// The longest error message of a processor that is kept (the manifest records it).
const MAX_ERROR_MESSAGE: usize = 4096;

/// `msg`, cut to at most [`MAX_ERROR_MESSAGE`] bytes on a character boundary.
fn shortened(mut msg: String) -> String {
    if msg.len() > MAX_ERROR_MESSAGE {
        let total = msg.len();
        let mut end = MAX_ERROR_MESSAGE;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str(&format!("... ({total} bytes)"));
    }
    msg
}

impl Sandbox {
    /// Hand one fetched response to a processor, in a fresh instance.
    pub async fn process(
        &self,
        plugin: &Plugin,
        item: ProcessItem,
        response: FapiResponse,
    ) -> Result<ProcessOutcome> {
        self.process_with_grant(plugin, item, response, None).await
    }

    /// [`Sandbox::process`], the processor's own requests carrying the grant of `granted` (a
    /// client of [`FapiClient::for_grant`] over the sandbox's identity: `batch --plugin` gives
    /// each item's processor the item's grant) instead of the sandbox's. The processor cannot
    /// see or switch grants.
    pub async fn process_with_grant(
        &self,
        plugin: &Plugin,
        item: ProcessItem,
        response: FapiResponse,
        granted: Option<&FapiClient>,
    ) -> Result<ProcessOutcome> {
        let PluginKind::Processor(pre) = &plugin.kind else {
            return Err(Error::Component(format!(
                "{} is {}, not a batch processor (it must export openenergy:fapi/processor)",
                plugin.name,
                plugin.kind_and_command()
            )));
        };
        let (mut store, _) = match granted {
            Some(g) => self.store_sending_with(
                plugin,
                &[],
                Stdio::Inherit,
                &self.guest_client.with_grant_of(g),
            )?,
            None => self.store(plugin, &[], Stdio::Inherit)?,
        };
        let headers = super::fetch::guest_headers(response.headers());
        let guest_item = Item {
            index: item.index,
            url: item.url.clone(),
            name: item.name.clone(),
            status: response.status().as_u16(),
            headers,
            interaction_id: response.interaction_id().unwrap_or_default().to_owned(),
        };
        let watch = Arc::new(OnceLock::new());
        let result = {
            let data: &mut GuestState = store.data_mut();
            let body = data
                .egress
                .adopt(&response, item.method.clone(), watch.clone());
            let guest_response = super::fetch::into_guest_response(&mut data.table, response, body)
                .map_err(|e| Error::Component(format!("processing {}: {e}", item.name)))?;
            let run = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance
                    .openenergy_fapi_processor()
                    .call_process(&mut store, &guest_item, guest_response.body)
                    .await
            };
            tokio::time::timeout(self.limits.max_wall, run).await
        };
        // A body that failed decides, whatever the processor made of the error (it may have
        // ignored it and returned what it had, failed, or trapped): the processor did not get
        // the whole body, so its output cannot be the item's.
        match watch.get() {
            Some(BodyFailure::Broken(why)) => return Ok(ProcessOutcome::BodyBroken(why.clone())),
            Some(BodyFailure::TooLarge(limit)) => {
                return Ok(ProcessOutcome::BodyTooLarge { limit: *limit });
            }
            None => {}
        }
        let limit = self.limits.max_output;
        Ok(match result {
            Err(_) => ProcessOutcome::Stopped(format!(
                "the processor ran longer than {:?} of wall time ([sandbox] max_wall_seconds / --max-wall-seconds)",
                self.limits.max_wall
            )),
            Ok(Ok(Ok(bytes))) if bytes.len() as u64 > limit => ProcessOutcome::TooLarge {
                bytes: bytes.len() as u64,
                limit,
            },
            Ok(Ok(Ok(bytes))) => ProcessOutcome::Output(bytes),
            Ok(Ok(Err(msg))) => ProcessOutcome::Failed(shortened(msg)),
            Ok(Err(e)) => ProcessOutcome::Stopped(self.explain(&store, &e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        assert_eq!(shortened("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let cut = shortened(long.clone());
        assert!(cut.len() < MAX_ERROR_MESSAGE + 32, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("... ({} bytes)", long.len())),
            "{cut}"
        );
    }
}
