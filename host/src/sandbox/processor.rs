//! Batch processors: `process(item, body)` in a fresh instance per item.

use super::bindings::exports::openenergy::fapi::processor::Item;
use super::{GuestState, Plugin, PluginKind, Sandbox, Stdio};
use crate::client::FapiResponse;
use crate::error::{Error, Result};

/// What the batch tells a processor about an item.
#[derive(Clone, Debug)]
pub struct ProcessItem {
    /// Position in the input.
    pub index: u64,
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
    /// The processor returned an error message.
    Failed(String),
    /// The host stopped the processor (trap or limit).
    Stopped(String),
}

impl Sandbox {
    /// Hand one fetched response to a processor, in a fresh instance.
    pub async fn process(
        &self,
        plugin: &Plugin,
        item: ProcessItem,
        response: FapiResponse,
    ) -> Result<ProcessOutcome> {
        let PluginKind::Processor(pre) = &plugin.kind else {
            return Err(Error::Component(format!(
                "{} is a command, not a batch processor (it must export openenergy:fapi/processor)",
                plugin.name
            )));
        };
        let (mut store, _) = self.store(plugin, &[], Stdio::Inherit)?;
        let headers = super::fetch::guest_headers(response.headers());
        let guest_item = Item {
            index: item.index,
            url: item.url.clone(),
            name: item.name.clone(),
            status: response.status().as_u16(),
            headers,
            interaction_id: response.interaction_id().unwrap_or_default().to_owned(),
        };
        let result = {
            let data: &mut GuestState = store.data_mut();
            let body = data.egress.adopt(&response);
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
        Ok(match result {
            Err(_) => ProcessOutcome::Stopped(format!(
                "the processor ran longer than {:?} of wall time",
                self.limits.max_wall
            )),
            Ok(Ok(Ok(bytes))) => ProcessOutcome::Output(bytes),
            Ok(Ok(Err(msg))) => ProcessOutcome::Failed(msg),
            Ok(Err(e)) => ProcessOutcome::Stopped(self.explain(&store, &e)),
        })
    }
}
