//! A household's consent end to end (the IB1 profile): `fapi-host grant add` against the local
//! federation's `ib1` authorization server over real TLS on loopback, this test acting as the
//! household's browser (it follows the printed URL, reads the consent page, posts the form and
//! follows the redirect to the loopback callback); then `fetch --grant`, refresh with rotation
//! (and two processes at once), revocation, `--no-listen` + `grant complete`, and the refusals.
//! Every output is searched for every token the authorization server issued.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fapi_federation::{Federation, FederationConfig, Ib1Options, Pki};

use crate::common::{contains, logs};

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `ib1` federation, a consumer configuration using `DIR/grants`, and everything printed.
struct Ib1 {
    fed: Federation,
    dir: tempfile::TempDir,
    config: String,
    /// Every stdout and stderr of every command run, for the leak search.
    printed: Vec<u8>,
}

impl Ib1 {
    async fn start(token_ttl: Duration, refresh_delay: Duration) -> Ib1 {
        logs();
        let fed = Federation::start(
            Pki::generate().unwrap(),
            FederationConfig {
                ib1: Some(Ib1Options {
                    refresh_delay,
                    ..Ib1Options::default()
                }),
                token_ttl,
                record_issued_tokens: true,
                ..FederationConfig::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = fed.write_client_config(dir.path(), "consumer").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("profile = \"ib1\""), "{text}");
        std::fs::write(&path, format!("grants_dir = \"grants\"\n{text}")).unwrap();
        Ib1 {
            fed,
            dir,
            config: path.to_str().unwrap().to_owned(),
            printed: Vec::new(),
        }
    }

    fn grants(&self) -> PathBuf {
        self.dir.path().join("grants")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("FAPI_CONFIG")
            .stdin(Stdio::null());
        c
    }

    /// Run to the end: (status, stdout, stderr), both kept for the leak search.
    async fn run(&mut self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        self.printed.extend_from_slice(&out.stdout);
        self.printed.extend_from_slice(&out.stderr);
        (
            out.status.code().unwrap_or(-1),
            s(&out.stdout),
            s(&out.stderr),
        )
    }

    /// Start `grant add` with these arguments; wait for the authorization URL (the first line of
    /// stdout).
    async fn start_add(&self, args: &[&str]) -> Running {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut url = String::new();
            stdout.read_line(&mut url).unwrap();
            Running {
                child,
                stdout,
                url: url.trim_end().to_owned(),
            }
        })
        .await
        .unwrap()
    }

    /// Wait for a started command: (status, all of stdout, stderr), kept for the leak search.
    async fn finish(&mut self, mut r: Running) -> (i32, String, String) {
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let mut out = r.url.clone().into_bytes();
            out.push(b'\n');
            r.stdout.read_to_end(&mut out).unwrap();
            let mut err = Vec::new();
            r.child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut err)
                .unwrap();
            let status = r.child.wait().unwrap();
            (status.code().unwrap_or(-1), out, err)
        })
        .await
        .unwrap();
        self.printed.extend_from_slice(&out);
        self.printed.extend_from_slice(&err);
        (code, s(&out), s(&err))
    }

    /// The household's browser: open the consent page at `url`, post `decision`; the Location it
    /// is sent to.
    async fn consent(&self, url: &str, decision: &str) -> String {
        assert!(url.starts_with(&self.fed.issuer_url()), "{url}");
        let browser = self.fed.pki().http_client(None).unwrap();
        let page = browser.get(url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let request_uri = html
            .split("name=\"request_uri\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        let origin = self.fed.issuer_url().replace("/accounts", "");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("request_uri", &request_uri)
            .append_pair("decision", decision)
            .finish();
        let resp = browser
            .post(format!("{origin}{action}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        resp.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Every access and refresh token the authorization server issued.
    fn tokens(&self) -> Vec<String> {
        let t = self.fed.issued_tokens();
        assert!(!t.is_empty(), "a search for no token cannot fail");
        t
    }

    /// No issued token in anything printed, nor in any file of the store but the grant files.
    fn assert_no_token_leaked(&self) {
        let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.grants()) {
            for e in entries {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") {
                    continue;
                }
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        for (i, t) in self.tokens().iter().enumerate() {
            assert!(
                !contains(&self.printed, t.as_bytes()),
                "token #{i} was printed"
            );
            for (p, bytes) in &files {
                assert!(
                    !contains(bytes, t.as_bytes()),
                    "token #{i} in {}",
                    p.display()
                );
            }
        }
    }
}

/// A `grant add` that has printed its URL.
struct Running {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    url: String,
}

/// The browser following a redirect to the loopback callback (plain HTTP, as a browser would).
async fn follow(location: &str) -> String {
    let url = url::Url::parse(location).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap()
}

fn grant_file_mode(dir: &Path, name: &str) -> u32 {
    std::fs::metadata(dir.join(format!("{name}.json")))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn grant_add_as_a_browser_would_then_fetch_refresh_in_two_processes_and_revoke() {
    let mut t = Ib1::start(Duration::from_secs(2), Duration::from_millis(500)).await;
    // grant add: the URL on a line of its own; the test approves as the household.
    let add = t.start_add(&["-vv", "grant", "add", "home"]).await;
    assert!(
        add.url.contains("/accounts/authorize?client_id="),
        "{}",
        add.url
    );
    assert!(
        add.url
            .contains("request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3A")
    );
    let location = t.consent(&add.url, "approve").await;
    let page = follow(&location).await;
    assert!(page.contains("Consent recorded"), "{page}");
    let (code, out, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grant home stored"), "{out}");
    assert_eq!(grant_file_mode(&t.grants(), "home"), 0o600);
    let dir_mode = std::fs::metadata(t.grants()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    // fetch --grant reads the household's data; without a grant, a clear error.
    let data = t.fed.data_url();
    let (code, out, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode,num_meters"), "{out:.80}");
    let (code, _, err) = t.run(&["fetch", &data]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--grant NAME") && err.contains("ib1"), "{err}");

    // list and show: metadata, never a token.
    let (code, out, _) = t.run(&["grant", "show", "home"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(fapi_federation::LICENCE) && out.contains("last refreshed  never"),
        "{out}"
    );
    let (_, out, _) = t.run(&["grant", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "home");
    assert_eq!(list[0]["state"], "active");

    // Past the refresh point: one refresh, rotated (the first refresh token is no longer stored).
    let first = std::fs::read(t.grants().join("home.json")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _, err) = t.run(&["-vv", "fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 1);
    let issued = t.tokens();
    let stored = std::fs::read(t.grants().join("home.json")).unwrap();
    assert!(
        contains(&first, issued[1].as_bytes()),
        "the first refresh token"
    );
    assert!(!contains(&stored, issued[1].as_bytes()), "rotated away");
    assert!(
        contains(&stored, issued[3].as_bytes()),
        "the new refresh token"
    );

    // Two processes at once, past the refresh point: exactly one refresh request, both served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ca = t.command(&["fetch", "--grant", "home", &data]);
    let mut cb = t.command(&["fetch", "--grant", "home", &data]);
    let (ra, rb) = tokio::join!(
        tokio::task::spawn_blocking(move || ca.output()),
        tokio::task::spawn_blocking(move || cb.output())
    );
    for r in [ra.unwrap().unwrap(), rb.unwrap().unwrap()] {
        t.printed.extend_from_slice(&r.stdout);
        t.printed.extend_from_slice(&r.stderr);
        assert!(r.status.success(), "{}", s(&r.stderr));
        assert!(s(&r.stdout).starts_with("postcode"));
    }
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 2);

    // Revoke: at the authorization server (the last access token is refused), then removed.
    let last = t.tokens().into_iter().rev().nth(1).unwrap();
    let (code, out, err) = t.run(&["grant", "revoke", "home"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    assert!(!t.grants().join("home.json").exists());
    let consumer = t.fed.pki().client("consumer").unwrap();
    let http = t.fed.pki().http_client(Some(consumer)).unwrap();
    let resp = http.get(&data).bearer_auth(&last).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 3);
    assert!(err.contains("grant add home"), "{err}");
    t.assert_no_token_leaked();
}
