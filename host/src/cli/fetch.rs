//! `fapi-host fetch`: curl-like protected requests.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use bytes::Bytes;
use http::Method;

use super::{Cli, EXIT_HTTP, EXIT_OK};
use crate::client::{FapiClient, FapiResponse};
use crate::error::{Error, Result};

/// Arguments of `fapi-host fetch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  fapi-host --config fapi.toml fetch -i https://127.0.0.1:8443/consumption.csv"
)]
pub struct FetchArgs {
    /// URLs to request (https only). They share one token and one connection pool.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,

    /// Method (default GET, or POST when --data is given).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,

    /// Extra header 'Name: value' (repeatable). Authorization and x-fapi-* are refused: the host
    /// sets them.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Request body: DATA, @FILE, or @- for standard input.
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    pub data: Option<String>,

    /// Write the body to FILE instead of stdout (repeatable: the Nth -o is for the Nth URL).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Vec<PathBuf>,

    /// Include the status line and response headers in the output.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
}

pub(super) async fn run(cli: &Cli, args: &FetchArgs) -> Result<u8> {
    let settings = cli.settings()?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let body = match &args.data {
        None => None,
        Some(d) => Some(read_data(d)?),
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::InvalidRequest(format!("{m:?} is not an HTTP method")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            Error::InvalidRequest(format!("header {h:?} must look like 'Name: value'"))
        })?;
        crate::client::parse_header(name, value)?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut code = EXIT_OK;
    for (i, url) in args.urls.iter().enumerate() {
        let mut req = client.request(method.clone(), url.clone());
        for (n, v) in &headers {
            req = req.header(n.clone(), v.clone());
        }
        if let Some(b) = &body {
            req = req.body(b.clone());
        }
        let response = req.send().await?;
        if !response.status().is_success() {
            code = EXIT_HTTP;
            let problem = response
                .auth_problem()
                .map(|p| format!(": {p}"))
                .unwrap_or_default();
            eprintln!("fapi-host: {url}: HTTP {}{problem}", response.status());
        }
        write_response(response, args.include, args.output.get(i)).await?;
    }
    Ok(code)
}

fn read_data(d: &str) -> Result<Bytes> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Error::Io(format!("reading the body from stdin: {e}")))?;
            Ok(buf.into())
        }
        Some(path) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| Error::Io(format!("reading the body file {path}: {e}"))),
        None => Ok(Bytes::copy_from_slice(d.as_bytes())),
    }
}

async fn write_response(
    mut response: FapiResponse,
    include: bool,
    output: Option<&PathBuf>,
) -> Result<()> {
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                Error::Io(format!(
                    "cannot create the output file {}: {e}",
                    path.display()
                ))
            })?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let io = |e: std::io::Error| Error::Io(format!("writing the response: {e}"));
    if include {
        writeln!(out, "HTTP/1.1 {}\r", response.status()).map_err(io)?;
        for (name, value) in response.headers() {
            writeln!(
                out,
                "{name}: {}\r",
                String::from_utf8_lossy(value.as_bytes())
            )
            .map_err(io)?;
        }
        writeln!(out, "\r").map_err(io)?;
    }
    while let Some(chunk) = response.chunk().await? {
        out.write_all(&chunk).map_err(io)?;
    }
    out.flush().map_err(io)
}
