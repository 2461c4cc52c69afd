//! The consent page driven by a real browser: headless Chromium (Debian's `chromium`) through
//! chromedriver (`chromium-driver`), spoken to with the W3C WebDriver protocol over plain HTTP on
//! loopback (reqwest; no WebDriver crate). Chromium opens the URL `grant add` printed, clicks
//! Approve (or Deny) on the authorization server's HTML page, and follows the redirect to the
//! loopback callback itself. The other consent tests post the form as a browser would.
//!
//! Without `chromium` and `chromedriver` on PATH the tests print SKIPPED and pass, unless
//! `FAPI_REQUIRE_BROWSER=1` (as in `.ci/run`, which installs them): then they fail.
//!
//! The authorization server's certificate is issued by the federation's own test CA, which
//! Chromium does not trust. Rather than `--ignore-certificate-errors` (any certificate, any host,
//! would then be accepted), Chromium gets `--ignore-certificate-errors-spki-list` with the
//! base64 SHA-256 of that one certificate's SubjectPublicKeyInfo: a chain that does not validate
//! is accepted only when it holds that key, so every other certificate error still stops the
//! browser. (Chromium honours the flag only with `--user-data-dir`, given here.) The
//! authorization endpoint is on the mTLS listener, which asks for a client certificate but does
//! not require one: the browser, like a household's, has none.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Ib1, grant_file_mode};

/// The element key of a W3C WebDriver element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromium and chromedriver, or `None` (with a message) unless `FAPI_REQUIRE_BROWSER=1`.
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            let missing = "chromium and chromedriver are not both on PATH \
                           (apt-get install chromium chromium-driver)";
            if std::env::var("FAPI_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{test}: {missing}, and FAPI_REQUIRE_BROWSER=1 requires the browser tests");
            }
            eprintln!(
                "SKIPPED {test}: {missing} (set FAPI_REQUIRE_BROWSER=1 to make this a failure)"
            );
            None
        }
    }
}

/// base64 (standard) of the SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256(cert_pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

/// A chromedriver this test started, and its WebDriver session; both ended on drop.
struct Chromium {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start(
        chromium: &Path,
        chromedriver: &Path,
        spki: &str,
        http: reqwest::Client,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("\"ready\":true"),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("chromedriver did not answer on {base} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--ignore-certificate-errors-spki-list={spki}"),
                ],
            },
        }}});
        let mut c = Chromium {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let answer = c.call("POST", "/session", Some(caps)).await;
        c.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        c
    }

    /// One WebDriver command: its `value`; a WebDriver error panics with its message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    fn session(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    async fn open(&self, url: &str) {
        self.call("POST", &self.session("/url"), Some(json!({ "url": url })))
            .await;
    }

    async fn click(&self, css: &str) {
        let e = self
            .call(
                "POST",
                &self.session("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = e[ELEMENT].as_str().unwrap().to_owned();
        self.call("POST", &self.session(&format!("/element/{id}/click")), None)
            .await;
    }

    async fn url(&self) -> String {
        self.call("GET", &self.session("/url"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.call("GET", &self.session("/source"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Wait until the browser is on a page whose address starts with `prefix` and whose text
    /// holds `text`; that page's source.
    async fn wait_for(&self, prefix: &str, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (url, source) = (self.url().await, self.source().await);
            if url.starts_with(prefix) && source.contains(text) {
                return source;
            }
            assert!(
                Instant::now() < deadline,
                "the browser stayed on {url}, not {prefix} with {text:?}: {source}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn quit(mut self) {
        let path = self.session("");
        self.call("DELETE", &path, None).await;
        self.session.clear();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ends the browser too (chromedriver's child); only the process this test started.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `grant add home` with Chromium as the household's browser, deciding `decision` ("approve" or
/// "deny"): the exit status and stderr of `grant add`, and the page the browser ended on.
async fn add_with_browser(
    t: &mut Ib1,
    tools: &(PathBuf, PathBuf),
    decision: &str,
) -> (i32, String, String) {
    let spki = spki_sha256(t.fed.pki().server_cert_pem());
    // Plain HTTP to chromedriver on loopback (the federation's clients are https only).
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(t.fed.pki().client_tls_config(None).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let browser = Chromium::start(&tools.0, &tools.1, &spki, http).await;
    let add = t
        .start_add(&["grant", "add", "home", "--timeout", "90"])
        .await;
    assert!(add.url.starts_with(&t.fed.issuer_url()), "{}", add.url);
    browser.open(&add.url).await;
    browser
        .wait_for(&t.fed.issuer_url(), "Share your energy data?")
        .await;
    browser
        .click(&format!("button[name=decision][value={decision}]"))
        .await;
    let (code, _, err) = t.finish(add).await;
    let expected = if code == 0 {
        "Consent recorded"
    } else {
        "The consent did not complete"
    };
    let page = browser.wait_for("http://127.0.0.1:", expected).await;
    browser.quit().await;
    (code, err, page)
}

#[tokio::test]
async fn headless_chromium_approves_on_the_consent_page_and_the_grant_fetches() {
    let test =
        "consent::browser::headless_chromium_approves_on_the_consent_page_and_the_grant_fetches";
    let Some(tools) = browser_tools(test) else {
        return;
    };
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    let (code, err, page) = add_with_browser(&mut t, &tools, "approve").await;
    assert_eq!(code, 0, "{err}");
    assert!(page.contains("Consent recorded"), "{page}");
    assert_eq!(grant_file_mode(&t.grants(), "home"), 0o600);
    let (code, out, err) = t.run(&["grant", "show", "home"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("home"), "{out}");
    let data = t.fed.data_url();
    let (code, out, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode,num_meters"), "{out:.80}");
    t.assert_no_token_leaked();
}

#[tokio::test]
async fn headless_chromium_denies_on_the_consent_page_and_nothing_is_stored() {
    let test =
        "consent::browser::headless_chromium_denies_on_the_consent_page_and_nothing_is_stored";
    let Some(tools) = browser_tools(test) else {
        return;
    };
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    let (code, err, page) = add_with_browser(&mut t, &tools, "deny").await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("declined (access_denied)") && err.contains("grant add home"),
        "{err}"
    );
    assert!(page.contains("The consent did not complete"), "{page}");
    assert!(!t.grants().join("home.json").exists());
    let (code, _, _) = t.run(&["grant", "show", "home"]).await;
    assert_ne!(code, 0);
}
