//! `fapi-host demo`: the local federation, the bundled example plugin, and what happened.

use super::EXIT_OK;
use crate::client::FapiClient;
use crate::config::{Overrides, Settings};
use crate::error::{Error, Result};
use crate::sandbox::{Sandbox, SandboxOptions, Stdio};

fn fed_err(e: fapi_federation::Error) -> Error {
    Error::Config(format!("local federation: {e}"))
}

fn indent(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect()
}

pub(super) async fn run() -> Result<u8> {
    println!("fapi-host demo\n");
    println!(
        "1. Starting a local federation on 127.0.0.1: an authorization server (OIDC discovery,"
    );
    println!(
        "   client_credentials with tls_client_auth, certificate-bound tokens, introspection) and an"
    );
    println!(
        "   example data provider that checks every token by introspection, the Open Energy way."
    );
    let pki = fapi_federation::Pki::generate().map_err(fed_err)?;
    let fed = fapi_federation::Federation::start(pki, fapi_federation::FederationConfig::default())
        .await
        .map_err(fed_err)?;
    let dir = tempfile_dir()?;
    let config = fed.write_client_config(&dir, "consumer").map_err(fed_err)?;
    println!("   issuer:        {}", fed.issuer_url());
    println!("   data provider: {}", fed.data_origin());
    println!("   client config: {}\n", config.display());

    let settings = Settings::load(Some(&config), &Overrides::default())?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let sandbox = Sandbox::new(
        client.clone(),
        SandboxOptions {
            cache_dir: SandboxOptions::default_cache_dir(),
            ..SandboxOptions::default()
        },
    )
    .await?;

    println!(
        "2. Running the bundled plugin csv-summary.wasm (a WebAssembly component) in the sandbox."
    );
    println!(
        "   It fetches {} through fapi-fetch and summarises it:\n",
        fed.data_url()
    );
    let plugin = sandbox.load_bytes("csv-summary.wasm", crate::examples::CSV_SUMMARY)?;
    let outcome = sandbox
        .run(&plugin, &[fed.data_url()], Stdio::Capture)
        .await?;
    print!("{}", indent(&outcome.stdout));
    if !outcome.stderr.is_empty() {
        print!("{}", indent(&outcome.stderr));
    }
    let summary_ok = outcome.exit_code == 0 && outcome.stopped.is_none();

    let metadata = client.server_metadata().await?;
    let token_endpoint = metadata.token_endpoint.to_string();
    println!("\n3. The same kind of plugin (fetch.wasm) now asks for the token endpoint itself:");
    println!("   {token_endpoint}\n");
    let fetch = sandbox.load_bytes("fetch.wasm", crate::examples::FETCH)?;
    let denied = sandbox
        .run(
            &fetch,
            std::slice::from_ref(&token_endpoint),
            Stdio::Capture,
        )
        .await?;
    print!("{}", indent(&denied.stderr));
    let denial_ok = denied.exit_code != 0;

    let counters = fed.counters();
    let info = client.token_info().await?;
    let (records, refused) = sandbox.audit().counts();
    println!("\n4. What happened");
    println!(
        "   - The host, not the plugin, got {} token(s) from {} (the mtls_endpoint_aliases entry),",
        counters.token_requests, info.token_endpoint
    );
    println!(
        "     scope \"{}\", bound to the client certificate (x5t#S256 {}).",
        info.scope.join(" "),
        info.certificate_thumbprint
    );
    println!(
        "   - The plugins made {records} request(s) through the host; {refused} refused by the egress policy."
    );
    println!(
        "     The data provider saw {} request(s), each over mutual TLS with a bearer token and an",
        counters.dp_requests
    );
    println!(
        "     x-fapi-interaction-id, and checked each by introspection ({} introspection call(s)).",
        counters.introspection_requests
    );
    println!(
        "   - The plugins never saw the private key (it lives only in the host's TLS stack), the"
    );
    println!(
        "     token (the host adds the Authorization header after the plugin's request leaves the"
    );
    println!(
        "     sandbox), or the authorization server (never reachable from a guest). They had no files,"
    );
    println!(
        "     no environment, no sockets: only stdout, stderr and the allow-listed data provider."
    );
    println!(
        "\nNext: `fapi-host dev` keeps a federation running for your own plugins (see README.md)."
    );
    let _ = std::fs::remove_dir_all(&dir);
    if summary_ok && denial_ok {
        Ok(EXIT_OK)
    } else {
        Err(Error::Component(
            "the demo did not go as expected (see above)".into(),
        ))
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fapi-host-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}
