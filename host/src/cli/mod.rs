//! The command line: argument definitions, logging set-up and exit codes. Each subcommand's
//! work is in its own module.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::error::{Error, ErrorKind};

mod batch;
mod check;
mod demo;
mod dev;
mod fetch;
mod grant;
mod proxy;
mod run;
mod serve;
mod token;

pub use run::SandboxArgs;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: an HTTP response was not 2xx.
pub const EXIT_HTTP: u8 = 1;
/// Exit status: bad command line (clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: configuration or credentials error.
pub const EXIT_CONFIG: u8 = 3;
/// Exit status: the authorization server (discovery, token) failed or refused.
pub const EXIT_AUTH: u8 = 4;
/// Exit status: TLS or network error.
pub const EXIT_NETWORK: u8 = 5;
/// Exit status: a request was refused locally, or local I/O failed.
pub const EXIT_LOCAL: u8 = 6;
/// Exit status: a diagnostic check failed (`fapi-host check`).
pub const EXIT_CHECK: u8 = 7;
/// Exit status: a component could not be loaded or linked.
pub const EXIT_COMPONENT: u8 = 8;
/// Exit status of `batch` when at least one item failed (see the manifest).
pub const EXIT_BATCH_FAILED: u8 = 9;
/// Exit status of `batch` when Ctrl-C or SIGTERM interrupted it (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status of `run` when the host stopped the guest (trap, memory, CPU or wall-time limit).
pub const EXIT_GUEST_STOPPED: u8 = 125;

const AFTER_HELP: &str = "\
Examples:
  fapi-host dev                                   # start a local federation in ./fapi-dev
  fapi-host --config fapi-dev/fapi.toml check     # diagnose a configuration
  fapi-host --config fapi-dev/fapi.toml -v fetch https://127.0.0.1:8443/consumption.csv
  fapi-host --config fapi.toml token --json

Exit status: 0 success; 1 an HTTP response was not 2xx; 2 bad usage; 3 configuration or
credentials error; 4 authorization server error (discovery or token); 5 TLS or network error;
6 request refused locally or local I/O error; 7 a check failed; 8 a component could not be
loaded; 9 `batch`: at least one item failed (see DIR/manifest.jsonl); 130 `batch` was
interrupted (Ctrl-C or SIGTERM; run it again to resume).

Settings come from the configuration file (--config, $FAPI_CONFIG, else ./fapi.toml), each
overridden by its environment variable and then by its flag.";

/// fapi-host: call FAPI-protected (mTLS + certificate-bound OAuth2) endpoints, and run untrusted
/// WebAssembly plugins that call them without ever seeing the key or a token.
#[derive(Debug, Parser)]
#[command(name = "fapi-host", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./fapi.toml when present.
    #[arg(long, env = "FAPI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More logging on stderr: -v requests and responses with timings, -vv headers (credentials
    /// redacted), -vvv everything of fapi-host.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The OAuth client id registered for the certificate.
    #[arg(long, env = "FAPI_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,

    /// The authorization server's issuer URL.
    #[arg(long, env = "FAPI_ISSUER_URL", value_name = "URL")]
    pub issuer_url: Option<String>,

    /// Scopes to request, space-separated.
    #[arg(long, env = "FAPI_REQUESTED_SCOPES", value_name = "SCOPES")]
    pub requested_scopes: Option<String>,

    /// PEM private key file (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, env = "FAPI_PRIVATE_KEY", value_name = "FILE")]
    pub private_key: Option<PathBuf>,

    /// PEM certificate chain file, leaf first.
    #[arg(long, env = "FAPI_CERTIFICATE", value_name = "FILE")]
    pub certificate: Option<PathBuf>,

    /// PEM file of extra trust anchors for servers (added to the system roots).
    #[arg(long, env = "FAPI_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make protected requests, like curl (several URLs share one token and connection pool).
    Fetch(fetch::FetchArgs),
    /// Acquire a token and show its metadata (never the token, unless --reveal-token).
    Token(token::TokenArgs),
    /// Show the authorization server's introspection response for this client's token.
    Introspect(token::IntrospectArgs),
    /// Diagnose the configuration: files, key, certificate, discovery, token, scopes.
    Check,
    /// Run a local federation (authorization server + example data provider) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Run a WebAssembly plugin in the sandbox; it calls protected endpoints through the host.
    Run(run::RunArgs),
    /// Fetch every item of an input file into a directory, with a manifest; resumable.
    Batch(batch::BatchArgs),
    /// Start a local federation, run the bundled example plugin against it, explain what happened.
    Demo,
    /// A household's consent (the IB1 profile): add, complete, list, show, revoke or remove the
    /// grants of the grant store.
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    /// Serve plain HTTP on a loopback address and send each request on with mTLS and the token,
    /// so that any program can call FAPI endpoints without holding a credential.
    Proxy(proxy::ProxyArgs),
    /// Answer HTTP callers on a loopback address with a service component (it exports
    /// wasi:http/incoming-handler), a fresh sandboxed instance per request.
    Serve(serve::ServeArgs),
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            client_id: self.client_id.clone(),
            issuer_url: self.issuer_url.clone(),
            requested_scopes: self.requested_scopes.clone(),
            private_key: self.private_key.clone(),
            certificate: self.certificate.clone(),
            ca_bundle: self.ca_bundle.clone(),
        }
    }

    /// Load the settings named by the global options.
    pub fn settings(&self) -> Result<Settings, Error> {
        Settings::load(self.config.as_deref(), &self.overrides())
    }
}

