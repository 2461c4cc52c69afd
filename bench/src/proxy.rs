//! `fapi-host proxy` as a child process, a plain HTTP/1.1 client for it (one keep-alive
//! connection per task), and `fapi-bench proxy-memory`: the proxy's peak memory while it streams
//! large downloads and uploads.

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

use crate::memory::fapi_host_bin;
use crate::setup::Bench;

/// A request body of the bench's client.
pub type Body = BoxBody<Bytes, Infallible>;

/// A `fapi-host proxy` process of the bench's, stopped (SIGTERM, by its PID) when dropped.
pub struct ProxyChild {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `Bearer KEY`: the proxy's local key, as callers send it.
    pub bearer: String,
    _dir: tempfile::TempDir,
}

impl ProxyChild {
    /// `fapi-host --config CONFIG proxy --listen 127.0.0.1:0 --route ROUTE FLAGS...`; returns once
    /// it printed its address (then it serves).
    pub fn start(config: &Path, route: &str, flags: &[&str]) -> ProxyChild {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("proxy.key");
        let mut child = child_command(fapi_host_bin())
            .arg("--config")
            .arg(config)
            .args(["proxy", "--listen", "127.0.0.1:0", "--route", route])
            .arg("--local-key-file")
            .arg(&key_file)
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("fapi-host proxy printed {first:?}, no address"))
            .to_owned();
        // The rest of what it prints goes nowhere, so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let key = std::fs::read_to_string(&key_file).unwrap();
        ProxyChild {
            child,
            addr,
            bearer: format!("Bearer {key}"),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident set so far (VmHWM), KiB, by the kernel's accounting.
    pub fn peak_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The command for a child process of the bench's: `program` itself, or under the command that
/// `FAPI_BENCH_CHILD_WRAPPER` names (words split at spaces: `valgrind --tool=callgrind ...`), which
/// `bench/scripts/proxy-instructions.sh` uses to count the proxies' instructions.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let wrapper = std::env::var("FAPI_BENCH_CHILD_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        None => std::process::Command::new(program),
        Some(first) => {
            let mut command = std::process::Command::new(first);
            command.args(words).arg(program);
            command
        }
    }
}

/// Stop a child of ours: SIGTERM by its PID, SIGKILL if it is still there after 10 s.
pub fn stop(child: &mut std::process::Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A field of `/proc/PID/status` in kB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One keep-alive HTTP/1.1 connection to `addr` (no TLS): requests go one after another; a
/// connection the server closed is opened again.
pub struct Conn {
    addr: String,
    send: hyper::client::conn::http1::SendRequest<Body>,
}

impl Conn {
    pub async fn open(addr: &str) -> Conn {
        Conn {
            addr: addr.to_owned(),
            send: Conn::connect(addr).await,
        }
    }

    async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Body> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    /// Send `method path` with `headers` and `body`; the response head.
    pub async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if self.send.ready().await.is_err() {
            self.send = Conn::connect(&self.addr).await;
        }
        self.send
            .send_request(req.body(body).unwrap())
            .await
            .unwrap()
    }

    /// GET `path`, the body read and dropped chunk by chunk: its status and length.
    pub async fn get_drain(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, u64) {
        let empty = Empty::new().boxed();
        let r = self.send(http::Method::GET, path, headers, empty).await;
        let status = r.status().as_u16();
        let mut body = r.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                n += d.len() as u64;
            }
        }
        (status, n)
    }
}

/// A body of `len` generated bytes, in 64 KiB chunks that share one buffer (nothing is
/// allocated per chunk): what a program streaming a file would send.
pub fn generated_body(len: u64) -> Body {
    const CHUNK: u64 = 64 << 10;
    let block = Bytes::from(vec![0x5a; CHUNK as usize]);
    let chunks = len.div_ceil(CHUNK);
    let stream = futures_util::stream::iter(0..chunks).map(move |k| {
        let n = CHUNK.min(len - k * CHUNK) as usize;
        Ok::<_, Infallible>(Frame::data(block.slice(..n)))
    });
    BoxBody::new(StreamBody::new(stream))
}

use futures_util::StreamExt as _;

/// `fapi-bench proxy-memory`: the proxy's peak RSS while `concurrency` callers each download,
/// then each upload, `mib` MiB through it, against its peak after start and one small request
/// (the same process, just before).
pub async fn memory(mib: u64, concurrency: usize) {
    let b = Bench::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = b
        .fed
        .write_client_config(cfg_dir.path(), "consumer")
        .unwrap();
    let size = mib << 20;
    let route = format!("/data/={}/", b.fed.data_origin());
    let body_limit = (mib + 1).to_string();
    println!(
        "\n## Peak memory of `fapi-host proxy`: {concurrency} concurrent {mib} MiB downloads, then uploads\n"
    );
    println!(
        "| phase | proxy peak RSS before (start + one small GET) | peak RSS during | ratio | MiB/s (all callers) | took |"
    );
    println!("|---|---|---|---|---|---|");
    for upload in [false, true] {
        // A fresh process per phase: each peak is that phase's alone.
        let flags = ["--max-request-body-mib", body_limit.as_str()];
        let proxy = tokio::task::block_in_place(|| ProxyChild::start(&config, &route, &flags));
        let bearer = proxy.bearer.clone();
        let auth = [("authorization", bearer.as_str())];
        let (status, _) = Conn::open(&proxy.addr)
            .await
            .get_drain("/data/items/1", &auth)
            .await;
        assert_eq!(status, 200);
        let before = proxy.peak_kib();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let addr = proxy.addr.clone();
            let bearer = bearer.clone();
            tasks.spawn(async move {
                let auth = [("authorization", bearer.as_str())];
                let mut conn = Conn::open(&addr).await;
                if upload {
                    let length = size.to_string();
                    let headers = [auth[0], ("content-length", length.as_str())];
                    let r = conn
                        .send(
                            http::Method::PUT,
                            "/data/upload",
                            &headers,
                            generated_body(size),
                        )
                        .await;
                    assert_eq!(r.status(), 200);
                    let answer = r.into_body().collect().await.unwrap().to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                    assert_eq!(v["bytes"], size, "the upload arrived short");
                } else {
                    let path = format!("/data/sized?bytes={size}");
                    let (status, n) = conn.get_drain(&path, &auth).await;
                    assert_eq!((status, n), (200, size), "the download arrived short");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let took = t0.elapsed();
        let peak = proxy.peak_kib();
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.2} | {:.0} | {:.1} s |",
            if upload { "uploads" } else { "downloads" },
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak as f64 / before as f64,
            (mib * concurrency as u64) as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        );
        drop(proxy);
    }
}
