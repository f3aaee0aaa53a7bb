//! Black-box harness: starts the real `availdb server` binary on a free
//! loopback port with a temporary data directory and hands out real
//! PostgreSQL clients.
//!
//! * Every server gets its own `TempDir`; the data directory is `<tmp>/data`
//!   and everything the process writes to stdout and stderr is appended to
//!   `<tmp>/server.log`, which panics quote (its tail) so a failing test says
//!   what the server said.
//! * The port is picked at run time (bind `127.0.0.1:0`, read it, drop the
//!   socket) and kept across `restart()`.
//! * Every wait is bounded; nothing here sleeps to assert timing, only to poll.
//! * Dropping a `TestServer` kills the process (SIGKILL) and removes the
//!   directory.
// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod cluster;
pub mod group;
pub mod memory;
pub mod netns;
pub mod proxy;
pub mod traffic;
pub mod upgrade;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The user availdb authenticates (and libpq's default database name).
pub const USER: &str = "availdb";
/// The database that exists on first start.
pub const DEFAULT_DB: &str = "availdb";
/// How long a server may take to accept `SELECT 1` after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM, or to fail at start.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one client connection attempt (TCP connect + start-up + auth).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;

/// A loopback port that was free a moment ago.
///
/// Picked below the kernel's ephemeral range (32768–60999 here), where
/// the tests' own client sockets never land, at a pseudo-random spot so
/// concurrent tests rarely try the same one; servers still retry on a
/// collision ([`Builder::start`]).
pub fn free_port() -> u16 {
    free_port_in(20_000, 12_000)
}

/// Two different free loopback ports (a listener's two).
pub fn two_free_ports() -> (u16, u16) {
    loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            return (a, b);
        }
    }
}

/// A loopback port in `low .. low + span` that was free a moment ago, at a
/// pseudo-random spot (see [`free_port`]).
pub fn free_port_in(low: u16, span: u16) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // A multiplicative hash spreads consecutive draws over the span.
        let draw = seed.wrapping_add(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let port = (u64::from(low) + draw % u64::from(span)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where a server's password comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum PasswordSource {
    /// `--password PW`.
    #[default]
    Argument,
    /// `AVAILDB_PASSWORD=PW`.
    Environment,
    /// `password = "PW"` in a `--config` TOML file.
    ConfigFile,
}

/// How to start a server: password (argument, environment or config file),
/// host, port, extra arguments.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    password: Option<String>,
    password_source: PasswordSource,
    /// What clients send when the server was given a verifier instead of
    /// the password ([`Builder::verifier_in_config_file`]).
    client_password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    extra_args: Vec<String>,
    /// Network namespace to run the process in (`ip netns exec`).
    netns: Option<String>,
    /// Size in MiB of a tmpfs mounted on the data directory (needs root):
    /// a disk that can be filled.
    tmpfs_data_mb: Option<u32>,
    /// Environment variables set for the process (e.g. `AVAILDB_CRASH_AT`).
    env: Vec<(String, String)>,
}