/// Threads for blocking work (file I/O) in the CLI's runtime.
const BLOCKING_THREADS: usize = 8;

/// Run a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.verbose);
    // Blocking work is file I/O (batch outputs, `fetch -o`), which a handful of threads keep up
    // with; tokio's default of up to 512 threads would each bring a malloc arena that memory
    // grows by on long batches.
    //
    // One-shot commands run on the calling thread alone: every buffer is allocated and freed by
    // the thread that reads the socket, so a long download does not spread over several malloc
    // arenas (and no worker threads start). That includes `run`: one guest, whose requests the
    // same thread serves between its steps (the epoch ticker has its own thread). The servers
    // (`dev`, `demo`) and the batch, with many items in flight, keep a multi-thread runtime.
    let mut builder = match cli.command {
        Command::Fetch(_)
        | Command::Token(_)
        | Command::Introspect(_)
        | Command::Check
        | Command::Grant(_)
        | Command::Run(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "fapi-host: cannot start the async runtime: {e}"
            );
            return ExitCode::from(EXIT_LOCAL);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`fapi-host token | head -c1`): it has what it wanted.
        Err(_) if STDOUT_CLOSED.load(Ordering::Relaxed) => ExitCode::from(EXIT_OK),
        Err(e) => {
            // Not `eprintln!`, which panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "fapi-host: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Set when a write to stdout found its reader gone (a broken pipe).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write to stdout, for the commands' reports (`token`, `introspect`, `check`): unlike `println!`,
/// a closed stdout is an error, not a panic. When the reader went away (broken pipe) the command
/// stops at this error and [`run`] ends quietly with status 0, as a reader such as `head` expects.
pub(crate) fn out(args: std::fmt::Arguments<'_>) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
            }
            Error::Io(format!("writing to standard output: {e}"))
        })
}

/// `println!` through [`out`]: returns `Result<(), Error>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
use outln;

async fn dispatch(cli: Cli) -> Result<u8, Error> {
    match &cli.command {
        Command::Fetch(args) => fetch::run(&cli, args).await,
        Command::Token(args) => token::token(&cli, args).await,
        Command::Introspect(args) => token::introspect(&cli, args).await,
        Command::Check => check::run(&cli).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Run(args) => run::run(&cli, args).await,
        Command::Batch(args) => batch::run(&cli, args).await,
        Command::Demo => demo::run().await,
        Command::Proxy(args) => proxy::run(&cli, args).await,
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::Grant(command) => grant::run(&cli, command).await,
    }
}

/// Wait for SIGTERM or Ctrl-C (SIGINT): how the long-running commands are told to stop.
pub(crate) async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    match term.as_mut() {
        Some(t) => {
            tokio::select! {
                _ = t.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The exit status for an error.
pub fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Config => EXIT_CONFIG,
        ErrorKind::Authorization => EXIT_AUTH,
        ErrorKind::Network => EXIT_NETWORK,
        ErrorKind::InvalidRequest | ErrorKind::TooLarge | ErrorKind::Io => EXIT_LOCAL,
        ErrorKind::Component => EXIT_COMPONENT,
    }
}

/// Logs go to stderr with timestamps. Other crates stay at `warn` whatever the verbosity, so
/// that no dependency's trace output can show a header.
pub fn init_logging(verbose: u8) {
    let ours = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = format!("warn,fapi_host={ours},fapi_federation={ours}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
