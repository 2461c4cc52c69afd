//! The sandbox: WebAssembly components (WASI 0.2) that call protected endpoints through the host.
//!
//! A guest gets, by default: its arguments, stdout and stderr, clocks and random, and the two
//! ways out (`fapi-fetch` and `wasi:http`), both through one egress policy. It gets no files, no
//! environment variables, no sockets, no name lookup and no stdin unless the user grants them
//! ([`SandboxOptions::dirs`], [`SandboxOptions::env`]). Limits: linear memory, CPU time (epoch
//! interruption), wall time, request and response body sizes, requests in flight, requests per
//! run ([`crate::SandboxSettings`]). A guest that traps, loops or exhausts memory is stopped and
//! reported; the host and other guests carry on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::client::FapiClient;
use crate::config::SandboxSettings;
use crate::error::{Error, Result};
use crate::policy::Policy;

mod audit;
mod egress;
mod fetch;
mod http;
mod limits;
mod processor;
mod service;

pub use audit::{Audit, AuditEvent};
pub(crate) use egress::guarded as guarded_egress;
pub use fetch::BodyState;
pub use limits::EPOCH_TICK;
use limits::{GuestLimiter, Ticker, handle_misuse};
pub use processor::{ProcessItem, ProcessOutcome};
pub use service::{SERVICE_WORLD, ServiceBody, error_response};

/// Bindings generated from `wit/fapi.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "openenergy:fapi/batch-processor",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "openenergy:fapi/fapi-fetch.body": super::fetch::BodyState },
    });
}

/// A directory granted to guests: `HOST::GUEST`, read-only unless `writable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

impl std::str::FromStr for DirGrant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (host, guest) = s
            .split_once("::")
            .ok_or_else(|| format!("{s:?}: a directory grant looks like HOST_DIR::GUEST_DIR"))?;
        if host.is_empty() || guest.is_empty() {
            return Err(format!("{s:?}: both HOST_DIR and GUEST_DIR are needed"));
        }
        Ok(DirGrant {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            writable: false,
        })
    }
}

/// Where a guest's stdout and stderr go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stdio {
    /// The host's own stdout and stderr (default).
    #[default]
    Inherit,
    /// Captured into [`RunOutcome::stdout`] / [`RunOutcome::stderr`] (up to 64 MiB each).
    Capture,
}

/// Grants and plumbing of a sandbox. `Default` grants nothing.
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    /// URL prefixes allowed in addition to `[sandbox] allow`.
    pub allow: Vec<String>,
    /// Directories granted to guests.
    pub dirs: Vec<DirGrant>,
    /// Environment variables granted to guests.
    pub env: Vec<(String, String)>,
    /// Append audit records as JSON lines to this file.
    pub audit: Option<PathBuf>,
    /// Cache compiled components here (keyed by content and engine settings); None: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Where guest output goes.
    pub stdio: Stdio,
}

impl SandboxOptions {
    /// The default compilation cache directory: `$XDG_CACHE_HOME/fapi-host` or
    /// `$HOME/.cache/fapi-host`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("fapi-host"))
    }
}

/// The store data of one guest instance.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: http::EgressHooks,
    egress: Arc<egress::Egress>,
    limiter: GuestLimiter,
    cpu_exhausted: bool,
}

impl std::fmt::Debug for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestState").finish_non_exhaustive()
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A guest's captured stdout and stderr.
type CapturedOutput = (MemoryOutputPipe, MemoryOutputPipe);

/// A configured sandbox: engine, linker, policy and credentials. Components are loaded into it
/// once ([`Sandbox::load`]) and run many times.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    client: FapiClient,
    /// What guests send through: `client`'s identity and tokens, connections of their own that
    /// never go to an address of the authorization server.
    guest_client: FapiClient,
    policy: Arc<Policy>,
    limits: SandboxSettings,
    audit: Arc<Audit>,
    options: SandboxOptions,
    _ticker: Ticker,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("allow", &self.policy.allowed())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A component ready to run: compiled, linked and pre-instantiated once.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    kind: PluginKind,
}

