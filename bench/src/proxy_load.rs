//! `fapi-bench proxy-load`: small CSV GETs at concurrency 1, 16 and 64 through `fapi-host proxy`,
//! with `FapiClient` in process (the baseline of what the host's client costs), and through nginx
//! configured as the same credential-injecting reverse proxy (mTLS client certificate, a fixed
//! bearer token, keep-alive to the upstream). Throughput, p50 and p99 per row, ratios to nginx.

use std::io::Write as _;
use std::time::{Duration, Instant};

use fapi_host::FapiClient;

use crate::proxy::{Conn, ProxyChild, stop};
use crate::setup::{Bench, fapi_get};

/// `fapi-bench bare-proxy` as a child of ours: the proxy's HTTP stack forwarding, nothing else.
struct Bare {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Bare {
    fn start(b: &Bench, upstream: &str, token: &str) -> Bare {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let consumer = b.fed.pki().client("consumer").unwrap();
        let (cert, key, ca) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, &consumer.cert_pem).unwrap();
        std::fs::write(&key, &consumer.key_pem).unwrap();
        std::fs::write(&ca, b.fed.pki().ca_pem()).unwrap();
        let mut child = crate::proxy::child_command(std::env::current_exe().unwrap())
            .arg("bare-proxy")
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ca")
            .arg(&ca)
            .arg(upstream)
            .env("FAPI_BENCH_BEARER", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        // The bench's own first line (the machine) comes before the address.
        let addr = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
            .expect("bare-proxy prints its address");
        Bare {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        crate::proxy::stop(&mut self.child);
    }
}

/// nginx as a child of ours, with its own configuration, PID file and logs in a temporary
/// directory (mode 0700: the configuration holds the token); stopped by its PID when dropped.
struct Nginx {
    child: std::process::Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx in front of the data provider at `upstream_port`, or why it cannot run.
    fn start(b: &Bench, upstream_port: u16, token: &str, workers: usize) -> Result<Nginx, String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if std::process::Command::new("nginx")
            .arg("-v")
            .stderr(std::process::Stdio::null())
            .status()
            .is_err()
        {
            return Err("nginx is not installed (apt-get install nginx)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let ca = d.join("ca.pem");
        std::fs::write(&ca, b.fed.pki().ca_pem()).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let s = &b.settings;
        // `workers` worker processes (default: one per CPU, as `worker_processes auto`). When
        // started by root, the workers run as nginx's default unprivileged user (the key is read
        // by the master before they start). No access log: the proxy writes none per request at
        // its default level either. Responses are buffered in memory only. Callers' connections are
        // kept however many requests they carry, as the proxy does.
        let conf = format!(
            "worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream provider {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen {addr};
        keepalive_requests 1000000;
        location /data/ {{
            proxy_pass https://provider/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_set_header Authorization \"Bearer {token}\";
            proxy_set_header x-fapi-interaction-id $request_id;
            proxy_max_temp_file_size 0;
            proxy_ssl_certificate {cert};
            proxy_ssl_certificate_key {key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 3;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
",
            d = d.display(),
            cert = s.certificate.display(),
            key = s.private_key.display(),
            ca = ca.display(),
        );
        let conf_file = d.join("nginx.conf");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&conf_file)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| e.to_string())?;
        drop(conf);
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx did not start: {e}"))?;
        let mut nginx = Nginx { child, addr, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&nginx.addr).is_err() {
            if Instant::now() > until || matches!(nginx.child.try_wait(), Ok(Some(_))) {
                // The token taken out, should a message quote the directive that holds it.
                let log = std::fs::read_to_string(nginx.dir.path().join("error.log"))
                    .unwrap_or_default()
                    .replace(token, "[token]");
                return Err(format!("nginx did not listen: {}", log.trim()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// One row's figures.
struct Row {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the process in the middle (the proxy, nginx's master and workers) per
    /// request: what it costs whatever else runs on the machine.
    cpu_per_request: Option<Duration>,
}

/// User + system CPU time of process `pid` and of its live children, from `/proc` (clock ticks
/// of 10 ms: rows run long enough for that to be fine).
fn cpu_of(pid: u32) -> Duration {
    let fields = |stat: &str| -> Option<(u32, u64)> {
        // The fields after the command name, which may hold spaces, in parentheses.
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ppid = rest.get(1)?.parse().ok()?;
        let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some((ppid, ticks))
    };
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(p) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some((ppid, t)) = fields(&stat)
            && (p == pid || ppid == pid)
        {
            ticks += t;
        }
    }
    Duration::from_millis(ticks * 10)
}

fn row(mut latencies: Vec<Duration>, took: Duration) -> Row {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Row {
        per_second: latencies.len() as f64 / took.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        cpu_per_request: None,
    }
}

/// `requests` GETs of `path` over plain HTTP to `addr` by `concurrency` tasks, each on its own
/// keep-alive connection: every latency (head sent to body read) and the wall time.
async fn over_http(
    addr: &str,
    path: &str,
    headers: &[(String, String)],
    concurrency: usize,
    requests: usize,
    expect_len: u64,
) -> Row {
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for k in 0..concurrency {
        let n = requests / concurrency + usize::from(k < requests % concurrency);
        let (addr, path, headers) = (addr.to_owned(), path.to_owned(), headers.to_vec());
        tasks.spawn(async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let mut conn = Conn::open(&addr).await;
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let (status, len) = conn.get_drain(&path, &h).await;
                assert_eq!(
                    (status, len),
                    (200, expect_len),
                    "GET {path} through {addr}"
                );
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    row(all, t0.elapsed())
}

/// The same with `FapiClient` in process, its clones sharing one pool and one token.
async fn in_process(client: &FapiClient, url: &str, concurrency: usize, requests: usize) -> Row {
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for k in 0..concurrency {
        let n = requests / concurrency + usize::from(k < requests % concurrency);
        let (client, url) = (client.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                fapi_get(&client, &url).await;
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    row(all, t0.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn run(
    requests: usize,
    levels: &[usize],
    rounds: usize,
    proxy_threads: Option<u16>,
    nginx_workers: Option<usize>,
) {
    let rounds = rounds.max(1);
    let b = Bench::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = b
        .fed
        .write_client_config(cfg_dir.path(), "consumer")
        .unwrap();
    let origin = b.fed.data_origin();
    let upstream_port: u16 = origin.rsplit(':').next().unwrap().parse().unwrap();
    let client = b.client();
    let route = format!("/data/={origin}/");
    let threads = proxy_threads.map(|n| n.to_string());
    let flags: Vec<&str> = match &threads {
        Some(n) => vec!["--threads", n],
        None => Vec::new(),
    };
    let proxy = tokio::task::block_in_place(|| ProxyChild::start(&config, &route, &flags));
    let token = client.danger_reveal_token().await.unwrap();
    let nginx = tokio::task::block_in_place(|| {
        let workers = nginx_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Nginx::start(&b, upstream_port, token.as_str(), workers)
    });
    let bare = tokio::task::block_in_place(|| Bare::start(&b, &format!("{origin}/"), &token));
    drop(token);
    let nginx = match nginx {
        Ok(n) => Some(n),
        Err(why) => {
            println!("nginx row skipped: {why}");
            None
        }
    };
    let path = "/data/consumption.csv";
    let url = format!("{origin}/consumption.csv");
    let len = fapi_federation::data::csv_len(fapi_federation::data::DEFAULT_ROWS);
    let proxy_headers = vec![("authorization".to_owned(), proxy.bearer.clone())];
    println!(
        "\n## Load: GET {path} ({len} bytes) at concurrency {levels:?}, {requests} requests a row, \
         {rounds} round(s)\n"
    );
    if rounds > 1 {
        println!(
            "Each figure is the median of the rounds; a ratio to nginx is the median of each \
             round's ratio (the paths run one after the other in a round, nginx first in every \
             other round), with its lowest and highest in brackets.\n"
        );
    }
    println!(
        "| concurrency | path | req/s | p50 | p99 | CPU per request of the proxy process | req/s vs nginx | p99 vs nginx |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // The middle process whose CPU time a row reports.
    let pids = [Some(proxy.pid()), Some(bare.child.id()), None];
    for &c in levels {
        // Warm-up of every path at this concurrency (connections, the token, introspection).
        let warm = (c * 20).min(requests);
        over_http(&proxy.addr, path, &proxy_headers, c, warm, len).await;
        in_process(&client, &url, c, warm).await;
        if let Some(n) = &nginx {
            over_http(&n.addr, path, &[], c, warm, len).await;
        }
        over_http(&bare.addr, path, &[], c, warm, len).await;
        // Per path (the proxy, the floor, FapiClient, nginx), one row a round.
        let mut rows: [Vec<Row>; 4] = Default::default();
        let nginx_row = || async {
            let n = nginx.as_ref()?;
            let cpu0 = cpu_of(n.child.id());
            let mut r = over_http(&n.addr, path, &[], c, requests, len).await;
            r.cpu_per_request = Some((cpu_of(n.child.id()) - cpu0) / requests as u32);
            Some(r)
        };
        for round in 0..rounds {
            if round % 2 == 1
                && let Some(r) = nginx_row().await
            {
                rows[3].push(r);
            }
            for (i, pid) in pids.iter().enumerate() {
                let cpu0 = pid.map(cpu_of);
                let mut r = match i {
                    0 => over_http(&proxy.addr, path, &proxy_headers, c, requests, len).await,
                    1 => over_http(&bare.addr, path, &[], c, requests, len).await,
                    _ => in_process(&client, &url, c, requests).await,
                };
                if let (Some(pid), Some(cpu0)) = (pid, cpu0) {
                    r.cpu_per_request = Some((cpu_of(*pid) - cpu0) / requests as u32);
                }
                rows[i].push(r);
            }
            if round % 2 == 0
                && let Some(r) = nginx_row().await
            {
                rows[3].push(r);
            }
        }
        let names = [
            "fapi-host proxy",
            "the proxy's HTTP stack forwarding, nothing else (the floor)",
            "FapiClient in process",
            "nginx",
        ];
        for (name, path_rows) in names.iter().zip(&rows) {
            if path_rows.is_empty() {
                continue;
            }
            let ratio = |f: fn(&Row) -> f64| {
                if rows[3].is_empty() {
                    return "-".to_owned();
                }
                let mut r: Vec<f64> = path_rows
                    .iter()
                    .zip(&rows[3])
                    .map(|(a, n)| f(a) / f(n))
                    .collect();
                let m = median(&mut r);
                if r.len() > 1 {
                    format!("{m:.2} [{:.2}-{:.2}]", r[0], r[r.len() - 1])
                } else {
                    format!("{m:.2}")
                }
            };
            let of = |f: fn(&Row) -> f64| median(&mut path_rows.iter().map(f).collect::<Vec<_>>());
            let cpu = if path_rows[0].cpu_per_request.is_some() {
                let us = of(|r| r.cpu_per_request.unwrap_or_default().as_secs_f64() * 1e6);
                format!("{us:.0} µs")
            } else {
                "-".into()
            };
            println!(
                "| {c} | {name} | {:.0} | {} | {} | {cpu} | {} | {} |",
                of(|r| r.per_second),
                ms(Duration::from_secs_f64(of(|r| r.p50.as_secs_f64()))),
                ms(Duration::from_secs_f64(of(|r| r.p99.as_secs_f64()))),
                ratio(|r| r.per_second),
                ratio(|r| r.p99.as_secs_f64()),
            );
        }
    }
    drop(nginx);
    drop(bare);
    drop(proxy);
}
