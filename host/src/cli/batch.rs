//! `fapi-host batch`: fetch every item of an input into a directory, with a manifest; resumable.

use std::path::PathBuf;
use std::sync::Arc;

use super::run::SandboxArgs;
use super::{Cli, EXIT_BATCH_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use crate::batch::{Batch, BatchOptions, DRAIN_GRACE, Display, Input, Rate, Shard, Stop};
use crate::client::FapiClient;
use crate::error::{Error, ErrorKind, Result};
use crate::sandbox::Sandbox;

/// Arguments of `fapi-host batch`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  fapi-host --config fapi.toml batch --input urls.txt --out data/ --concurrency 32 --rate 50/s
  fapi-host --config fapi.toml batch --input items.jsonl --out data/ --shard \"$JOB_COMPLETION_INDEX/8\"
  fapi-host --config fapi.toml batch --input urls.txt --out json/ --plugin csv_to_json.wasm

  fapi-host batch manifest out/shard-*/ > merged.jsonl

Running the same command again skips the items the manifest records as done and retries the rest.")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BatchArgs {
    /// Input file ('-' for stdin): one https URL per line, or JSON lines
    /// {"url", "method", "headers", "body", "name", "grant"}; blank lines and '#' comments are
    /// skipped.
    #[arg(long, value_name = "FILE|-", required = true)]
    pub input: Option<String>,
    /// Output directory; also holds manifest.jsonl.
    #[arg(long, value_name = "DIR", required = true)]
    pub out: Option<PathBuf>,
    /// A batch processor component: each 2xx response goes through it and its output is written.
    #[arg(long, value_name = "COMPONENT.wasm")]
    pub plugin: Option<PathBuf>,
    /// Items in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// Requests per second over all workers, evenly spaced (no burst): N/s, N/m or N/h; at
    /// least 1/h.
    #[arg(long, value_name = "N/s")]
    pub rate: Option<Rate>,
    /// Only the items whose index modulo N is K (0-based).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Record bad input lines as failed instead of refusing to start.
    #[arg(long)]
    pub keep_going: bool,
    /// Retries of an item after a transient failure (429, 502, 503, 504, connection errors, a body
    /// cut short); GET, HEAD and OPTIONS only.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// fsync each output file before renaming it into place (slower; without it, resume still
    /// re-fetches any file whose SHA-256 does not match the manifest).
    #[arg(long)]
    pub fsync: bool,
    /// Largest output the plugin may return for one item, MiB (default 128); the item fails
    /// beyond it.
    #[arg(long, value_name = "MIB")]
    pub max_output_mib: Option<u64>,
    /// Sandbox grants and limits for the plugin.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// The items whose JSON line names no "grant" are fetched with grant NAME's access token (a
    /// household's consent: fapi-host grant add NAME), refreshed when due, once for all items.
    /// Under profile "ib1" an item with neither fails.
    #[arg(long, value_name = "NAME")]
    pub grant: Option<String>,
    /// Instead of fetching: a view of what batches recorded.
    #[command(subcommand)]
    pub view: Option<BatchView>,
}

/// `fapi-host batch SUBCOMMAND`: views of finished or running batches (nothing is fetched).
#[derive(Debug, clap::Subcommand)]
pub enum BatchView {
    /// Print one JSON line per item, the last outcome of each, merged across the manifests of
    /// shards (separate directories or a shared one); lines cut by a crash are skipped.
    #[command(
        after_help = "Each line is the item's last manifest record plus \"dir\", the directory its \
file is in. Lines are sorted by item index. A summary (items, done, failed, superseded records, cut \
lines) goes to stderr. Exit status: 0; 6 a manifest cannot be read.

Example:
  fapi-host batch manifest out/shard-*/ | jq -r 'select(.outcome == \"failed\") | .url'"
    )]
    Manifest {
        /// Output directories of batches (or their manifest.jsonl files), read in this order: an
        /// item recorded in several, or several times, is shown with its last record.
        #[arg(value_name = "DIR", required = true)]
        dirs: Vec<PathBuf>,
    },
}