#[derive(Clone)]
enum PluginKind {
    Command(CommandPre<GuestState>),
    Processor(bindings::BatchProcessorPre<GuestState>),
    /// Exports `wasi:http/incoming-handler`: a service for `fapi-host serve`.
    Service(ProxyPre<GuestState>),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PluginKind::Command(_) => "command",
            PluginKind::Processor(_) => "batch-processor",
            PluginKind::Service(_) => "http-service",
        };
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &kind)
            .finish()
    }
}

impl Plugin {
    /// The component's file name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether it is a batch processor.
    pub fn is_processor(&self) -> bool {
        matches!(self.kind, PluginKind::Processor(_))
    }
    /// Whether it is a service (exports `wasi:http/incoming-handler`, for `fapi-host serve`).
    pub fn is_service(&self) -> bool {
        matches!(self.kind, PluginKind::Service(_))
    }
    /// What it is, and the command that runs it: for errors that say which command to use.
    pub fn kind_and_command(&self) -> &'static str {
        match self.kind {
            PluginKind::Command(_) => {
                "a command (it exports wasi:cli/run): use it with `fapi-host run`"
            }
            PluginKind::Processor(_) => "a batch processor: use it with `fapi-host batch --plugin`",
            PluginKind::Service(_) => {
                "a service (it exports wasi:http/incoming-handler): use it with `fapi-host serve`"
            }
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The guest's exit code (0 when `run` returned ok, 1 when it returned an error).
    pub exit_code: i32,
    /// Why the host stopped the guest, if it did (trap, limit).
    pub stopped: Option<String>,
    /// Captured stdout, with [`Stdio::Capture`].
    pub stdout: Bytes,
    /// Captured stderr, with [`Stdio::Capture`].
    pub stderr: Bytes,
}

fn component_error(what: &str, e: wasmtime::Error) -> Error {
    Error::Component(format!("{what}: {}", wasm_error_chain(&e)))
}

fn wasm_error_chain(e: &wasmtime::Error) -> String {
    let mut s = String::new();
    for (i, c) in e.chain().enumerate() {
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&c.to_string());
    }
    s
}

impl Sandbox {
    /// A sandbox for `client`'s identity. Defaults: no files, no environment, no sockets, no
    /// name lookup, no stdin, and no origins but those of `[sandbox] allow` and
    /// `options.allow`; the authorization server's origins are never allowed. Discovery runs
    /// now, so that the policy knows the authorization server's endpoints; if it fails, every
    /// guest request is denied.
    pub async fn new(client: FapiClient, options: SandboxOptions) -> Result<Sandbox> {
        let limits = client.settings().sandbox.clone();
        let mut allow = limits.allow.clone();
        allow.extend(options.allow.iter().cloned());
        let issuer = url::Url::parse(&client.settings().issuer_url)
            .map_err(|e| Error::Config(format!("`issuer_url`: {e}")))?;
        let (policy, guest_client) = match client.server_metadata().await {
            Ok(m) => {
                let mut blocked = vec![issuer];
                blocked.extend(m.endpoints());
                let policy = Policy::new(&allow, &blocked)?;
                egress::guarded(&client, policy, &blocked, &limits, false).await?
            }
            Err(e) => {
                // Validate the entries anyway, then fail closed.
                Policy::new(&allow, std::slice::from_ref(&issuer))?;
                tracing::warn!("{e}; every guest request will be denied");
                let policy = Policy::new(&[], &[issuer])?;
                let guests = client.for_guests(&[], Arc::default(), Vec::new())?;
                (policy, guests)
            }
        };
        let audit = Arc::new(match &options.audit {
            Some(path) => Audit::to_file(path)?,
            None => Audit::log_only(),
        });

        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        if let Some(dir) = &options.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            match wasmtime::Cache::new(cache) {
                Ok(c) => {
                    config.cache(Some(c));
                }
                Err(e) => tracing::warn!(
                    "compiled-component cache at {} is unusable ({}); compiling every time",
                    dir.display(),
                    wasm_error_chain(&e)
                ),
            }
        }
        let engine = Engine::new(&config).map_err(|e| component_error("starting the engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| component_error("linking WASI", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| component_error("linking wasi:http", e))?;
        bindings::openenergy::fapi::fapi_fetch::add_to_linker::<_, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| component_error("linking fapi-fetch", e))?;
        Ok(Sandbox {
            _ticker: Ticker::start(engine.clone()),
            engine,
            linker,
            client,
            guest_client,
            policy: Arc::new(policy),
            limits,
            audit,
            options,
        })
    }

