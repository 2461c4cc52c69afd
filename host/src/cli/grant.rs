//! `fapi-host grant`: a household's consent (the IB1 profile), and the grant store that keeps it.

use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::{Cli, EXIT_OK, outln};
use crate::client::FapiClient;
use crate::consent::{self, Callback, ConsentMetadata};
use crate::error::{Error, Result};
use crate::grants::{GrantInfo, GrantState, GrantStore, Pending, check_grant_name, now_secs};
use crate::time::fmt_time;

/// The `grant` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum GrantCommand {
    /// Ask a household's consent: a pushed authorization request over mTLS, the authorization URL
    /// printed on a line of its own on stdout for the household's browser, the code received on
    /// the loopback redirect URI and exchanged over mTLS, the grant stored as NAME.
    Add(AddArgs),
    /// Finish a consent flow begun with `grant add NAME --no-listen`, with the URL the browser
    /// ended on.
    Complete {
        /// The grant's name, as given to `grant add --no-listen`.
        name: String,
        /// The whole URL the browser was sent back to (http://127.0.0.1:PORT/callback?code=...).
        redirected_url: String,
    },
    /// List the grants (metadata only, never a token).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one grant's metadata: scope, issuer, created, last refreshed, access expiry (never a
    /// token).
    Show {
        /// The grant's name.
        name: String,
    },
    /// Revoke the grant at the authorization server (RFC 7009, when it advertises revocation),
    /// then remove it from the store.
    Revoke {
        /// The grant's name.
        name: String,
    },
    /// Remove the grant from the store without telling the authorization server.
    Remove {
        /// The grant's name.
        name: String,
    },
}

/// Arguments of `fapi-host grant add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The grant's name: 1 to 64 letters, digits, '.', '_' or '-' (e.g. the household's
    /// reference). An existing grant of this name is replaced once the new consent is stored.
    pub name: String,
    /// The scope to ask for (under IB1, the Registry licence URL). Default: `requested_scopes`.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Where the browser is sent back. Default: `redirect_uri`, else a loopback
    /// http://127.0.0.1:PORT/callback on a free port.
    #[arg(long, value_name = "URI")]
    pub redirect_uri: Option<String>,
    /// Also open the authorization URL in this machine's browser (xdg-open).
    #[arg(long)]
    pub open: bool,
    /// Do not listen for the redirect: print the URL, keep the PKCE verifier and state in the
    /// store (0600) and exit; `grant complete NAME REDIRECTED_URL` finishes the flow.
    #[arg(long)]
    pub no_listen: bool,
    /// How long to wait for the browser's redirect, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
}

pub(super) async fn run(cli: &Cli, command: &GrantCommand) -> Result<u8> {
    match command {
        GrantCommand::Add(args) => add(cli, args).await,
        GrantCommand::Complete {
            name,
            redirected_url,
        } => complete(cli, name, redirected_url).await,
        GrantCommand::List { json } => list(cli, *json),
        GrantCommand::Show { name } => show(cli, name),
        GrantCommand::Revoke { name } => revoke(cli, name).await,
        GrantCommand::Remove { name } => {
            store(cli)?.remove(name)?;
            outln!("grant {name} removed")?;
            Ok(EXIT_OK)
        }
    }
}

fn store(cli: &Cli) -> Result<GrantStore> {
    GrantStore::open(&cli.settings()?.grants_dir)
}

/// The client (its client id taken from the certificate under IB1) and the checked metadata.
async fn client_and_metadata(cli: &Cli) -> Result<(FapiClient, ConsentMetadata)> {
    let settings = cli.settings()?;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let meta = consent::consent_metadata(
        &client.as_http()?,
        &client.settings().issuer_url,
        client.settings().client.timeout,
    )
    .await?;
    Ok((client, meta))
}

