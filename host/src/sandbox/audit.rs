//! The audit log: one record per guest request (allowed or denied), to the log at `-v` and as
//! JSON lines to a file with `--audit FILE`. Records name URLs and outcomes, never credentials.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};

/// One guest request.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// The guest (component file name).
    pub guest: &'a str,
    /// `fapi-fetch` or `wasi-http`.
    pub interface: &'a str,
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// Method.
    pub method: &'a str,
    /// URL (normalised when allowed, as given when denied).
    pub url: &'a str,
    /// Response status, when there was a response.
    pub status: Option<u16>,
    /// Body bytes the guest read.
    pub bytes: u64,
    /// Time from the request to the end of the body.
    pub duration_ms: u64,
    /// The `x-fapi-interaction-id` sent.
    pub interaction_id: Option<&'a str>,
    /// Why it was denied or failed.
    pub error: Option<String>,
}

/// Where audit records go.
#[derive(Debug, Default)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    count: std::sync::atomic::AtomicU64,
    denied: std::sync::atomic::AtomicU64,
}

impl Audit {
    /// Records to the log only.
    pub fn log_only() -> Audit {
        Audit::default()
    }

    /// Records to the log and, appended as JSON lines, to `path`.
    pub fn to_file(path: &Path) -> Result<Audit> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::Io(format!(
                    "cannot open the audit file {}: {e}",
                    path.display()
                ))
            })?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
            ..Audit::default()
        })
    }

    /// Whether a record would go anywhere: to the file, or to a log that takes the audit target
    /// at its level. When not, a caller may skip building the record.
    pub fn is_recording(&self) -> bool {
        self.file.is_some() || tracing::enabled!(target: "fapi_host::audit", tracing::Level::INFO)
    }

    /// Record one request.
    pub fn record(&self, event: &AuditEvent<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.fetch_add(1, Relaxed);
        if event.decision == "deny" {
            self.denied.fetch_add(1, Relaxed);
        }
        tracing::info!(
            target: "fapi_host::audit",
            guest = event.guest,
            interface = event.interface,
            decision = event.decision,
            method = event.method,
            url = event.url,
            status = event.status,
            bytes = event.bytes,
            duration_ms = event.duration_ms,
            interaction_id = event.interaction_id.unwrap_or("-"),
            error = event.error.as_deref().unwrap_or(""),
            "audit"
        );
        if let Some(file) = &self.file
            && let Ok(mut line) = serde_json::to_vec(event)
        {
            line.push(b'\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(&line) {
                tracing::error!("writing the audit file failed: {e}");
            }
        }
    }

    /// Records written so far: (all, denied).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.count.load(Relaxed), self.denied.load(Relaxed))
    }
}
