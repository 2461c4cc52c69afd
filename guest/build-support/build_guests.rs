// Build the guest components (the `guest/` workspace) for `wasm32-wasip2` from a build script.
//
// This is plain Rust with no dependencies beyond std, meant to be `include!`d by a build script of a crate
// that sits directly under the repository root (`tests/`, `host/`):
//
//     include!("../guest/build-support/build_guests.rs");
//
//     fn main() {
//         let guests = build_guests(Some(&["csv-summary"]));
//         let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
//         write_guest_constants(&guests, &out.join("guests.rs")); // pub const CSV_SUMMARY: &str = "/abs/….wasm";
//         write_guest_bytes(&guests, &out.join("embedded_guests.rs")); // pub static CSV_SUMMARY: &[u8] = include_bytes!(…);
//     }
//
// It runs a nested `cargo build --release --locked --target wasm32-wasip2` on `guest/Cargo.toml`, with its
// own target directory `<workspace target dir>/wasm-guests` and an environment cleaned of what the outer
// cargo sets for build scripts, tells cargo to rerun the build script when anything under `guest/` (but
// its `target/`) or `wit/` changes, and returns one `(CONSTANT_NAME, absolute path)` per component.
//
// Everything lives in one module so that the including file's names cannot clash with these.

#[allow(dead_code)]
mod guest_build {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The target the guests are built for; `cargo build` for it produces components.
    const WASM_TARGET: &str = "wasm32-wasip2";

    /// The first bytes of a WebAssembly component (magic, then version 0x0d and layer 1).
    pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    /// One component of the guest workspace.
    #[derive(Debug)]
    struct Component {
        /// The cargo package that builds it (what `build_guests` takes).
        package: &'static str,
        /// The file cargo writes: a bin keeps its name, a cdylib gets `_` for `-`.
        file: &'static str,
        /// The name of the constant that holds its path.
        constant: &'static str,
    }

    /// Every component of the guest workspace. Add a row when adding a guest package.
    const COMPONENTS: &[Component] = &[
        Component {
            package: "fetch",
            file: "fetch.wasm",
            constant: "FETCH",
        },
        Component {
            package: "csv-summary",
            file: "csv-summary.wasm",
            constant: "CSV_SUMMARY",
        },
        Component {
            package: "http-fetch",
            file: "http-fetch.wasm",
            constant: "HTTP_FETCH",
        },
        Component {
            package: "trivial",
            file: "trivial.wasm",
            constant: "TRIVIAL",
        },
        Component {
            package: "test-plugins",
            file: "probe.wasm",
            constant: "PROBE",
        },
        Component {
            package: "test-plugins",
            file: "hostile-steal.wasm",
            constant: "HOSTILE_STEAL",
        },
        Component {
            package: "test-plugins",
            file: "hostile-egress.wasm",
            constant: "HOSTILE_EGRESS",
        },
        Component {
            package: "test-plugins",
            file: "hostile-headers.wasm",
            constant: "HOSTILE_HEADERS",
        },
        Component {
            package: "test-plugins",
            file: "hostile-limits.wasm",
            constant: "HOSTILE_LIMITS",
        },
        Component {
            package: "test-plugins",
            file: "hostile-exhaust.wasm",
            constant: "HOSTILE_EXHAUST",
        },
        Component {
            package: "serve-summary",
            file: "serve_summary.wasm",
            constant: "SERVE_SUMMARY",
        },
        Component {
            package: "test-service",
            file: "test_service.wasm",
            constant: "TEST_SERVICE",
        },
        Component {
            package: "csv-to-json",
            file: "csv_to_json.wasm",
            constant: "CSV_TO_JSON",
        },
        Component {
            package: "test-processor",
            file: "test_processor.wasm",
            constant: "TEST_PROCESSOR",
        },
    ];

