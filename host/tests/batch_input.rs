//! `fapi-host batch`'s input as users give it, end to end: through a pipe that can be read only
//! once, and with bad lines whose values (a header's, maybe a secret) must never be repeated on
//! stderr or in the manifest.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{Fed, contains};
use fapi_federation::FederationConfig;

fn batch_cmd(f: &Fed, input: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
    c.arg("--config")
        .arg(&f.config)
        .args(["batch", "--input", input, "--out"])
        .arg(out)
        .args(extra)
        .env_remove("FAPI_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run `c`, writing `stdin` to it; its status and stderr.
async fn run(mut c: Command, stdin: Option<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().unwrap();
        if let Some(text) = stdin {
            // Dropped at the end of the statement: the pipe is closed.
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let o = child.wait_with_output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn outcomes(out: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let mut recs: Vec<(u64, String)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["index"].as_u64().unwrap(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    recs.sort();
    recs
}

/// `--input /dev/stdin` with stdin piped (as `--input <(cmd)` or a FIFO): the input can be read
/// only once, so it is read whole, and every item is fetched (it was read a second time, found
/// empty, and the batch ended at once with status 0 and nothing fetched).
#[tokio::test]
async fn an_input_piped_to_dev_stdin_gives_all_its_items() {
    let f = Fed::start(FederationConfig::default()).await;
    let o = f.fed.data_origin();
    let text: String = (0..20).map(|i| format!("{o}/items/{i}\n")).collect();
    let out = f.path("piped-out");
    let before = f.fed.counters().dp_requests;
    let (code, err) = run(batch_cmd(&f, "/dev/stdin", &out, &[]), Some(text)).await;
    assert_eq!(code, 0, "{err}");
    let recs = outcomes(&out);
    assert_eq!(recs.len(), 20, "{recs:?}\n{err}");
    assert!(recs.iter().all(|(_, o)| o == "done"), "{recs:?}");
    assert_eq!(f.fed.counters().dp_requests - before, 20);
}

/// A JSON line whose "headers" is not an object is refused with its line, column and what is
/// expected, in words of our own: the header's value (serde's own message quoted it) is neither
/// on stderr nor, with `--keep-going`, in the manifest.
#[tokio::test]
async fn a_header_value_in_a_bad_line_reaches_neither_stderr_nor_the_manifest() {
    const SECRET: &str = "s3cret-api-key-8f2e";
    let f = Fed::start(FederationConfig::default()).await;
    let o = f.fed.data_origin();
    let input = f.path("secret.jsonl");
    let lines = [
        format!("{o}/items/1"),
        format!(r#"{{"url":"{o}/items/2","headers":"X-Api-Key: {SECRET}"}}"#),
        format!(r#"{{"url":"{o}/items/3","headers":{{"X-Api-Key":["{SECRET}"]}}}}"#),
        format!(r#"{{"url":"{o}/items/4","headers":{{"X-Api-Key":"{SECRET}"}},"{SECRET}":1}}"#),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let input = input.to_str().unwrap();

    let out = f.path("secret-out");
    let (code, err) = run(batch_cmd(&f, input, &out, &[]), None).await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(SECRET), "{err}");
    for want in [
        "line 2:",
        "line 3:",
        "line 4:",
        "\"headers\"",
        "column",
        "--keep-going",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }

    let (code, err) = run(batch_cmd(&f, input, &out, &["--keep-going"]), None).await;
    assert_eq!(code, 9, "{err}");
    assert!(!err.contains(SECRET), "{err}");
    let manifest = std::fs::read(out.join("manifest.jsonl")).unwrap();
    assert!(
        !contains(&manifest, SECRET.as_bytes()),
        "{}",
        String::from_utf8_lossy(&manifest)
    );
    let recs = outcomes(&out);
    assert_eq!(
        recs,
        vec![
            (0, "done".into()),
            (1, "failed".into()),
            (2, "failed".into()),
            (3, "failed".into())
        ]
    );
}
