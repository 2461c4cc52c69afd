//! `csv-summary URL...`: for each URL, fetch the provider's postcode consumption CSV through the
//! host and print a small summary: the number of postcodes, total meters, total kWh, the mean of
//! the per-postcode means, and the top 5 postcodes by total consumption. The body is parsed line
//! by line as it streams in, so its size does not matter. Pure std besides `fapi-guest`.
//!
//! Expected header: `postcode,num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh`
//! (the columns are found by name, so their order does not matter). The CSV rules (RFC 4180 quoting, one
//! record per line, a leading BOM dropped, rows with negative or non-finite numbers skipped as
//! malformed) are in `summary.rs`; the JavaScript and Python twins follow them to print the same.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;

mod summary;

use summary::Summary;

/// Bytes asked of the host per read: few calls, bounded memory.
const READ_CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        eprintln!("usage: csv-summary URL...");
        return ExitCode::from(2);
    }
    // Each URL in turn; one that fails is reported and the others still summarised.
    let mut code = ExitCode::SUCCESS;
    for url in &urls {
        if let Err(message) = run(url) {
            eprintln!("csv-summary: {url}: {message}");
            code = ExitCode::FAILURE;
        }
    }
    code
}

fn run(url: &str) -> Result<(), String> {
    let response = fapi_guest::get(url).map_err(|e| e.to_string())?;
    let response = response.error_for_status().map_err(|e| e.to_string())?;
    let interaction_id = response.interaction_id().to_string();

    let mut lines = BufReader::with_capacity(READ_CHUNK, response).lines();
    let header = match lines.next() {
        Some(line) => line.map_err(|e| e.to_string())?,
        None => return Err("empty body: expected a CSV header".into()),
    };
    let mut summary = Summary::new(&header)?;
    for line in lines {
        summary.add(&line.map_err(|e| e.to_string())?);
    }

    println!("interaction id:     {interaction_id}");
    print!("{summary}");
    Ok(())
}