/// A loopback redirect URI to listen on: (host:port to bind, path).
fn loopback(uri: &str) -> Result<(String, String)> {
    let url = url::Url::parse(uri)
        .map_err(|e| Error::Config(format!("the redirect URI {uri:?} is not a URL ({e})")))?;
    match (url.scheme(), url.host_str(), url.port()) {
        ("http", Some("127.0.0.1"), Some(port)) => {
            Ok((format!("127.0.0.1:{port}"), url.path().to_owned()))
        }
        _ => Err(Error::Config(format!(
            "fapi-host listens for the redirect only on http://127.0.0.1:PORT/... (RFC 8252), \
             not {uri:?}: use --no-listen and grant complete, or leave the redirect URI out"
        ))),
    }
}

async fn add(cli: &Cli, args: &AddArgs) -> Result<u8> {
    check_grant_name(&args.name)?;
    let name = args.name.as_str();
    // The store first: one open to others is refused before anything is asked.
    let store = store(cli)?;
    let (client, meta) = client_and_metadata(cli).await?;
    let settings = client.settings();
    let timeout = settings.client.timeout;
    let scope = args
        .scope
        .clone()
        .unwrap_or_else(|| settings.requested_scopes.clone());
    let configured = args.redirect_uri.clone().or(settings.redirect_uri.clone());
    let (listener, redirect_uri) = match (&configured, args.no_listen) {
        (Some(uri), true) => (None, uri.clone()),
        (Some(uri), false) => {
            let (addr, _) = loopback(uri)?;
            let l = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
                Error::Io(format!(
                    "cannot listen on {addr} for the redirect: {e} (is another grant add running?)"
                ))
            })?;
            (Some(l), uri.clone())
        }
        (None, no_listen) => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Error::Io(format!("cannot listen on 127.0.0.1: {e}")))?;
            let port = l
                .local_addr()
                .map_err(|e| Error::Io(format!("cannot listen on 127.0.0.1: {e}")))?
                .port();
            let uri = format!("http://127.0.0.1:{port}/callback");
            ((!no_listen).then_some(l), uri)
        }
    };
    let (verifier, challenge) = consent::pkce();
    let pending = Pending {
        issuer: settings.issuer_url.clone(),
        client_id: settings.client_id.clone(),
        scope,
        redirect_uri,
        state: consent::random_state(),
        verifier,
        created: now_secs(),
    };
    let http = client.as_http()?;
    let request_uri = consent::push_request(&http, &meta, &pending, &challenge, timeout).await?;
    let url = consent::authorization_url(&meta, &settings.client_id, &request_uri);
    let _ = writeln!(
        std::io::stderr(),
        "Open this address in the household's browser; the consent page asks them to approve \
         (it is valid for a short while):"
    );
    outln!("{url}")?;
    if args.open {
        open_browser(url.as_str());
    }
    let Some(listener) = listener else {
        store.save_pending(name, &pending)?;
        let _ = writeln!(
            std::io::stderr(),
            "Then give the address the browser ends on to: fapi-host grant complete {name} \
             'REDIRECTED_URL'"
        );
        return Ok(EXIT_OK);
    };
    let (_, path) = loopback(&pending.redirect_uri)?;
    let (callback, mut stream) =
        consent::wait_for_callback(listener, &path, Duration::from_secs(args.timeout)).await?;
    let result = finish(&http, &store, &meta, name, &pending, &callback, timeout).await;
    let page = match &result {
        Ok(_) => "Consent recorded: you can close this window.".to_owned(),
        Err(_) => "The consent did not complete; the application says why.".to_owned(),
    };
    let _ = consent::respond(&mut stream, 200, &page).await;
    let info = result?;
    outln!("{}", summary(&info))?;
    Ok(EXIT_OK)
}

async fn finish(
    http: &reqwest::Client,
    store: &GrantStore,
    meta: &ConsentMetadata,
    name: &str,
    pending: &Pending,
    callback: &Callback,
    timeout: Duration,
) -> Result<GrantInfo> {
    let code = callback.code(name, &pending.state, &meta.issuer)?;
    consent::exchange_and_store(http, store, meta, name, pending, code, timeout).await
}

