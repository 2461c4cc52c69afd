//! Subcommands that probe the sandbox itself: files, environment, sockets, DNS, memory, CPU, stack,
//! exit codes and stdin. An I/O failure is `{"err": "<io::ErrorKind>", "stage": "io", "detail": "..."}`.

use std::hint::black_box;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};

use serde_json::json;

use crate::{Failure, Outcome};

const MIB: usize = 1024 * 1024;
/// The WebAssembly page size: touching one byte per page commits the whole allocation.
const WASM_PAGE: usize = 64 * 1024;

/// `read-file PATH`: `ok` = `{"len": bytes}`.
pub fn read_file(path: &str) -> Outcome {
    let bytes = std::fs::read(path).map_err(io_failure)?;
    Ok(json!({ "len": bytes.len() }))
}

/// `list-dir PATH`: `ok` = `{"entries": [names, sorted]}`.
pub fn list_dir(path: &str) -> Outcome {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_failure)? {
        entries.push(
            entry
                .map_err(io_failure)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    entries.sort();
    Ok(json!({ "entries": entries }))
}

/// `env`: `ok` = `{"vars": {"NAME": "value"}, "args": [argv...]}` (argv includes the program name).
pub fn env() -> Outcome {
    let vars: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), json!(v.to_string_lossy())))
        .collect();
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Ok(json!({ "vars": vars, "args": args }))
}

/// `tcp HOST:PORT`: `ok` = `{"connected": "<peer address>"}`.
pub fn tcp(addr: &str) -> Outcome {
    let stream = TcpStream::connect(addr).map_err(io_failure)?;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    Ok(json!({ "connected": peer }))
}

/// `dns NAME` (port 443 is assumed without `:PORT`): `ok` = `{"addrs": ["ip:port", ...]}`.
pub fn dns(name: &str) -> Outcome {
    let target = if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:443")
    };
    let addrs: Vec<String> = target
        .to_socket_addrs()
        .map_err(io_failure)?
        .map(|a| a.to_string())
        .collect();
    Ok(json!({ "addrs": addrs }))
}

/// `alloc MIB`: an infallible allocation of MIB MiB with every page touched; `ok` =
/// `{"mib": n, "checksum": n}`. Past the memory limit the allocation aborts the instance (a trap): that
/// is the expected outcome.
pub fn alloc(mib: usize) -> Outcome {
    let bytes = mib_to_bytes(mib)?;
    eprintln!("probe: alloc: allocating {mib} MiB (past the limit this traps)");
    let mut v: Vec<u8> = Vec::with_capacity(bytes);
    v.resize(bytes, 1);
    Ok(json!({ "mib": mib, "checksum": touch(&v) }))
}

/// `try-alloc MIB`: a fallible reservation (`try_reserve_exact`) of MIB MiB, then every page touched;
/// `ok` = `{"mib": n, "checksum": n}`, or `{"err": "TryReserveError", "stage": "alloc", ...}` when the
/// host refused to grow memory.
pub fn try_alloc(mib: usize) -> Outcome {
    let bytes = mib_to_bytes(mib)?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(bytes)
        .map_err(|e| Failure::new("TryReserveError", "alloc", e.to_string()))?;
    v.resize(bytes, 1);
    Ok(json!({ "mib": mib, "checksum": touch(&v) }))
}

/// MIB MiB in bytes; more than the 32-bit address space is a usage error.
fn mib_to_bytes(mib: usize) -> Result<usize, Failure> {
    mib.checked_mul(MIB).ok_or_else(|| {
        Failure::new(
            "Usage",
            "args",
            format!("{mib} MiB does not fit in wasm32's address space"),
        )
    })
}

/// Read one byte per wasm page, so the pages are really used and nothing is optimised away.
fn touch(v: &[u8]) -> u64 {
    black_box(v.iter().step_by(WASM_PAGE).map(|&b| u64::from(b)).sum())
}

/// `loop`: spin forever (until the host's CPU or wall-time limit stops the instance). Never prints.
pub fn spin() -> Outcome {
    eprintln!("probe: loop: spinning forever");
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// `recurse`: unbounded recursion with a 256-byte frame, until the stack is exhausted (a trap).
pub fn recurse() -> Outcome {
    eprintln!("probe: recurse: recursing until the stack overflows");
    Ok(json!({ "depth": descend(0) }))
}

/// Not a tail call, and the frame is black-boxed, so neither the recursion nor the frame can be removed.
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = black_box(descend(depth + 1));
    below.wrapping_add(frame[(depth % 32) as usize])
}

/// `exit CODE`: exit with CODE through `wasi:cli/exit.exit-with-code` (std's `process::exit` only
/// reports success or failure on WASI 0.2). Never prints.
pub fn exit(code: u8) -> Outcome {
    wasip2::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returned")
}

/// `stdin`: read stdin to the end; `ok` = `{"len": bytes}`.
pub fn stdin() -> Outcome {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).map_err(io_failure)?;
    Ok(json!({ "len": buf.len() }))
}

pub fn io_failure(e: std::io::Error) -> Failure {
    Failure::new(format!("{:?}", e.kind()), "io", e.to_string())
}

/// `handle MODE [N]`: misuse a resource handle, which the host must answer by stopping the guest
/// with a one-line reason. `invented`: drop a `fapi-fetch` body handle that was never made;
/// `wrong-type`: use a wasi:http `fields` handle as a `fapi-fetch` body; `many N`: hold N wasi:http
/// `fields` at once (past `[sandbox] max_handles`). Says on stderr what it is about to do; prints
/// `{"ok": {"held": N}}` only if the host let it all happen.
pub fn handle(mode: &str, n: usize) -> Outcome {
    use fapi_guest::bindings::openenergy::fapi::fapi_fetch::Body;
    use wasip2::http::types::Fields;
    eprintln!("probe: handle {mode}: misusing a resource handle");
    match mode {
        "invented" => {
            // SAFETY: none; the point is a handle the guest does not hold. The host must trap.
            #[allow(unsafe_code)]
            let body = unsafe { Body::from_handle(0x7fff_0001) };
            drop(body);
            Ok(json!({ "held": 0 }))
        }
        "wrong-type" => {
            let fields = Fields::new();
            // SAFETY: none; a handle of another resource type. The host must trap.
            #[allow(unsafe_code)]
            let body = unsafe { Body::from_handle(fields.take_handle()) };
            let read = body.read(1);
            Ok(json!({ "held": 0, "read": format!("{read:?}") }))
        }
        "many" => {
            let held: Vec<Fields> = (0..n).map(|_| Fields::new()).collect();
            Ok(json!({ "held": black_box(held).len() }))
        }
        _ => Err(Failure::new(
            "Usage",
            "args",
            format!("unknown mode {mode:?}"),
        )),
    }
}