    /// The audit log of this sandbox.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The native client the sandbox sends with.
    pub fn client(&self) -> &FapiClient {
        &self.client
    }

    /// The limits in force.
    pub fn limits(&self) -> &SandboxSettings {
        &self.limits
    }

    /// Compile (or load from the cache), link and pre-instantiate a component file.
    pub fn load(&self, path: &Path) -> Result<Plugin> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Component(format!("cannot read the component {}: {e}", path.display()))
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "component.wasm".into());
        self.load_bytes(&name, &bytes)
    }

    /// Like [`Sandbox::load`], from bytes.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Plugin> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(Error::Component(format!(
                "{name} is not a WebAssembly file; build the plugin with `cargo build --target wasm32-wasip2`"
            )));
        }
        if bytes[4..8] != [0x0d, 0x00, 0x01, 0x00] {
            return Err(Error::Component(format!(
                "{name} is a core WebAssembly module, not a component; build it for wasm32-wasip2 (WASI 0.2)"
            )));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| component_error(&format!("compiling {name}"), e))?;
        let pre: InstancePre<GuestState> =
            self.linker.instantiate_pre(&component).map_err(|e| {
                component_error(
                    &format!("{name} needs something fapi-host does not provide"),
                    e,
                )
            })?;
        let kind = if let Ok(p) = CommandPre::new(pre.clone()) {
            PluginKind::Command(p)
        } else if let Ok(p) = bindings::BatchProcessorPre::new(pre.clone()) {
            PluginKind::Processor(p)
        } else {
            match ProxyPre::new(pre) {
                Ok(p) => PluginKind::Service(p),
                Err(e) => {
                    return Err(component_error(
                        &format!(
                            "{name} exports none of wasi:cli/run (a command for `run`: world \
                             openenergy:fapi/plugin), openenergy:fapi/processor (a batch \
                             processor: world openenergy:fapi/batch-processor) and \
                             wasi:http/incoming-handler@0.2.12 (a service for `serve`: world \
                             {SERVICE_WORLD}); build it against one of these worlds of \
                             wit/fapi.wit"
                        ),
                        e,
                    ));
                }
            }
        };
        Ok(Plugin {
            name: name.to_owned(),
            kind,
        })
    }

    fn store(
        &self,
        plugin: &Plugin,
        args: &[String],
        stdio: Stdio,
    ) -> Result<(Store<GuestState>, Option<CapturedOutput>)> {
        self.store_sending_with(plugin, args, stdio, &self.guest_client)
    }

    /// [`Sandbox::store`], the guest's requests sent with `guest_client` (the sandbox's guest
    /// client, or it with a grant: [`FapiClient::with_grant_of`]).
    fn store_sending_with(
        &self,
        plugin: &Plugin,
        args: &[String],
        stdio: Stdio,
        guest_client: &FapiClient,
    ) -> Result<(Store<GuestState>, Option<CapturedOutput>)> {
        let mut b = WasiCtxBuilder::new();
        b.arg(&plugin.name);
        b.args(args);
        for (k, v) in &self.options.env {
            b.env(k, v);
        }
        for d in &self.options.dirs {
            let perms = if d.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
                Error::Config(format!(
                    "cannot grant directory {}: {}",
                    d.host.display(),
                    wasm_error_chain(&e)
                ))
            })?;
        }
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let pipes = match stdio {
            Stdio::Inherit => {
                b.inherit_stdout().inherit_stderr();
                None
            }
            Stdio::Capture => {
                let out = MemoryOutputPipe::new(64 << 20);
                let err = MemoryOutputPipe::new(64 << 20);
                b.stdout(out.clone()).stderr(err.clone());
                Some((out, err))
            }
        };
        let egress = Arc::new(egress::Egress::new(
            guest_client.clone(),
            self.policy.clone(),
            self.audit.clone(),
            self.limits.clone(),
            plugin.name.clone(),
        ));
        let state = GuestState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(self.limits.max_handles as usize);
                table
            },
            hooks: http::EgressHooks {
                egress: egress.clone(),
            },
            egress,
            limiter: GuestLimiter::new(self.limits.max_memory),
            cpu_exhausted: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_max_component_handles(self.limits.max_handles as usize);
        let budget = (self.limits.max_cpu.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        let mut used = 0u64;
        store.epoch_deadline_callback(move |mut ctx| {
            used += 1;
            if used > budget {
                ctx.data_mut().cpu_exhausted = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        Ok((store, pipes))
    }

    /// Why a guest stopped, from its error and its store's flags.
    fn explain(&self, store: &Store<GuestState>, e: &wasmtime::Error) -> String {
        stopped_because(&self.limits, store, e)
    }

    /// Run a command component with `args` (the guest sees the component's file name first, then
    /// `args`, as with `wasmtime run`).
    pub async fn run(&self, plugin: &Plugin, args: &[String], stdio: Stdio) -> Result<RunOutcome> {
        let PluginKind::Command(pre) = &plugin.kind else {
            return Err(Error::Component(format!(
                "{} is {}",
                plugin.name,
                plugin.kind_and_command()
            )));
        };
        let (mut store, pipes) = self.store(plugin, args, stdio)?;
        let result = {
            let run = async {
                let cmd = pre.instantiate_async(&mut store).await?;
                cmd.wasi_cli_run().call_run(&mut store).await
            };
            tokio::time::timeout(self.limits.max_wall, run).await
        };
        let (exit_code, stopped) = match result {
            Err(_) => (
                125,
                Some(format!(
                    "the guest ran longer than {:?} of wall time ([sandbox] max_wall_seconds / --max-wall-seconds)",
                    self.limits.max_wall
                )),
            ),
            Ok(Ok(Ok(()))) => (0, None),
            Ok(Ok(Err(()))) => (1, None),
            Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => (exit.0, None),
                None => (125, Some(self.explain(&store, &e))),
            },
        };
        drop(store);
        let (stdout, stderr) = match pipes {
            Some((o, e)) => (o.contents(), e.contents()),
            None => (Bytes::new(), Bytes::new()),
        };
        Ok(RunOutcome {
            exit_code,
            stopped,
            stdout,
            stderr,
        })
    }
}

/// Why a guest stopped, from its error and its store's flags; each limit is named with the
/// setting that raises it.
fn stopped_because(
    limits: &SandboxSettings,
    store: &Store<GuestState>,
    e: &wasmtime::Error,
) -> String {
    if store.data().cpu_exhausted {
        return format!(
            "the guest used more than {:?} of CPU time ([sandbox] max_cpu_seconds / --max-cpu-seconds)",
            limits.max_cpu
        );
    }
    if store.data().limiter.memory_hit {
        return format!(
            "the guest ran out of memory: its limit is {} MiB ([sandbox] max_memory_mib / --max-memory-mib)",
            limits.max_memory >> 20
        );
    }
    if let Some(why) = handle_misuse(e, limits.max_handles) {
        return why;
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "the guest overflowed its stack (too deep recursion)".into()
        }
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "the guest trapped (it panicked or aborted)".into()
        }
        Some(wasmtime::Trap::MemoryOutOfBounds) => {
            "the guest trapped: out-of-bounds memory access (in Rust guests, usually a stack \
             overflow from too deep recursion)"
                .into()
        }
        Some(t) => format!("the guest trapped: {t}"),
        None => format!("the guest failed: {}", wasm_error_chain(e)),
    }
}
