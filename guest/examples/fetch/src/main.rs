//! `fetch URL...`: GET each URL through the host and stream its body to stdout, like the reference
//! client's example. A non-2xx status or a failed request prints a message to stderr and exits 1.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        eprintln!("usage: fetch URL...");
        return ExitCode::from(2);
    }
    for url in &urls {
        if let Err(message) = fetch(url) {
            eprintln!("fetch: {url}: {message}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Fetch one URL and copy its body to stdout, chunk by chunk.
fn fetch(url: &str) -> Result<(), String> {
    let response = fapi_guest::get(url).map_err(|e| e.to_string())?;
    eprintln!(
        "fetch: {url}: {} (interaction id {})",
        response.status(),
        response.interaction_id()
    );
    let mut response = response.error_for_status().map_err(|e| e.to_string())?;
    let mut stdout = io::stdout().lock();
    io::copy(&mut response, &mut stdout).map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())
}
