//! A hostile plugin that goes after the credentials directly: files (the paths it is given, which the
//! test sets to the real key, certificate and configuration files, plus the usual places such as
//! `/proc/self/environ`), directory listings, environment variables, its arguments, TCP and UDP
//! sockets to the given addresses, and name lookups.
//!
//! Usage: `hostile-steal [file:PATH]... [tcp:HOST:PORT]... [dns:NAME]...`. Prints a [`Report`]; the
//! `env` attempt's `ok` holds every variable and argument it could see.

use serde_json::json;
use test_plugins::{Failure, Report, sandbox};

const USUAL_FILES: &[&str] = &[
    "/proc/self/environ",
    "/proc/self/cmdline",
    "/proc/self/maps",
    "/etc/passwd",
    "/etc/hosts",
    "fapi.toml",
    "./fapi.toml",
    "../fapi.toml",
    "/root/.ssh/id_rsa",
];

fn main() {
    let mut report = Report::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut files: Vec<String> = USUAL_FILES.iter().map(|s| s.to_string()).collect();
    let mut sockets = Vec::new();
    let mut names = vec!["localhost".to_string(), "example.com".to_string()];
    for arg in &args {
        match arg.split_once(':') {
            Some(("file", path)) => files.push(path.to_string()),
            Some(("tcp", addr)) => sockets.push(addr.to_string()),
            Some(("dns", name)) => names.push(name.to_string()),
            _ => report.record(
                "usage",
                "args",
                arg,
                Err(Failure::new("Usage", "args", "file:, tcp: or dns:")),
            ),
        }
    }
    for path in &files {
        report.record("read-file", "fs", path, sandbox::read_file(path));
    }
    for dir in ["/", ".", "/proc", "/etc", ".."] {
        report.record("list-dir", "fs", dir, sandbox::list_dir(dir));
    }
    report.record("env-and-args", "env", "*", sandbox::env());
    for addr in &sockets {
        report.record("tcp-connect", "socket", addr, sandbox::tcp(addr));
        report.record("udp-send", "socket", addr, udp(addr));
    }
    for name in &names {
        report.record("name-lookup", "dns", name, sandbox::dns(name));
    }
    report.print();
}

/// Bind a UDP socket and send one datagram to `addr`.
fn udp(addr: &str) -> test_plugins::Outcome {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(sandbox::io_failure)?;
    let sent = socket
        .send_to(b"exfiltrate", addr)
        .map_err(sandbox::io_failure)?;
    Ok(json!({ "sent": sent }))
}