async fn complete(cli: &Cli, name: &str, redirected_url: &str) -> Result<u8> {
    check_grant_name(name)?;
    let store = store(cli)?;
    let pending = store.load_pending(name)?;
    let (client, meta) = client_and_metadata(cli).await?;
    let settings = client.settings();
    if pending.issuer != settings.issuer_url || pending.client_id != settings.client_id {
        return Err(Error::Grant(format!(
            "the consent flow pending for {name:?} was begun with issuer {} and client {}, not \
             this configuration's: use the configuration it was begun with",
            pending.issuer, pending.client_id
        )));
    }
    let callback = Callback::from_url(redirected_url)?;
    let http = client.as_http()?;
    let info = finish(
        &http,
        &store,
        &meta,
        name,
        &pending,
        &callback,
        settings.client.timeout,
    )
    .await;
    // Spent (or refused for good) once a code was sent; kept after a state mismatch.
    if info.is_ok() || callback_was_sent(&info) {
        store.remove_pending(name)?;
    }
    let info = info?;
    outln!("{}", summary(&info))?;
    Ok(EXIT_OK)
}

/// Whether the failure came after the code was sent (it cannot be tried again).
fn callback_was_sent(result: &Result<GrantInfo>) -> bool {
    matches!(result, Err(Error::Grant(m)) if m.contains("refused the authorization code"))
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        tracing::warn!("cannot open a browser with {opener}: {e}; open the address by hand");
    }
}

fn when(secs: u64) -> String {
    fmt_time(UNIX_EPOCH + Duration::from_secs(secs))
}

fn state_name(s: GrantState) -> &'static str {
    match s {
        GrantState::Active => "active",
        GrantState::Ended => "ended",
    }
}

fn summary(info: &GrantInfo) -> String {
    format!(
        "grant {} stored: scope {}, access token valid until {}",
        info.name,
        info.scope,
        when(info.access_expires_at)
    )
}

fn list(cli: &Cli, json: bool) -> Result<u8> {
    let store = store(cli)?;
    let mut rows = Vec::new();
    for name in store.names()? {
        rows.push((name.clone(), store.info(&name)));
    }
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, r)| match r {
                Ok(info) => serde_json::to_value(info).unwrap_or_default(),
                Err(e) => serde_json::json!({ "name": name, "error": e.to_string() }),
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        )?;
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        outln!(
            "no grants in {} (fapi-host grant add NAME makes one)",
            store.dir().display()
        )?;
    }
    for (name, r) in rows {
        match r {
            Ok(i) => outln!(
                "{name}\t{}\t{}\t{}\taccess until {}",
                state_name(i.state),
                i.issuer,
                i.scope,
                when(i.access_expires_at)
            )?,
            Err(e) => outln!("{name}\tunreadable\t{e}")?,
        }
    }
    Ok(EXIT_OK)
}

fn show(cli: &Cli, name: &str) -> Result<u8> {
    let i = store(cli)?.info(name)?;
    outln!("name            {}", i.name)?;
    outln!("state           {}", state_name(i.state))?;
    outln!("issuer          {}", i.issuer)?;
    outln!("client_id       {}", i.client_id)?;
    outln!("scope           {}", i.scope)?;
    outln!("created         {}", when(i.created))?;
    outln!(
        "last refreshed  {}",
        i.last_refreshed.map_or_else(|| "never".into(), when)
    )?;
    outln!("access expires  {}", when(i.access_expires_at))?;
    Ok(EXIT_OK)
}

async fn revoke(cli: &Cli, name: &str) -> Result<u8> {
    check_grant_name(name)?;
    let store = store(cli)?;
    let grant = store.load(name)?;
    let (client, meta) = client_and_metadata(cli).await?;
    match &meta.revocation_endpoint {
        Some(endpoint) => {
            consent::revoke(
                &client.as_http()?,
                endpoint,
                &grant,
                client.settings().client.timeout,
            )
            .await?;
            store.remove(name)?;
            outln!("grant {name} revoked at {endpoint} and removed")?;
        }
        None => {
            store.remove(name)?;
            let _ = writeln!(
                std::io::stderr(),
                "fapi-host: the authorization server advertises no revocation endpoint: the \
                 grant is removed here, but the consent stands there until it ends or the \
                 household withdraws it"
            );
            outln!("grant {name} removed")?;
        }
    }
    Ok(EXIT_OK)
}
