//! `availdb status`: every availability group replica and its lag as a
//! table in the terminal, redrawn every `--interval` seconds (`--once`:
//! one table, then exit).
//!
//! It is a PostgreSQL client of one node (by default port 5432: `availdb
//! up`'s listener, which reaches the primary) and reads the same `sys`
//! views as the HTTP endpoints and the dashboard, so the three never
//! disagree. A secondary knows only its own row, so for a group whose
//! primary is another node the table comes from that primary, reached at
//! its `READ_ONLY_ROUTING_URL` (`availdb up` sets one for every replica);
//! when it has none or cannot be reached, the node's own rows are shown
//! and the table says so and what to run instead.
//!
//! The estimates are the dashboard's and `/metrics`'s: estimated data loss
//! = the primary's last commit time − the replica's (0 when the replica is
//! failover-ready); estimated recovery time = redo queue / redo rate.
//!
//! Refreshed on a terminal, the screen is cleared before each table;
//! otherwise (a pipe, a file) each table follows the last after a blank
//! line. A refresh that cannot reach the node, or gets no answer within
//! 10 s, prints why and tries again at the next one; `--once` fails
//! instead.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use clap::Args;

use super::cluster::{connect, quote, text_rows, Target};

/// `availdb status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask (its client port; `availdb up`'s listener port by
    /// default).
    #[command(flatten)]
    pub target: Target,
    /// Print one table and exit (non-zero when the node cannot be
    /// reached).
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
}

/// Runs `availdb status`.
pub async fn run(args: StatusArgs) -> Result<(), String> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        return Err(format!(
            "--interval {} is too short: give at least 0.1 (seconds)",
            args.interval
        ));
    }
    let target = &args.target;
    if args.once {
        print!("{}", bounded_table(target).await?);
        return Ok(());
    }
    let clear = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match bounded_table(target).await {
            Ok(t) => t,
            Err(e) => format!("{}: {e}; trying again in {} s\n", now(), args.interval),
        };
        let mut out = std::io::stdout().lock();
        let framed = if clear {
            format!("\x1b[H\x1b[2J{text}")
        } else {
            format!("{text}\n")
        };
        // A closed stdout (the reader went away) ends the command.
        if out
            .write_all(framed.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
}

fn now() -> String {
    chrono::Utc::now().format("%H:%M:%S UTC").to_string()
}

/// How long one table may take: a node that accepts but does not answer
/// (stopped, or a listener holding sessions during a failover) must not
/// freeze the display.
const TABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`table`], bounded by [`TABLE_TIMEOUT`].
async fn bounded_table(target: &Target) -> Result<String, String> {
    tokio::time::timeout(TABLE_TIMEOUT, table(target))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{}:{} did not answer within {} s: is the node stopped, or failing over? \
                 (try another node's client port with --port)",
                target.host,
                target.port,
                TABLE_TIMEOUT.as_secs()
            ))
        })
}

/// One table: every group the node hosts, from its primary where it can.
async fn table(target: &Target) -> Result<String, String> {
    let node = connect(&target.host, target.port, &target.password)
        .await
        .map_err(|e| {
            format!(
                "{e}: give a running node's client port with --port (with availdb up: its \
                 listener port, --port of up)"
            )
        })?;
    let groups = query(
        &node,
        "SELECT g.name, g.primary_replica, g.epoch, coalesce(r.replica, '')
         FROM sys.availability_groups g
         LEFT JOIN sys.dm_hadr_availability_replica_states r
           ON r.group_id = g.name AND r.is_local
         ORDER BY g.name",
    )
    .await?;
    let mut out = format!(
        "availdb status of {}:{} at {}\n",
        target.host,
        target.port,
        now()
    );
    if groups.is_empty() {
        out.push_str(
            "this node hosts no availability group: ask a node that does (--port), \
             or create one (CREATE AVAILABILITY GROUP)\n",
        );
        return Ok(out);
    }
    for g in groups {
        let (name, primary, epoch, local) = (&g[0], &g[1], &g[2], &g[3]);
        let (source, note) = if local == primary {
            (None, None)
        } else {
            match primary_client(&node, name, primary, target).await {
                Ok(client) => (
                    Some(client),
                    Some(format!(
                        "rows from the primary {primary}: {local} is a secondary and sees only itself"
                    )),
                ),
                Err(why) => (
                    None,
                    Some(format!(
                        "only {local}'s own row: {local} is a secondary and sees only itself, \
                         and {why}"
                    )),
                ),
            }
        };
        let rows = replica_rows(source.as_ref().unwrap_or(&node), name).await?;
        let _ = writeln!(
            out,
            "\ngroup {name}: primary {primary}, epoch {epoch}; {}",
            readiness(&rows)
        );
        if let Some(note) = note {
            let _ = writeln!(out, "({note})");
        }
        out.push_str(&render(&rows));
    }
    Ok(out)
}

