//! A sandbox over a fresh local federation, for the end-to-end tests of guests: start it with the
//! limits and options a test needs, run components, and search everything for credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fapi_federation::{Federation, FederationConfig, Pki};
use fapi_host::sandbox::{Plugin, RunOutcome, Sandbox, SandboxOptions, Stdio};
use fapi_host::{FapiClient, Overrides, SandboxSettings, Settings};
use serde_json::Value;

/// A federation, a client configured for it, and a sandbox with that client.
#[derive(Debug)]
pub struct SandboxEnv {
    /// The local federation (faults on or off as asked).
    pub fed: Federation,
    /// The client the sandbox sends guest requests with.
    pub client: FapiClient,
    /// The sandbox.
    pub sandbox: Sandbox,
    /// The client configuration file (`fapi.toml`) the client was loaded from.
    pub config: PathBuf,
    dir: tempfile::TempDir,
    loaded: Mutex<HashMap<String, Plugin>>,
}

/// The wasmtime compilation cache shared by all tests of the crate.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("FAPI_TESTS_WASMTIME_CACHE"))
}

impl SandboxEnv {
    /// A federation (with `faults` query parameters and `/echo` when true) and a sandbox whose
    /// `[sandbox]` settings `limits` may change; stdio captured, the shared compilation cache.
    pub async fn start(faults: bool, limits: impl FnOnce(&mut SandboxSettings)) -> SandboxEnv {
        SandboxEnv::start_with(faults, limits, SandboxOptions::default()).await
    }

    /// As [`SandboxEnv::start`], with these sandbox options (cache and stdio are set here).
    pub async fn start_with(
        faults: bool,
        limits: impl FnOnce(&mut SandboxSettings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        SandboxEnv::start_for(faults, |_, s| limits(s), options).await
    }

    /// As [`SandboxEnv::start_with`], with the federation at hand to set the `[sandbox]` settings
    /// (an allow-list of some of its URLs, say).
    pub async fn start_for(
        faults: bool,
        settings: impl FnOnce(&Federation, &mut SandboxSettings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        SandboxEnv::start_configured(faults, |fed, s| settings(fed, &mut s.sandbox), options).await
    }

    /// As [`SandboxEnv::start_for`], with all the host's settings at hand (the client's timeouts
    /// and retries, say).
    pub async fn start_configured(
        faults: bool,
        settings: impl FnOnce(&Federation, &mut Settings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        crate::capture_logs("trace");
        let cfg = FederationConfig {
            faults_enabled: faults,
            ..FederationConfig::default()
        };
        let pki = Pki::generate().expect("a PKI");
        let fed = Federation::start(pki, cfg)
            .await
            .expect("the federation starts");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = fed
            .write_client_config(dir.path(), "consumer")
            .expect("the client configuration");
        let mut loaded = Settings::load(Some(&config), &Overrides::default()).expect("settings");
        settings(&fed, &mut loaded);
        let (client, _) = FapiClient::from_settings(&loaded).expect("a client");
        let options = SandboxOptions {
            cache_dir: Some(cache_dir()),
            stdio: Stdio::Capture,
            ..options
        };
        let sandbox = Sandbox::new(client.clone(), options)
            .await
            .expect("a sandbox");
        SandboxEnv {
            fed,
            client,
            sandbox,
            config,
            dir,
            loaded: Mutex::default(),
        }
    }

    /// A scratch directory that lives as long as this environment.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Load `component` (compiled once per test process, then taken from memory). Loading blocks
    /// its thread: tests that run guests concurrently load them first.
    pub fn load(&self, component: &str) -> Plugin {
        if let Some(plugin) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(component)
        {
            return plugin.clone();
        }
        // One compilation at a time: the first fills the on-disk cache, the others hit it.
        static COMPILING: Mutex<()> = Mutex::new(());
        let _one = COMPILING.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .entry(component.to_owned())
            .or_insert_with(|| {
                self.sandbox
                    .load(Path::new(component))
                    .expect("the component loads")
            })
            .clone()
    }

    /// Run `component` with `args`, capturing its output.
    pub async fn run(&self, component: &str, args: &[&str]) -> RunOutcome {
        let plugin = self.load(component);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.sandbox
            .run(&plugin, &args, Stdio::Capture)
            .await
            .expect("the run completes")
    }

    /// Run a component that prints one line of JSON and must finish on its own; the parsed line.
    pub async fn run_json(&self, component: &str, args: &[&str]) -> Value {
        let out = self.run(component, args).await;
        assert_eq!(
            out.stopped,
            None,
            "{component} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{component} {args:?}: {e}: {line}"))
    }

    /// Run the probe (`guest/test-plugins`) with `args`; its JSON line.
    pub async fn probe(&self, args: &[&str]) -> Value {
        self.run_json(crate::guests::PROBE, args).await
    }

    /// A URL of the data provider.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fed.data_origin())
    }

    /// Assert that neither the current token, nor the client's private key (any line of its PEM,
    /// or its DER bytes), nor the CA's key, is in `seen` or in any log line of this process.
    pub async fn assert_no_secrets(&self, seen: &[&[u8]]) {
        let token = self
            .client
            .danger_reveal_token()
            .await
            .expect("the current token");
        let key = &self
            .fed
            .pki()
            .client("consumer")
            .expect("the consumer")
            .key_pem;
        let needles = secret_needles(token.as_bytes(), key);
        let logs = crate::capture_logs("trace");
        let logs = logs.lock().unwrap_or_else(|p| p.into_inner());
        for hay in seen.iter().copied().chain([logs.as_slice()]) {
            for (what, needle) in &needles {
                assert!(!contains(hay, needle), "{what} leaked");
            }
        }
    }
}

/// What a leak search looks for: the token, and each base64 line of the key's PEM (a line is 64
/// characters, far too long to appear by chance) and 32-byte windows of its DER.
pub fn secret_needles(token: &[u8], key_pem: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut needles = vec![("the token", token.to_vec())];
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for line in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
    {
        needles.push(("a line of the private key", line.as_bytes().to_vec()));
    }
    use base64::Engine as _;
    if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
        for window in der.chunks(32).filter(|w| w.len() == 32) {
            needles.push(("the private key's DER bytes", window.to_vec()));
        }
    }
    needles
}

/// Whether `needle` occurs in `hay` (memchr's substring search: the logs of a test process are
/// megabytes, searched for dozens of needles).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}
