//! `fapi-host run`: run a plugin in the sandbox with the configured credentials.

use std::path::PathBuf;
use std::time::Duration;

use super::{Cli, EXIT_GUEST_STOPPED};
use crate::client::FapiClient;
use crate::config::SandboxSettings;
use crate::error::{Error, Result};
use crate::sandbox::{DirGrant, Sandbox, SandboxOptions, Stdio};

/// Options shared by `run`, `batch` and `serve`: grants and limits of the sandbox (for `serve`, of
/// each request's instance).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Allow guests to call URLs under this prefix (https, host, port, path), in addition to
    /// `[sandbox] allow` (repeatable).
    #[arg(long = "allow", value_name = "URL")]
    pub allow: Vec<String>,
    /// Grant a host directory to the guest, read-only: HOST_DIR::GUEST_DIR (repeatable).
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    pub dirs: Vec<DirGrant>,
    /// Grant a host directory to the guest, writable: HOST_DIR::GUEST_DIR (repeatable).
    #[arg(long = "dir-rw", value_name = "HOST::GUEST")]
    pub dirs_rw: Vec<DirGrant>,
    /// Give the guest an environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Append one JSON line per guest request to FILE.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Guest linear memory limit, MiB (default 256).
    #[arg(long, value_name = "MIB")]
    pub max_memory_mib: Option<u64>,
    /// Guest CPU time limit, seconds (default 30).
    #[arg(long, value_name = "SECONDS")]
    pub max_cpu_seconds: Option<u64>,
    /// Wall time limit of a run, seconds (default 120).
    #[arg(long, value_name = "SECONDS")]
    pub max_wall_seconds: Option<u64>,
    /// Largest request body a guest may send, MiB (default 16).
    #[arg(long, value_name = "MIB")]
    pub max_request_body_mib: Option<u64>,
    /// Largest response body a guest may read, MiB (default 1024).
    #[arg(long, value_name = "MIB")]
    pub max_response_body_mib: Option<u64>,
    /// Requests a guest may have in flight (default 8).
    #[arg(long, value_name = "N")]
    pub max_concurrent_requests: Option<u32>,
    /// Requests a guest may make per run (default 10000).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Resource handles a guest may hold at once (default 100000).
    #[arg(long, value_name = "N")]
    pub max_handles: Option<u32>,
    /// Do not cache compiled components.
    #[arg(long)]
    pub no_cache: bool,
    /// Where compiled components are cached (default $XDG_CACHE_HOME/fapi-host or ~/.cache/fapi-host).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl SandboxArgs {
    /// Apply the limit flags to the settings of the file.
    pub fn apply(&self, s: &mut SandboxSettings) -> Result<()> {
        let mib = |v: u64| v.saturating_mul(1 << 20);
        if let Some(v) = self.max_memory_mib {
            s.max_memory = mib(v);
        }
        if let Some(v) = self.max_cpu_seconds {
            s.max_cpu = Duration::from_secs(v);
        }
        if let Some(v) = self.max_wall_seconds {
            s.max_wall = Duration::from_secs(v);
        }
        if let Some(v) = self.max_request_body_mib {
            s.max_request_body = mib(v);
        }
        if let Some(v) = self.max_response_body_mib {
            s.max_response_body = mib(v);
        }
        if let Some(v) = self.max_concurrent_requests {
            s.max_concurrent_requests = v;
        }
        if let Some(v) = self.max_requests {
            s.max_requests = v;
        }
        if let Some(v) = self.max_handles {
            s.max_handles = v;
        }
        s.check()
    }

    /// The sandbox options these flags describe.
    pub fn options(&self) -> Result<SandboxOptions> {
        let mut env = Vec::new();
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--env {e:?}: write it as NAME=VALUE")))?;
            env.push((k.to_owned(), v.to_owned()));
        }
        let mut dirs = self.dirs.clone();
        dirs.extend(self.dirs_rw.iter().cloned().map(|mut d| {
            d.writable = true;
            d
        }));
        for d in &dirs {
            if !d.host.is_dir() {
                return Err(Error::Config(format!(
                    "--dir {}: not a directory",
                    d.host.display()
                )));
            }
        }
        Ok(SandboxOptions {
            allow: self.allow.clone(),
            dirs,
            env,
            audit: self.audit.clone(),
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(SandboxOptions::default_cache_dir)
            },
            stdio: Stdio::Inherit,
        })
    }
}

/// Arguments of `fapi-host run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  fapi-host --config fapi.toml run --allow https://data.example/ fetch.wasm -- https://data.example/x.csv"
)]
pub struct RunArgs {
    /// Sandbox grants and limits.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Every request of the plugin carries grant NAME's access token (a household's consent:
    /// fapi-host grant add NAME). The plugin cannot see or switch grants. Required under profile
    /// "ib1".
    #[arg(long, value_name = "NAME")]
    pub grant: Option<String>,
    /// The component (WASI 0.2, built for wasm32-wasip2).
    #[arg(value_name = "COMPONENT.wasm")]
    pub component: PathBuf,
    /// Arguments for the guest (after `--`); it sees the component's file name first.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

pub(super) async fn run(cli: &Cli, args: &RunArgs) -> Result<u8> {
    let mut settings = cli.settings()?;
    args.sandbox.apply(&mut settings.sandbox)?;
    let options = args.sandbox.options()?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    // Refused before the plugin starts, not at its first request.
    if let Some(e) = client.missing_grant(
        args.grant.is_some(),
        "name the grant the plugin's requests carry with run --grant NAME",
    ) {
        return Err(e);
    }
    let client = match &args.grant {
        Some(name) => client.for_grant(name)?,
        None => client,
    };
    let sandbox = Sandbox::new(client, options).await?;
    let plugin = sandbox.load(&args.component)?;
    let outcome = sandbox.run(&plugin, &args.args, Stdio::Inherit).await?;
    if let Some(why) = &outcome.stopped {
        eprintln!("fapi-host: {} was stopped: {why}", plugin.name());
        return Ok(EXIT_GUEST_STOPPED);
    }
    Ok(u8::try_from(outcome.exit_code).unwrap_or(1))
}
