//! A real `availdb traffic-manager` process on loopback, and small HTTP
//! application endpoints to put behind it.
//!
//! * [`TestTrafficManager::start`] writes the profile to `<tmp>/tm.toml`,
//!   spawns the process (stderr to `<tmp>/tm.log`) and waits, bounded, for
//!   its admin API; the ports are kept across `restart()`.
//! * [`HttpEndpoint`] answers every request with `200` and its name in the
//!   body; it can be made to hang (accept, never answer) or be stopped
//!   (connections refused), as a dead application would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use availdb::traffic::{Client, ProfileView};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{availdb_bin, free_port};

/// A traffic manager process.
pub struct TestTrafficManager {
    dir: TempDir,
    child: Option<Child>,
    /// The port clients connect to.
    pub port: u16,
    /// The admin API's port.
    pub admin_port: u16,
}

impl TestTrafficManager {
    /// Starts one with this profile (TOML, without the state file).
    pub async fn start(profile_toml: &str) -> TestTrafficManager {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("tm.toml"), profile_toml).expect("tm.toml written");
        let mut tm = TestTrafficManager {
            dir,
            child: None,
            port: free_port(),
            admin_port: free_port(),
        };
        tm.spawn().await;
        tm
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tm.toml")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tm.log"))
            .expect("tm.log");
        let child = Command::new(availdb_bin())
            .arg("traffic-manager")
            .arg("--config")
            .arg(self.config_path())
            .args(["--port", &self.port.to_string()])
            .args(["--admin-port", &self.admin_port.to_string()])
            .env("AVAILDB_LOG", "info,availdb::traffic=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("availdb traffic-manager spawned");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.client().show().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the traffic manager exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the traffic manager's admin API did not answer within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its admin API.
    pub fn client(&self) -> Client {
        Client::new(&self.admin())
    }

    /// `host:port` of the admin API.
    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// `host:port` clients connect to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The profile now.
    pub async fn show(&self) -> ProfileView {
        self.client().show().await.expect("GET /profile")
    }

    /// What the process wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tm.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) and starts it again on the same ports
    /// and files.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) until `check` holds for the profile.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&ProfileView) -> bool,
    ) -> ProfileView {
        let deadline = Instant::now() + within;
        loop {
            let view = self.show().await;
            if check(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; the profile: {view:#?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestTrafficManager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny HTTP application endpoint in the test process.
pub struct HttpEndpoint {
    /// Its port.
    pub port: u16,
    hang: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpEndpoint {
    /// Serves `name` on a free port.
    pub async fn start(name: &str) -> HttpEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let hang = Arc::new(AtomicBool::new(false));
        let (name, hang2) = (name.to_string(), hang.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let (name, hang) = (name.clone(), hang2.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    // Answer each request on the connection (keep-alive).
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if hang.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                                name.len()
                            );
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HttpEndpoint { port, hang, task }
    }

    /// `127.0.0.1:port`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on, requests get no answer (a hung application).
    pub fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }

    /// Stops accepting: connections are refused (a dead application).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `GET /` through `address` on a new connection: the body (the
/// endpoint's name), or the error.
pub async fn get_once(address: &str, within: Duration) -> Result<String, String> {
    availdb::traffic::http::request(address, "GET", "/", None, within)
        .await
        .map(|a| String::from_utf8_lossy(&a.body).into_owned())
}
