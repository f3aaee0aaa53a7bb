//! A whole rolling-upgrade rig of real processes on loopback: production
//! (a two-replica group, server 'A', database `app`), a stage cluster (one
//! node, server 'S', an empty group), the example application's V1
//! (`examples/rolling-upgrade/app.py`) behind a traffic manager, and a
//! plan for `availdb upgrade` in a temporary folder. V2 is started by the
//! orchestrator (the plan's `stage.start`) and writes its pid to a file,
//! so the rig stops it whatever happens.
//!
//! The option 2 rig ([`Rig::start_geo`]) adds the DR region: production's
//! geo-secondary on a DR cluster (server 'B', one node) with V1-DR
//! against it, an online backup endpoint `v1-dr` (priority 2), and an
//! empty stage-DR cluster (server 'SB') for the plan's `[stage_dr]`
//! (V2-DR, endpoint `v2-dr`, priority 4; the stage's is 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::group::{error_text, Group, APP};
use super::traffic::TestTrafficManager;
use super::{availdb_bin, free_port, run_bounded, TestServer, DEFAULT_DB};

/// How long an `availdb upgrade` run may take.
pub const UPGRADE_WITHIN: Duration = Duration::from_secs(240);

/// The example application's folder.
pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/rolling-upgrade")
}

/// A running example application (V1 here; V2 is the orchestrator's).
pub struct App {
    child: Child,
}

impl App {
    /// Starts `app.py --version N` on `port` against `dsn` and waits
    /// (bounded) until GET /health answers 200.
    pub async fn start(version: u8, port: u16, dsn: &str, log: &Path) -> App {
        let log = std::fs::File::create(log).expect("app log");
        let child = Command::new("python3")
            .arg(example_dir().join("app.py"))
            .args(["--version", &version.to_string()])
            .args(["--port", &port.to_string()])
            .args(["--dsn", dsn])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 runs (scripts/test installs psycopg into .venv)");
        let app = App { child };
        wait_http(&format!("127.0.0.1:{port}"), "/health", 200).await;
        app
    }
}

