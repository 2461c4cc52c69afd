//! Shared set-up of the host's integration tests: a federation on loopback, a client configuration
//! for one of its clients, and a capture of every log line.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use fapi_federation::{Federation, FederationConfig, Pki};
use fapi_host::{FapiClient, Overrides, Settings};

/// Every log line of this test binary, at every level, from every crate.
pub use fapi_federation::capture_logs as logs;

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A running federation with its PKI in a temporary directory and a consumer configuration.
pub struct Fed {
    pub fed: Federation,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Fed {
    pub async fn start(cfg: FederationConfig) -> Fed {
        logs();
        let fed = Federation::start(Pki::generate().unwrap(), cfg)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = fed.write_client_config(dir.path(), "consumer").unwrap();
        Fed { fed, dir, config }
    }

    pub async fn with_faults() -> Fed {
        Fed::start(FederationConfig {
            faults_enabled: true,
            ..FederationConfig::default()
        })
        .await
    }

    pub fn settings(&self) -> Settings {
        Settings::load(Some(&self.config), &Overrides::default()).unwrap()
    }

    pub fn settings_for(&self, client: &str) -> Settings {
        let sub = self.dir.path().join(client);
        std::fs::create_dir_all(&sub).unwrap();
        let path = self.fed.write_client_config(&sub, client).unwrap();
        Settings::load(Some(&path), &Overrides::default()).unwrap()
    }

    pub fn client(&self) -> FapiClient {
        FapiClient::from_settings(&self.settings()).unwrap().0
    }

    /// Write PEM files for an extra identity and return settings that use them.
    pub fn settings_with(&self, name: &str, cert_pem: &str, key_pem: &str) -> Settings {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let mut s = self.settings();
        s.certificate = cert;
        s.private_key = key;
        s
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Run the `fapi-host` binary with arguments; returns (status, stdout, stderr).
pub fn fapi_host(args: &[&str], cwd: &Path) -> (i32, Vec<u8>, Vec<u8>) {
    fapi_host_env(args, cwd, &[])
}

/// [`fapi_host`] with extra environment variables.
pub fn fapi_host_env(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> (i32, Vec<u8>, Vec<u8>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fapi-host"))
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .env_remove("FAPI_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// A GET of `url` on a task of its own: its status and how long it took.
pub fn timed_get(
    client: &FapiClient,
    url: String,
) -> tokio::task::JoinHandle<(http::StatusCode, std::time::Duration)> {
    let c = client.clone();
    tokio::spawn(async move {
        let t = std::time::Instant::now();
        let status = c.get(url).send().await.unwrap().status();
        (status, t.elapsed())
    })
}
