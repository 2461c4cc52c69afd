//! A capture of every log line of a test process, for the tests of every crate of the workspace
//! to search for credentials.

use std::sync::{Arc, Mutex, OnceLock};

/// A `Write` into a shared buffer.
#[derive(Clone, Debug)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture every log line of this process, of every target (fapi-host, the federation, reqwest,
/// hyper, rustls, wasmtime, through `log` too) at every level down to `trace`, so that tests can
/// search them for credentials: a leak at any level must be seen. One capture per process,
/// started by the first call (a process that installed another subscriber first gets an empty
/// buffer: tests call this before anything logs). Returns the shared buffer.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Capture(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || w.clone())
            .try_init();
        buf
    })
    .clone()
}
