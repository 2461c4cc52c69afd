//! A federation and a client configuration for benchmarks.

use fapi_federation::{Federation, FederationConfig, Pki};
use fapi_host::{FapiClient, Overrides, Settings};

/// A running federation, its temporary directory and the consumer's settings.
pub struct Bench {
    pub fed: Federation,
    pub _dir: tempfile::TempDir,
    pub settings: Settings,
}

impl Bench {
    pub async fn start() -> Bench {
        let fed = Federation::start(Pki::generate().unwrap(), FederationConfig::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = fed.write_client_config(dir.path(), "consumer").unwrap();
        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
        Bench {
            fed,
            _dir: dir,
            settings,
        }
    }

    pub fn client(&self) -> FapiClient {
        FapiClient::from_settings(&self.settings).unwrap().0
    }

    /// The consumer's TLS configuration (same identity and roots as the FapiClient), for plain clients.
    pub fn plain_tls(&self) -> rustls::ClientConfig {
        let consumer = self.fed.pki().client("consumer").unwrap();
        self.fed.pki().client_tls_config(Some(consumer)).unwrap()
    }

    /// A plain reqwest client with the same TLS identity and roots, no token handling, one pooled
    /// connection.
    pub fn plain_reqwest(&self) -> reqwest::Client {
        plain_client(self.plain_tls(), 1)
    }
}

/// A plain reqwest client over `tls`, no token handling, keeping up to `max_idle` connections.
///
/// Its transport settings are the ones any production HTTP client has and FapiClient's reqwest
/// client has too (connect and read timeouts, a user agent, no redirects, no proxy), so that the
/// comparison isolates what fapi-host adds over mTLS: token handling, interaction ids, checks.
pub fn plain_client(tls: rustls::ClientConfig, max_idle: usize) -> reqwest::Client {
    let defaults = fapi_host::ClientOptions::default();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(defaults.connect_timeout)
        .read_timeout(defaults.timeout)
        .user_agent("plain-reqwest")
        .pool_max_idle_per_host(max_idle)
        .build()
        .unwrap()
}

/// One GET through plain reqwest with a fixed bearer header: the response head (status 200).
pub async fn plain_head(client: &reqwest::Client, url: &str, bearer: &str) -> reqwest::Response {
    let r = client
        .get(url)
        .header("authorization", bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

/// One GET through plain reqwest with the headers a FAPI request carries — the fixed bearer and
/// a fresh `x-fapi-interaction-id` (UUID v4) — body read in full (status 200). The same bytes
/// on the wire as `FapiClient`'s request, so the same work for the data provider; none of the
/// host's logic.
pub async fn plain_fapi_headers_get(client: &reqwest::Client, url: &str, bearer: &str) {
    let r = client
        .get(url)
        .header("authorization", bearer)
        .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
}

/// One GET through plain reqwest with a fixed bearer header, body read in full (status 200).
pub async fn plain_get(client: &reqwest::Client, url: &str, bearer: &str) {
    plain_head(client, url, bearer).await.bytes().await.unwrap();
}

/// One GET through FapiClient, body read in full (status 200).
pub async fn fapi_get(client: &FapiClient, url: &str) {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
}

/// GET `url` with the native client, reading the body chunk by chunk and dropping it: its length.
pub async fn fapi_drain(client: &FapiClient, url: &str) -> u64 {
    let mut r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut n = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len() as u64;
    }
    n
}