pub(super) async fn run(cli: &Cli, args: &BatchArgs) -> Result<u8> {
    let (input_arg, out) = match (&args.view, &args.input, &args.out) {
        (Some(BatchView::Manifest { dirs }), _, _) => return manifest_view(dirs),
        (None, Some(input), Some(out)) => (input, out),
        // clap requires both without a subcommand.
        _ => {
            eprintln!(
                "fapi-host batch: give --input FILE and --out DIR (see fapi-host batch --help)"
            );
            return Ok(EXIT_USAGE);
        }
    };
    // A regular file is checked line by line and read again as the batch goes, never held whole:
    // memory stays flat however many items it has. Stdin (and a pipe or FIFO given as a path) can
    // be read only once, so it is kept.
    let input = if input_arg == "-" {
        Input::read(std::io::stdin().lock())
            .map_err(|e| Error::Io(format!("reading the input from stdin: {e}")))?
    } else {
        Input::open(std::path::Path::new(input_arg))
            .map_err(|e| Error::Io(format!("reading the input {input_arg}: {e}")))?
    };
    // The bad lines of this shard: another shard's are that shard's to report.
    let bad: Vec<_> = input
        .bad
        .iter()
        .filter(|b| args.shard.is_none_or(|s| s.contains(b.index)))
        .collect();
    if !bad.is_empty() && !args.keep_going {
        for b in bad {
            eprintln!("fapi-host batch: {input_arg}: {b}");
        }
        eprintln!("fapi-host batch: nothing fetched; fix these lines or use --keep-going");
        return Ok(EXIT_USAGE);
    }

    let mut settings = cli.settings()?;
    // The plugin's limits are part of the settings the client carries, and the sandbox takes
    // them from there: apply the flags before the client is built.
    if args.plugin.is_some() {
        args.sandbox.apply(&mut settings.sandbox)?;
        if let Some(v) = args.max_output_mib {
            settings.sandbox.max_output = v.saturating_mul(1 << 20);
        }
        settings.sandbox.check()?;
    }
    // The batch retries items itself, so that it sees every 429 and can slow the whole origin.
    // The processors' own requests keep the configured retries: their client is this one with
    // them (one token cache, one pool).
    let guest_retries = settings.client.retries;
    settings.client.retries = 0;
    let (client, _) = FapiClient::from_settings(&settings)?;
    let options = BatchOptions {
        out: out.clone(),
        concurrency: args.concurrency.max(1),
        rate: args.rate,
        shard: args.shard,
        keep_going: args.keep_going,
        retries: args.retries,
        fsync: args.fsync,
        display: Display::Auto,
        // Each item's own grant, else this one; one client per grant, made once.
        grant: args.grant.clone(),
    };
    let mut batch = Batch::new(client.clone(), options);
    if let Some(path) = &args.plugin {
        // The plugin's own requests carry each item's grant (the batch hands it to each
        // processor instance); the sandbox's own client carries none.
        let sandbox =
            Sandbox::new(client.with_retries(guest_retries), args.sandbox.options()?).await?;
        let plugin = sandbox.load(path)?;
        batch = batch.with_plugin(Arc::new(sandbox), Arc::new(plugin))?;
    }
    let stop = batch.stop_handle();
    let signals = tokio::spawn(watch_signals(stop));
    let summary = batch.run(input).await;
    signals.abort();
    let summary = match summary {
        Err(e) if e.kind() == ErrorKind::Authorization => {
            eprintln!(
                "fapi-host batch: stopped: no item can be fetched without a token; fix the problem \
                 below and run again: the items not started are fetched then"
            );
            return Err(e);
        }
        Err(e) if e.is_token_unreachable() => {
            let why = if e.is_tls() {
                "TLS with the authorization server failed (fix the problem below)"
            } else {
                "the authorization server cannot be reached for a new token"
            };
            eprintln!(
                "fapi-host batch: stopped: {why}; the items done are recorded: run the same \
                 command again when it is back"
            );
            return Err(e);
        }
        s => s?,
    };
    eprintln!("fapi-host {summary}");
    Ok(if summary.interrupted {
        EXIT_INTERRUPTED
    } else if summary.failed > 0 {
        EXIT_BATCH_FAILED
    } else {
        EXIT_OK
    })
}

/// Ctrl-C or SIGTERM: stop starting items; after [`DRAIN_GRACE`] or a second signal, cancel the
/// ones in flight.
async fn watch_signals(stop: Stop) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let next = async |term: &mut Option<tokio::signal::unix::Signal>| match term {
        Some(t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = t.recv() => {},
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    next(&mut term).await;
    eprintln!(
        "fapi-host batch: interrupted; starting no new items, letting those in flight finish (up to {}s; again to cancel them)",
        DRAIN_GRACE.as_secs()
    );
    stop.stop_starting();
    tokio::select! {
        _ = tokio::time::sleep(DRAIN_GRACE) => {},
        _ = next(&mut term) => {},
    }
    stop.cancel();
}

/// One line of `fapi-host batch manifest`: the record, and the directory its file is in.
#[derive(serde::Serialize)]
struct ViewLine<'a> {
    #[serde(flatten)]
    record: &'a crate::batch::Record,
    dir: &'a str,
}

/// `fapi-host batch manifest DIR...`: each item's last record, across the manifests given.
fn manifest_view(sources: &[PathBuf]) -> Result<u8> {
    use std::io::Write as _;
    let report = crate::batch::merge(sources)?;
    // The directory each source's files are in, as the user wrote it.
    let dirs: Vec<String> = sources
        .iter()
        .map(|p| {
            let dir = match p.parent() {
                _ if p.is_dir() => p.as_path(),
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                // A manifest file named without a directory: the current one.
                _ => std::path::Path::new("."),
            };
            dir.display().to_string()
        })
        .collect();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::new();
    let (mut done, mut failed) = (0u64, 0u64);
    for m in &report.items {
        match m.record.outcome {
            crate::batch::Outcome::Done => done += 1,
            crate::batch::Outcome::Failed => failed += 1,
        }
        line.clear();
        let view = ViewLine {
            record: &m.record,
            dir: dirs.get(m.source).map_or("", String::as_str),
        };
        serde_json::to_writer(&mut line, &view)
            .map_err(|e| Error::Io(format!("writing a record: {e}")))?;
        line.push(b'\n');
        stdout.write_all(&line).map_err(stdout_error)?;
    }
    stdout.flush().map_err(stdout_error)?;
    eprintln!(
        "fapi-host batch manifest: {} items ({done} done, {failed} failed) from {} records in {} \
         manifests; {} records superseded by a later one of their item; {} cut lines skipped",
        report.items.len(),
        report.records,
        sources.len(),
        report.superseded,
        report.cut
    );
    Ok(EXIT_OK)
}

fn stdout_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        super::STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Error::Io(format!("writing to standard output: {e}"))
}
