//! `fapi-host batch` on a real Slurm cluster: a single node on 127.0.0.1 (Debian's `slurm-wlm`
//! and `munge`), started by this test from a generated `slurm.conf` in a temporary directory
//! (`proctrack/linuxproc`, `task/none`: no cgroups), with its own munge key and socket, state,
//! spool, logs and ports, and stopped by PID at the end.
//!
//! The Slurm array script of docs/batch-clusters.md is taken from that page and submitted with
//! `sbatch` (its end watched with squeue) against a local federation started here: 8 array tasks, 20,000 items; then one
//! task cancelled mid-run (`scancel`) and submitted again; then a lost node (slurmd and one task's
//! processes killed, slurmd started again: Slurm requeues the task); then 8 shards sharing one
//! output directory. The merged view (`fapi-host batch manifest`) must hold every item exactly once,
//! every file must match a direct fetch by SHA-256, and each task must take exactly one token.
//!
//! When a Slurm or munge tool is missing the test prints SKIPPED and passes, unless
//! `FAPI_REQUIRE_SLURM=1` (as in `.ci/run`, which installs them): then it fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fapi_federation::Federation;
use fapi_host::batch::{Outcome, Record};
use fapi_host::{FapiClient, Overrides, Settings};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

const TASKS: u64 = 8;
const ITEMS: u64 = 20_000;
const TOOLS: [&str; 9] = [
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "scancel",
    "squeue",
    "sinfo",
    "scontrol",
];

/// Whether a missing tool fails the test (CI) instead of skipping it.
fn required() -> bool {
    std::env::var("FAPI_REQUIRE_SLURM").is_ok_and(|v| v == "1")
}

