// Included (with `include!`) by the build scripts of the crates whose tests need a tool from outside
// Rust (node, componentize-py, openssl, curl, Python's requests).

/// Set cfg `cfg` when `present` says the tool is here, so that its tests are marked
/// `#[cfg_attr(not(cfg), ignore = "...")]` and a machine without it reports them as ignored in the
/// test summary, not as passed. With `require=1` in the environment (CI) the cfg is set whatever
/// is found: the tests run, and fail if the tool is missing. `watch` are the paths whose change
/// (an `npm ci`, say) makes cargo look again; PATH is watched too.
#[allow(dead_code)]
fn tool_cfg(cfg: &str, require: &str, watch: &[&str], present: impl FnOnce() -> bool) {
    println!("cargo::rustc-check-cfg=cfg({cfg})");
    println!("cargo::rerun-if-env-changed={require}");
    println!("cargo::rerun-if-env-changed=PATH");
    for path in watch {
        println!("cargo::rerun-if-changed={path}");
    }
    if std::env::var(require).is_ok_and(|v| v == "1") || present() {
        println!("cargo::rustc-cfg={cfg}");
    }
}

/// Whether `cmd ARGS` runs and succeeds.
#[allow(dead_code)]
fn command_runs(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
