//! The seed's own client against `fapi-host dev`: the example code of Open Energy's "Accessing
//! shared data" page (`ib1.openenergy.support.FAPISession`, `ib1-openenergy-support` 0.2.17 with
//! `urllib3<2`), as documented, with only its values (client id, issuer, scopes, key and
//! certificate paths, the data URL) replaced by those `fapi-host dev` writes in `federation.json`.
//!
//! That client reads discovery at the issuer, requires `authorization_endpoint` in the document,
//! ignores `mtls_endpoint_aliases` and posts `client_credentials` to the top-level
//! `token_endpoint` with its certificate; the federation's CA is trusted through
//! `REQUESTS_CA_BUNDLE`. The interpreter is `$FAPI_SEED_PYTHON` (CI: a venv of its own, as
//! `urllib3<2` would downgrade the one the other Python tests share), or `python3`; without the
//! package the test is ignored, unless `FAPI_REQUIRE_SEED_CLIENT=1`, which makes it a failure.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fapi_federation::data;
use serde_json::Value;

/// The example client of the seed's documentation (`accessing-oe-shared-data`, "Example client"),
/// word for word.
const SEED_EXAMPLE: &str = "\
import logging

from ib1.openenergy.support import FAPISession, httpclient_logging_patch

logging.basicConfig(format='%(asctime)s %(levelname)-8s %(message)s',
                    level=logging.INFO,
                    datefmt='%Y-%m-%d %H:%M:%S')

httpclient_logging_patch(level=logging.INFO)

# Set up a session, this will get a token from the directory when needed
f = FAPISession(client_id='kZuAsn7UYZ98WWh29hDPf',
                issuer_url='https://matls-auth.directory.energydata.org.uk',
                requested_scopes='directory:software',
                private_key='/home/tom/Desktop/certs/a.key',
                certificate='/home/tom/Desktop/certs/a.pem')

# Call the server running on localhost, this assumes the server in 'app.py' is running
f.session.get(url='https://127.0.0.1:5000')
";

/// The interpreter with the seed's client.
fn seed_python() -> String {
    std::env::var("FAPI_SEED_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// A Python string literal of `s`.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The example with `federation.json`'s values, keeping what the example's request returned, then
/// writing it and the JSON dataset (fetched through the same session) to `out_dir`.
fn script(info: &Value, out_dir: &Path) -> String {
    let v = |k: &str| py_str(info[k].as_str().unwrap_or_else(|| panic!("{k} in {info}")));
    let mut code = SEED_EXAMPLE.to_owned();
    for (was, now) in [
        ("'kZuAsn7UYZ98WWh29hDPf'", v("client_id")),
        (
            "'https://matls-auth.directory.energydata.org.uk'",
            v("issuer_url"),
        ),
        ("'directory:software'", v("requested_scopes")),
        ("'/home/tom/Desktop/certs/a.key'", v("private_key")),
        ("'/home/tom/Desktop/certs/a.pem'", v("certificate")),
        (
            "f.session.get(url='https://127.0.0.1:5000')",
            format!("response = f.session.get(url={})", v("data_url")),
        ),
    ] {
        assert_eq!(code.matches(was).count(), 1, "{was}");
        code = code.replace(was, &now);
    }
    let out = |f: &str| py_str(&out_dir.join(f).display().to_string());
    code.push_str(&format!(
        "\n# The test's part: what the example fetched, and the JSON dataset by the same session.\n\
         response.raise_for_status()\n\
         open({csv}, 'wb').write(response.content)\n\
         response = f.session.get(url={json_url})\n\
         response.raise_for_status()\n\
         open({json}, 'wb').write(response.content)\n",
        csv = out("out.csv"),
        json = out("out.json"),
        json_url = v("data_json_url"),
    ));
    code
}

/// `fapi-host dev`, stopped (SIGKILL) when dropped.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET {admin_url}/counters` (plain HTTP on 127.0.0.1).
fn counters(admin_url: &str) -> Value {
    let addr = admin_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "GET /counters HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The seed's example, unchanged but for its values, gets a token at `fapi-host dev`'s top-level
/// token endpoint with its certificate and reads the provider's CSV (and the JSON through the same
/// session): one token request, on that endpoint, for both.
#[test]
#[cfg_attr(
    not(fapi_has_seed_client),
    ignore = "needs python3 with ib1-openenergy-support==0.2.17 and urllib3<2 (or FAPI_SEED_PYTHON)"
)]
fn the_seeds_example_client_reads_data_from_fapi_host_dev() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("fapi-dev");
    let stderr = std::fs::File::create(dir.path().join("dev.stderr")).unwrap();
    let dev = Dev(Command::new(fapi_tests::fapi_host_bin())
        .arg("dev")
        .arg("--dir")
        .arg(&fed_dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap());
    // `dev` writes federation.json in place once its servers listen: wait for a whole document.
    let json_path = fed_dir.join("federation.json");
    let t0 = Instant::now();
    let info: Value = loop {
        if let Some(info) = std::fs::read(&json_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            break info;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no federation.json after 60 s: {}",
            std::fs::read_to_string(dir.path().join("dev.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info["profile"], "open-energy", "{info}");

    let python = seed_python();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script(&info, dir.path()))
        .current_dir(dir.path())
        .env("REQUESTS_CA_BUNDLE", info["ca_bundle"].as_str().unwrap())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the seed's example failed ({python}; FAPI_SEED_PYTHON names the interpreter with \
         ib1-openenergy-support==0.2.17 and urllib3<2):\n{stderr}"
    );
    let csv = std::fs::read(dir.path().join("out.csv")).unwrap();
    assert!(
        csv == data::csv(data::DEFAULT_ROWS).as_bytes(),
        "the CSV differs from the provider's: {:.200}",
        String::from_utf8_lossy(&csv)
    );
    let json = std::fs::read(dir.path().join("out.json")).unwrap();
    assert!(
        json == data::json(data::DEFAULT_ROWS).as_bytes(),
        "the JSON differs from the provider's: {:.200}",
        String::from_utf8_lossy(&json)
    );

    let c = counters(info["admin_url"].as_str().unwrap());
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert_eq!(n("token_requests"), 1, "one token for both requests: {c}");
    assert_eq!(
        n("token_requests_plain"),
        1,
        "on the top-level token endpoint (the client ignores the aliases): {c}"
    );
    assert_eq!(n("token_requests_mtls"), 0, "{c}");
    assert_eq!(n("tokens_issued"), 1, "{c}");
    assert_eq!(n("dp_requests"), 2, "{c}");
    drop(dev);
}
