//! The engine: N workers over one shared [`FapiClient`] (one token cache, one connection pool),
//! paced by `--rate` and per-origin politeness, retrying transient failures of idempotent items,
//! hashing each body as it arrives and handing it to the [writer](super::writer), which puts it in
//! place atomically (temporary file, optional fsync, rename) and records it in the manifest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, watch};

use super::input::{Input, Item, Shard};
use super::manifest::{self, Manifest, Outcome, Record, RecordError};
use super::politeness::{Politeness, Rate, RateLimiter};
use super::progress::{Display, Progress, Stats, Summary};
use super::writer::{Chunks, Job, Output, Writer, create_new};
use crate::client::{FapiClient, FapiRequest, FapiResponse};
use crate::error::{Error, ErrorKind, Result};
use crate::retry;
use crate::sandbox::{Plugin, ProcessItem, ProcessOutcome, Sandbox};

/// Outputs that may wait for the writer at once (each a small body held in memory, at most 256
/// KiB, or a file already on disk): enough that the writer always finds a group waiting (32 and
/// 128 gave the same throughput), few enough that they hold at most 8 MiB.
const WRITER_QUEUE: usize = 32;

/// How a batch runs.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// Output directory (created if missing); the manifest is `manifest.jsonl` in it.
    pub out: PathBuf,
    /// Items in flight at once (at least 1).
    pub concurrency: usize,
    /// Requests per second over all workers (None: no limit).
    pub rate: Option<Rate>,
    /// Only this shard of the input.
    pub shard: Option<Shard>,
    /// Record bad input lines as failed instead of refusing to start.
    pub keep_going: bool,
    /// Item-level retries of transient failures (429, 502, 503, 504, connection errors, bodies
    /// cut short), for GET, HEAD and OPTIONS only: other methods are never replayed.
    pub retries: u32,
    /// fsync each output file before renaming it into place (default false: resume checks every
    /// file's SHA-256, so a file cut short by a power loss is fetched again anyway).
    pub fsync: bool,
    /// How progress is shown.
    pub display: Display,
    /// The grant of the items whose JSON line names none (`--grant NAME`): fetched with
    /// [`FapiClient::for_grant`] of the batch's client. None: such items use the batch's client
    /// as it is (under profile `ib1`, they fail with the error naming `--grant`).
    pub grant: Option<String>,
}

impl BatchOptions {
    /// Defaults: concurrency 8, no rate limit, all shards, 3 retries, no progress display.
    pub fn new(out: impl Into<PathBuf>) -> BatchOptions {
        BatchOptions {
            out: out.into(),
            concurrency: 8,
            rate: None,
            shard: None,
            keep_going: false,
            retries: 3,
            fsync: false,
            display: Display::Quiet,
            grant: None,
        }
    }
}

/// Asks a running batch to stop: first stop starting items, then cancel the ones in flight.
#[derive(Clone, Debug)]
pub struct Stop {
    tx: Arc<watch::Sender<u8>>,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const CANCELLED: u8 = 2;

impl Stop {
    fn new() -> Stop {
        Stop {
            tx: Arc::new(watch::channel(RUNNING).0),
        }
    }
    /// Start no new item; let the ones in flight finish.
    pub fn stop_starting(&self) {
        self.tx.send_if_modified(|v| {
            let changed = *v < DRAINING;
            *v = (*v).max(DRAINING);
            changed
        });
    }
    /// Cancel the items in flight too (their temporary files are removed).
    pub fn cancel(&self) {
        self.tx.send_replace(CANCELLED);
    }
    /// Whether a stop was asked.
    pub fn is_stopping(&self) -> bool {
        *self.tx.borrow() >= DRAINING
    }
    async fn reached(&self, level: u8) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v >= level).await;
    }
}