    /// Build guest components and return `(CONSTANT_NAME, absolute path of the .wasm)` for each.
    ///
    /// `packages` names cargo PACKAGES of the guest workspace (each built with `-p`), not binaries:
    /// every component of a named package is built and returned. Today each package builds exactly one
    /// component and is named after it (`fetch`, `csv-summary`, `http-fetch`, `trivial`, `csv-to-json`,
    /// `test-processor`, `serve-summary`, `test-service`), except `test-plugins`, which builds `probe` and the hostile plugins (`hostile-*`). `None` builds every component.
    ///
    /// Panics (failing the build script) with the nested cargo's stderr when the build fails, and with
    /// the fix when the `wasm32-wasip2` target is not installed.
    pub fn build_guests(packages: Option<&[&str]>) -> Vec<(String, PathBuf)> {
        let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
        let repo = manifest_dir
            .parent()
            .expect("the including crate sits directly under the repository root");
        let guest_dir = repo.join("guest");
        let manifest = guest_dir.join("Cargo.toml");
        assert!(
            manifest.is_file(),
            "no guest workspace at {}",
            manifest.display()
        );

        let selected: Vec<&Component> = match packages {
            None => COMPONENTS.iter().collect(),
            Some(names) => names.iter().flat_map(|name| components_of(name)).collect(),
        };

        rerun_if_changed_under(&guest_dir);
        rerun_if_changed_under(&repo.join("wit"));

        let target_dir = workspace_target_dir().join("wasm-guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut command = Command::new(cargo);
        command
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                WASM_TARGET,
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir);
        // Name the component packages even for "all" (not `--workspace`, which would also select
        // `fapi-guest` and so turn on its default `json` feature): features then unify the same way
        // whatever the selection, so the tests' full build and the host's `csv-summary`-only build
        // share artifacts instead of rebuilding (and rewriting) each other's.
        let mut names: Vec<&str> = selected.iter().map(|c| c.package).collect();
        names.dedup();
        for name in names {
            command.args(["-p", name]);
        }
        clean_environment(&mut command);

        let output = command
            .output()
            .unwrap_or_else(|e| panic!("could not run cargo to build the guests: {e}"));
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("{stderr}");
            if target_missing(&stderr) {
                panic!(
                    "building the guests needs the {WASM_TARGET} target: run `rustup target add {WASM_TARGET}`"
                );
            }
            panic!(
                "building the guests failed ({}): cargo build --release --locked --target {WASM_TARGET} \
                 --manifest-path {}; its stderr is above (a stale guest/Cargo.lock: build once without \
                 --locked in guest/)",
                output.status,
                manifest.display()
            );
        }