/// A client of the group's primary, found at its read-only routing URL.
async fn primary_client(
    node: &tokio_postgres::Client,
    group: &str,
    primary: &str,
    target: &Target,
) -> Result<tokio_postgres::Client, String> {
    let rows = query(
        node,
        &format!(
            "SELECT coalesce(read_only_routing_url, '') FROM sys.availability_replicas
             WHERE group_id = {} AND replica_server_name = {}",
            quote(group),
            quote(primary)
        ),
    )
    .await?;
    let url = rows.first().map(|r| r[0].clone()).unwrap_or_default();
    let (host, port) = url
        .trim_start_matches("tcp://")
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            format!(
                "the primary {primary} has no READ_ONLY_ROUTING_URL to reach it at: \
                 run availdb status --port <{primary}'s client port> for every replica"
            )
        })?;
    connect(&host, port, &target.password)
        .await
        .map_err(|e| format!("the primary {primary} cannot be reached ({e})"))
}

/// One database replica's line.
struct Row {
    database: String,
    replica: String,
    role: String,
    connection: String,
    state: String,
    primary: bool,
    failover_ready: bool,
    send_queue: Option<f64>,
    send_rate: Option<f64>,
    redo_queue: Option<f64>,
    redo_rate: Option<f64>,
    lag: Option<f64>,
    loss: Option<f64>,
}

async fn replica_rows(client: &tokio_postgres::Client, group: &str) -> Result<Vec<Row>, String> {
    let rows = query(
        client,
        &format!(
            "SELECT d.database_name, d.replica,
                    coalesce(r.role_desc, CASE WHEN d.is_primary_replica THEN 'PRIMARY' ELSE 'SECONDARY' END),
                    coalesce(r.connected_state_desc, ''),
                    d.synchronization_state_desc || CASE WHEN d.is_suspended THEN ' (suspended)' ELSE '' END,
                    d.is_primary_replica, d.is_failover_ready,
                    d.log_send_queue_size, d.log_send_rate, d.redo_queue_size, d.redo_rate,
                    d.secondary_lag_seconds,
                    CASE WHEN d.is_primary_replica THEN NULL
                         WHEN d.is_failover_ready THEN 0.0
                         WHEN d.last_commit_time IS NULL OR p.last_commit_time IS NULL THEN NULL
                         ELSE max(0.0, (julianday(p.last_commit_time) - julianday(d.last_commit_time)) * 86400.0)
                    END
             FROM sys.dm_hadr_database_replica_states d
             LEFT JOIN sys.dm_hadr_availability_replica_states r
               ON r.group_id = d.group_id AND r.replica = d.replica
             LEFT JOIN sys.dm_hadr_database_replica_states p
               ON p.group_id = d.group_id AND p.database_name = d.database_name
              AND p.is_primary_replica
             WHERE d.group_id = {}
             ORDER BY d.database_name, d.is_primary_replica DESC, d.replica",
            quote(group)
        ),
    )
    .await?;
    let number = |s: &str| s.parse::<f64>().ok();
    Ok(rows
        .into_iter()
        .map(|r| Row {
            database: r[0].clone(),
            replica: r[1].clone(),
            role: r[2].clone(),
            connection: r[3].clone(),
            state: r[4].clone(),
            primary: r[5] == "t",
            failover_ready: r[6] == "t",
            send_queue: number(&r[7]),
            send_rate: number(&r[8]),
            redo_queue: number(&r[9]),
            redo_rate: number(&r[10]),
            lag: number(&r[11]),
            loss: number(&r[12]),
        })
        .collect())
}

/// The group line's verdict, as the dashboard words it.
fn readiness(rows: &[Row]) -> String {
    let secondaries: Vec<&Row> = rows.iter().filter(|r| !r.primary).collect();
    if secondaries.iter().any(|r| r.failover_ready) {
        return "a failover now loses nothing".into();
    }
    match secondaries
        .iter()
        .filter_map(|r| r.loss)
        .min_by(f64::total_cmp)
    {
        Some(loss) => format!("a failover now would lose about {}", seconds(Some(loss))),
        None => "failover loss unknown here".into(),
    }
}