/// A batch: a client, optionally a processor plugin, and options.
#[derive(Debug)]
pub struct Batch {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: FapiClient,
    plugin: Option<(Arc<Sandbox>, Arc<Plugin>)>,
    options: BatchOptions,
    stats: Arc<Stats>,
    stop: Stop,
    politeness: Politeness,
    limiter: Option<RateLimiter>,
    /// The first error that no item can get past (the authorization server refused to issue a
    /// token, or its discovery document is unusable): the batch stops starting items and ends
    /// with it, instead of asking the authorization server again for every item.
    fatal: std::sync::Mutex<Option<Error>>,
    /// One client per grant the items name, made once ([`FapiClient::for_grant`]: the same
    /// connection pool, a token source of its own), or why that grant cannot be used (unknown,
    /// consent ended): its items then fail, and only they.
    grants: std::sync::Mutex<HashMap<String, std::result::Result<FapiClient, String>>>,
}

/// Why writing one item's output failed.
enum WriteError {
    /// The body broke off (reset, truncated): transient.
    Body(String),
    /// Anything else, with its manifest kind.
    Other(&'static str, String),
}

impl Batch {
    /// A batch over `client`. For politeness to see every 429, build the client with
    /// `retries = 0` (the CLI does): the batch then does all retrying itself, with `options.retries`.
    pub fn new(client: FapiClient, options: BatchOptions) -> Batch {
        let limiter = options.rate.map(RateLimiter::new);
        Batch {
            shared: Arc::new(Shared {
                client,
                plugin: None,
                options,
                stats: Arc::new(Stats::default()),
                stop: Stop::new(),
                politeness: Politeness::default(),
                limiter,
                fatal: std::sync::Mutex::new(None),
                grants: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Hand each 2xx response to `plugin` (a batch processor loaded into `sandbox`) and write its
    /// output instead of the body. Each item runs in a fresh instance. A body that breaks off
    /// while the processor reads it fails the item as a body cut short (retried like one),
    /// whatever the processor returns; an output over `[sandbox] max_output_mib` fails the item.
    /// Build the sandbox over [`FapiClient::with_retries`] of this batch's client (built with
    /// `retries = 0`), as the CLI does: one token cache, and the processors' own requests retried.
    pub fn with_plugin(self, sandbox: Arc<Sandbox>, plugin: Arc<Plugin>) -> Result<Batch> {
        if !plugin.is_processor() {
            return Err(Error::Component(format!(
                "{} is not a batch processor (it must export openenergy:fapi/processor)",
                plugin.name()
            )));
        }
        let Ok(mut shared) = Arc::try_unwrap(self.shared) else {
            return Err(Error::Component(
                "with_plugin after the batch started".into(),
            ));
        };
        shared.plugin = Some((sandbox, plugin));
        Ok(Batch {
            shared: Arc::new(shared),
        })
    }

    /// The client the batch fetches with.
    pub fn client(&self) -> &FapiClient {
        &self.shared.client
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// A handle to stop the batch (signals, tests).
    pub fn stop_handle(&self) -> Stop {
        self.shared.stop.clone()
    }

    /// Run the batch to the end (or until stopped). Items recorded done by a previous run in
    /// the same directory, whose files are intact, are skipped. Errors are about the batch as a
    /// whole (bad input without `keep_going`, an unusable directory or manifest); the items'
    /// own failures are in the manifest and the summary.
    pub async fn run(&self, input: Input) -> Result<Summary> {
        let sh = &self.shared;
        let input = match sh.options.shard {
            Some(s) => input.shard(s),
            None => input,
        };
        if !input.bad.is_empty() && !sh.options.keep_going {
            let lines: Vec<String> = input.bad.iter().map(|b| b.to_string()).collect();
            return Err(Error::InvalidRequest(format!(
                "the input has bad lines (fix them, or use --keep-going to record them as failed):\n  {}",
                lines.join("\n  ")
            )));
        }
        let out = &sh.options.out;
        std::fs::create_dir_all(out)
            .map_err(|e| Error::Io(format!("output directory {}: {e}", out.display())))?;
        let manifest = Manifest::open(out)?;
        // Checking the files of a resumed run reads and hashes each of them: off the runtime, so
        // that the signal handler runs, and ended by a signal.
        let records = manifest::read(out)?;
        let completed = {
            let (out, stop, shard) = (out.clone(), sh.stop.clone(), sh.options.shard);
            tokio::task::spawn_blocking(move || {
                manifest::completed(&out, &records, shard, || stop.is_stopping())
            })
            .await
            .map_err(|e| Error::Io(format!("checking the files of the last run: {e}")))?
        };
        if sh.stop.is_stopping() {
            // Interrupted before anything started: nothing to record, nothing lost.
            return Ok(sh.stats.summary(true));
        }
        let (jobs, writer) = Writer::start(manifest, sh.stats.clone(), sh.stop.clone())?;
        for bad in &input.bad {
            let record = Record {
                outcome: Outcome::Failed,
                line: bad.line,
                index: bad.index,
                url: String::new(),
                status: None,
                bytes: 0,
                sha256: None,
                duration_ms: 0,
                attempts: 0,
                interaction_id: None,
                file: None,
                error: Some(RecordError {
                    kind: "input".into(),
                    message: bad.message.clone(),
                }),
                grant: None,
            };
            let _ = jobs.send(Job {
                output: Output::Nothing,
                record,
                permit: None,
            });
        }
        // A fresh output directory (the usual case) has nothing to skip: no pass over the input
        // to count, no key built per item.
        let skipped = if completed.is_empty() {
            0
        } else {
            input.items().filter(|i| is_done(&completed, i)).count()
        };
        sh.stats
            .skipped
            .fetch_add(skipped as u64, Ordering::Relaxed);
        // The bad lines recorded above count as failed: they are part of the total.
        sh.stats.total.store(
            (input.len() - skipped + input.bad.len()) as u64,
            Ordering::Relaxed,
        );
        // One token before the first item: an authorization server that is down or refuses is
        // reported once, as the batch's error, instead of once per item.
        if input.len() > skipped {
            let warm = tokio::select! {
                r = sh.warm_up() => r,
                _ = sh.stop.reached(DRAINING) => Ok(()),
            };
            if let Err(e) = warm {
                // The bad lines sent above are recorded before the batch ends with this error.
                drop(jobs);
                if let Err(w) = writer.finish().await {
                    tracing::warn!(error = %w, "the bad lines could not be recorded");
                }
                return Err(e);
            }
        }
        let _progress = Progress::start(sh.stats.clone(), sh.options.display);

        // The items are started from a task of the runtime, not from the caller's thread (the
        // main thread, under `block_on`): a task spawned from outside the runtime's workers wakes
        // one of them each time (a futex call per item).
        // In a set of its own, so that dropping this future aborts it and the items it started.
        let mut dispatcher = tokio::task::JoinSet::new();
        dispatcher.spawn(dispatch(
            self.shared.clone(),
            input,
            completed,
            jobs.clone(),
        ));
        drop(jobs);
        let changed = match dispatcher.join_next().await {
            Some(Ok(changed)) => changed,
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => {
                return Err(Error::Io(format!(
                    "the batch's dispatcher ended early: {other:?}"
                )));
            }
        };
        let written = writer.finish().await;
        if let Some(e) = sh.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        if changed {
            return Err(Error::Io(
                "the input file changed while the batch ran, so its remaining items were not \
                 started; the items done are recorded: run the same command again to fetch the rest"
                    .into(),
            ));
        }
        written?;
        Ok(sh.stats.summary(sh.stop.is_stopping()))
    }
}

/// Whether a previous run in the directory finished `item` (its file intact).
fn is_done(completed: &HashMap<(String, String), Record>, item: &Item) -> bool {
    !completed.is_empty() && completed.contains_key(&(item.name.clone(), item.url.to_string()))
}

/// Start the items not done yet, each as a task, at most `concurrency` fetching at once; hand
/// each one's output to the writer (`jobs`). Returns whether the input file changed meanwhile.
async fn dispatch(
    shared: Arc<Shared>,
    input: Input,
    completed: HashMap<(String, String), Record>,
    jobs: super::writer::Jobs,
) -> bool {
    let sh = &shared;
    let permits = Arc::new(Semaphore::new(sh.options.concurrency.max(1)));
    // Places in the writer's queue: an item hands its output over with one of these and frees
    // its fetching place at once, so that fetching goes on while the writer catches up, and
    // what waits for the writer stays bounded.
    let queue = Arc::new(Semaphore::new(WRITER_QUEUE));
    let mut tasks = tokio::task::JoinSet::new();
    for item in input.items().filter(|i| !is_done(&completed, i)) {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = sh.stop.reached(DRAINING) => break,
        };
        if sh.stop.is_stopping() {
            break;
        }
        let sh2 = shared.clone();
        let (jobs, queue) = (jobs.clone(), queue.clone());
        tasks.spawn(async move {
            let (output, record) = tokio::select! {
                r = sh2.fetch_item(&item) => r,
                _ = sh2.stop.reached(CANCELLED) => (Output::Nothing, sh2.failed(&item, "interrupted",
                    "cancelled by a signal before it finished".into(), None, 0, None, Instant::now())),
            };
            // A place in the writer's queue (waiting while the writer is behind; it always
            // drains), then this item's fetching place is free for the next item.
            let queued = queue.acquire_owned().await.ok();
            drop(permit);
            // The writer ends only after every sender is gone, so it is there to receive.
            let _ = jobs.send(Job {
                output,
                record,
                permit: queued,
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    input.changed()
}

/// Removes a temporary file unless disarmed (on error, cancellation or panic). A write still
/// running on the blocking pool when it is dropped sees `abandoned` when it ends and removes the
/// file itself, so a file that write creates after the drop is not left behind either.
struct TempFile {
    path: PathBuf,
    armed: bool,
    abandoned: Arc<AtomicBool>,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile {
            path,
            armed: true,
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hand the path on (to the writer, which removes the file if it cannot put it in place).
    fn disarm(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            self.abandoned.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn error_kind(e: &Error) -> &'static str {
    if e.is_token_unreachable() {
        // The authorization server, not the data provider, could not be reached: a kind of its
        // own, so that nobody reads the manifest as the provider failing.
        return "token_unreachable";
    }
    match e.kind() {
        ErrorKind::Network => "network",
        ErrorKind::Authorization => "authorization",
        ErrorKind::InvalidRequest => "request",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::Io => "io",
        ErrorKind::Config => "config",
        ErrorKind::Component => "plugin",
    }
}

impl Shared {
    /// The grant `item` is fetched with: its own, else the batch's default.
    fn grant_of<'a>(&'a self, item: &'a Item) -> Option<&'a str> {
        item.grant.as_deref().or(self.options.grant.as_deref())
    }

    /// The client of grant `name`, made on first use and kept for the batch, or why the grant
    /// cannot be used.
    fn grant_client(&self, name: &str) -> std::result::Result<FapiClient, String> {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = grants.get(name) {
            return slot.clone();
        }
        let slot = self.client.for_grant(name).map_err(|e| e.to_string());
        grants.insert(name.to_owned(), slot.clone());
        slot
    }

    /// Grant `name` cannot be used (`e`): its remaining items fail at once with this error.
    fn grant_failed(&self, name: &str, e: &Error) {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        grants.insert(name.to_owned(), Err(e.to_string()));
    }

    /// The client `item` is fetched with.
    fn client_for(&self, item: &Item) -> std::result::Result<FapiClient, String> {
        match self.grant_of(item) {
            Some(name) => self.grant_client(name),
            None => Ok(self.client.clone()),
        }
    }

    /// Get the token the items will share, retrying connection failures like an item would.
    /// With a default grant, that grant's token; a grant that cannot be used (unknown, consent
    /// ended) fails its items, not the batch. Without one under a profile that needs grants,
    /// nothing: each grant gets its token with its first item.
    async fn warm_up(&self) -> Result<()> {
        let client = match self.options.grant.as_deref() {
            Some(name) => match self.grant_client(name) {
                Ok(c) => c,
                Err(_) => return Ok(()),
            },
            None if self.client.settings().profile.needs_grant() => return Ok(()),
            None => self.client.clone(),
        };
        let mut tries = 0u32;
        loop {
            tries += 1;
            match client.warm_token().await {
                Ok(()) => return Ok(()),
                Err(e @ (Error::ConsentEnded(_) | Error::Grant(_)))
                    if self.options.grant.is_some() =>
                {
                    if let Some(name) = self.options.grant.as_deref() {
                        self.grant_failed(name, &e);
                    }
                    return Ok(());
                }
                Err(e)
                    if e.kind() == ErrorKind::Network
                        && !e.is_tls()
                        && tries <= self.options.retries =>
                {
                    tracing::warn!(error = %e, "no token yet; retrying");
                    let d = retry::backoff(tries, &self.client.settings().client);
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn failed(
        &self,
        item: &Item,
        kind: &str,
        message: String,
        status: Option<u16>,
        attempts: u32,
        interaction_id: Option<String>,
        t0: Instant,
    ) -> Record {
        Record {
            outcome: Outcome::Failed,
            line: item.line,
            index: item.index,
            url: item.url.to_string(),
            status,
            bytes: 0,
            sha256: None,
            duration_ms: t0.elapsed().as_millis() as u64,
            attempts,
            interaction_id,
            file: None,
            error: Some(RecordError {
                kind: kind.into(),
                message,
            }),
            grant: self.grant_of(item).map(str::to_owned),
        }
    }

    async fn fetch_item(&self, item: &Item) -> (Output, Record) {
        self.attempt(item)
            .await
            .unwrap_or_else(|failed| (Output::Nothing, failed))
    }

    /// Fetch an item (retrying as allowed) and stage its output: what the writer must do and the
    /// record to append, or the failure's record.
    async fn attempt(&self, item: &Item) -> std::result::Result<(Output, Record), Record> {
        let t0 = Instant::now();
        // The URL up to its path: the origin's ASCII serialisation, as input URLs carry no user
        // information (refused when the input is read), without formatting it anew per item.
        let origin = &item.url[..url::Position::BeforePath];
        let idempotent = retry::is_idempotent(&item.method);
        let client_options = &self.client.settings().client;
        let client = match self.client_for(item) {
            Ok(c) => c,
            Err(message) => return Err(self.failed(item, "grant", message, None, 0, None, t0)),
        };
        let mut attempts = 0u32;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let may_retry = idempotent && tries <= self.options.retries;
            self.politeness.wait(origin).await;
            if let Some(l) = &self.limiter {
                l.until_ready().await;
            }
            let request = FapiRequest {
                method: item.method.clone(),
                url: item.url.clone(),
                headers: item.headers.clone(),
                body: item.body.clone(),
                interaction_id: None,
                timeout: None,
            };
            let response = match client.send(request).await {
                Ok(r) => r,
                Err(e) => {
                    attempts += 1;
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    // This item's grant cannot be used (consent ended, unknown, unusable file):
                    // its items fail, the other grants' go on.
                    if let (Some(name), Error::ConsentEnded(_) | Error::Grant(_)) =
                        (self.grant_of(item), &e)
                    {
                        self.grant_failed(name, &e);
                        return Err(self.failed(
                            item,
                            "grant",
                            e.to_string(),
                            None,
                            attempts,
                            None,
                            t0,
                        ));
                    }
                    // The authorization server refused, or cannot be reached for the token every
                    // item needs: every other item would get the same answer, so stop here
                    // (the run says how to resume) rather than fail them one by one.
                    if e.kind() == ErrorKind::Authorization || e.is_token_unreachable() {
                        let record = self.failed(
                            item,
                            error_kind(&e),
                            e.to_string(),
                            None,
                            attempts,
                            None,
                            t0,
                        );
                        self.fatal
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        self.stop.stop_starting();
                        return Err(record);
                    }
                    if may_retry && e.kind() == ErrorKind::Network && !e.is_tls() {
                        tokio::time::sleep(retry::backoff(tries, client_options)).await;
                        continue;
                    }
                    return Err(self.failed(
                        item,
                        error_kind(&e),
                        e.to_string(),
                        None,
                        attempts,
                        None,
                        t0,
                    ));
                }
            };
            attempts += response.attempts();
            self.stats
                .requests
                .fetch_add(u64::from(response.attempts()), Ordering::Relaxed);
            let status = response.status();
            let interaction_id = response.interaction_id().map(str::to_owned);
            if retry::is_retryable_status(status) {
                let retry_after = retry::retry_after(response.headers());
                let planned = retry::delay_for(tries, retry_after, client_options);
                if status.as_u16() == 429 || retry_after.is_some() {
                    // Every worker of this origin waits, not only this one (when the server asks
                    // for longer than the client waits, as long as the client waits).
                    let delay = *planned.as_ref().unwrap_or(&client_options.max_retry_after);
                    self.politeness.defer(origin, delay);
                }
                match planned {
                    Ok(delay) if may_retry => {
                        drop(response);
                        if status.as_u16() != 429 && retry_after.is_none() {
                            tokio::time::sleep(delay).await;
                        }
                        continue;
                    }
                    // Not retried sooner than the server asked: failed, for a later run.
                    Err(too_long) => {
                        return Err(self.failed(
                            item,
                            "http",
                            format!("HTTP {status}: {too_long}"),
                            Some(status.as_u16()),
                            attempts,
                            interaction_id,
                            t0,
                        ));
                    }
                    Ok(_) => {}
                }
            }
            if !status.is_success() {
                let mut message = format!("HTTP {status}");
                if let Some(p) = response.auth_problem() {
                    message = format!("{message}: {p}");
                }
                return Err(self.failed(
                    item,
                    "http",
                    message,
                    Some(status.as_u16()),
                    attempts,
                    interaction_id,
                    t0,
                ));
            }
            // The processor's own requests carry the item's grant, as its fetch did.
            let granted = self.grant_of(item).map(|_| &client);
            match self.write_output(item, response, granted).await {
                Ok((output, bytes, sha256)) => {
                    let record = Record {
                        outcome: Outcome::Done,
                        line: item.line,
                        index: item.index,
                        url: item.url.to_string(),
                        status: Some(status.as_u16()),
                        bytes,
                        sha256: Some(sha256),
                        duration_ms: t0.elapsed().as_millis() as u64,
                        attempts,
                        interaction_id,
                        file: Some(item.name.clone()),
                        error: None,
                        grant: self.grant_of(item).map(str::to_owned),
                    };
                    return Ok((output, record));
                }
                Err(WriteError::Body(msg)) => {
                    if may_retry {
                        tracing::warn!(url = %item.url, "body interrupted; retrying the item");
                        tokio::time::sleep(retry::backoff(tries, client_options)).await;
                        continue;
                    }
                    return Err(self.failed(
                        item,
                        "body",
                        msg,
                        Some(status.as_u16()),
                        attempts,
                        interaction_id,
                        t0,
                    ));
                }
                Err(WriteError::Other(kind, msg)) => {
                    return Err(self.failed(
                        item,
                        kind,
                        msg,
                        Some(status.as_u16()),
                        attempts,
                        interaction_id,
                        t0,
                    ));
                }
            }
        }
    }

    /// Read the body (or the plugin's output), hashing it, and stage it for the writer: a small
    /// one stays in memory, a large one is streamed to `out/.NAME.partial-RANDOM`, and with
    /// `fsync` either is written and synced here. The writer then renames it to `out/NAME`.
    /// Without fsync a power loss can leave a short file under its final name; resume then finds
    /// its hash wrong and fetches it again.
    async fn write_output(
        &self,
        item: &Item,
        mut response: FapiResponse,
        granted: Option<&FapiClient>,
    ) -> std::result::Result<(Output, u64, String), WriteError> {
        let out = &self.options.out;
        let io = |e: std::io::Error| {
            WriteError::Other(
                "io",
                format!(
                    "writing {} in {}: {e}; free space (or fix the directory), then run the same command again to fetch the items that failed",
                    item.name,
                    out.display()
                ),
            )
        };
        let tmp = TempFile::new(out.join(format!(
            ".{}.partial-{}",
            item.name,
            uuid::Uuid::new_v4().simple()
        )));
        let fin = out.join(&item.name);
        let fsync = self.options.fsync;
        if let Some((sandbox, plugin)) = &self.plugin {
            let pi = ProcessItem {
                index: item.index,
                method: item.method.clone(),
                url: item.url.to_string(),
                name: item.name.clone(),
            };
            let output = match sandbox
                .process_with_grant(plugin, pi, response, granted)
                .await
            {
                Ok(ProcessOutcome::Output(b)) => b,
                // Transient, like a body cut short without a processor: retried if allowed.
                Ok(ProcessOutcome::BodyBroken(msg)) => {
                    return Err(WriteError::Body(format!(
                        "the body broke off while the plugin read it: {msg}"
                    )));
                }
                Ok(ProcessOutcome::BodyTooLarge { limit }) => {
                    return Err(WriteError::Other(
                        "plugin",
                        format!(
                            "the body is larger than the plugin may read ({limit} bytes: [sandbox] \
                             max_response_body_mib / --max-response-body-mib, and for read-all half \
                             of --max-memory-mib); nothing was written"
                        ),
                    ));
                }
                Ok(ProcessOutcome::TooLarge { bytes, limit }) => {
                    return Err(WriteError::Other(
                        "plugin",
                        format!(
                            "the plugin's output ({bytes} bytes) is larger than the limit of {} \
                             ([sandbox] max_output_mib / --max-output-mib); nothing was written",
                            if limit % (1 << 20) == 0 {
                                format!("{} MiB", limit >> 20)
                            } else {
                                format!("{limit} bytes")
                            }
                        ),
                    ));
                }
                Ok(ProcessOutcome::Failed(msg)) => {
                    return Err(WriteError::Other(
                        "plugin",
                        format!("the plugin failed: {msg}"),
                    ));
                }
                Ok(ProcessOutcome::Stopped(why)) => {
                    return Err(WriteError::Other(
                        "plugin_stopped",
                        format!("the plugin was stopped: {why}"),
                    ));
                }
                Err(e) => return Err(WriteError::Other("plugin", e.to_string())),
            };
            let digest = Sha256::digest(&output);
            let bytes = output.len() as u64;
            let mut data = Chunks::default();
            data.push(output.into());
            let staged = stage(tmp, fin, data, fsync).await.map_err(io)?;
            return Ok((staged, bytes, manifest::hex(&digest)));
        }
        // Small bodies (most API pages) are gathered in memory, hashed here and written by the
        // writer. A larger one goes to the temporary file in pieces of SPILL bytes, each written
        // and hashed on the blocking pool while the next is received. The chunks are kept as they
        // arrive (no copy) and written with one `writev` a piece.
        let mut buf = Chunks::default();
        let mut bytes = 0u64;
        let mut spool: Option<Spool> = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    bytes += chunk.len() as u64;
                    buf.push(chunk);
                    if buf.len >= SPILL {
                        let piece = std::mem::take(&mut buf);
                        match spool.as_mut() {
                            Some(s) => s.push(piece).await.map_err(io)?,
                            None => spool = Some(Spool::start(&tmp, piece)),
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(WriteError::Body(e.to_string())),
            }
        }
        let Some(spool) = spool else {
            let mut hasher = Sha256::new();
            buf.each(|c| hasher.update(c));
            let staged = stage(tmp, fin, buf, fsync).await.map_err(io)?;
            return Ok((staged, bytes, manifest::hex(&hasher.finalize())));
        };
        let digest = spool.finish(buf, fsync).await.map_err(io)?;
        let staged = Output::Rename {
            tmp: tmp.disarm(),
            fin,
        };
        Ok((staged, bytes, manifest::hex(&digest)))
    }
}

/// A large output on its way to its temporary file: pieces written and hashed on the blocking
/// pool, in order, one at a time, while the task receives the next.
struct Spool {
    path: PathBuf,
    abandoned: Arc<AtomicBool>,
    in_flight: tokio::task::JoinHandle<std::io::Result<(std::fs::File, Sha256)>>,
}

impl Spool {
    /// Create the temporary file of `tmp` and start writing `first` to it.
    fn start(tmp: &TempFile, first: Chunks) -> Spool {
        let (path, abandoned) = (tmp.path.clone(), tmp.abandoned.clone());
        let in_flight = Spool::write(path.clone(), abandoned.clone(), None, first, false);
        Spool {
            path,
            abandoned,
            in_flight,
        }
    }

    /// Start writing `piece` once the piece in flight is written.
    async fn push(&mut self, piece: Chunks) -> std::io::Result<()> {
        let (file, hasher) = (&mut self.in_flight)
            .await
            .map_err(std::io::Error::other)??;
        self.in_flight = Spool::write(
            self.path.clone(),
            self.abandoned.clone(),
            Some((file, hasher)),
            piece,
            false,
        );
        Ok(())
    }

    /// Write the last piece (and with `sync`, fsync the file): the whole output's SHA-256.
    async fn finish(mut self, last: Chunks, sync: bool) -> std::io::Result<[u8; 32]> {
        let (file, hasher) = (&mut self.in_flight)
            .await
            .map_err(std::io::Error::other)??;
        let last = Spool::write(self.path, self.abandoned, Some((file, hasher)), last, sync);
        let (_, hasher) = last.await.map_err(std::io::Error::other)??;
        Ok(hasher.finalize().into())
    }

    /// On the blocking pool: append `piece` to the file (creating `path` first if there is no
    /// file yet) and to the hash, with `sync` fsync the file; if the item was abandoned meanwhile,
    /// remove the file.
    fn write(
        path: PathBuf,
        abandoned: Arc<AtomicBool>,
        open: Option<(std::fs::File, Sha256)>,
        piece: Chunks,
        sync: bool,
    ) -> tokio::task::JoinHandle<std::io::Result<(std::fs::File, Sha256)>> {
        tokio::task::spawn_blocking(move || {
            let written = (|| {
                let (mut file, mut hasher) = match open {
                    Some(o) => o,
                    None => (create_new(&path)?, Sha256::new()),
                };
                piece.write_to(&mut file)?;
                piece.each(|c| hasher.update(c));
                if sync {
                    file.sync_all()?;
                }
                Ok((file, hasher))
            })();
            if abandoned.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
            }
            written
        })
    }
}

/// Bodies up to this size stay in memory until the writer writes them; a larger one is written
/// to its temporary file in pieces of about this size (at most two pieces in memory per item,
/// few hand-offs).
const SPILL: usize = 256 << 10;

/// The writer's part for a whole output in memory: for one of at most [`SPILL`] bytes without
/// `fsync`, all of it (no file-system call on this task); otherwise (a processor's large output,
/// or `fsync`) the file is written (and synced) here, on the blocking pool, and the writer only
/// renames it, so that what waits for the writer in memory stays small.
async fn stage(tmp: TempFile, fin: PathBuf, data: Chunks, fsync: bool) -> std::io::Result<Output> {
    if !fsync && data.len <= SPILL {
        return Ok(Output::Whole {
            tmp: tmp.disarm(),
            fin,
            data,
        });
    }
    Spool::write(tmp.path.clone(), tmp.abandoned.clone(), None, data, fsync)
        .await
        .map_err(std::io::Error::other)??;
    Ok(Output::Rename {
        tmp: tmp.disarm(),
        fin,
    })
}

/// How long the CLI lets in-flight items finish after Ctrl-C or SIGTERM before cancelling them.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