impl Builder {
    /// Require this password (SCRAM-SHA-256), given as `--password`.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self.password_source = PasswordSource::Argument;
        self
    }

    /// Require this password, given through `AVAILDB_PASSWORD`.
    pub fn password_from_env(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self.password_source = PasswordSource::Environment;
        self
    }

    /// Require this password, given as `password` in a `--config` file.
    pub fn password_in_config_file(mut self, password: &str) -> Self {
        assert!(
            password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "keep test passwords TOML-safe"
        );
        self.password = Some(password.to_string());
        self.password_source = PasswordSource::ConfigFile;
        self
    }

    /// Give the server `verifier` (a SCRAM-SHA-256 verifier of `password`)
    /// as `password` in a `--config` file; clients log in with `password`.
    pub fn verifier_in_config_file(mut self, verifier: &str, password: &str) -> Self {
        self.password = Some(verifier.to_string());
        self.password_source = PasswordSource::ConfigFile;
        self.client_password = Some(password.to_string());
        self
    }

    /// The password clients send, if the server has one.
    fn client_password(&self) -> Option<&String> {
        self.client_password.as_ref().or(self.password.as_ref())
    }

    /// Bind this host instead of `127.0.0.1`.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Use this port instead of a fresh free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Run the server inside network namespace `name` (needs root).
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Mount a tmpfs of `mb` MiB on the data directory before the first
    /// start (needs root; unmounted when the server is dropped), so a test
    /// can fill the node's disk without touching the machine's.
    pub fn tmpfs_data(mut self, mb: u32) -> Self {
        self.tmpfs_data_mb = Some(mb);
        self
    }

    /// Set an environment variable of the process (e.g.
    /// `AVAILDB_LOG_SEGMENT_BYTES`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Append one more command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// Run as replica `name` with its replication endpoint on
    /// `127.0.0.1:endpoint_port` (`--name`, `--endpoint`).
    pub fn replica(self, name: &str, endpoint_port: u16) -> Self {
        self.arg("--name")
            .arg(name)
            .arg("--endpoint")
            .arg(&format!("127.0.0.1:{endpoint_port}"))
    }

    /// Run as replica `name` with its replication endpoint on `ip:port`
    /// (partner connections then leave from `ip`).
    pub fn replica_at(self, name: &str, ip: std::net::IpAddr, endpoint_port: u16) -> Self {
        self.arg("--name")
            .arg(name)
            .arg("--endpoint")
            .arg(&format!("{ip}:{endpoint_port}"))
    }

    /// Spawns the server and waits until a client can run `SELECT 1`. A
    /// client port picked here that another process took in the meantime
    /// is picked again.
    pub async fn start(self) -> TestServer {
        let picked_port = self.port.is_none();
        let mut server = self.spawn();
        for _ in 0..5 {
            let Some(status) = server.wait_ready_or_exit().await else {
                return server;
            };
            let log = server.log();
            if log.contains("choose another --http-port") {
                server.http_port = free_port();
                server.spawn_child();
                continue;
            }
            let taken = log.contains("already in use: choose another --port");
            if !(picked_port && taken) {
                panic!(
                    "availdb exited ({status}) before accepting connections\n{}",
                    server.log_tail()
                );
            }
            server.port = free_port();
            server.spawn_child();
        }
        panic!(
            "availdb found its client port taken five times\n{}",
            server.log_tail()
        );
    }

    /// Spawns a server that is expected to refuse to start: waits (bounded)
    /// for it to exit and returns how it exited and what it logged. Panics
    /// if it is still running after `EXIT_TIMEOUT`.
    pub async fn start_expecting_exit(self) -> FailedStart {
        let mut server = self.spawn();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = server.try_wait() {
                return FailedStart {
                    status,
                    log: server.log(),
                };
            }
            if Instant::now() > deadline {
                panic!(
                    "availdb was expected to refuse to start but is still running after {:?}\n{}",
                    EXIT_TIMEOUT,
                    server.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn spawn(self) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("availdb-test-")
            .tempdir()
            .expect("create temp dir");
        let port = self.port.unwrap_or_else(free_port);
        if let Some(mb) = self.tmpfs_data_mb {
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("create the data directory");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "availdb-test"])
                .arg(&data)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount a {mb} MiB tmpfs on {}: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = TestServer {
            log_path: dir.path().join("server.log"),
            dir,
            port,
            http_port: free_port(),
            config: self,
            child: None,
            starts: 0,
        };
        server.spawn_child();
        server
    }
}

/// How a server that refused to start exited.
#[derive(Debug)]
pub struct FailedStart {
    /// The exit status of the process.
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub log: String,
}

/// One running (or stopped) `availdb server` process and its directory.
pub struct TestServer {
    dir: TempDir,
    port: u16,
    /// The HTTP server's port (health checks, metrics), picked free.
    http_port: u16,
    config: Builder,
    child: Option<Child>,
    log_path: PathBuf,
    /// How many times the process was spawned (log section markers).
    starts: u32,
}

impl TestServer {
    /// Starts a server with no password on a free loopback port.
    pub async fn start() -> TestServer {
        Builder::default().start().await
    }