impl App {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the application at once (SIGKILL), as a lost region would.
    pub fn kill(&self) {
        // SAFETY: kill(2) on the pid of a child we spawned.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until GET `path` on `target` answers `status`.
pub async fn wait_http(target: &str, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got =
            availdb::traffic::http::request(target, "GET", path, None, Duration::from_secs(5))
                .await;
        if got.as_ref().is_ok_and(|a| a.status == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on {target} never answered {status}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rig.
pub struct Rig {
    /// Production: r1 primary, r2 secondary, `app`.
    pub production: Group,
    /// The stage cluster's one node.
    pub stage: TestServer,
    /// V1, on `v1_port`.
    pub v1: App,
    /// The traffic manager in front of V1 (and later V2).
    pub tm: TestTrafficManager,
    /// The plan's folder.
    pub dir: TempDir,
    /// Where V2 listens.
    pub v2_port: u16,
    /// Option 2: the DR region.
    pub dr: Option<DrRegion>,
}

/// The option 2 rig's DR region.
pub struct DrRegion {
    /// Production's DR cluster (server 'B'): production's geo-secondary.
    pub production_dr: TestServer,
    /// V1 against it, behind endpoint `v1-dr`.
    pub v1_dr: App,
    /// The stage-DR cluster (server 'SB'), empty until the upgrade.
    pub stage_dr: TestServer,
    /// Where V2-DR listens.
    pub v2_dr_port: u16,
}

impl Rig {
    /// Starts everything; the plan runs `upgrade_sql` as its script and
    /// `smoke(v2_port)` (TOML) as its smoke check.
    pub async fn start(upgrade_sql: &str, smoke: impl Fn(u16) -> String) -> Rig {
        Rig::build(upgrade_sql, smoke, false).await
    }

    /// The option 2 rig: as [`Rig::start`], plus the DR region and the
    /// plan's `[production_dr]` and `[stage_dr]`.
    pub async fn start_geo(upgrade_sql: &str, smoke: impl Fn(u16) -> String) -> Rig {
        Rig::build(upgrade_sql, smoke, true).await
    }

    async fn build(upgrade_sql: &str, smoke: impl Fn(u16) -> String, geo: bool) -> Rig {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let production = Group::start(2).await;
        let stage_endpoint = free_port();
        let stage = one_node_cluster("s1", stage_endpoint, "stage", "S").await;
        let admin = production.primary().client(DEFAULT_DB).await;
        exec(&admin, "ALTER CLUSTER SET (SERVER_NAME = 'A')").await;
        let schema = std::fs::read_to_string(example_dir().join("schema_v1.sql")).unwrap();
        exec(&production.primary().client(APP).await, &schema).await;
        let (v1_port, v2_port) = (app_port(), app_port());
        let mut dr = None;
        let mut dr_endpoint = String::new();
        let mut dr_plan = String::new();
        if geo {
            // Production's DR slot: its geo-secondary in the DR region,
            // V1 running against it.
            let pdr_endpoint = free_port();
            let production_dr = one_node_cluster("d1", pdr_endpoint, "dr", "B").await;
            exec(
                &admin,
                &format!(
                    "ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{pdr_endpoint}')"
                ),
            )
            .await;
            exec(
                &production.primary().client(DEFAULT_DB).await,
                &format!("ALTER DATABASE {APP} ADD SECONDARY ON SERVER 'B'"),
            )
            .await;
            let v1_dr_port = app_port();
            let v1_dr = App::start(
                1,
                v1_dr_port,
                &format!(
                    "postgresql://availdb@127.0.0.1:{}/app",
                    production_dr.port()
                ),
                &dir.path().join("v1-dr.log"),
            )
            .await;
            let sdr_endpoint = free_port();
            let stage_dr = one_node_cluster("e1", sdr_endpoint, "stagedr", "SB").await;
            let v2_dr_port = app_port();
            dr_endpoint = format!(
                "[[endpoint]]\nname = \"v1-dr\"\ntarget = \"127.0.0.1:{v1_dr_port}\"\npriority = 2\nstatus = \"online\"\n"
            );
            dr_plan = format!(
                "[production_dr]\nserver = \"B\"\nendpoint = \"v1-dr\"\nstop = [\"kill\", \"{}\"]\n\
                 hosts = [\"127.0.0.1:{}\"]\n\
                 [stage_dr]\nserver = \"SB\"\nendpoint_urls = [\"tcp://127.0.0.1:{sdr_endpoint}\"]\n\
                 hosts = [\"127.0.0.1:{}\"]\nendpoint = \"v2-dr\"\ntarget = \"127.0.0.1:{v2_dr_port}\"\npriority = 4\n\
                 start = [\"python3\", \"{}\", \"--version\", \"2\", \"--port\", \"{v2_dr_port}\", \"--dsn\", \"{{database_url}}\", \"--pid-file\", \"v2-dr.pid\"]\n",
                v1_dr.pid(),
                production_dr.port(),
                stage_dr.port(),
                example_dir().join("app.py").display(),
            );
            dr = Some(DrRegion {
                production_dr,
                v1_dr,
                stage_dr,
                v2_dr_port,
            });
        }
        let v1 = App::start(
            1,
            v1_port,
            &format!(
                "postgresql://availdb@127.0.0.1:{}/app",
                production.primary().port()
            ),
            &dir.path().join("v1.log"),
        )
        .await;
        let tm = TestTrafficManager::start(&format!(
            "name = \"inventory\"\nhold_ms = 10000\n\
             [probe]\nprotocol = \"http\"\npath = \"/health\"\ninterval_seconds = 1\ntimeout_ms = 500\ntolerated_failures = 1\n\
             [[endpoint]]\nname = \"v1\"\ntarget = \"127.0.0.1:{v1_port}\"\npriority = 1\nstatus = \"online\"\n{dr_endpoint}"
        ))
        .await;
        tm.wait_until("v1 healthy", Duration::from_secs(30), |v| {
            v.active.as_deref() == Some("v1")
        })
        .await;
        std::fs::write(dir.path().join("upgrade.sql"), upgrade_sql).unwrap();
        let hosts: Vec<String> = production
            .nodes
            .iter()
            .map(|n| format!("\"127.0.0.1:{}\"", n.port()))
            .collect();
        let plan = format!(
            "name = \"inventory-v2\"\n\
             [production]\nserver = \"A\"\nhosts = [{}]\ndatabase = \"app\"\nendpoint = \"v1\"\nstop = [\"kill\", \"{}\"]\n\
             [stage]\nserver = \"S\"\nendpoint_urls = [\"tcp://127.0.0.1:{stage_endpoint}\"]\n\
             hosts = [\"127.0.0.1:{}\"]\nendpoint = \"v2\"\ntarget = \"127.0.0.1:{v2_port}\"\npriority = {}\n\
             start = [\"python3\", \"{}\", \"--version\", \"2\", \"--port\", \"{v2_port}\", \"--dsn\", \"{{database_url}}\", \"--pid-file\", \"v2.pid\"]\n\
             {dr_plan}\
             [upgrade]\nscript = \"upgrade.sql\"\n{}\n\
             [traffic_manager]\nadmin = \"{}\"\n",
            hosts.join(", "),
            v1.pid(),
            stage.port(),
            if geo { 3 } else { 2 },
            example_dir().join("app.py").display(),
            smoke(v2_port),
            tm.admin()
        );
        std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
        Rig {
            production,
            stage,
            v1,
            tm,
            dir,
            v2_port,
            dr,
        }
    }

    /// The plan file.
    pub fn plan(&self) -> PathBuf {
        self.dir.path().join("plan.toml")
    }

    /// Runs `availdb upgrade ARGS… PLAN` to completion (bounded), with
    /// `crash_at` as `AVAILDB_CRASH_AT`.
    pub async fn upgrade(&self, args: &[&str], crash_at: Option<&str>) -> Output {
        let mut cmd = Command::new(availdb_bin());
        cmd.arg("upgrade").args(args).arg(self.plan());
        cmd.env_remove("AVAILDB_CRASH_AT");
        if let Some(point) = crash_at {
            cmd.env("AVAILDB_CRASH_AT", point);
        }
        tokio::task::spawn_blocking(move || run_bounded(&mut cmd, UPGRADE_WITHIN))
            .await
            .unwrap()
    }

    /// The report the last run wrote.
    pub fn report(&self) -> serde_json::Value {
        let path = self.dir.path().join("plan.toml.state/report.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    }

    /// V2's pid, if it wrote one.
    pub fn v2_pid(&self) -> Option<i32> {
        self.pid_in("v2.pid")
    }

    /// V2-DR's pid (option 2), if it wrote one.
    pub fn v2_dr_pid(&self) -> Option<i32> {
        self.pid_in("v2-dr.pid")
    }

    fn pid_in(&self, file: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether a V2-DR process runs.
    pub fn v2_dr_alive(&self) -> bool {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        self.v2_dr_pid()
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    }

    /// Whether a V2 process runs.
    pub fn v2_alive(&self) -> bool {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        self.v2_pid()
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    }

    /// The logs of every process, for a failing assertion.
    /// Production's region is lost (its nodes and V1 killed), and the
    /// profile fails over to production's DR slot by itself (bounded wait);
    /// returns how long that took.
    pub async fn lose_production_region(&self) -> Duration {
        for node in &self.production.nodes {
            node.signal("KILL");
        }
        self.v1.kill();
        let lost_at = Instant::now();
        self.tm
            .wait_until("v1-dr takes over", Duration::from_secs(15), |v| {
                v.active.as_deref() == Some("v1-dr")
            })
            .await;
        lost_at.elapsed()
    }

    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let dr = self.dr.as_ref().map_or(String::new(), |dr| {
            format!(
                "\n--- v1-dr\n{}\n--- v2-dr (stage-dr-app.log)\n{}\n--- production-DR node\n{}\n--- stage-DR node\n{}",
                read("v1-dr.log"),
                read("plan.toml.state/stage-dr-app.log"),
                dr.production_dr.log_tail(),
                dr.stage_dr.log_tail()
            )
        });
        format!(
            "--- traffic manager\n{}\n--- v1\n{}\n--- v2 (stage-app.log)\n{}\n--- stage node\n{}\n--- production\n{}{dr}",
            self.tm.log(),
            read("v1.log"),
            read("plan.toml.state/stage-app.log"),
            self.stage.log_tail(),
            self.production.logs()
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for pid in [self.v2_pid(), self.v2_dr_pid()].into_iter().flatten() {
            // SAFETY: signalling the V2 (or V2-DR) process (group) the
            // orchestrator started for this rig.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A port for one of the example application's processes, free a moment
/// ago: above the kernel's ephemeral range (…–60999), where no server of
/// any test (their ports come from [`free_port`], their HTTP ports are
/// those + 1000) and no client socket lands — V2 binds its port only when
/// the orchestrator starts it, long after the plan named it.
fn app_port() -> u16 {
    super::free_port_in(61_000, 4_500)
}

/// A one-node cluster (a region of its own) named `server`, with an empty
/// availability group `group` to hold geo-secondaries.
async fn one_node_cluster(replica: &str, endpoint: u16, group: &str, server: &str) -> TestServer {
    let node = TestServer::builder()
        .replica(replica, endpoint)
        .start()
        .await;
    let admin = node.client(DEFAULT_DB).await;
    exec(
        &admin,
        &format!(
            "CREATE AVAILABILITY GROUP {group} FOR REPLICA ON '{replica}' WITH (ENDPOINT_URL = \
             'tcp://127.0.0.1:{endpoint}', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, \
             FAILOVER_MODE = MANUAL)"
        ),
    )
    .await;
    exec(
        &admin,
        &format!("ALTER CLUSTER SET (SERVER_NAME = '{server}')"),
    )
    .await;
    node
}

/// Runs `sql`, again while the cluster has no leader yet (55000, a node
/// that just started), for at most 30 s.
async fn exec(client: &tokio_postgres::Client, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return,
            Err(e)
                if e.code().is_some_and(|c| c.code() == "55000")
                    && error_text(&e).contains("leader")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{sql}: {}", error_text(&e)),
        }
    }
}
