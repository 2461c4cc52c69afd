//! The test plugins' shared code: the `probe` command (`src/main.rs`, one subcommand per sandbox
//! rule) and the hostile plugins (`src/bin/hostile-*.rs`, each a component that tries every way it
//! knows around one guarantee and reports what happened) are built from it.
//!
//! Every operation returns an [`Outcome`]: `Ok(details)` or a [`Failure`] whose `err` is the error's
//! case name (`Denied`, `HttpRequestDenied`, `NotFound`, ...).

use serde_json::{Value, json};

pub mod fapi;
pub mod http;
pub mod sandbox;

/// Read size for streaming bodies: 64 KiB.
pub const CHUNK: usize = 64 * 1024;

/// A failed operation, printed as `{"err": err, "stage": stage, "detail": detail}`.
#[derive(Debug)]
pub struct Failure {
    /// The error's case name, e.g. `Denied`.
    pub err: String,
    /// Where it happened, e.g. `fetch`, `body`, `handle`, `get`, `io`.
    pub stage: &'static str,
    /// The full text (the error's payload or debug form).
    pub detail: String,
}

impl Failure {
    /// A failure with these parts.
    pub fn new(err: impl Into<String>, stage: &'static str, detail: impl Into<String>) -> Self {
        Failure {
            err: err.into(),
            stage,
            detail: detail.into(),
        }
    }

    /// The JSON object of this failure (also used inside `errors` lists).
    pub fn to_json(&self) -> Value {
        json!({ "err": self.err, "stage": self.stage, "detail": self.detail })
    }
}

/// What a subcommand produced.
pub type Outcome = Result<Value, Failure>;

/// Parse a numeric argument, or fail with `Usage`.
pub fn parse<T: std::str::FromStr>(arg: &str) -> Result<T, Failure> {
    arg.parse()
        .map_err(|_| Failure::new("Usage", "args", format!("not a number: {arg:?}")))
}

pub fn parse2<A: std::str::FromStr, B: std::str::FromStr>(
    a: &str,
    b: &str,
) -> Result<(A, B), Failure> {
    Ok((parse(a)?, parse(b)?))
}

/// Count the outcomes of a run of requests: `ok` = `{"ok": <successes>, "errors": {<case>: <count>}}`.
pub fn tally(outcomes: impl Iterator<Item = Result<(), Failure>>) -> Outcome {
    let mut ok = 0u64;
    let mut errors = serde_json::Map::new();
    for outcome in outcomes {
        match outcome {
            Ok(()) => ok += 1,
            Err(f) => {
                let count = errors.get(&f.err).and_then(Value::as_u64).unwrap_or(0);
                errors.insert(f.err, json!(count + 1));
            }
        }
    }
    Ok(json!({ "ok": ok, "errors": errors }))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The case name of an error from its `Debug` form: `DnsError(DnsErrorPayload { .. })` -> `DnsError`.
pub fn variant_name(debug: &str) -> String {
    debug
        .split(['(', '{', ' '])
        .next()
        .unwrap_or(debug)
        .to_string()
}

/// What a hostile plugin tried and what happened, printed as one line of JSON:
/// `{"attempts": [{"attack", "via", "target", "ok": {...}} | {"attack", "via", "target", "err", "stage", "detail"}]}`.
///
/// The plugin never judges its own attempts: the test decides which outcomes are refusals.
#[derive(Debug, Default)]
pub struct Report {
    attempts: Vec<Value>,
}

impl Report {
    /// Record one attempt: the attack's name, the way it went (`fapi-fetch`, `wasi:http`, `fs`,
    /// `env`, `socket`, `dns`) and its target.
    pub fn record(&mut self, attack: &str, via: &str, target: &str, outcome: Outcome) {
        let mut entry = match outcome {
            Ok(details) => json!({ "ok": details }),
            Err(failure) => failure.to_json(),
        };
        entry["attack"] = json!(attack);
        entry["via"] = json!(via);
        entry["target"] = json!(target);
        self.attempts.push(entry);
    }

    /// Print the report (one line) to stdout.
    pub fn print(self) {
        println!("{}", json!({ "attempts": self.attempts }));
    }
}