    /// A builder for servers with a password, another host or extra args.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The port of the server's HTTP server (health checks, metrics).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory passed as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    /// A libpq-style connection string for `db`, with the password when the
    /// server has one.
    pub fn conn_string(&self, db: &str) -> String {
        let host = match self.config.host.as_deref() {
            None | Some("0.0.0.0") => "127.0.0.1",
            Some(host) => host,
        };
        let mut s = format!(
            "host={host} port={} user={USER} dbname={db} connect_timeout={}",
            self.port,
            CONNECT_TIMEOUT.as_secs()
        );
        if let Some(password) = self.config.client_password() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    /// Connects to `db`; the caller inspects the error.
    pub async fn try_client(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        match connect_bounded(&self.conn_string(db)).await {
            Some(result) => result,
            None => panic!(
                "connecting to database {db:?} on port {} took longer than {CONNECT_TIMEOUT:?}\n{}",
                self.port,
                self.log_tail()
            ),
        }
    }

    /// Connects to `db`, panicking with the server log when that fails.
    pub async fn client(&self, db: &str) -> Client {
        match self.try_client(db).await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot connect to database {db:?} on port {}: {e:?}\n{}",
                self.port,
                self.log_tail()
            ),
        }
    }

    /// Everything the server wrote so far (all starts).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The last lines of the server log, formatted for a panic message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last {} lines of {} ---\n{}\n--- end of server log ---",
            lines.len() - from,
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the process has been spawned and not yet seen to exit.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sets (Some) or removes (None) an environment variable of the
    /// process from its next start on (e.g. `AVAILDB_CRASH_AT`).
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.config.env.retain(|(n, _)| n != name);
        if let Some(value) = value {
            self.config.env.push((name.to_string(), value.to_string()));
        }
    }

    /// Starts the server again on the same data directory and port (after
    /// SIGTERM if it is still running) and waits until it answers `SELECT
    /// 1`; unlike [`TestServer::restart`], a server that exits or does
    /// not answer within `START_TIMEOUT` is an `Err` with its log tail,
    /// not a panic.
    pub async fn try_restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            self.sigterm().await;
        }
        self.spawn_child();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Err(format!(
                    "availdb exited ({status}) before accepting connections\n{}",
                    self.log_tail()
                ));
            }
            if let Some(Ok(client)) = connect_bounded(&self.conn_string(DEFAULT_DB)).await {
                if client.simple_query("SELECT 1").await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "availdb did not answer SELECT 1 within {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit status if the process has exited (it is then no longer
    /// running); None while it runs or when it was never started.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let status = self.try_wait();
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Sends `signal` (a name `kill -s` understands: `STOP`, `CONT`, …) to
    /// the running process with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -s {signal} {pid}: {e}"));
        assert!(sent.success(), "kill -s {signal} {pid} failed: {sent}");
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, it answers
    /// nothing. Returns once every thread of it is stopped: `kill` returns
    /// when the signal is queued, and the group stop reaches the other
    /// threads only after one of them runs to take it, so on a busy machine
    /// a worker could still serve a statement sent "after" the pause.
    pub fn pause(&self) {
        self.signal("STOP");
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let running = threads_not_stopped(pid)
                .unwrap_or_else(|e| panic!("read the threads of process {pid}: {e}"));
            if running.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid}: threads {running:?} still not stopped 10 s after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        // It may have exited by itself (and been reaped) already.
        if let Some(status) = self.try_wait() {
            self.child = None;
            return status;
        }
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let tail = self.log_tail();
                self.kill9();
                panic!("availdb did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{tail}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the server again on the same data directory and port; stops it
    /// with SIGTERM first if it is still running.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.sigterm().await;
        }
        self.spawn_child();
        self.wait_ready().await;
    }

    /// The exit status, if the process has exited.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("wait for availdb")
    }

    fn spawn_child(&mut self) {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        writeln!(log, "=== test harness: start #{} ===", self.starts).expect("write server log");
        let stdout = log.try_clone().expect("clone log handle");

        let mut cmd = match &self.config.netns {
            // `ip netns exec` execs the binary: the child's pid is the server's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(availdb_bin());
                cmd
            }
            None => Command::new(availdb_bin()),
        };
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--host")
            .arg(self.config.host.as_deref().unwrap_or("127.0.0.1"))
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .env_remove("AVAILDB_PASSWORD")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        if let Some(password) = &self.config.password {
            match self.config.password_source {
                PasswordSource::Argument => {
                    cmd.arg("--password").arg(password);
                }
                PasswordSource::Environment => {
                    cmd.env("AVAILDB_PASSWORD", password);
                }
                PasswordSource::ConfigFile => {
                    let path = self.dir.path().join("availdb.toml");
                    std::fs::write(&path, format!("password = \"{password}\"\n"))
                        .expect("write config file");
                    cmd.arg("--config").arg(path);
                }
            }
        }
        cmd.args(&self.config.extra_args);
        cmd.env_remove("AVAILDB_CRASH_AT");
        for (name, value) in &self.config.env {
            cmd.env(name, value);
        }
        self.child = Some(cmd.spawn().expect("spawn the availdb binary"));
    }

    async fn wait_ready(&mut self) {
        if let Some(status) = self.wait_ready_or_exit().await {
            panic!(
                "availdb exited ({status}) before accepting connections\n{}",
                self.log_tail()
            );
        }
    }

    /// Waits until the server answers `SELECT 1` (None) or exits (its status).
    async fn wait_ready_or_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Some(status);
            }
            let last_error = match connect_bounded(&self.conn_string(DEFAULT_DB)).await {
                Some(Ok(client)) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return None,
                    Err(e) => format!("SELECT 1 failed: {e:?}"),
                },
                // A node that requires TLS (tests/security.rs) refuses
                // this plaintext client at start-up: it is up.
                Some(Err(e))
                    if e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) =>
                {
                    return None
                }
                Some(Err(e)) => format!("connect failed: {e:?}"),
                None => format!("connect took longer than {CONNECT_TIMEOUT:?}"),
            };
            if Instant::now() > deadline {
                panic!(
                    "availdb did not answer SELECT 1 within {START_TIMEOUT:?} (last: {last_error})\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A command for a libpq program (`psql`, `pgbench`) with the `PG*`
    /// environment pointing at this server's database `db`.
    pub fn libpq_command(&self, program: &str, db: &str) -> Command {
        let mut cmd = Command::new(program);
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGTARGETSESSIONATTRS",
            "PGPASSFILE",
            "PGPASSWORD",
            "PGHOSTADDR",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGDATABASE", db)
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
            .env("PGAPPNAME", "availdb-tests")
            .stdin(Stdio::null());
        if let Some(password) = self.config.client_password() {
            cmd.env("PGPASSWORD", password);
        }
        cmd
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if self.config.tmpfs_data_mb.is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir())
                .output();
        }
    }
}