/// The full path of `tool`, looked up in PATH and the sbin directories (daemons live there).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-node Slurm cluster and its munge daemon, each process started (in the foreground)
/// and stopped by this test.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    tools: BTreeMap<&'static str, PathBuf>,
    /// munged, slurmctld, slurmd (stopped in reverse order).
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start(tools: BTreeMap<&'static str, PathBuf>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let mut cluster = Cluster {
            conf: d.join("slurm.conf"),
            dir,
            tools,
            daemons: Vec::new(),
        };
        let d = cluster.dir.path().to_path_buf();
        let key = d.join("munge/munge.key");
        let made = Command::new(&cluster.tools["mungekey"])
            .arg("--create")
            .arg(format!("--keyfile={}", key.display()))
            .status()
            .unwrap();
        assert!(made.success(), "mungekey --create");
        let socket = d.join("munge/socket");
        let munged = Command::new(&cluster.tools["munged"])
            .args(["--foreground", "--force"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!(
                "--pid-file={}",
                d.join("munge/munged.pid").display()
            ))
            .arg(format!("--log-file={}", d.join("log/munged.log").display()))
            .arg(format!("--seed-file={}", d.join("munge/seed").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log/munged.out")).unwrap())
            .spawn()
            .unwrap();
        cluster.daemons.push(("munged", munged));
        cluster.wait_for("the munge socket", || socket.exists());

        // slurmctld accepts only this host's name as its own.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let host = host.trim().split('.').next().unwrap().to_owned();
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let p = |sub: &str| d.join(sub).display().to_string();
        let conf = format!(
            "ClusterName=fapitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
SlurmctldLogFile={ctld_log}
SlurmdLogFile={slurmd_log}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=15
KillWait=10
MinJobAge=600
NodeName=fapinode NodeHostname={host} NodeAddr=127.0.0.1 CPUs={TASKS} State=UNKNOWN
PartitionName=batch Nodes=fapinode Default=YES MaxTime=INFINITE State=UP
",
            socket = socket.display(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            slurmd_pid = p("slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            slurmd_log = p("log/slurmd.log"),
        );
        std::fs::write(&cluster.conf, conf).unwrap();
        cluster.spawn("slurmctld");
        cluster.spawn("slurmd");
        let mut sinfo = cluster.command("sinfo");
        sinfo.args(["-h", "-o", "%t"]);
        cluster.wait_for("the node to be idle", || {
            sinfo
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    /// Start a Slurm daemon in the foreground, its stderr appended to `log/NAME.out`.
    fn spawn(&mut self, name: &'static str) {
        let args: &[&str] = match name {
            "slurmctld" => &["-D", "-i"],
            _ => &["-D", "-N", "fapinode"],
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("log/{name}.out")))
            .unwrap();
        let child = Command::new(&self.tools[name])
            .args(args)
            .arg("-f")
            .arg(&self.conf)
            .env("SLURM_CONF", &self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push((name, child));
    }

    /// Lose the node under task `k` of the array run from `cwd`, as a node that loses power
    /// would: SIGKILL to this cluster's slurmd, then to the task's batch step (slurmstepd) and
    /// every process between it and the task's fapi-host (found by its working directory and
    /// `--shard k/8`). All of them are processes this test started, through slurmd. Returns the
    /// PIDs killed besides slurmd's.
    fn lose_node_under(&mut self, cwd: &Path, k: u64) -> Vec<u32> {
        let cwd = cwd.canonicalize().unwrap();
        let shard = format!("{k}/{TASKS}");
        let fapi = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                let args = cmdline(pid);
                args.first().is_some_and(|a| a.ends_with("fapi-host"))
                    && args.windows(2).any(|w| w[0] == "--shard" && w[1] == shard)
                    && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == cwd)
            })
            .unwrap_or_else(|| panic!("no fapi-host of task {k} running"));
        let mut chain = vec![fapi];
        loop {
            let parent = ppid(*chain.last().unwrap());
            assert!(
                parent > 1,
                "no slurmstepd above fapi-host {fapi}: {chain:?}"
            );
            chain.push(parent);
            if cmdline(parent)
                .first()
                .is_some_and(|a| a.starts_with("slurmstepd"))
            {
                break;
            }
        }
        let (index, _) = self
            .daemons
            .iter()
            .enumerate()
            .find(|(_, (name, _))| *name == "slurmd")
            .unwrap();
        let (_, mut slurmd) = self.daemons.remove(index);
        slurmd.kill().unwrap();
        slurmd.wait().unwrap();
        // The step first, so that it reports nothing; then the script and fapi-host.
        chain.reverse();
        for pid in &chain {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        chain
    }

    /// A Slurm client command for this cluster.
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(&self.tools[tool]);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn wait_for(&mut self, what: &str, ready: impl FnMut() -> bool) {
        self.wait_for_up_to(what, Duration::from_secs(60), ready)
    }

    fn wait_for_up_to(&mut self, what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ready() {
            let ended = self
                .daemons
                .iter_mut()
                .find_map(|(name, child)| Some((*name, child.try_wait().unwrap()?)));
            if let Some((name, status)) = ended {
                panic!(
                    "{name} ended ({status}) waiting for {what}:\n{}",
                    self.logs()
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {what} after {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of each daemon's log, for a failure's message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "munged.out",
            "slurmctld.log",
            "slurmd.log",
            "slurmctld.out",
            "slurmd.out",
        ] {
            let text =
                std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            all.push_str(&format!("--- {name}\n{tail}\n"));
        }
        all
    }

    /// Submit `script` from `cwd` (`--parsable`), with `args` before it; returns the job id.
    fn submit(&self, cwd: &Path, args: &[&str], script: &Path) -> (String, SystemTime, Duration) {
        let (t0, submitted) = (Instant::now(), SystemTime::now());
        let o = self
            .command("sbatch")
            .args(["--parsable"])
            .args(args)
            .arg(script)
            .current_dir(cwd)
            .env("PATH", job_path())
            .env_remove("FAPI_CONFIG")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let job = out.trim().split(';').next().unwrap().to_owned();
        assert!(
            o.status.success(),
            "sbatch {args:?}: {} {}\n{}",
            out,
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        (job, submitted, t0.elapsed())
    }

    /// Submit `script` and wait for every task of the job to end (polling squeue every 100 ms:
    /// `sbatch --wait` polls every 10 s); each must have completed with exit code 0. Returns the
    /// job id, when it was submitted and how long until it ended.
    fn run_to_end(
        &mut self,
        cwd: &Path,
        args: &[&str],
        script: &Path,
    ) -> (String, SystemTime, Duration) {
        let t0 = Instant::now();
        let (job, submitted, _) = self.submit(cwd, args, script);
        self.wait_gone(&job, Duration::from_secs(600));
        let wall = t0.elapsed();
        let o = self
            .command("scontrol")
            .args(["-o", "show", "job", &job])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && !text.trim().is_empty(),
            "scontrol show job {job}: {text}"
        );
        for task in text.lines() {
            assert!(
                task.contains(" JobState=COMPLETED ") && task.contains(" ExitCode=0:0 "),
                "a task of job {job} did not succeed: {task}\n{}",
                self.logs()
            );
        }
        (job, submitted, wall)
    }

    /// Wait until no task of `job` is queued or running.
    fn wait_gone(&mut self, job: &str, limit: Duration) {
        let mut squeue = self.command("squeue");
        squeue.args(["-h", "-j", job, "-o", "%i %T"]);
        self.wait_for_up_to(&format!("job {job} to end"), limit, || {
            squeue
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.iter().all(u8::is_ascii_whitespace))
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (a job still running when the test fails), then the daemons, newest first:
        // SIGTERM, then SIGKILL after 10 s. Only the processes this test started.
        let _ = self
            .command("scancel")
            .args(["--partition", "batch"])
            .output();
        while let Some((_, mut child)) = self.daemons.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let t0 = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The arguments of process `pid` (none when it is gone).
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of process `pid` (0 when it is gone).
fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, after_name) = s.rsplit_once(')')?;
            after_name.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// PATH for the jobs: the directory of this build's `fapi-host` first.
fn job_path() -> std::ffi::OsString {
    let bin = fapi_tests::fapi_host_bin();
    let mut dirs = vec![bin.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// The Slurm array script of docs/batch-clusters.md: its ```sh block that holds `#SBATCH --array`.
fn readme_array_script() -> String {
    let blocks: Vec<String> = fapi_tests::doc_blocks("docs/batch-clusters.md", "sh")
        .into_iter()
        .filter(|code| code.contains("#SBATCH --array"))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "docs/batch-clusters.md holds one ```sh block with #SBATCH --array (the Slurm array)"
    );
    let script = blocks[0].to_owned();
    assert!(
        script.starts_with("#!/bin/sh\n#SBATCH --array=0-7\n"),
        "{script}"
    );
    assert!(
        script.contains("--out \"out/shard-$SLURM_ARRAY_TASK_ID\"")
            && script.contains("--shard \"$SLURM_ARRAY_TASK_ID/8\""),
        "{script}"
    );
    script
}

/// A job's working directory: the script, `fapi.toml` (and the key and certificate it names)
/// and `urls.txt`, as the documented script expects them.
fn job_dir(root: &Path, name: &str, fed: &Federation, script: &str, urls: &str) -> PathBuf {
    let dir = root.join(name);
    let config = fed.write_client_config(&dir, "consumer").unwrap();
    std::fs::copy(config, dir.join("fapi.toml")).unwrap();
    std::fs::write(dir.join("array.sh"), script).unwrap();
    std::fs::write(dir.join("urls.txt"), urls).unwrap();
    dir
}

/// `fapi-host batch manifest` over `dirs`: the records it prints (checked: one per item, in
/// order, none failed) and its summary line.
fn merged_view(cwd: &Path, dirs: &[String]) -> (Vec<(Record, String)>, String) {
    let o = Command::new(fapi_tests::fapi_host_bin())
        .args(["batch", "manifest"])
        .args(dirs)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<(Record, String)> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let dir = v["dir"].as_str().unwrap().to_owned();
            (serde_json::from_value(v).unwrap(), dir)
        })
        .collect();
    let indexes: Vec<u64> = lines.iter().map(|(r, _)| r.index).collect();
    assert_eq!(
        indexes,
        (0..ITEMS).collect::<Vec<_>>(),
        "every item exactly once"
    );
    let failed: Vec<&Record> = lines
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.outcome != Outcome::Done)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    (lines, stderr)
}

/// How many `done` records each item has in the raw manifests of `dirs` (cut lines skipped).
fn done_counts(dirs: &[PathBuf]) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for d in dirs {
        for r in fapi_host::batch::read(d).unwrap() {
            if r.outcome == Outcome::Done {
                *counts.entry(r.index).or_default() += 1;
            }
        }
    }
    counts
}

/// The summary line fapi-host printed in each task's output (`slurm-JOB_K.out`).
fn task_summaries(cwd: &Path, job: &str, tasks: &[u64]) -> Vec<(u64, String)> {
    tasks
        .iter()
        .map(|k| {
            let path = cwd.join(format!("slurm-{job}_{k}.out"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let line = text
                .lines()
                .rfind(|l| l.starts_with("fapi-host batch"))
                .unwrap_or_else(|| panic!("no summary in {}:\n{text}", path.display()));
            (*k, line.to_owned())
        })
        .collect()
}

/// `(done, skipped, seconds)` of a summary line such as
/// `fapi-host batch: 2500 done, 0 skipped, 0 failed; 1.2 MiB in 3.1s; ...`.
fn parse_summary(line: &str) -> (u64, u64, f64) {
    let num = |word: &str| -> u64 {
        let (before, _) = line.split_once(&format!(" {word}")).unwrap();
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let secs = line
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split_once("s;"))
        .map(|(s, _)| s.parse().unwrap())
        .unwrap();
    (num("done"), num("skipped"), secs)
}

/// When the tasks ran: from the first task's start (its `slurm-JOB_K.out` is created then) to the
/// last manifest write, and how long after submission the first task started. None when no
/// manifest was written (nothing to do).
fn task_span(
    cwd: &Path,
    job: &str,
    tasks: &[u64],
    manifests: &[PathBuf],
    submitted: SystemTime,
) -> Option<(f64, f64)> {
    let start = tasks
        .iter()
        .map(|k| {
            std::fs::metadata(cwd.join(format!("slurm-{job}_{k}.out")))
                .and_then(|m| m.created())
                .unwrap()
        })
        .min()?;
    let end = manifests
        .iter()
        .map(|m| std::fs::metadata(m).and_then(|m| m.modified()).unwrap())
        .max()?;
    let span = end.duration_since(start).ok()?.as_secs_f64();
    let waited = start.duration_since(submitted).unwrap_or_default();
    Some((waited.as_secs_f64(), span))
}

fn print_throughput(
    label: &str,
    summaries: &[(u64, String)],
    items: u64,
    span: Option<(f64, f64)>,
    wall: Duration,
) {
    let mut max = 0f64;
    for (k, line) in summaries {
        let (done, skipped, secs) = parse_summary(line);
        max = max.max(secs);
        eprintln!(
            "{label}: task {k}: {done} done, {skipped} skipped in {secs:.1} s ({:.0} items/s)",
            done as f64 / secs.max(0.001)
        );
    }
    if let Some((waited, span)) = span {
        eprintln!(
            "{label}: total {items} items in {span:.1} s from the first task's start to the last \
             manifest line: {:.0} items/s (the first task started {waited:.1} s after sbatch; \
             the job ended after {:.1} s)",
            items as f64 / span.max(0.001),
            wall.as_secs_f64(),
        );
    }
}

fn sha_hex(b: &[u8]) -> String {
    fapi_host_hex(&Sha256::digest(b))
}

fn fapi_host_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(fapi_has_slurm),
    ignore = "needs root and Slurm: apt-get install slurm-wlm munge"
)]
async fn the_readmes_slurm_array_on_a_real_cluster() {
    let mut tools = BTreeMap::new();
    let mut missing = Vec::new();
    for t in TOOLS {
        match find_tool(t) {
            Some(p) => {
                tools.insert(t, p);
            }
            None => missing.push(t),
        }
    }
    // The generated cluster runs its daemons and jobs as root (SlurmUser=root), as in CI.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !missing.is_empty() || !root {
        let why = if root {
            format!("missing {missing:?} (apt-get install slurm-wlm munge)")
        } else {
            "not running as root (the test's cluster runs slurmctld and slurmd as root)".to_owned()
        };
        if required() {
            panic!("FAPI_REQUIRE_SLURM=1 but the Slurm test cannot run: {why}");
        }
        eprintln!(
            "SKIPPED: the Slurm test: {why}. Set FAPI_REQUIRE_SLURM=1 to make this a failure."
        );
        return;
    }
    let script = readme_array_script();
    let t_fed = Instant::now();
    let fed = fapi_tests::recording_federation(true).await;
    eprintln!("federation up in {:.1} s", t_fed.elapsed().as_secs_f64());
    // The jobs' directories hold 20,000 files a run: on tmpfs when there is one, where removing
    // them takes a moment (on a file system mounted with `discard`, as on the CI machine's root,
    // each unlink waits for the disk: minutes for the 80,000 of the four runs).
    let work = tempfile::Builder::new()
        .prefix("fapi-slurm-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let t_start = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(tools));
    eprintln!("cluster up in {:.1} s", t_start.elapsed().as_secs_f64());
    let urls: String = (0..ITEMS)
        .map(|i| format!("{}/items/{i}\n", fed.data_origin()))
        .collect();
    let all_tasks: Vec<u64> = (0..TASKS).collect();
    let shard_dirs = |cwd: &Path| -> Vec<PathBuf> {
        (0..TASKS)
            .map(|k| cwd.join(format!("out/shard-{k}")))
            .collect()
    };
    let shard_args: Vec<String> = (0..TASKS).map(|k| format!("out/shard-{k}")).collect();

    // 1. The documented script as written: 8 tasks, one directory each.
    let cwd = job_dir(work.path(), "array", &fed, &script, &urls);
    let tokens = fed.counters().token_requests;
    let (job, submitted, wall) =
        tokio::task::block_in_place(|| cluster.run_to_end(&cwd, &[], &cwd.join("array.sh")));
    let summaries = task_summaries(&cwd, &job, &all_tasks);
    let manifests: Vec<PathBuf> = shard_dirs(&cwd)
        .iter()
        .map(|d| d.join("manifest.jsonl"))
        .collect();
    let span = task_span(&cwd, &job, &all_tasks, &manifests, submitted);
    print_throughput("slurm array", &summaries, ITEMS, span, wall);
    for (k, line) in &summaries {
        assert_eq!(parse_summary(line).0, ITEMS / TASKS, "task {k}: {line}");
    }
    assert_eq!(
        fed.counters().token_requests - tokens,
        TASKS,
        "each task took exactly one token"
    );
    let (view, _) = merged_view(&cwd, &shard_args);
    assert!(done_counts(&shard_dirs(&cwd)).values().all(|&c| c == 1));
    // Every file is what a direct fetch of its URL returns.
    let t_direct = Instant::now();
    let mut settings = Settings::load(Some(&cwd.join("fapi.toml")), &Overrides::default()).unwrap();
    settings.client.retries = 0;
    let client = FapiClient::from_settings(&settings).unwrap().0;
    let checked = futures_util::stream::iter(view.iter().map(|(r, dir)| {
        let client = client.clone();
        let file = cwd.join(dir).join(r.file.as_ref().unwrap());
        async move {
            let direct = client
                .get(&r.url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let written = std::fs::read(&file).unwrap();
            assert_eq!(sha_hex(&direct), sha_hex(&written), "{}", file.display());
            assert_eq!(r.sha256.as_deref(), Some(sha_hex(&direct).as_str()));
        }
    }))
    .buffer_unordered(16)
    .count()
    .await;
    assert_eq!(checked as u64, ITEMS);
    eprintln!(
        "direct fetch of the {ITEMS} items: SHA-256 of each file matches ({:.1} s)",
        t_direct.elapsed().as_secs_f64()
    );

    std::fs::remove_dir_all(&cwd).unwrap();

    // 2. One task cancelled mid-run, then submitted again: it resumes from its manifest. The
    // items are held back 20 ms each here, so that the task is still running when cancelled.
    let slow: String = (0..ITEMS)
        .map(|i| format!("{}/items/{i}?fault=slow&delay_ms=20\n", fed.data_origin()))
        .collect();
    let cwd = job_dir(work.path(), "cancel", &fed, &script, &slow);
    let before = fed.counters();
    let victim = 3u64;
    let (job, _, _) =
        tokio::task::block_in_place(|| cluster.submit(&cwd, &[], &cwd.join("array.sh")));
    let victim_manifest = cwd.join(format!("out/shard-{victim}/manifest.jsonl"));
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    tokio::task::block_in_place(|| {
        cluster.wait_for("the task to be under way", || {
            lines(&victim_manifest) >= 300
        })
    });
    let o = cluster
        .command("scancel")
        .arg(format!("{job}_{victim}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::task::block_in_place(|| cluster.wait_gone(&job, Duration::from_secs(120)));
    let cancelled_at = lines(&victim_manifest) as u64;
    assert!(
        cancelled_at < ITEMS / TASKS,
        "cancelled mid-run ({cancelled_at} lines)"
    );
    let out = std::fs::read_to_string(cwd.join(format!("slurm-{job}_{victim}.out"))).unwrap();
    assert!(out.contains("interrupted"), "{out}");
    let others: Vec<u64> = all_tasks.iter().copied().filter(|&k| k != victim).collect();
    for (k, line) in task_summaries(&cwd, &job, &others) {
        assert_eq!(parse_summary(&line).0, ITEMS / TASKS, "task {k}: {line}");
    }
    let (again, submitted, wall) = tokio::task::block_in_place(|| {
        cluster.run_to_end(&cwd, &[&format!("--array={victim}")], &cwd.join("array.sh"))
    });
    let resumed = task_summaries(&cwd, &again, &[victim]);
    let span = task_span(
        &cwd,
        &again,
        &[victim],
        std::slice::from_ref(&victim_manifest),
        submitted,
    );
    print_throughput(
        "resubmitted task",
        &resumed,
        ITEMS / TASKS - cancelled_at,
        span,
        wall,
    );
    let (done, skipped, _) = parse_summary(&resumed[0].1);
    assert_eq!(
        (done + skipped, skipped),
        (ITEMS / TASKS, cancelled_at),
        "the resubmitted task skips what was recorded: {}",
        resumed[0].1
    );
    merged_view(&cwd, &shard_args);
    let counts = done_counts(&shard_dirs(&cwd));
    assert_eq!(counts.len() as u64, ITEMS);
    assert!(
        counts.values().all(|&c| c == 1),
        "nothing done was fetched again"
    );
    let after = fed.counters();
    // Each item's request once; at most the items in flight when cancelled (8) again.
    let requests = after.dp_requests - before.dp_requests;
    assert!(
        (ITEMS..=ITEMS + 8).contains(&requests),
        "{requests} data requests for {ITEMS} items"
    );
    assert_eq!(after.token_requests - before.token_requests, TASKS + 1);
    eprintln!(
        "scancel: task {victim} cancelled after {cancelled_at} items, resubmitted: {done} fetched, \
         {skipped} skipped; {requests} data requests for {ITEMS} items"
    );

    std::fs::remove_dir_all(&cwd).unwrap();

    // 3. A lost node: slurmd, the batch step and the task's processes killed (SIGKILL) mid-run,
    // then slurmd started again (the node is back, empty). Slurm finds the batch job missing from
    // the node and requeues it (JobRequeue=1, Slurm's default: the documented script as written);
    // the task runs again and resumes from its manifest.
    let cwd = job_dir(work.path(), "lost", &fed, &script, &slow);
    let before = fed.counters();
    let victim = 5u64;
    let (job, _, _) =
        tokio::task::block_in_place(|| cluster.submit(&cwd, &[], &cwd.join("array.sh")));
    let victim_manifest = cwd.join(format!("out/shard-{victim}/manifest.jsonl"));
    tokio::task::block_in_place(|| {
        cluster.wait_for("the task to be under way", || {
            lines(&victim_manifest) >= 300
        })
    });
    let t_lost = Instant::now();
    let killed = tokio::task::block_in_place(|| cluster.lose_node_under(&cwd, victim));
    let lost_at = lines(&victim_manifest) as u64;
    assert!(lost_at < ITEMS / TASKS, "lost mid-run ({lost_at} lines)");
    cluster.spawn("slurmd");
    tokio::task::block_in_place(|| cluster.wait_gone(&job, Duration::from_secs(240)));
    let show = cluster
        .command("scontrol")
        .args(["show", "job", &format!("{job}_{victim}")])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("Restarts=1") && show.contains("JobState=COMPLETED"),
        "requeued once by Slurm, then completed: {show}"
    );
    let summaries = task_summaries(&cwd, &job, &all_tasks);
    let (done, skipped, _) = parse_summary(&summaries[victim as usize].1);
    assert_eq!(
        (done + skipped, skipped),
        (ITEMS / TASKS, lost_at),
        "the requeued task skips what was recorded: {}",
        summaries[victim as usize].1
    );
    merged_view(&cwd, &shard_args);
    let counts = done_counts(&shard_dirs(&cwd));
    assert_eq!(counts.len() as u64, ITEMS);
    assert!(
        counts.values().all(|&c| c == 1),
        "nothing done was fetched again"
    );
    let after = fed.counters();
    // Again: at most the items the killed fapi-host had started and not recorded, those in
    // flight (8) and those fetched and waiting for its writer (at most 32).
    let requests = after.dp_requests - before.dp_requests;
    assert!(
        (ITEMS..=ITEMS + 8 + 32).contains(&requests),
        "{requests} data requests for {ITEMS} items"
    );
    assert_eq!(after.token_requests - before.token_requests, TASKS + 1);
    eprintln!(
        "lost node: task {victim} killed with its slurmd ({} processes) after {lost_at} items; \
         requeued by Slurm, it fetched {done} and skipped {skipped}, {:.1} s after the loss; \
         {requests} data requests for {ITEMS} items",
        killed.len(),
        t_lost.elapsed().as_secs_f64()
    );

    std::fs::remove_dir_all(&cwd).unwrap();

    // 4. The 8 shards sharing one output directory (as on a shared file system), then run again:
    // each shard's start checks only its own 2,500 files.
    let shared_script = script.replace("\"out/shard-$SLURM_ARRAY_TASK_ID\"", "out/shared");
    assert_ne!(shared_script, script);
    let cwd = job_dir(work.path(), "shared", &fed, &shared_script, &urls);
    for (label, expect_done) in [("shared directory", ITEMS / TASKS), ("shared, resumed", 0)] {
        let (job, submitted, wall) =
            tokio::task::block_in_place(|| cluster.run_to_end(&cwd, &[], &cwd.join("array.sh")));
        let summaries = task_summaries(&cwd, &job, &all_tasks);
        // A resume writes no manifest line: no span to measure.
        let span = (expect_done > 0)
            .then(|| {
                let manifest = cwd.join("out/shared/manifest.jsonl");
                task_span(&cwd, &job, &all_tasks, &[manifest], submitted)
            })
            .flatten();
        print_throughput(label, &summaries, ITEMS, span, wall);
        for (k, line) in &summaries {
            let (done, skipped, _) = parse_summary(line);
            assert_eq!(
                (done, skipped),
                (expect_done, ITEMS / TASKS - expect_done),
                "task {k}: {line}"
            );
        }
        merged_view(&cwd, &["out/shared".to_owned()]);
        let counts = done_counts(&[cwd.join("out/shared")]);
        assert_eq!(counts.len() as u64, ITEMS);
        assert!(counts.values().all(|&c| c == 1));
    }
    let t_stop = Instant::now();
    tokio::task::block_in_place(|| {
        drop(cluster);
        drop(work);
    });
    eprintln!(
        "Slurm test: {:.1} s in all, {:.1} s of it stopping the cluster and removing its files",
        t_start.elapsed().as_secs_f64(),
        t_stop.elapsed().as_secs_f64()
    );
}