        let release = target_dir.join(WASM_TARGET).join("release");
        selected
            .into_iter()
            .map(|c| {
                let path = release.join(c.file);
                check_component(&path);
                (c.constant.to_string(), path)
            })
            .collect()
    }

    /// Write one `pub const NAME: &str = "/abs/path.wasm";` per guest to `path` (for `include!`).
    pub fn write_guest_constants(guests: &[(String, PathBuf)], path: &Path) {
        write_items(guests, path, |constant, wasm| {
            format!("pub const {constant}: &str = {wasm:?};\n")
        });
    }

    /// Write one `pub static NAME: &[u8] = include_bytes!("/abs/path.wasm");` per guest to `path`, for a
    /// crate that embeds components (`include!(concat!(env!("OUT_DIR"), "/embedded_guests.rs"))`).
    /// rustc then tracks the .wasm files itself.
    pub fn write_guest_bytes(guests: &[(String, PathBuf)], path: &Path) {
        write_items(guests, path, |constant, wasm| {
            format!("pub static {constant}: &[u8] = include_bytes!({wasm:?});\n")
        });
    }

    /// Write a generated file with one documented item per guest, made by `item(CONSTANT, path)`.
    fn write_items(guests: &[(String, PathBuf)], path: &Path, item: impl Fn(&str, &str) -> String) {
        let mut text = String::from(
            "// Generated by guest/build-support/build_guests.rs: the guest components.\n",
        );
        for (constant, wasm) in guests {
            let wasm = wasm.to_str().expect("the guest paths are UTF-8");
            text.push_str(&format!(
                "/// The `{constant}` component, built for `{WASM_TARGET}`.\n"
            ));
            text.push_str(&item(constant, wasm));
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn components_of(package: &str) -> Vec<&'static Component> {
        let found: Vec<&Component> = COMPONENTS.iter().filter(|c| c.package == package).collect();
        if found.is_empty() {
            let known: Vec<&str> = COMPONENTS.iter().map(|c| c.package).collect();
            panic!("unknown guest package {package:?}; the guest packages are {known:?}");
        }
        found
    }

    fn env(name: &str) -> OsString {
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} is not set: run this from a build script"))
    }

    /// The outer workspace's target directory: `CARGO_TARGET_DIR` when it is an absolute path, else found
    /// from `OUT_DIR` = `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out` (which also reflects a
    /// relative `CARGO_TARGET_DIR` or `--target-dir`).
    fn workspace_target_dir() -> PathBuf {
        let explicit = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
        if let Some(dir) = explicit.filter(|d| d.is_absolute()) {
            return dir;
        }
        let out_dir = PathBuf::from(env("OUT_DIR"));
        let build = out_dir.ancestors().nth(2);
        let profile_parent = match build {
            Some(b) if b.file_name().is_some_and(|n| n == "build") => {
                b.parent().and_then(Path::parent)
            }
            _ => None,
        };
        match profile_parent {
            Some(dir)
                if std::env::var_os("TARGET").is_some_and(|t| dir.file_name() == Some(&t)) =>
            {
                dir.parent()
                    .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
            }
            Some(dir) => dir.to_path_buf(),
            // An unknown layout: keep the guests beside this build script's output.
            None => out_dir,
        }
    }

    /// Remove what the outer cargo sets for build scripts, so the nested build is an ordinary one:
    /// flags, wrappers and the target of the outer build must not leak into a wasm32 build.
    fn clean_environment(command: &mut Command) {
        // Cargo settings the user chose for the machine; they apply to the nested build too.
        const KEEP: &[&str] = &[
            "CARGO_HOME",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTRIES_",
            "CARGO_REGISTRY_",
            "CARGO_TERM_",
        ];
        // What the outer cargo sets for build scripts besides `CARGO_*`, and flags meant for its target.
        const REMOVE: &[&str] = &[
            "RUSTC",
            "RUSTDOC",
            "RUSTFLAGS",
            "TARGET",
            "HOST",
            "OUT_DIR",
            "OPT_LEVEL",
            "PROFILE",
            "DEBUG",
            "NUM_JOBS",
        ];
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let cargo_var =
                name == "CARGO" || name.starts_with("CARGO_") || name.starts_with("__CARGO");
            let kept = KEEP
                .iter()
                .any(|k| name == *k || (k.ends_with('_') && name.starts_with(k)));
            let rust_var =
                name.starts_with("RUSTC") || name.starts_with("RUSTDOC") || REMOVE.contains(&name);
            if (cargo_var && !kept) || rust_var {
                command.env_remove(name);
            }
        }
    }

    fn target_missing(stderr: &str) -> bool {
        stderr.contains(WASM_TARGET)
            && (stderr.contains("may not be installed")
                || stderr.contains("can't find crate for `std`")
                || stderr.contains("can't find crate for `core`"))
    }

    /// `cargo:rerun-if-changed` for every file under `dir`, skipping `target/` directories and hidden
    /// entries (naming a directory would make cargo scan a guest `target/` as well).
    fn rerun_if_changed_under(dir: &Path) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            // Build output, and the Python and JavaScript guests (built by their own tools, not
            // by cargo: their node_modules alone would be thousands of entries to watch).
            let skipped = ["target", "node_modules", "__pycache__", "python", "js"];
            if skipped.contains(&name) || name.starts_with('.') || name.ends_with(".wasm") {
                continue;
            }
            if path.is_dir() {
                rerun_if_changed_under(&path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    /// Panic unless `path` is a WebAssembly component.
    fn check_component(path: &Path) {
        let mut header = [0u8; 8];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
        if let Err(e) = read {
            panic!(
                "guest component {} is missing after the build: {e}",
                path.display()
            );
        }
        assert_eq!(
            header,
            COMPONENT_HEADER,
            "{} is not a WebAssembly component (a core module? check the guest's target)",
            path.display()
        );
    }
}

#[allow(unused_imports)]
pub use guest_build::{COMPONENT_HEADER, build_guests, write_guest_bytes, write_guest_constants};