/// The server binary the tests start: `AVAILDB_TEST_BIN` when set (e.g. a
/// release build for a long fault campaign, `scripts/campaign`), else the
/// one Cargo built with the tests.
pub fn availdb_bin() -> PathBuf {
    std::env::var_os("AVAILDB_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_availdb")))
}

/// The sum of the samples of Prometheus metric `name` (a counter or a
/// gauge, every label set) on `node`'s `/metrics`; 0 when it has none yet.
pub async fn metric_sum(node: &TestServer, name: &str) -> f64 {
    let (_, text) = http_get(node.http_port(), "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` on loopback `port` (HTTP/1.0): (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on port {port}: no answer in 10 s"))
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// Connects with a libpq-style connection string and runs the connection on
/// its own task; panics if the start-up takes longer than `CONNECT_TIMEOUT`.
pub async fn connect(conn_string: &str) -> Result<Client, tokio_postgres::Error> {
    match connect_bounded(conn_string).await {
        Some(result) => result,
        None => panic!("connecting with {conn_string:?} took longer than {CONNECT_TIMEOUT:?}"),
    }
}

/// `connect`, with `None` when the whole start-up (TCP, TLS refusal, auth)
/// did not finish within `CONNECT_TIMEOUT`.
async fn connect_bounded(conn_string: &str) -> Option<Result<Client, tokio_postgres::Error>> {
    let attempt = tokio_postgres::connect(conn_string, NoTls);
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Some(Err(e)),
        Err(_) => return None,
    };
    tokio::spawn(async move {
        // Errors surface on the client's next call.
        let _ = connection.await;
    });
    Some(Ok(client))
}

/// The first row's first column of a simple-protocol query, as text.
pub async fn simple_value(client: &Client, sql: &str) -> Option<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: returned no row"))
}

/// Column `idx` of `row`, an integer of any width: availdb announces a
/// column declared `integer` as int4 and `bigint` as int8 (as PostgreSQL
/// does), and the harness's helpers read tables of either kind.
pub fn int(row: &tokio_postgres::Row, idx: usize) -> i64 {
    row.try_get::<_, i64>(idx)
        .or_else(|_| row.try_get::<_, i32>(idx).map(i64::from))
        .or_else(|_| row.try_get::<_, i16>(idx).map(i64::from))
        .unwrap_or_else(|e| panic!("column {idx} is not an integer: {e}"))
}

/// Rows and the command-complete count of a simple-protocol query.
pub async fn simple_rows(client: &Client, sql: &str) -> (Vec<Vec<Option<String>>>, Option<u64>) {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut rows = Vec::new();
    let mut count = None;
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    (rows, count)
}

/// Asserts that `result` failed with `expected`, naming what was run.
pub fn assert_sqlstate<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    expected: &SqlState,
    what: &str,
) {
    match result {
        Ok(value) => panic!(
            "{what}: expected SQLSTATE {} but it succeeded with {value:?}",
            expected.code()
        ),
        Err(e) => {
            let got = e.code().map(|c| c.code().to_string());
            assert_eq!(
                got.as_deref(),
                Some(expected.code()),
                "{what}: expected SQLSTATE {}, got {got:?} ({e:?})",
                expected.code()
            );
        }
    }
}

/// Runs a command to completion, killing it after `timeout`; stdout and
/// stderr are read on their own threads so a chatty child never blocks.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let description = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{description} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(POLL);
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The threads of process `pid` that are not stopped (by their state in
/// `/proc/PID/task/TID/stat`: `T` stopped, `t` traced); a thread that
/// exited meanwhile is not listed.
fn threads_not_stopped(pid: u32) -> std::io::Result<Vec<String>> {
    let mut running = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "TID (comm) S …": the state follows the last ')' (comm may hold one).
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            running.push(format!(
                "{} ({state:?})",
                task.file_name().to_string_lossy()
            ));
        }
    }
    Ok(running)
}
