//! `fapi-host fetch`: curl-like protected requests.

use crate::policy::HeaderCaller;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

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

    /// Extra header 'Name: value' (repeatable). Authorization, Proxy-Authorization, x-fapi-*,
    /// Host, Content-Length, Transfer-Encoding and the connection's headers are refused: the host
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

    /// Use grant NAME's access token (a household's consent: fapi-host grant add NAME),
    /// refreshed when due. Required under profile "ib1".
    #[arg(long, value_name = "NAME")]
    pub grant: Option<String>,
}

pub(super) async fn run(cli: &Cli, args: &FetchArgs) -> Result<u8> {
    // The command line first: a header fapi-host owns is refused before any file is read or any
    // byte is sent.
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            Error::InvalidRequest(format!("header {h:?} must look like 'Name: value'"))
        })?;
        crate::client::parse_header(HeaderCaller::Command, name, value)?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let settings = cli.settings()?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let client = match &args.grant {
        Some(name) => client.for_grant(name)?,
        None => client,
    };
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
            let _ = writeln!(
                std::io::stderr(),
                "fapi-host: {url}: HTTP {}{problem}",
                response.status()
            );
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
    let mut sink = match output {
        Some(path) => Sink::create(path)?,
        None => Sink::Stdout(std::io::stdout().lock()),
    };
    let io = |e: std::io::Error| Error::Io(format!("writing the response: {e}"));
    if include {
        writeln!(sink.writer(), "HTTP/1.1 {}\r", response.status()).map_err(io)?;
        for (name, value) in response.headers() {
            writeln!(
                sink.writer(),
                "{name}: {}\r",
                String::from_utf8_lossy(value.as_bytes())
            )
            .map_err(io)?;
        }
        writeln!(sink.writer(), "\r").map_err(io)?;
    }
    while let Some(chunk) = response.chunk().await? {
        sink.writer().write_all(&chunk).map_err(io)?;
    }
    sink.finish()
}

/// Where a response goes. A regular output file is written to a temporary file beside it and
/// renamed into place only when the whole body arrived: a body cut short, a full disk or a
/// signal never leaves a partial file under the requested name (the temporary is removed).
/// Anything else (a device such as /dev/null, a FIFO) is written directly.
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    Direct(std::io::BufWriter<std::fs::File>),
    Temp {
        file: std::io::BufWriter<std::fs::File>,
        tmp: PathBuf,
        fin: PathBuf,
        renamed: bool,
    },
}

impl Sink {
    fn create(path: &Path) -> Result<Sink> {
        let err = |e: std::io::Error| {
            Error::Io(format!(
                "cannot create the output file {}: {e}",
                path.display()
            ))
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(err)?;
            return Ok(Sink::Direct(std::io::BufWriter::new(file)));
        }
        let name = path
            .file_name()
            .ok_or_else(|| err(std::io::Error::other("not a file name")))?;
        let tmp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(err)?;
        Ok(Sink::Temp {
            file: std::io::BufWriter::new(file),
            tmp,
            fin: path.to_owned(),
            renamed: false,
        })
    }

    fn writer(&mut self) -> &mut dyn std::io::Write {
        match self {
            Sink::Stdout(s) => s,
            Sink::Direct(f) => f,
            Sink::Temp { file, .. } => file,
        }
    }

    /// Flush, and rename a temporary file into place.
    fn finish(mut self) -> Result<()> {
        let io = |e: std::io::Error| Error::Io(format!("writing the response: {e}"));
        match &mut self {
            Sink::Stdout(s) => s.flush().map_err(io),
            Sink::Direct(f) => f.flush().map_err(io),
            Sink::Temp {
                file,
                tmp,
                fin,
                renamed,
            } => {
                file.flush().map_err(io)?;
                std::fs::rename(&*tmp, &*fin).map_err(|e| {
                    Error::Io(format!("moving the output into {}: {e}", fin.display()))
                })?;
                *renamed = true;
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Temp {
            tmp,
            renamed: false,
            ..
        } = self
        {
            let _ = std::fs::remove_file(&*tmp);
        }
    }
}