const HEADINGS: [&str; 13] = [
    "DATABASE",
    "REPLICA",
    "ROLE",
    "CONNECTION",
    "SYNCHRONIZATION",
    "READY",
    "SEND QUEUE",
    "SEND RATE",
    "REDO QUEUE",
    "REDO RATE",
    "LAG",
    "EST. LOSS",
    "EST. RECOVERY",
];

/// The rows as aligned columns (text left, numbers right).
fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            let secondary = |v: String| if r.primary { "-".into() } else { v };
            [
                r.database.clone(),
                r.replica.clone(),
                r.role.clone(),
                r.connection.clone(),
                r.state.clone(),
                secondary(if r.failover_ready { "yes" } else { "no" }.into()),
                bytes(r.send_queue),
                rate(r.send_rate),
                bytes(r.redo_queue),
                rate(r.redo_rate),
                secondary(seconds(r.lag)),
                secondary(seconds(r.loss)),
                secondary(seconds(crate::http::metrics::recovery_time(
                    r.redo_queue,
                    r.redo_rate,
                ))),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..HEADINGS.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .chain([HEADINGS[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[&str]| {
        let mut s = String::new();
        for (c, v) in values.iter().enumerate() {
            let pad = " ".repeat(widths[c].saturating_sub(v.chars().count()));
            if c > 0 {
                s.push_str("  ");
            }
            if c >= 6 {
                s.push_str(&pad);
                s.push_str(v);
            } else {
                s.push_str(v);
                s.push_str(&pad);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADINGS);
    for r in &cells {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out
}

fn bytes(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b < 1024.0 => format!("{b:.0} B"),
        Some(b) if b < 1024.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
    }
}

fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(_) => bytes(v) + "/s",
    }
}

fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 10.0 => format!("{s:.2} s"),
        Some(s) => format!("{s:.0} s"),
    }
}

async fn query(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    client
        .simple_query(sql)
        .await
        .map(|m| text_rows(&m))
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("the node refused a status query: {}", db.message()),
            None => format!("the node went away mid-query: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(replica: &str, primary: bool, ready: bool, loss: Option<f64>) -> Row {
        Row {
            database: "app".into(),
            replica: replica.into(),
            role: if primary { "PRIMARY" } else { "SECONDARY" }.into(),
            connection: "CONNECTED".into(),
            state: "SYNCHRONIZED".into(),
            primary,
            failover_ready: ready,
            send_queue: Some(2048.0),
            send_rate: None,
            redo_queue: Some(0.0),
            redo_rate: Some(10.0),
            lag: loss,
            loss,
        }
    }

    #[test]
    fn readiness_is_nothing_with_a_ready_secondary_else_the_smallest_known_loss() {
        let ready = [
            row("r1", true, false, None),
            row("r2", false, true, Some(0.0)),
        ];
        assert_eq!(readiness(&ready), "a failover now loses nothing");
        let behind = [
            row("r1", true, false, None),
            row("r2", false, false, Some(7.0)),
            row("r3", false, false, Some(2.5)),
        ];
        assert_eq!(readiness(&behind), "a failover now would lose about 2.50 s");
        assert_eq!(
            readiness(&[row("r2", false, false, None)]),
            "failover loss unknown here"
        );
    }

    #[test]
    fn columns_line_up_and_a_primary_has_no_lag_or_estimates() {
        let text = render(&[
            row("r1", true, false, None),
            row("r22", false, true, Some(0.0)),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("DATABASE  REPLICA  ROLE"), "{text}");
        // Right-aligned numbers end in the same column.
        let end = |l: &str, w: &str| l.find(w).map(|i| i + w.len());
        assert_eq!(
            end(lines[0], "SEND QUEUE"),
            end(lines[1], "2.0 KiB"),
            "{text}"
        );
        fn last3(l: &str) -> Vec<&str> {
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cells[cells.len() - 3..].to_vec()
        }
        assert_eq!(last3(lines[1]), ["-", "-", "-"], "{text}");
        assert_eq!(last3(lines[2]), ["0.00 s", "0.00 s", "0.00 s"], "{text}");
    }
}
