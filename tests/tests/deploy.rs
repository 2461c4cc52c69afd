//! What users deploy: `deploy/job.yaml` (the Kubernetes Indexed Job docs/batch-clusters.md quotes) and the
//! `Dockerfile`.
//!
//! The Job is validated against the Kubernetes schema with `kubernetes-validate --strict`
//! (PyPI, bundled schemas, offline) and parsed (YAML to JSON by the PyYAML it depends on) to check
//! what fapi-host relies on: `completionMode: Indexed`, the index variable in `--out` and
//! `--shard`, the Secret mounted read-only and never passed through the environment. Without the
//! validator the test prints SKIPPED and passes, unless `FAPI_REQUIRE_K8S_VALIDATE=1` (as in
//! `.ci/run`, which installs it): then it fails.
//!
//! The image is not built here (no container daemon in CI; a daemonless build would pull base
//! images and compile a release build): the Dockerfile's structure is checked instead.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

fn required() -> bool {
    std::env::var("FAPI_REQUIRE_K8S_VALIDATE").is_ok_and(|v| v == "1")
}

/// docs/batch-clusters.md quotes `deploy/job.yaml` whole (its only yaml block), so the two cannot drift.
#[test]
fn the_readme_quotes_the_job_manifest() {
    let blocks: Vec<String> = fapi_tests::doc_blocks("docs/batch-clusters.md", "yaml")
        .into_iter()
        .filter(|code| code.contains("kind: Job"))
        .collect();
    assert_eq!(blocks.len(), 1, "docs/batch-clusters.md quotes one Job");
    assert_eq!(
        blocks[0],
        read("deploy/job.yaml"),
        "docs/batch-clusters.md's Job differs from deploy/job.yaml: copy the file into it"
    );
}

#[test]
#[cfg_attr(
    not(fapi_has_kubernetes_validate),
    ignore = "needs kubernetes-validate: pip install kubernetes-validate"
)]
fn the_job_manifest_validates_and_keeps_the_secret_out_of_the_environment() {
    let job = root().join("deploy/job.yaml");
    let validator = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .arg(&job)
        .output();
    let validator = match validator {
        Ok(o) => o,
        Err(e) if !required() => {
            eprintln!(
                "SKIPPED: kubernetes-validate: {e} (pip install kubernetes-validate). Set \
                 FAPI_REQUIRE_K8S_VALIDATE=1 to make this a failure."
            );
            return;
        }
        Err(e) => panic!("FAPI_REQUIRE_K8S_VALIDATE=1 but kubernetes-validate cannot run: {e}"),
    };
    let said = String::from_utf8_lossy(&validator.stdout).into_owned()
        + &String::from_utf8_lossy(&validator.stderr);
    assert!(
        validator.status.success() && said.contains("passed"),
        "deploy/job.yaml does not validate: {said}"
    );
    // A manifest with a misspelt field fails: the validation is strict.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        read("deploy/job.yaml").replace("parallelism:", "paralelism:"),
    )
    .unwrap();
    let o = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a misspelt field passed");

    let json = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let job: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let n = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(n));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure", "a restarted pod resumes");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: String = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        args.contains(&format!("--shard $JOB_COMPLETION_INDEX/{n}"))
            && args.contains("--out /data/out/shard-$JOB_COMPLETION_INDEX")
            && args.contains("--config /etc/fapi/fapi.toml"),
        "{args}"
    );
    // The Secret: a volume mounted read-only where --config points, and no environment at all
    // (so no secretKeyRef, no envFrom).
    assert!(c.get("env").is_none() && c.get("envFrom").is_none(), "{c}");
    let volumes = pod["volumes"].as_array().unwrap();
    let secret = volumes
        .iter()
        .find(|v| v.get("secret").is_some())
        .expect("a secret volume");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == secret["name"])
        .expect("the secret is mounted");
    assert_eq!(mount["mountPath"], "/etc/fapi");
    assert_eq!(mount["readOnly"], true);
    let mode = secret["secret"]["defaultMode"].as_u64().unwrap();
    assert_eq!(
        mode & 0o007,
        0,
        "the key is not readable by others: {mode:o}"
    );
    // The pod runs as the image's user, who can read the Secret's files.
    let user = dockerfile_user();
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(user));
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(user));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(mode & 0o040, 0o040, "the group (fsGroup) reads the Secret");
}

/// The uid of the final stage's `USER`.
fn dockerfile_user() -> u64 {
    let file = read("Dockerfile");
    let user = file
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    user["USER ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Multi-stage: a build stage with the toolchain, a final stage from a slim Debian with the
/// binary, CA roots and a non-root user, and nothing of the toolchain.
#[test]
fn the_dockerfile_builds_a_small_non_root_image() {
    let file = read("Dockerfile");
    let stages: Vec<&str> = file.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a final stage");
    let (build, last) = (stages[0], stages[1]);
    assert!(
        build.starts_with("rust:") && build.contains(" AS build"),
        "{build}"
    );
    assert!(
        build.contains("cargo build --release --locked -p fapi-host --bin fapi-host"),
        "{build}"
    );
    assert!(last.starts_with("debian:") && last.lines().next().unwrap().contains("-slim"));
    for absent in ["cargo", "rustup", "rustc", "build-essential", "gcc"] {
        assert!(!last.contains(absent), "the final stage mentions {absent}");
    }
    assert!(last.contains("--no-install-recommends ca-certificates"));
    assert!(last.contains("COPY --from=build /fapi-host /usr/local/bin/fapi-host"));
    assert!(dockerfile_user() >= 1000, "a non-root user");
    assert!(last.contains(r#"ENTRYPOINT ["fapi-host"]"#));
    // The Rust version of the build stage is the workspace's.
    let cargo = read("Cargo.toml");
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(build.starts_with(&format!("rust:{version}-")), "{build}");
    // The build context leaves the build outputs out.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "{ignore}");
}
