//! The availability-group DDL: SQL Server's T-SQL statements for defining
//! and running availability groups, parsed into [`AgStatement`]s.
//!
//! Admins send these over the PostgreSQL protocol like any other query.
//! [`is_ag_statement`] is the router's cheap prefix test (a statement that
//! starts like AG DDL comes here instead of going to SQLite, so a typo gets
//! our error rather than SQLite's), and [`parse`] turns one statement into an
//! [`AgStatement`], validating what can be checked without the catalog.
//!
//! # Grammar
//!
//! Keywords are case-insensitive; `[ ]` is optional, `{ }` repeats zero or
//! more times, `|` picks one, quoted punctuation is literal.
//!
//! ```text
//! statement   = ( create | alter_ag | drop | alter_db | cluster ) [ ";" ]
//! create      = CREATE AVAILABILITY GROUP group
//!                 [ WITH "(" group_opt { "," group_opt } ")" ]
//!                 FOR [ DATABASE db { "," db } ]
//!                 REPLICA ON replica { "," replica }          -- at most 9
//!                 [ LISTENER listener ]
//! alter_ag    = ALTER AVAILABILITY GROUP group
//!                 ( JOIN [ WITH "(" CLUSTER_TYPE "=" cluster_type ")" ]
//!                 | ADD DATABASE db { "," db }   | REMOVE DATABASE db
//!                 | ADD REPLICA ON replica       | REMOVE REPLICA ON 'name'
//!                 | MODIFY REPLICA ON 'name' WITH "(" replica_opt { "," replica_opt } ")"
//!                 | SET "(" group_opt { "," group_opt } ")"
//!                 | FAILOVER | FORCE_FAILOVER_ALLOW_DATA_LOSS
//!                 | ADD LISTENER listener )
//! drop        = DROP AVAILABILITY GROUP group
//! alter_db    = ALTER DATABASE db SET HADR
//!                 ( SUSPEND | RESUME | OFF | AVAILABILITY GROUP "=" group )
//!             | ALTER DATABASE db SET ( READ_ONLY | READ_WRITE )
//!                 [ WITH ( ROLLBACK IMMEDIATE | NO_WAIT ) ]
//!             | ALTER DATABASE db SET GEO_MAX_LAG "=" ( seconds SECONDS | OFF )
//!             | ALTER DATABASE db ADD SECONDARY ON SERVER 'name'
//!                 [ WITH "(" geo_opt { "," geo_opt } ")" ]
//!             | ALTER DATABASE db REMOVE SECONDARY ON SERVER 'name'
//!                 [ WITH "(" TERMINATION "=" ( PLANNED | FORCED ) ")" ]
//!             | ALTER DATABASE db ( FAILOVER | FORCE_FAILOVER_ALLOW_DATA_LOSS )
//! geo_opt     = ALLOW_CONNECTIONS "=" ( ALL | NO )
//!             | DATABASE_NAME "=" 'name'
//! cluster     = CREATE CLUSTER                     -- availdb's own: the
//!             | ALTER CLUSTER ADD NODE 'name'      -- quorum cluster's members
//!                 WITH "(" ENDPOINT_URL "=" 'tcp://host:port'
//!                          [ "," VOTE "=" ( ON | OFF ) ] ")"
//!             | ALTER CLUSTER REMOVE NODE 'name'
//!             | ALTER CLUSTER SET "(" SERVER_NAME "=" 'name' ")"
//!             | ALTER CLUSTER ADD PARTNER SERVER 'name'   -- another region
//!                 WITH "(" ENDPOINT_URL "=" 'tcp://host:port[, tcp://…]' ")"
//!             | ALTER CLUSTER REMOVE PARTNER SERVER 'name'
//! replica     = 'name' WITH "(" replica_opt { "," replica_opt } ")"
//! listener    = 'name' "(" listener_opt { "," listener_opt } ")"
//!
//! group_opt   = REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT "=" 0..8
//!             | CLUSTER_TYPE "=" ( WSFC | EXTERNAL | NONE )
//!             | FAILURE_CONDITION_LEVEL "=" 1..5
//!             | HEALTH_CHECK_TIMEOUT "=" milliseconds
//!             | DB_FAILOVER "=" ( ON | OFF )
//!             | AUTOMATED_BACKUP_PREFERENCE "=" ( PRIMARY | SECONDARY_ONLY | SECONDARY | NONE )
//! replica_opt = ENDPOINT_URL "=" 'tcp://host:port'
//!             | AVAILABILITY_MODE "=" ( SYNCHRONOUS_COMMIT | ASYNCHRONOUS_COMMIT
//!                                     | CONFIGURATION_ONLY )
//!             | FAILOVER_MODE "=" ( AUTOMATIC | MANUAL | EXTERNAL )
//!             | SEEDING_MODE "=" ( AUTOMATIC | MANUAL )
//!             | SESSION_TIMEOUT "=" seconds              -- at least 5
//!             | BACKUP_PRIORITY "=" 0..100
//!             | PRIMARY_ROLE "(" primary_opt { "," primary_opt } ")"
//!             | SECONDARY_ROLE "(" secondary_opt { "," secondary_opt } ")"
//! primary_opt = ALLOW_CONNECTIONS "=" ( READ_WRITE | ALL )
//!             | READ_ONLY_ROUTING_LIST "=" ( NONE | "(" route { "," route } ")" )
//! route       = 'name' | "(" 'name' { "," 'name' } ")"     -- a load-balanced set
//! secondary_opt = ALLOW_CONNECTIONS "=" ( NO | READ_ONLY | ALL )
//!             | READ_ONLY_ROUTING_URL "=" 'tcp://host:port'
//! listener_opt = WITH IP "(" "(" 'address' [ "," 'mask' ] ")" { "," ... } ")"
//!             | WITH DHCP [ ON "(" 'address' "," 'mask' ")" ]
//!             | PORT "=" 1..65535
//!             | READ_ONLY_PORT "=" 1..65535              -- availdb's own
//! ```
//!
//! # Names and literals
//!
//! * Group names are identifiers: bare, `"double-quoted"` or `[bracketed]`.
//!   They are kept as written, quoted or not: SQL Server compares them
//!   case-insensitively but shows them as created, and that comparison is
//!   the catalog's job.
//! * Database names are PostgreSQL-style, as everywhere else in availdb: a
//!   bare name is folded to lower case, a quoted one is kept as written.
//! * Replica and listener names are `'string literals'` (server instance and
//!   DNS names in SQL Server), kept as written and compared
//!   case-insensitively where this module checks uniqueness.
//! * Strings double a quote to escape it (`'it''s'`) and may carry T-SQL's
//!   `N` prefix. Comments are `-- …` and `/* … */` (nesting, as in T-SQL).
//!
//! # Checked here
//!
//! Each option at most once per list; `SESSION_TIMEOUT` ≥ 5 s (SQL Server's
//! minimum); `FAILURE_CONDITION_LEVEL` 1–5; `BACKUP_PRIORITY` 0–100;
//! `REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT` 0–8; URLs of the form
//! `tcp://host:port`; in `CREATE`, at most [`MAX_REPLICAS`] replicas, no
//! replica or database twice, and routing lists that name only the group's
//! own replicas. A new replica (`CREATE`, `ADD REPLICA`) must give
//! `ENDPOINT_URL`, `AVAILABILITY_MODE` and `FAILOVER_MODE`, as SQL Server
//! requires. Checks that need the current configuration (the replica count
//! after `ADD REPLICA`, names in `MODIFY`/`REMOVE`) belong to the catalog.
//!
//! # Differences from SQL Server
//!
//! * `MODIFY REPLICA` and `SET` accept several options at once.
//! * `ADD REPLICA ON` adds one replica per statement.
//! * A listener needs `PORT` (SQL Server defaults to 1433, which means
//!   nothing to a PostgreSQL client); its `WITH IP` / `WITH DHCP` clause is
//!   checked for shape and dropped, because every node binds the listener
//!   on its own address. `READ_ONLY_PORT` (default `PORT + 1`) is availdb's
//!   own: sessions arriving there count as read-intent, for clients that
//!   cannot send `application_intent`.
//! * Not supported, rejected with the list of what is: distributed and
//!   contained groups, `OFFLINE`, `GRANT`/`DENY CREATE ANY DATABASE`,
//!   `MODIFY`/`RESTART`/`REMOVE LISTENER`, `READ_WRITE_ROUTING_URL`.

use std::fmt;
use std::ops::RangeInclusive;

pub use crate::group::{PrimaryConnections, SecondaryConnections};

/// Most replicas one availability group can have: a primary and eight
/// secondaries.
pub const MAX_REPLICAS: usize = 9;

/// The smallest `SESSION_TIMEOUT` SQL Server accepts, in seconds.
pub const MIN_SESSION_TIMEOUT_S: u32 = 5;

/// One parsed availability-group statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgStatement {
    /// `CREATE AVAILABILITY GROUP`.
    CreateGroup(GroupSpec),
    /// `ALTER AVAILABILITY GROUP g JOIN [WITH (CLUSTER_TYPE = …)]`, run on a
    /// secondary to join the group.
    Join {
        /// Group name, as written.
        group: String,
        /// The cluster type the group was created with, when given.
        cluster_type: Option<ClusterType>,
    },
    /// `ALTER AVAILABILITY GROUP g ADD DATABASE a, b`.
    AddDatabases {
        /// Group name, as written.
        group: String,
        /// Databases to add, in the order given.
        databases: Vec<String>,
    },
    /// `ALTER AVAILABILITY GROUP g REMOVE DATABASE a`.
    RemoveDatabase {
        /// Group name, as written.
        group: String,
        /// Database to remove.
        database: String,
    },
    /// `ALTER AVAILABILITY GROUP g ADD REPLICA ON 'r' WITH (…)`.
    AddReplica {
        /// Group name, as written.
        group: String,
        /// The new replica.
        replica: ReplicaSpec,
    },
    /// `ALTER AVAILABILITY GROUP g REMOVE REPLICA ON 'r'`.
    RemoveReplica {
        /// Group name, as written.
        group: String,
        /// Replica name, as written.
        replica: String,
    },
    /// `ALTER AVAILABILITY GROUP g MODIFY REPLICA ON 'r' WITH (…)`.
    ModifyReplica {
        /// Group name, as written.
        group: String,
        /// Replica name, as written.
        replica: String,
        /// Only the options to change are `Some`.
        options: ReplicaOptions,
    },
    /// `ALTER AVAILABILITY GROUP g SET (…)`.
    SetGroupOptions {
        /// Group name, as written.
        group: String,
        /// Only the options to change are `Some`.
        options: GroupOptions,
    },
    /// `ALTER AVAILABILITY GROUP g FAILOVER`: planned manual failover to the
    /// replica the statement runs on, without data loss.
    Failover {
        /// Group name, as written.
        group: String,
    },
    /// `ALTER AVAILABILITY GROUP g FORCE_FAILOVER_ALLOW_DATA_LOSS`.
    ForceFailover {
        /// Group name, as written.
        group: String,
    },
    /// `ALTER AVAILABILITY GROUP g ADD LISTENER 'name' (…)`.
    AddListener {
        /// Group name, as written.
        group: String,
        /// The new listener.
        listener: ListenerSpec,
    },
    /// `DROP AVAILABILITY GROUP g`.
    DropGroup {
        /// Group name, as written.
        group: String,
    },
    /// `ALTER DATABASE d SET HADR SUSPEND`: stop data movement for one
    /// database.
    SuspendDatabase {
        /// Database name.
        database: String,
    },
    /// `ALTER DATABASE d SET HADR RESUME`.
    ResumeDatabase {
        /// Database name.
        database: String,
    },
    /// `ALTER DATABASE d SET HADR AVAILABILITY GROUP = g`: join a
    /// secondary's copy of a database to the group.
    JoinDatabase {
        /// Database name.
        database: String,
        /// Group name, as written.
        group: String,
    },
    /// `ALTER DATABASE d SET HADR OFF`: take a database out of its group on
    /// this replica.
    RemoveDatabaseFromHadr {
        /// Database name.
        database: String,
    },
    /// `ALTER DATABASE d SET READ_ONLY | READ_WRITE [WITH …]`.
    SetReadOnly {
        /// Database name.
        database: String,
        /// READ_ONLY (true) or READ_WRITE.
        read_only: bool,
        /// What happens to write transactions open at that moment.
        open_transactions: OpenTransactions,
    },
    /// `ALTER DATABASE d SET GEO_MAX_LAG = n SECONDS | OFF`.
    SetGeoMaxLag {
        /// Database name.
        database: String,
        /// The bound, or None for OFF.
        seconds: Option<u32>,
    },
    /// `ALTER DATABASE d ADD SECONDARY ON SERVER 'B' [WITH (…)]`: a
    /// geo-secondary in another region.
    AddGeoSecondary {
        /// Database name (here).
        database: String,
        /// The partner server (region).
        server: String,
        /// `ALLOW_CONNECTIONS` (ALL: readable, the default).
        allow_connections: Option<SecondaryConnections>,
        /// `DATABASE_NAME` there (default: the same name).
        database_name: Option<String>,
    },
    /// `ALTER DATABASE d REMOVE SECONDARY ON SERVER 'B' [WITH (TERMINATION = …)]`.
    RemoveGeoSecondary {
        /// Database name (here).
        database: String,
        /// The partner server.
        server: String,
        /// `TERMINATION = FORCED` (else PLANNED: wait until it has everything).
        forced: bool,
    },
    /// `ALTER DATABASE d FAILOVER` on a geo-secondary: planned, no data loss.
    GeoFailover {
        /// Database name.
        database: String,
    },
    /// `ALTER DATABASE d FORCE_FAILOVER_ALLOW_DATA_LOSS` on a geo-secondary.
    GeoForceFailover {
        /// Database name.
        database: String,
    },
    /// `CREATE CLUSTER`: start a quorum cluster whose only voter is this
    /// node (availdb's own statement; SQL Server leaves this to WSFC).
    CreateCluster,
    /// `ALTER CLUSTER SET (SERVER_NAME = 'A')`: this cluster's name as other
    /// regions call it.
    SetServerName {
        /// The name.
        name: String,
    },
    /// `ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = …)`:
    /// another region, reachable at any of its nodes' endpoints.
    AddPartner {
        /// Its server name.
        server: String,
        /// Its nodes' replication endpoints (`tcp://host:port`).
        endpoint_urls: Vec<String>,
    },
    /// `ALTER CLUSTER REMOVE PARTNER SERVER 'B'`.
    RemovePartner {
        /// Its server name.
        server: String,
    },
    /// `ALTER CLUSTER ADD NODE 'name' WITH (ENDPOINT_URL = …)`: make a
    /// running node a voter of this node's cluster.
    AddClusterNode {
        /// The node's `--name`.
        name: String,
        /// Where the other nodes reach it (`tcp://host:port`).
        endpoint_url: String,
        /// False for `VOTE = OFF`: it follows the state without voting (a
        /// stand-alone listener).
        voter: bool,
    },
    /// `ALTER CLUSTER REMOVE NODE 'name'`: take a node out of the voters.
    RemoveClusterNode {
        /// The node's `--name`.
        name: String,
    },
}

/// Everything `CREATE AVAILABILITY GROUP` defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name, as written.
    pub name: String,
    /// The `WITH (…)` options; all `None` when there is no `WITH`.
    pub options: GroupOptions,
    /// Availability databases, in the order given; may be empty.
    pub databases: Vec<String>,
    /// Replicas in the order given (1 to [`MAX_REPLICAS`]).
    pub replicas: Vec<ReplicaSpec>,
    /// The listener, when a `LISTENER` clause is given.
    pub listener: Option<ListenerSpec>,
}

/// Group-level options; `None` means "not given" (the caller applies
/// defaults on create and leaves the setting alone on `SET`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOptions {
    /// Synchronized secondaries a commit must reach (0–8).
    pub required_synchronized_secondaries_to_commit: Option<u32>,
    /// Who manages the group's cluster resources.
    pub cluster_type: Option<ClusterType>,
    /// Flexible failover policy level (1–5).
    pub failure_condition_level: Option<u8>,
    /// Health check timeout in milliseconds.
    pub health_check_timeout_ms: Option<u32>,
    /// Whether database-level health (a database going offline) triggers
    /// automatic failover.
    pub db_failover: Option<bool>,
    /// Where automated backups should run.
    pub automated_backup_preference: Option<BackupPreference>,
}

/// One replica: its name and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Server instance name, as written.
    pub name: String,
    /// Its options; a new replica always has `endpoint_url`,
    /// `availability_mode` and `failover_mode`.
    pub options: ReplicaOptions,
}

/// Replica options; `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaOptions {
    /// Database mirroring endpoint, `tcp://host:port` as written (see
    /// [`parse_tcp_url`]).
    pub endpoint_url: Option<String>,
    /// Synchronous, asynchronous or configuration-only.
    pub availability_mode: Option<AvailabilityMode>,
    /// Automatic, manual or external failover.
    pub failover_mode: Option<FailoverMode>,
    /// How a new secondary gets its first copy of each database.
    pub seeding_mode: Option<SeedingMode>,
    /// Seconds without a ping before the partner counts as disconnected
    /// (at least [`MIN_SESSION_TIMEOUT_S`]).
    pub session_timeout_s: Option<u32>,
    /// Preference for running backups here (0–100; 0 = never).
    pub backup_priority: Option<u8>,
    /// `PRIMARY_ROLE (ALLOW_CONNECTIONS = …)`.
    pub primary_allow_connections: Option<PrimaryConnections>,
    /// `PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = …)`: the outer list is in
    /// priority order, each inner list a load-balanced set of replica
    /// names. `NONE` is `Some(vec![])`.
    pub read_only_routing_list: Option<Vec<Vec<String>>>,
    /// `SECONDARY_ROLE (ALLOW_CONNECTIONS = …)`.
    pub secondary_allow_connections: Option<SecondaryConnections>,
    /// `SECONDARY_ROLE (READ_ONLY_ROUTING_URL = …)`: where read-intent
    /// sessions routed to this replica connect, `tcp://host:port`.
    pub read_only_routing_url: Option<String>,
}

/// What `SET READ_ONLY` does to write transactions open at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenTransactions {
    /// Wait until they end (the default).
    #[default]
    Wait,
    /// `WITH ROLLBACK IMMEDIATE`: roll them back.
    RollbackImmediate,
    /// `WITH NO_WAIT`: fail at once if there are any.
    NoWait,
}

/// A listener: the name and ports clients connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// DNS name, as written.
    pub name: String,
    /// TCP port (1–65535).
    pub port: u16,
    /// `READ_ONLY_PORT`, when given: sessions arriving there are read-intent.
    pub read_only_port: Option<u16>,
}

/// `CLUSTER_TYPE`: who manages the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterType {
    /// `WSFC`: a Windows Server Failover Cluster (in availdb, the built-in
    /// cluster manager).
    Wsfc,
    /// `EXTERNAL`: an external cluster manager such as Pacemaker.
    External,
    /// `NONE`: a read-scale group with no quorum and no automatic failover.
    None,
}

/// `AVAILABILITY_MODE` of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvailabilityMode {
    /// `SYNCHRONOUS_COMMIT`: commits wait for this replica to harden the log.
    SynchronousCommit,
    /// `ASYNCHRONOUS_COMMIT`: the primary never waits for this replica.
    AsynchronousCommit,
    /// `CONFIGURATION_ONLY`: holds the group configuration, no databases.
    ConfigurationOnly,
}

/// `FAILOVER_MODE` of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    /// `AUTOMATIC`.
    Automatic,
    /// `MANUAL`.
    Manual,
    /// `EXTERNAL`: failover decided by an external cluster manager.
    External,
}

/// `SEEDING_MODE` of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedingMode {
    /// `AUTOMATIC`: the primary streams a copy of each database.
    Automatic,
    /// `MANUAL`: the admin restores a backup, then joins the database.
    Manual,
}

/// `AUTOMATED_BACKUP_PREFERENCE` of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPreference {
    /// `PRIMARY`: back up on the primary only.
    Primary,
    /// `SECONDARY_ONLY`: never on the primary.
    SecondaryOnly,
    /// `SECONDARY`: on a secondary, the primary when none is available.
    Secondary,
    /// `NONE`: anywhere, by `BACKUP_PRIORITY` only.
    None,
}

/// A statement that is not valid AG DDL: where, what was expected and what
/// was found, and what to write instead when that helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {position}){}", hint_suffix(.hint.as_deref()))]
pub struct AgParseError {
    /// What was expected and what was found.
    pub message: String,
    /// Byte offset in the statement text where the problem starts.
    pub position: usize,
    /// How to fix it, when there is more to say than the message.
    pub hint: Option<String>,
}

fn hint_suffix(hint: Option<&str>) -> String {
    hint.map(|h| format!("; hint: {h}")).unwrap_or_default()
}

impl AgParseError {
    fn new(message: impl Into<String>, position: usize) -> Self {
        Self {
            message: message.into(),
            position,
            hint: None,
        }
    }

    fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

type Result<T, E = AgParseError> = std::result::Result<T, E>;

/// True when `sql` starts (after whitespace and comments) with `CREATE`,
/// `ALTER` or `DROP AVAILABILITY`, or with `ALTER DATABASE name SET HADR`:
/// the caller should hand it to [`parse`] rather than to SQLite.
pub fn is_ag_statement(sql: &str) -> bool {
    let mut lexer = Lexer::new(sql);
    let mut next = move || lexer.next_token().ok().map(|t| t.tok);
    let first = next();
    let second = next();
    if ["CREATE", "ALTER", "DROP"]
        .iter()
        .any(|kw| is_word(&first, kw))
        && is_word(&second, "AVAILABILITY")
    {
        return true;
    }
    if ["CREATE", "ALTER"].iter().any(|kw| is_word(&first, kw)) && is_word(&second, "CLUSTER") {
        return true;
    }
    if !(is_word(&first, "ALTER")
        && is_word(&second, "DATABASE")
        && matches!(next(), Some(Tok::Word(_) | Tok::Quoted(_))))
    {
        return false;
    }
    let verb = next();
    if is_word(&verb, "SET") {
        let what = next();
        return ["HADR", "READ_ONLY", "READ_WRITE", "GEO_MAX_LAG"]
            .iter()
            .any(|kw| is_word(&what, kw));
    }
    if ["ADD", "REMOVE"].iter().any(|kw| is_word(&verb, kw)) {
        return is_word(&next(), "SECONDARY");
    }
    ["FAILOVER", "FORCE_FAILOVER_ALLOW_DATA_LOSS"]
        .iter()
        .any(|kw| is_word(&verb, kw))
}

fn is_word(tok: &Option<Tok>, keyword: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

/// Parses one statement, with or without a trailing `;`.
pub fn parse(sql: &str) -> Result<AgStatement> {
    let mut parser = Parser::new(sql)?;
    let statement = parser.statement()?;
    parser.end()?;
    Ok(statement)
}

/// Splits a `tcp://host:port` URL into host and port. The scheme is
/// case-insensitive (SQL Server writes `TCP://`); an IPv6 host goes in
/// brackets, which are removed. The error says what is wrong.
pub fn parse_tcp_url(url: &str) -> Result<(&str, u16), &'static str> {
    let rest = url
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("tcp://"))
        .map(|_| &url[6..])
        .ok_or("the scheme must be tcp://")?;
    let (host, port) = rest.rsplit_once(':').ok_or("the :port is missing")?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .filter(|h| h.contains(':'))
            .ok_or("an IPv6 host goes in [brackets]")?,
        None if host.contains([':', ']']) => return Err("an IPv6 host goes in [brackets]"),
        None => host,
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    if host.contains(|c: char| c.is_whitespace() || "/?#@[]".contains(c)) {
        return Err("the host is not a host name or address");
    }
    let port = Some(port)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or("the port must be a number from 1 to 65535")?;
    Ok((host, port))
}

/// A value spelled as one keyword out of a fixed set.
trait Choice: Copy + 'static {
    /// Each keyword with its value, in the order hints list them.
    const KEYWORDS: &'static [(&'static str, Self)];
}

/// Implements [`Choice`] for a keyword enum, and `Display` as that keyword
/// (the spelling SQL Server's `*_desc` columns show).
macro_rules! keyword_enum {
    ($ty:ident { $($keyword:literal => $variant:ident),+ $(,)? }) => {
        impl Choice for $ty {
            const KEYWORDS: &'static [(&'static str, Self)] = &[$(($keyword, $ty::$variant)),+];
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $keyword),+
                })
            }
        }
    };
}

keyword_enum!(ClusterType { "WSFC" => Wsfc, "EXTERNAL" => External, "NONE" => None });
keyword_enum!(AvailabilityMode {
    "SYNCHRONOUS_COMMIT" => SynchronousCommit,
    "ASYNCHRONOUS_COMMIT" => AsynchronousCommit,
    "CONFIGURATION_ONLY" => ConfigurationOnly,
});
keyword_enum!(FailoverMode {
    "AUTOMATIC" => Automatic,
    "MANUAL" => Manual,
    "EXTERNAL" => External,
});
keyword_enum!(SeedingMode { "AUTOMATIC" => Automatic, "MANUAL" => Manual });
keyword_enum!(PrimaryConnections { "READ_WRITE" => ReadWrite, "ALL" => All });
keyword_enum!(SecondaryConnections { "NO" => No, "READ_ONLY" => ReadOnly, "ALL" => All });
keyword_enum!(BackupPreference {
    "PRIMARY" => Primary,
    "SECONDARY_ONLY" => SecondaryOnly,
    "SECONDARY" => Secondary,
    "NONE" => None,
});

impl Choice for bool {
    const KEYWORDS: &'static [(&'static str, Self)] = &[("ON", true), ("OFF", false)];
}

/// Reads one option's value (the option name is already consumed) into the
/// target; the `&str` is the option name, for messages.
type Setter<T> = fn(&mut Parser, &mut T, &'static str) -> Result<()>;

const GROUP_OPTIONS: &[(&str, Setter<GroupOptions>)] = &[
    (
        "REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT",
        |p, o, name| {
            let n = p.equals_number(name, 0..=8, "between 0 and 8 (one per secondary)")?;
            o.required_synchronized_secondaries_to_commit = Some(n);
            Ok(())
        },
    ),
    ("CLUSTER_TYPE", |p, o, name| {
        o.cluster_type = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("FAILURE_CONDITION_LEVEL", |p, o, name| {
        o.failure_condition_level = Some(p.equals_number(name, 1..=5, "between 1 and 5")?);
        Ok(())
    }),
    ("HEALTH_CHECK_TIMEOUT", |p, o, name| {
        let ms = p.equals_number(name, 0..=u32::MAX, "a number of milliseconds")?;
        o.health_check_timeout_ms = Some(ms);
        Ok(())
    }),
    ("DB_FAILOVER", |p, o, name| {
        o.db_failover = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("AUTOMATED_BACKUP_PREFERENCE", |p, o, name| {
        o.automated_backup_preference = Some(p.equals_choice(name)?);
        Ok(())
    }),
];

const REPLICA_OPTIONS: &[(&str, Setter<ReplicaOptions>)] = &[
    ("ENDPOINT_URL", |p, o, name| {
        o.endpoint_url = Some(p.equals_url(name)?);
        Ok(())
    }),
    ("AVAILABILITY_MODE", |p, o, name| {
        o.availability_mode = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("FAILOVER_MODE", |p, o, name| {
        o.failover_mode = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("SEEDING_MODE", |p, o, name| {
        o.seeding_mode = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("SESSION_TIMEOUT", |p, o, name| {
        let seconds = p.equals_number(
            name,
            MIN_SESSION_TIMEOUT_S..=u32::MAX,
            "at least 5 seconds (SQL Server's minimum)",
        )?;
        o.session_timeout_s = Some(seconds);
        Ok(())
    }),
    ("BACKUP_PRIORITY", |p, o, name| {
        o.backup_priority = Some(p.equals_number(name, 0..=100, "between 0 and 100")?);
        Ok(())
    }),
    ("PRIMARY_ROLE", |p, o, name| {
        p.options(name, PRIMARY_ROLE_OPTIONS, o)
    }),
    ("SECONDARY_ROLE", |p, o, name| {
        p.options(name, SECONDARY_ROLE_OPTIONS, o)
    }),
];

const PRIMARY_ROLE_OPTIONS: &[(&str, Setter<ReplicaOptions>)] = &[
    ("ALLOW_CONNECTIONS", |p, o, name| {
        o.primary_allow_connections = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("READ_ONLY_ROUTING_LIST", |p, o, _| {
        o.read_only_routing_list = Some(p.equals_routing_list()?);
        Ok(())
    }),
];

const SECONDARY_ROLE_OPTIONS: &[(&str, Setter<ReplicaOptions>)] = &[
    ("ALLOW_CONNECTIONS", |p, o, name| {
        o.secondary_allow_connections = Some(p.equals_choice(name)?);
        Ok(())
    }),
    ("READ_ONLY_ROUTING_URL", |p, o, name| {
        o.read_only_routing_url = Some(p.equals_url(name)?);
        Ok(())
    }),
];

const JOIN_OPTIONS: &[(&str, Setter<Option<ClusterType>>)] = &[("CLUSTER_TYPE", |p, c, name| {
    *c = Some(p.equals_choice(name)?);
    Ok(())
})];

/// A listener's `PORT` and `READ_ONLY_PORT`, as given.
type ListenerPorts = (Option<u16>, Option<u16>);

/// The targets are the ports; the address clause is checked and dropped.
const LISTENER_OPTIONS: &[(&str, Setter<ListenerPorts>)] = &[
    ("WITH", |p, _, _| p.listener_addresses()),
    ("PORT", |p, ports, name| {
        ports.0 = Some(p.equals_number(name, 1..=u16::MAX, "between 1 and 65535")?);
        Ok(())
    }),
    ("READ_ONLY_PORT", |p, ports, name| {
        ports.1 = Some(p.equals_number(name, 1..=u16::MAX, "between 1 and 65535")?);
        Ok(())
    }),
];

const CREATE_SHAPE: &str = "CREATE AVAILABILITY GROUP name [WITH (...)] FOR [DATABASE db, ...] \
     REPLICA ON 'replica' WITH (...), ... [LISTENER 'name' (PORT = n)]";
const NEW_REPLICA_SHAPE: &str = "a new replica needs ENDPOINT_URL, AVAILABILITY_MODE and \
     FAILOVER_MODE, as in SQL Server: 'r1' WITH (ENDPOINT_URL = 'tcp://host:port', \
     AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC)";
const ROUTING_LIST_SHAPE: &str =
    "READ_ONLY_ROUTING_LIST = ('r2', 'r3'), = (('r2', 'r3'), 'r4') or = NONE";
const QUOTING: &str = "names with other characters go in \"double quotes\" or [brackets], \
     values in 'single quotes'";
const ALTER_ACTIONS: &str = "ALTER AVAILABILITY GROUP name takes JOIN, ADD DATABASE, \
     REMOVE DATABASE, ADD REPLICA ON, REMOVE REPLICA ON, MODIFY REPLICA ON, SET (...), \
     FAILOVER, FORCE_FAILOVER_ALLOW_DATA_LOSS or ADD LISTENER";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A keyword or bare identifier, as written.
    Word(String),
    /// A `"quoted"` or `[bracketed]` identifier, unescaped.
    Quoted(String),
    /// A `'string'` or `N'string'` literal, unescaped.
    Str(String),
    /// A run of ASCII digits.
    Number(String),
    LParen,
    RParen,
    Comma,
    Equals,
    Semicolon,
    /// End of input; the lexer repeats it.
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset of the token's first character.
    pos: usize,
}

/// How a token reads in "expected …, found …".
fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) | Tok::Number(w) => w.clone(),
        Tok::Quoted(s) => format!("\"{s}\""),
        Tok::Str(s) => format!("'{s}'"),
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
        Tok::Comma => ",".into(),
        Tok::Equals => "=".into(),
        Tok::Semicolon | Tok::End => "end of statement".into(),
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self { src, pos: 0 }
    }

    fn next_token(&mut self) -> Result<Token> {
        self.skip_blanks()?;
        let pos = self.pos;
        let rest = &self.src[pos..];
        let Some(c) = rest.chars().next() else {
            return Ok(Token { tok: Tok::End, pos });
        };
        let punct = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            '=' => Some(Tok::Equals),
            ';' => Some(Tok::Semicolon),
            _ => None,
        };
        let tok = if let Some(tok) = punct {
            self.pos += 1;
            tok
        } else if c == '\'' {
            Tok::Str(self.delimited(pos, '\'', "string literal")?)
        } else if (c == 'N' || c == 'n') && rest[1..].starts_with('\'') {
            self.pos += 1;
            Tok::Str(self.delimited(pos, '\'', "string literal")?)
        } else if c == '"' {
            Tok::Quoted(self.delimited(pos, '"', "quoted identifier")?)
        } else if c == '[' {
            Tok::Quoted(self.delimited(pos, ']', "bracketed identifier")?)
        } else if c.is_ascii_digit() {
            Tok::Number(self.take_while(|c| c.is_ascii_digit()).to_string())
        } else if c.is_alphabetic() || c == '_' {
            let word = self.take_while(|c| c.is_alphanumeric() || "_$#@".contains(c));
            Tok::Word(word.to_string())
        } else {
            let message = format!("unexpected character {c:?}");
            return Err(AgParseError::new(message, pos).with_hint(QUOTING));
        };
        Ok(Token { tok, pos })
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = &self.src[self.pos..];
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// Reads a quoted token from its opening character (the lexer is on it)
    /// up to `close`; a doubled `close` stands for itself. Errors point at
    /// `start`, where the token begins.
    fn delimited(&mut self, start: usize, close: char, what: &str) -> Result<String> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            let rest = &self.src[self.pos..];
            let Some(at) = rest.find(close) else {
                let message = format!(
                    "unterminated {what}: expected a closing {close}, found end of statement"
                );
                let hint =
                    format!("close it with {close}; write {close}{close} for a {close} inside");
                return Err(AgParseError::new(message, start).with_hint(hint));
            };
            text.push_str(&rest[..at]);
            self.pos += at + 1;
            if self.src[self.pos..].starts_with(close) {
                text.push(close);
                self.pos += 1;
            } else if text.is_empty() && close != '\'' {
                return Err(AgParseError::new(format!("empty {what}"), start));
            } else {
                return Ok(text);
            }
        }
    }

    /// Skips whitespace, `-- line` comments and nested `/* block */` comments.
    fn skip_blanks(&mut self) -> Result<()> {
        loop {
            let rest = &self.src[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with("--") {
                self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
            } else if trimmed.starts_with("/*") {
                self.skip_block_comment()?;
            } else {
                return Ok(());
            }
        }
    }

    fn skip_block_comment(&mut self) -> Result<()> {
        let start = self.pos;
        let mut depth = 0usize;
        while self.pos < self.src.len() {
            let rest = &self.src[self.pos..];
            if rest.starts_with("/*") {
                depth += 1;
                self.pos += 2;
            } else if rest.starts_with("*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return Ok(());
                }
            } else {
                self.pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        Err(AgParseError::new(
            "unterminated comment: expected */, found end of statement",
            start,
        ))
    }
}

struct Parser {
    /// All tokens, ending with [`Tok::End`].
    tokens: Vec<Token>,
    at: usize,
    /// Replica names used in routing lists so far, with their positions, so
    /// that `CREATE` can check them against its replicas.
    routed: Vec<(String, usize)>,
}

impl Parser {
    fn new(sql: &str) -> Result<Self> {
        let mut lexer = Lexer::new(sql);
        let mut tokens = Vec::new();
        loop {
            let token = lexer.next_token()?;
            let end = token.tok == Tok::End;
            tokens.push(token);
            if end {
                return Ok(Self {
                    tokens,
                    at: 0,
                    routed: Vec::new(),
                });
            }
        }
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.at]
    }

    fn advance(&mut self) {
        if self.peek().tok != Tok::End {
            self.at += 1;
        }
    }

    fn unexpected(&self, expected: &str) -> AgParseError {
        let found = self.peek();
        AgParseError::new(
            format!("expected {expected}, found {}", describe(&found.tok)),
            found.pos,
        )
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// True when the token `ahead` places after the next one is `keyword`.
    fn peek_keyword(&self, ahead: usize, keyword: &str) -> bool {
        matches!(self.tokens.get(self.at + ahead).map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn keyword(&mut self, keyword: &str) -> Result<()> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected(keyword))
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let found = &self.peek().tok == tok;
        if found {
            self.advance();
        }
        found
    }

    fn punct(&mut self, tok: Tok) -> Result<()> {
        if self.eat(&tok) {
            Ok(())
        } else {
            Err(self.unexpected(&describe(&tok)))
        }
    }

    fn end(&mut self) -> Result<()> {
        let had_semicolon = self.eat(&Tok::Semicolon);
        if self.peek().tok == Tok::End {
            return Ok(());
        }
        let err = self.unexpected("end of statement");
        Err(if had_semicolon {
            err.with_hint("send one statement at a time: split the query at ; first")
        } else {
            err
        })
    }

    fn group_name(&mut self) -> Result<String> {
        match &self.peek().tok {
            Tok::Word(name) | Tok::Quoted(name) => {
                let name = name.clone();
                self.advance();
                Ok(name)
            }
            _ => Err(self.unexpected("an availability group name")),
        }
    }

    fn database_name(&mut self) -> Result<String> {
        let name = match &self.peek().tok {
            Tok::Word(name) => name.to_lowercase(),
            Tok::Quoted(name) => name.clone(),
            _ => return Err(self.unexpected("a database name")),
        };
        self.advance();
        Ok(name)
    }

    /// A non-empty `'string'` (`what` is "a replica name", …), with its position.
    fn name_literal(&mut self, what: &str) -> Result<(String, usize)> {
        let Token { tok, pos } = self.peek().clone();
        match tok {
            Tok::Str(name) if !name.is_empty() => {
                self.advance();
                Ok((name, pos))
            }
            _ => Err(self.unexpected(&format!("{what} in 'single quotes'"))),
        }
    }

    fn statement(&mut self) -> Result<AgStatement> {
        if self.eat_keyword("CREATE") {
            if self.eat_keyword("CLUSTER") {
                return Ok(AgStatement::CreateCluster);
            }
            self.keyword("AVAILABILITY")?;
            self.keyword("GROUP")?;
            self.create_group()
        } else if self.eat_keyword("DROP") {
            self.keyword("AVAILABILITY")?;
            self.keyword("GROUP")?;
            Ok(AgStatement::DropGroup {
                group: self.group_name()?,
            })
        } else if self.eat_keyword("ALTER") {
            if self.eat_keyword("CLUSTER") {
                self.alter_cluster()
            } else if self.eat_keyword("DATABASE") {
                self.alter_database()
            } else if self.eat_keyword("AVAILABILITY") {
                self.keyword("GROUP")?;
                self.alter_group()
            } else {
                Err(self.unexpected("AVAILABILITY GROUP or DATABASE"))
            }
        } else {
            Err(self.unexpected("CREATE, ALTER or DROP AVAILABILITY GROUP"))
        }
    }

    fn alter_cluster(&mut self) -> Result<AgStatement> {
        const SHAPE: &str =
            "ALTER CLUSTER ADD NODE 'name' WITH (ENDPOINT_URL = 'tcp://host:port'[, VOTE = OFF]) \
                             or ALTER CLUSTER REMOVE NODE 'name'";
        const PARTNER: &str = "ALTER CLUSTER ADD PARTNER SERVER 'name' WITH (ENDPOINT_URL = 'tcp://host:port[, tcp://host:port]')";
        if self.eat_keyword("SET") {
            self.punct(Tok::LParen)?;
            self.keyword("SERVER_NAME")?;
            self.punct(Tok::Equals)?;
            let (name, _) = self.name_literal("a server name")?;
            self.punct(Tok::RParen)?;
            return Ok(AgStatement::SetServerName { name });
        }
        if self.is_keyword("ADD") && self.peek_keyword(1, "PARTNER") {
            self.advance();
            self.advance();
            self.keyword("SERVER").map_err(|e| e.with_hint(PARTNER))?;
            let (server, _) = self.name_literal("a server name")?;
            self.keyword("WITH").map_err(|e| e.with_hint(PARTNER))?;
            self.punct(Tok::LParen)?;
            self.keyword("ENDPOINT_URL")
                .map_err(|e| e.with_hint(PARTNER))?;
            self.punct(Tok::Equals)?;
            let Token { tok, pos } = self.peek().clone();
            let Tok::Str(list) = tok else {
                return Err(
                    self.unexpected("'tcp://host:port[, tcp://host:port]' for ENDPOINT_URL")
                );
            };
            let mut endpoint_urls = Vec::new();
            for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                if let Err(why) = parse_tcp_url(url) {
                    return Err(AgParseError::new(
                        format!("expected 'tcp://host:port' in ENDPOINT_URL, found '{url}': {why}"),
                        pos,
                    )
                    .with_hint(PARTNER));
                }
                endpoint_urls.push(url.to_string());
            }
            if endpoint_urls.is_empty() {
                return Err(
                    AgParseError::new("ENDPOINT_URL lists no address", pos).with_hint(PARTNER)
                );
            }
            self.advance();
            self.punct(Tok::RParen)?;
            return Ok(AgStatement::AddPartner {
                server,
                endpoint_urls,
            });
        }
        if self.is_keyword("REMOVE") && self.peek_keyword(1, "PARTNER") {
            self.advance();
            self.advance();
            self.keyword("SERVER")?;
            let (server, _) = self.name_literal("a server name")?;
            return Ok(AgStatement::RemovePartner { server });
        }
        if self.eat_keyword("ADD") {
            self.keyword("NODE").map_err(|e| e.with_hint(SHAPE))?;
            let (name, _) = self.name_literal("a node name")?;
            self.keyword("WITH").map_err(|e| e.with_hint(SHAPE))?;
            self.punct(Tok::LParen)?;
            self.keyword("ENDPOINT_URL")
                .map_err(|e| e.with_hint(SHAPE))?;
            let endpoint_url = self.equals_url("ENDPOINT_URL")?;
            let mut voter = true;
            if self.eat(&Tok::Comma) {
                self.keyword("VOTE").map_err(|e| e.with_hint(SHAPE))?;
                self.punct(Tok::Equals)?;
                voter = if self.eat_keyword("ON") {
                    true
                } else if self.eat_keyword("OFF") {
                    false
                } else {
                    return Err(self.unexpected("ON or OFF for VOTE"));
                };
            }
            self.punct(Tok::RParen)?;
            Ok(AgStatement::AddClusterNode {
                name,
                endpoint_url,
                voter,
            })
        } else if self.eat_keyword("REMOVE") {
            self.keyword("NODE").map_err(|e| e.with_hint(SHAPE))?;
            let (name, _) = self.name_literal("a node name")?;
            Ok(AgStatement::RemoveClusterNode { name })
        } else {
            Err(self.unexpected("ADD NODE or REMOVE NODE").with_hint(SHAPE))
        }
    }

    fn create_group(&mut self) -> Result<AgStatement> {
        let name = self.group_name()?;
        let mut options = GroupOptions::default();
        if self.eat_keyword("WITH") {
            self.options("group", GROUP_OPTIONS, &mut options)?;
        }
        self.keyword("FOR").map_err(|e| e.with_hint(CREATE_SHAPE))?;
        let databases = if self.eat_keyword("DATABASE") {
            self.databases()?
        } else {
            Vec::new()
        };
        if !self.eat_keyword("REPLICA") {
            return Err(self.unexpected("REPLICA ON").with_hint(format!(
                "an availability group needs at least one replica; {CREATE_SHAPE}"
            )));
        }
        self.keyword("ON")?;
        let mut replicas: Vec<ReplicaSpec> = Vec::new();
        loop {
            let pos = self.peek().pos;
            let replica = self.new_replica()?;
            if replicas.len() == MAX_REPLICAS {
                return Err(AgParseError::new(
                    format!(
                        "expected at most {MAX_REPLICAS} replicas (a primary and eight \
                         secondaries), found another: '{}'",
                        replica.name
                    ),
                    pos,
                ));
            }
            if replicas
                .iter()
                .any(|r| same_replica(&r.name, &replica.name))
            {
                return Err(AgParseError::new(
                    format!("replica '{}' is listed twice", replica.name),
                    pos,
                )
                .with_hint("each server instance hosts at most one replica of a group"));
            }
            replicas.push(replica);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        let listener = if self.eat_keyword("LISTENER") {
            Some(self.listener()?)
        } else {
            None
        };
        if let Some((unknown, pos)) = self
            .routed
            .iter()
            .find(|(r, _)| !replicas.iter().any(|s| same_replica(&s.name, r)))
        {
            return Err(AgParseError::new(
                format!(
                    "READ_ONLY_ROUTING_LIST names '{unknown}', which is not a replica of {name}"
                ),
                *pos,
            )
            .with_hint("route only to replicas listed in REPLICA ON"));
        }
        Ok(AgStatement::CreateGroup(GroupSpec {
            name,
            options,
            databases,
            replicas,
            listener,
        }))
    }

    fn alter_group(&mut self) -> Result<AgStatement> {
        let group = self.group_name()?;
        if self.eat_keyword("JOIN") {
            let mut cluster_type = None;
            if self.eat_keyword("WITH") {
                self.options("JOIN", JOIN_OPTIONS, &mut cluster_type)?;
            }
            Ok(AgStatement::Join {
                group,
                cluster_type,
            })
        } else if self.eat_keyword("ADD") {
            if self.eat_keyword("DATABASE") {
                Ok(AgStatement::AddDatabases {
                    group,
                    databases: self.databases()?,
                })
            } else if self.eat_keyword("REPLICA") {
                self.keyword("ON")?;
                let replica = self.new_replica()?;
                if self.peek().tok == Tok::Comma {
                    return Err(self
                        .unexpected("end of statement")
                        .with_hint("ADD REPLICA adds one replica per statement"));
                }
                Ok(AgStatement::AddReplica { group, replica })
            } else if self.eat_keyword("LISTENER") {
                Ok(AgStatement::AddListener {
                    group,
                    listener: self.listener()?,
                })
            } else {
                Err(self.unexpected("DATABASE, REPLICA ON or LISTENER"))
            }
        } else if self.eat_keyword("REMOVE") {
            if self.eat_keyword("DATABASE") {
                Ok(AgStatement::RemoveDatabase {
                    group,
                    database: self.database_name()?,
                })
            } else if self.eat_keyword("REPLICA") {
                self.keyword("ON")?;
                let (replica, _) = self.name_literal("a replica name")?;
                Ok(AgStatement::RemoveReplica { group, replica })
            } else {
                Err(self.unexpected("DATABASE or REPLICA ON"))
            }
        } else if self.eat_keyword("MODIFY") {
            self.keyword("REPLICA")?;
            self.keyword("ON")?;
            let (replica, _) = self.name_literal("a replica name")?;
            self.keyword("WITH")?;
            let mut options = ReplicaOptions::default();
            self.options("replica", REPLICA_OPTIONS, &mut options)?;
            Ok(AgStatement::ModifyReplica {
                group,
                replica,
                options,
            })
        } else if self.eat_keyword("SET") {
            let mut options = GroupOptions::default();
            self.options("group", GROUP_OPTIONS, &mut options)?;
            Ok(AgStatement::SetGroupOptions { group, options })
        } else if self.eat_keyword("FAILOVER") {
            Ok(AgStatement::Failover { group })
        } else if self.eat_keyword("FORCE_FAILOVER_ALLOW_DATA_LOSS") {
            Ok(AgStatement::ForceFailover { group })
        } else {
            Err(self
                .unexpected("an ALTER AVAILABILITY GROUP action")
                .with_hint(ALTER_ACTIONS))
        }
    }

    fn alter_database(&mut self) -> Result<AgStatement> {
        let database = self.database_name()?;
        if self.eat_keyword("FAILOVER") {
            return Ok(AgStatement::GeoFailover { database });
        }
        if self.eat_keyword("FORCE_FAILOVER_ALLOW_DATA_LOSS") {
            return Ok(AgStatement::GeoForceFailover { database });
        }
        if self.eat_keyword("ADD") {
            self.keyword("SECONDARY")?;
            self.keyword("ON")?;
            self.keyword("SERVER")?;
            let (server, _) = self.name_literal("a server name")?;
            let mut allow_connections = None;
            let mut database_name = None;
            if self.eat_keyword("WITH") {
                self.punct(Tok::LParen)?;
                loop {
                    if self.eat_keyword("ALLOW_CONNECTIONS") {
                        self.punct(Tok::Equals)?;
                        allow_connections = Some(if self.eat_keyword("ALL") {
                            SecondaryConnections::All
                        } else if self.eat_keyword("NO") {
                            SecondaryConnections::No
                        } else {
                            return Err(self.unexpected("ALL or NO for ALLOW_CONNECTIONS"));
                        });
                    } else if self.eat_keyword("DATABASE_NAME") {
                        self.punct(Tok::Equals)?;
                        database_name = Some(self.name_literal("a database name")?.0);
                    } else {
                        return Err(self.unexpected("ALLOW_CONNECTIONS or DATABASE_NAME"));
                    }
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.punct(Tok::RParen)?;
            }
            return Ok(AgStatement::AddGeoSecondary {
                database,
                server,
                allow_connections,
                database_name,
            });
        }
        if self.eat_keyword("REMOVE") {
            self.keyword("SECONDARY")?;
            self.keyword("ON")?;
            self.keyword("SERVER")?;
            let (server, _) = self.name_literal("a server name")?;
            let mut forced = false;
            if self.eat_keyword("WITH") {
                self.punct(Tok::LParen)?;
                self.keyword("TERMINATION")?;
                self.punct(Tok::Equals)?;
                forced = if self.eat_keyword("FORCED") {
                    true
                } else if self.eat_keyword("PLANNED") {
                    false
                } else {
                    return Err(self.unexpected("PLANNED or FORCED for TERMINATION"));
                };
                self.punct(Tok::RParen)?;
            }
            return Ok(AgStatement::RemoveGeoSecondary {
                database,
                server,
                forced,
            });
        }
        self.keyword("SET")?;
        if self.is_keyword("READ_ONLY") || self.is_keyword("READ_WRITE") {
            let read_only = self.eat_keyword("READ_ONLY");
            if !read_only {
                self.keyword("READ_WRITE")?;
            }
            let mut open_transactions = OpenTransactions::Wait;
            if self.eat_keyword("WITH") {
                open_transactions = if self.eat_keyword("ROLLBACK") {
                    self.keyword("IMMEDIATE")?;
                    OpenTransactions::RollbackImmediate
                } else if self.eat_keyword("NO_WAIT") {
                    OpenTransactions::NoWait
                } else {
                    return Err(self.unexpected("ROLLBACK IMMEDIATE or NO_WAIT"));
                };
            }
            return Ok(AgStatement::SetReadOnly {
                database,
                read_only,
                open_transactions,
            });
        }
        if self.eat_keyword("GEO_MAX_LAG") {
            self.punct(Tok::Equals)?;
            if self.eat_keyword("OFF") {
                return Ok(AgStatement::SetGeoMaxLag {
                    database,
                    seconds: None,
                });
            }
            let seconds = self.number_in("GEO_MAX_LAG", 1..=86_400u32, "1 to 86400 seconds")?;
            self.keyword("SECONDS")?;
            return Ok(AgStatement::SetGeoMaxLag {
                database,
                seconds: Some(seconds),
            });
        }
        self.keyword("HADR")?;
        if self.eat_keyword("SUSPEND") {
            Ok(AgStatement::SuspendDatabase { database })
        } else if self.eat_keyword("RESUME") {
            Ok(AgStatement::ResumeDatabase { database })
        } else if self.eat_keyword("OFF") {
            Ok(AgStatement::RemoveDatabaseFromHadr { database })
        } else if self.eat_keyword("AVAILABILITY") {
            self.keyword("GROUP")?;
            self.punct(Tok::Equals)?;
            Ok(AgStatement::JoinDatabase {
                database,
                group: self.group_name()?,
            })
        } else {
            Err(self.unexpected("SUSPEND, RESUME, OFF or AVAILABILITY GROUP = name"))
        }
    }

    fn databases(&mut self) -> Result<Vec<String>> {
        let mut databases: Vec<String> = Vec::new();
        loop {
            let pos = self.peek().pos;
            let database = self.database_name()?;
            if databases.contains(&database) {
                return Err(AgParseError::new(
                    format!("database {database} is listed twice"),
                    pos,
                ));
            }
            databases.push(database);
            if !self.eat(&Tok::Comma) {
                return Ok(databases);
            }
        }
    }

    fn new_replica(&mut self) -> Result<ReplicaSpec> {
        let (name, pos) = self.name_literal("a replica name")?;
        self.keyword("WITH")?;
        let mut options = ReplicaOptions::default();
        self.options("replica", REPLICA_OPTIONS, &mut options)?;
        let required = [
            ("ENDPOINT_URL", options.endpoint_url.is_some()),
            ("AVAILABILITY_MODE", options.availability_mode.is_some()),
            ("FAILOVER_MODE", options.failover_mode.is_some()),
        ];
        if let Some((missing, _)) = required.iter().find(|(_, given)| !given) {
            return Err(
                AgParseError::new(format!("replica '{name}' has no {missing}"), pos)
                    .with_hint(NEW_REPLICA_SHAPE),
            );
        }
        Ok(ReplicaSpec { name, options })
    }

    fn listener(&mut self) -> Result<ListenerSpec> {
        let (name, pos) = self.name_literal("a listener name")?;
        let mut ports = (None, None);
        self.options("LISTENER", LISTENER_OPTIONS, &mut ports)?;
        let (port, read_only_port) = ports;
        let port = port.ok_or_else(|| {
            AgParseError::new(format!("listener '{name}' has no PORT"), pos)
                .with_hint("availdb has no default listener port: add PORT = 5432 (or another)")
        })?;
        if read_only_port == Some(port) {
            return Err(AgParseError::new(
                format!("listener '{name}' has READ_ONLY_PORT equal to PORT"),
                pos,
            )
            .with_hint("use another port for read-intent sessions (the default is PORT + 1)"));
        }
        Ok(ListenerSpec {
            name,
            port,
            read_only_port,
        })
    }

    /// `WITH IP ((…), …)` or `WITH DHCP [ON (…)]`, after `WITH`: checked for
    /// shape only.
    fn listener_addresses(&mut self) -> Result<()> {
        if self.eat_keyword("IP") {
            self.punct(Tok::LParen)?;
            loop {
                self.punct(Tok::LParen)?;
                self.name_literal("an IP address")?;
                if self.eat(&Tok::Comma) {
                    self.name_literal("a subnet mask")?;
                }
                self.punct(Tok::RParen)?;
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
            self.punct(Tok::RParen)
        } else if self.eat_keyword("DHCP") {
            if self.eat_keyword("ON") {
                self.punct(Tok::LParen)?;
                self.name_literal("an IP address")?;
                self.punct(Tok::Comma)?;
                self.name_literal("a subnet mask")?;
                self.punct(Tok::RParen)?;
            }
            Ok(())
        } else {
            Err(self.unexpected("IP or DHCP"))
        }
    }

    /// `( name … {, name …} )`: each option from `table` at most once.
    fn options<T>(
        &mut self,
        kind: &str,
        table: &[(&'static str, Setter<T>)],
        target: &mut T,
    ) -> Result<()> {
        self.punct(Tok::LParen)?;
        let mut seen: Vec<&str> = Vec::new();
        loop {
            let pos = self.peek().pos;
            let entry = match &self.peek().tok {
                Tok::Word(w) => table.iter().find(|(name, _)| name.eq_ignore_ascii_case(w)),
                _ => None,
            };
            let Some(&(name, set)) = entry else {
                let known: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
                return Err(self
                    .unexpected(&format!("a {kind} option"))
                    .with_hint(format!("known {kind} options: {}", known.join(", "))));
            };
            if seen.contains(&name) {
                return Err(AgParseError::new(format!("{name} is given twice"), pos)
                    .with_hint("give each option once"));
            }
            seen.push(name);
            self.advance();
            set(self, target, name)?;
            if !self.eat(&Tok::Comma) {
                return self.punct(Tok::RParen);
            }
        }
    }

    fn equals_number<T>(&mut self, option: &str, range: RangeInclusive<T>, rule: &str) -> Result<T>
    where
        T: TryFrom<u64> + PartialOrd,
    {
        self.punct(Tok::Equals)?;
        self.number_in(option, range, rule)
    }

    /// A number in `range` (the `=` already read); `rule` says the range.
    fn number_in<T>(&mut self, option: &str, range: RangeInclusive<T>, rule: &str) -> Result<T>
    where
        T: TryFrom<u64> + PartialOrd,
    {
        let Token { tok, pos } = self.peek().clone();
        let Tok::Number(digits) = tok else {
            return Err(self.unexpected(&format!("a number for {option}")));
        };
        let value = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                AgParseError::new(format!("{option} must be {rule}, found {digits}"), pos)
            })?;
        self.advance();
        Ok(value)
    }

    fn equals_choice<T: Choice>(&mut self, option: &str) -> Result<T> {
        self.punct(Tok::Equals)?;
        let value = match &self.peek().tok {
            Tok::Word(w) => T::KEYWORDS
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(w))
                .map(|&(_, v)| v),
            _ => None,
        };
        match value {
            Some(value) => {
                self.advance();
                Ok(value)
            }
            None => {
                let keywords: Vec<&str> = T::KEYWORDS.iter().map(|(k, _)| *k).collect();
                let (last, rest) = keywords.split_last().expect("a choice has keywords");
                let hint = if rest.is_empty() {
                    format!("{option} must be {last}")
                } else {
                    format!("{option} must be {} or {last}", rest.join(", "))
                };
                Err(self
                    .unexpected(&format!("a value for {option}"))
                    .with_hint(hint))
            }
        }
    }

    fn equals_url(&mut self, option: &str) -> Result<String> {
        self.punct(Tok::Equals)?;
        let Token { tok, pos } = self.peek().clone();
        let Tok::Str(url) = tok else {
            return Err(self.unexpected(&format!("'tcp://host:port' for {option}")));
        };
        if let Err(why) = parse_tcp_url(&url) {
            return Err(AgParseError::new(
                format!("expected 'tcp://host:port' for {option}, found '{url}': {why}"),
                pos,
            )
            .with_hint(format!("for example {option} = 'tcp://10.0.0.5:5022'")));
        }
        self.advance();
        Ok(url)
    }

    fn equals_routing_list(&mut self) -> Result<Vec<Vec<String>>> {
        self.punct(Tok::Equals)?;
        if self.eat_keyword("NONE") {
            return Ok(Vec::new());
        }
        self.punct(Tok::LParen)
            .map_err(|e| e.with_hint(ROUTING_LIST_SHAPE))?;
        let first = self.routed.len();
        let mut list = Vec::new();
        loop {
            if self.eat(&Tok::LParen) {
                let mut set = vec![self.routed_replica(first)?];
                while self.eat(&Tok::Comma) {
                    set.push(self.routed_replica(first)?);
                }
                self.punct(Tok::RParen)?;
                list.push(set);
            } else {
                list.push(vec![self.routed_replica(first)?]);
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.punct(Tok::RParen)?;
        Ok(list)
    }

    /// One name in the routing list whose names start at `self.routed[first]`.
    fn routed_replica(&mut self, first: usize) -> Result<String> {
        let (name, pos) = self
            .name_literal("a replica name")
            .map_err(|e| e.with_hint(ROUTING_LIST_SHAPE))?;
        if self.routed[first..]
            .iter()
            .any(|(r, _)| same_replica(r, &name))
        {
            return Err(AgParseError::new(
                format!("replica '{name}' appears twice in READ_ONLY_ROUTING_LIST"),
                pos,
            ));
        }
        self.routed.push((name.clone(), pos));
        Ok(name)
    }
}

/// Replica (server instance) names compare case-insensitively, as in SQL
/// Server.
fn same_replica(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(sql: &str) -> AgStatement {
        parse(sql).unwrap_or_else(|e| panic!("{sql}\n{e}"))
    }

    /// A replica with just the options a new replica must have.
    fn replica(name: &str, port: u16) -> ReplicaSpec {
        ReplicaSpec {
            name: name.into(),
            options: ReplicaOptions {
                endpoint_url: Some(format!("tcp://127.0.0.1:{port}")),
                availability_mode: Some(AvailabilityMode::SynchronousCommit),
                failover_mode: Some(FailoverMode::Automatic),
                ..ReplicaOptions::default()
            },
        }
    }

    fn replica_sql(name: &str, port: u16) -> String {
        format!(
            "'{name}' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{port}', \
             AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC)"
        )
    }

    fn group(name: &str, databases: &[&str], replicas: Vec<ReplicaSpec>) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            options: GroupOptions::default(),
            databases: databases.iter().map(|d| d.to_string()).collect(),
            replicas,
            listener: None,
        }
    }

    fn names(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|set| set.iter().map(|r| r.to_string()).collect())
            .collect()
    }

    #[test]
    fn cluster_statements_parse_and_say_what_is_accepted() {
        assert_eq!(parsed("create cluster;"), AgStatement::CreateCluster);
        assert_eq!(
            parsed("ALTER CLUSTER ADD NODE 'w1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7010')"),
            AgStatement::AddClusterNode {
                name: "w1".into(),
                endpoint_url: "tcp://127.0.0.1:7010".into(),
                voter: true,
            }
        );
        assert_eq!(
            parsed("ALTER CLUSTER ADD NODE 'l1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7011', VOTE = OFF)"),
            AgStatement::AddClusterNode {
                name: "l1".into(),
                endpoint_url: "tcp://127.0.0.1:7011".into(),
                voter: false,
            }
        );
        assert_eq!(
            parsed("alter cluster remove node 'w1'"),
            AgStatement::RemoveClusterNode { name: "w1".into() }
        );
        assert!(is_ag_statement("ALTER CLUSTER ADD NODE"));
        assert!(is_ag_statement("create cluster"));
        for bad in [
            "ALTER CLUSTER ADD NODE w1",
            "ALTER CLUSTER ADD NODE 'w1'",
            "ALTER CLUSTER ADD NODE 'w1' WITH (ENDPOINT_URL = 'http://x:1')",
            "ALTER CLUSTER DROP NODE 'w1'",
            "CREATE CLUSTER c1",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(!e.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn geo_replication_statements_parse_and_route_here() {
        assert_eq!(
            parsed("ALTER CLUSTER SET (SERVER_NAME = 'A')"),
            AgStatement::SetServerName { name: "A".into() }
        );
        assert_eq!(
            parsed("ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = 'tcp://10.0.0.2:7001, tcp://10.0.0.3:7001')"),
            AgStatement::AddPartner {
                server: "B".into(),
                endpoint_urls: vec!["tcp://10.0.0.2:7001".into(), "tcp://10.0.0.3:7001".into()],
            }
        );
        assert_eq!(
            parsed("alter cluster remove partner server 'B'"),
            AgStatement::RemovePartner { server: "B".into() }
        );
        assert_eq!(
            parsed("ALTER DATABASE app ADD SECONDARY ON SERVER 'B' WITH (ALLOW_CONNECTIONS = NO, DATABASE_NAME = 'app2')"),
            AgStatement::AddGeoSecondary {
                database: "app".into(),
                server: "B".into(),
                allow_connections: Some(SecondaryConnections::No),
                database_name: Some("app2".into()),
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app ADD SECONDARY ON SERVER 'B'"),
            AgStatement::AddGeoSecondary {
                database: "app".into(),
                server: "B".into(),
                allow_connections: None,
                database_name: None,
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app REMOVE SECONDARY ON SERVER 'B' WITH (TERMINATION = FORCED)"),
            AgStatement::RemoveGeoSecondary {
                database: "app".into(),
                server: "B".into(),
                forced: true
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app REMOVE SECONDARY ON SERVER 'B'"),
            AgStatement::RemoveGeoSecondary {
                database: "app".into(),
                server: "B".into(),
                forced: false
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app FAILOVER"),
            AgStatement::GeoFailover {
                database: "app".into()
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app FORCE_FAILOVER_ALLOW_DATA_LOSS"),
            AgStatement::GeoForceFailover {
                database: "app".into()
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app SET READ_ONLY WITH ROLLBACK IMMEDIATE"),
            AgStatement::SetReadOnly {
                database: "app".into(),
                read_only: true,
                open_transactions: OpenTransactions::RollbackImmediate
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app SET READ_WRITE WITH NO_WAIT"),
            AgStatement::SetReadOnly {
                database: "app".into(),
                read_only: false,
                open_transactions: OpenTransactions::NoWait
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app SET READ_ONLY"),
            AgStatement::SetReadOnly {
                database: "app".into(),
                read_only: true,
                open_transactions: OpenTransactions::Wait
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app SET GEO_MAX_LAG = 5 SECONDS"),
            AgStatement::SetGeoMaxLag {
                database: "app".into(),
                seconds: Some(5)
            }
        );
        assert_eq!(
            parsed("ALTER DATABASE app SET GEO_MAX_LAG = OFF"),
            AgStatement::SetGeoMaxLag {
                database: "app".into(),
                seconds: None
            }
        );
        for routed in [
            "ALTER DATABASE app SET READ_ONLY",
            "alter database app set read_write",
            "ALTER DATABASE app ADD SECONDARY ON SERVER 'B'",
            "ALTER DATABASE app FAILOVER",
            "ALTER DATABASE app SET GEO_MAX_LAG = 5 SECONDS",
            "ALTER CLUSTER ADD PARTNER SERVER 'B'",
        ] {
            assert!(is_ag_statement(routed), "{routed}");
        }
        assert!(!is_ag_statement("ALTER DATABASE app RENAME TO x"));
        for bad in [
            "ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = 'http://x:1')",
            "ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = '')",
            "ALTER DATABASE app ADD SECONDARY ON SERVER B",
            "ALTER DATABASE app ADD SECONDARY ON SERVER 'B' WITH (ALLOW_CONNECTIONS = READ_ONLY)",
            "ALTER DATABASE app REMOVE SECONDARY ON SERVER 'B' WITH (TERMINATION = LATER)",
            "ALTER DATABASE app SET GEO_MAX_LAG = 0 SECONDS",
            "ALTER DATABASE app SET GEO_MAX_LAG = 5",
            "ALTER DATABASE app SET READ_ONLY WITH ROLLBACK",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(!e.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn every_statement_form_parses() {
        let r1 = replica_sql("r1", 7001);
        let g = || "ag1".to_string();
        let listener = |port| ListenerSpec {
            name: "ag1-listener".into(),
            port,
            read_only_port: None,
        };
        let cases: Vec<(String, AgStatement)> = vec![
            (
                format!("CREATE AVAILABILITY GROUP ag1 FOR DATABASE app, billing REPLICA ON {r1};"),
                AgStatement::CreateGroup(group(
                    "ag1",
                    &["app", "billing"],
                    vec![replica("r1", 7001)],
                )),
            ),
            (
                format!("CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON {r1}"),
                AgStatement::CreateGroup(group("ag1", &[], vec![replica("r1", 7001)])),
            ),
            (
                format!(
                    "CREATE AVAILABILITY GROUP ag1 WITH (CLUSTER_TYPE = NONE) FOR REPLICA ON {r1} \
                     LISTENER 'ag1-listener' (PORT = 5432)"
                ),
                AgStatement::CreateGroup(GroupSpec {
                    options: GroupOptions {
                        cluster_type: Some(ClusterType::None),
                        ..GroupOptions::default()
                    },
                    listener: Some(listener(5432)),
                    ..group("ag1", &[], vec![replica("r1", 7001)])
                }),
            ),
            (
                format!(
                    "CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON {r1} LISTENER 'ag1-listener' \
                     (WITH IP ((N'127.0.0.1', N'255.0.0.0'), ('::1')), PORT = 6432)"
                ),
                AgStatement::CreateGroup(GroupSpec {
                    listener: Some(listener(6432)),
                    ..group("ag1", &[], vec![replica("r1", 7001)])
                }),
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 JOIN".into(),
                AgStatement::Join { group: g(), cluster_type: None },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 JOIN WITH (CLUSTER_TYPE = EXTERNAL);".into(),
                AgStatement::Join { group: g(), cluster_type: Some(ClusterType::External) },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD DATABASE app".into(),
                AgStatement::AddDatabases { group: g(), databases: vec!["app".into()] },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD DATABASE app, other;".into(),
                AgStatement::AddDatabases {
                    group: g(),
                    databases: vec!["app".into(), "other".into()],
                },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE DATABASE app".into(),
                AgStatement::RemoveDatabase { group: g(), database: "app".into() },
            ),
            (
                format!("ALTER AVAILABILITY GROUP ag1 ADD REPLICA ON {}", replica_sql("r4", 7004)),
                AgStatement::AddReplica { group: g(), replica: replica("r4", 7004) },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE REPLICA ON 'r4'".into(),
                AgStatement::RemoveReplica { group: g(), replica: "r4".into() },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' \
                 WITH (AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT)"
                    .into(),
                AgStatement::ModifyReplica {
                    group: g(),
                    replica: "r2".into(),
                    options: ReplicaOptions {
                        availability_mode: Some(AvailabilityMode::AsynchronousCommit),
                        ..ReplicaOptions::default()
                    },
                },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' WITH (FAILOVER_MODE = MANUAL, \
                 SECONDARY_ROLE (ALLOW_CONNECTIONS = NO), SESSION_TIMEOUT = 5)"
                    .into(),
                AgStatement::ModifyReplica {
                    group: g(),
                    replica: "r2".into(),
                    options: ReplicaOptions {
                        failover_mode: Some(FailoverMode::Manual),
                        secondary_allow_connections: Some(SecondaryConnections::No),
                        session_timeout_s: Some(5),
                        ..ReplicaOptions::default()
                    },
                },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 2)"
                    .into(),
                AgStatement::SetGroupOptions {
                    group: g(),
                    options: GroupOptions {
                        required_synchronized_secondaries_to_commit: Some(2),
                        ..GroupOptions::default()
                    },
                },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 4, \
                 HEALTH_CHECK_TIMEOUT = 15000, DB_FAILOVER = OFF)"
                    .into(),
                AgStatement::SetGroupOptions {
                    group: g(),
                    options: GroupOptions {
                        failure_condition_level: Some(4),
                        health_check_timeout_ms: Some(15000),
                        db_failover: Some(false),
                        ..GroupOptions::default()
                    },
                },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 FAILOVER;".into(),
                AgStatement::Failover { group: g() },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 FORCE_FAILOVER_ALLOW_DATA_LOSS".into(),
                AgStatement::ForceFailover { group: g() },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'ag1-listener' (PORT = 5432)".into(),
                AgStatement::AddListener { group: g(), listener: listener(5432) },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'ag1-listener' \
                 (WITH DHCP ON ('10.0.0.0', '255.0.0.0'), PORT = 5433)"
                    .into(),
                AgStatement::AddListener { group: g(), listener: listener(5433) },
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (PORT = 5432, READ_ONLY_PORT = 6543)"
                    .into(),
                AgStatement::AddListener {
                    group: g(),
                    listener: ListenerSpec {
                        name: "l".into(),
                        port: 5432,
                        read_only_port: Some(6543),
                    },
                },
            ),
            ("DROP AVAILABILITY GROUP ag1;".into(), AgStatement::DropGroup { group: g() }),
            (
                "ALTER DATABASE app SET HADR SUSPEND".into(),
                AgStatement::SuspendDatabase { database: "app".into() },
            ),
            (
                "ALTER DATABASE app SET HADR RESUME;".into(),
                AgStatement::ResumeDatabase { database: "app".into() },
            ),
            (
                "ALTER DATABASE app SET HADR AVAILABILITY GROUP = ag1".into(),
                AgStatement::JoinDatabase { database: "app".into(), group: g() },
            ),
            (
                "ALTER DATABASE app SET HADR OFF".into(),
                AgStatement::RemoveDatabaseFromHadr { database: "app".into() },
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(parsed(&sql), want, "{sql}");
        }
    }

    #[test]
    fn full_create_with_three_replicas_and_every_option() {
        let sql = "
            -- the whole surface in one statement
            CREATE AVAILABILITY GROUP ag1
              WITH (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 1, CLUSTER_TYPE = EXTERNAL,
                    FAILURE_CONDITION_LEVEL = 3, HEALTH_CHECK_TIMEOUT = 30000, DB_FAILOVER = ON,
                    AUTOMATED_BACKUP_PREFERENCE = SECONDARY_ONLY)
              FOR DATABASE app, billing
              REPLICA ON
                'r1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7001',
                           AVAILABILITY_MODE = SYNCHRONOUS_COMMIT,
                           FAILOVER_MODE = AUTOMATIC,
                           SEEDING_MODE = AUTOMATIC,
                           SESSION_TIMEOUT = 10,
                           BACKUP_PRIORITY = 50,
                           PRIMARY_ROLE (ALLOW_CONNECTIONS = READ_WRITE,
                                         READ_ONLY_ROUTING_LIST = (('r2', 'r3'), 'r1')),
                           SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_ONLY,
                                           READ_ONLY_ROUTING_URL = 'tcp://127.0.0.1:5433')),
                'r2' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7002',
                           AVAILABILITY_MODE = SYNCHRONOUS_COMMIT,
                           FAILOVER_MODE = AUTOMATIC,
                           SEEDING_MODE = MANUAL,
                           BACKUP_PRIORITY = 100,
                           PRIMARY_ROLE (ALLOW_CONNECTIONS = ALL,
                                         READ_ONLY_ROUTING_LIST = ('r3', 'r1')),
                           SECONDARY_ROLE (ALLOW_CONNECTIONS = ALL,
                                           READ_ONLY_ROUTING_URL = 'tcp://127.0.0.1:5434')),
                'r3' WITH (ENDPOINT_URL = 'TCP://[::1]:7003',
                           AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT,
                           FAILOVER_MODE = MANUAL,
                           BACKUP_PRIORITY = 0,
                           PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = NONE),
                           SECONDARY_ROLE (ALLOW_CONNECTIONS = NO))
              LISTENER 'ag1-listener' (WITH IP ((N'127.0.0.1', N'255.0.0.0')), PORT = 5432);";
        let want = GroupSpec {
            name: "ag1".into(),
            options: GroupOptions {
                required_synchronized_secondaries_to_commit: Some(1),
                cluster_type: Some(ClusterType::External),
                failure_condition_level: Some(3),
                health_check_timeout_ms: Some(30000),
                db_failover: Some(true),
                automated_backup_preference: Some(BackupPreference::SecondaryOnly),
            },
            databases: vec!["app".into(), "billing".into()],
            replicas: vec![
                ReplicaSpec {
                    name: "r1".into(),
                    options: ReplicaOptions {
                        seeding_mode: Some(SeedingMode::Automatic),
                        session_timeout_s: Some(10),
                        backup_priority: Some(50),
                        primary_allow_connections: Some(PrimaryConnections::ReadWrite),
                        read_only_routing_list: Some(names(&[&["r2", "r3"], &["r1"]])),
                        secondary_allow_connections: Some(SecondaryConnections::ReadOnly),
                        read_only_routing_url: Some("tcp://127.0.0.1:5433".into()),
                        ..replica("r1", 7001).options
                    },
                },
                ReplicaSpec {
                    name: "r2".into(),
                    options: ReplicaOptions {
                        seeding_mode: Some(SeedingMode::Manual),
                        backup_priority: Some(100),
                        primary_allow_connections: Some(PrimaryConnections::All),
                        read_only_routing_list: Some(names(&[&["r3"], &["r1"]])),
                        secondary_allow_connections: Some(SecondaryConnections::All),
                        read_only_routing_url: Some("tcp://127.0.0.1:5434".into()),
                        ..replica("r2", 7002).options
                    },
                },
                ReplicaSpec {
                    name: "r3".into(),
                    options: ReplicaOptions {
                        endpoint_url: Some("TCP://[::1]:7003".into()),
                        availability_mode: Some(AvailabilityMode::AsynchronousCommit),
                        failover_mode: Some(FailoverMode::Manual),
                        backup_priority: Some(0),
                        read_only_routing_list: Some(Vec::new()),
                        secondary_allow_connections: Some(SecondaryConnections::No),
                        ..ReplicaOptions::default()
                    },
                },
            ],
            listener: Some(ListenerSpec {
                name: "ag1-listener".into(),
                port: 5432,
                read_only_port: None,
            }),
        };
        assert_eq!(parsed(sql), AgStatement::CreateGroup(want));
    }

    #[test]
    fn routing_lists_are_priority_ordered_sets_and_none_is_empty() {
        let cases: &[(&str, &[&[&str]])] = &[
            ("('r2', 'r3')", &[&["r2"], &["r3"]]),
            ("(('r2','r3'),'r4')", &[&["r2", "r3"], &["r4"]]),
            (
                "('r4', ('r2', 'r3'), 'r5')",
                &[&["r4"], &["r2", "r3"], &["r5"]],
            ),
            ("(('r2'))", &[&["r2"]]),
            ("NONE", &[]),
            ("none", &[]),
        ];
        for (list, want) in cases {
            let sql = format!(
                "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r1' \
                 WITH (PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = {list}))"
            );
            let AgStatement::ModifyReplica { options, .. } = parsed(&sql) else {
                panic!("{sql}: not MODIFY REPLICA");
            };
            assert_eq!(options.read_only_routing_list, Some(names(want)), "{sql}");
        }
    }

    #[test]
    fn errors_report_position_and_message() {
        let r1 = replica_sql("r1", 7001);
        let modify = "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' WITH";
        let ten: Vec<String> = (1..=10)
            .map(|i| replica_sql(&format!("r{i}"), 7000 + i))
            .collect();
        // (statement, text the error points at, part of the message)
        let cases: Vec<(String, &str, &str)> = vec![
            (
                "CREATE AVAILABILITY GROUP ag1 FOR DATABASE app;".into(),
                ";",
                "expected REPLICA ON, found end of statement",
            ),
            (
                format!("CREATE AVAILABILITY GROUP ag1 DATABASE app REPLICA ON {r1}"),
                "DATABASE",
                "expected FOR, found DATABASE",
            ),
            (
                format!("{modify} (READ_WRITE_ROUTING_URL = 'tcp://h:1')"),
                "READ_WRITE_ROUTING_URL",
                "expected a replica option, found READ_WRITE_ROUTING_URL",
            ),
            (
                format!("{modify} (SESSION_TIMEOUT = 2)"),
                "2)",
                "SESSION_TIMEOUT must be at least 5 seconds (SQL Server's minimum), found 2",
            ),
            (
                format!("{modify} (SESSION_TIMEOUT = 99999999999999999999999)"),
                "999",
                "SESSION_TIMEOUT must be at least 5 seconds (SQL Server's minimum), found 999",
            ),
            (
                format!("{modify} (ENDPOINT_URL = 'http://h:5022')"),
                "'http",
                "expected 'tcp://host:port' for ENDPOINT_URL, found 'http://h:5022': \
                 the scheme must be tcp://",
            ),
            (
                format!("{modify} (ENDPOINT_URL = 'tcp://h:0')"),
                "'tcp",
                "the port must be a number from 1 to 65535",
            ),
            (
                format!("{modify} (SECONDARY_ROLE (READ_ONLY_ROUTING_URL = 'tcp://h'))"),
                "'tcp",
                "found 'tcp://h': the :port is missing",
            ),
            (
                format!("{modify} (ENDPOINT_URL = 5022)"),
                "5022",
                "expected 'tcp://host:port' for ENDPOINT_URL, found 5022",
            ),
            (
                format!("CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON {}", ten.join(", ")),
                "'r10'",
                "expected at most 9 replicas (a primary and eight secondaries), found another",
            ),
            (
                format!(
                    "CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON {r1}, {}",
                    replica_sql("R1", 7002)
                ),
                "'R1'",
                "replica 'R1' is listed twice",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE REPLICA ON 'r4".into(),
                "'r4",
                "unterminated string literal: expected a closing ', found end of statement",
            ),
            (
                "DROP AVAILABILITY GROUP [ag1".into(),
                "[ag1",
                "unterminated bracketed identifier",
            ),
            ("DROP AVAILABILITY GROUP ag1 /* x".into(), "/*", "unterminated comment"),
            ("DROP AVAILABILITY GROUP \"\"".into(), "\"", "empty quoted identifier"),
            ("DROP AVAILABILITY GROUP []".into(), "[", "empty bracketed identifier"),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE REPLICA ON N'r4".into(),
                "N'r4",
                "unterminated string literal",
            ),
            ("DROP AVAILABILITY GROUP ag-1".into(), "-1", "unexpected character '-'"),
            (
                "ALTER AVAILABILITY GROUP ag1 FAILOVER NOW".into(),
                "NOW",
                "expected end of statement, found NOW",
            ),
            (
                "DROP AVAILABILITY GROUP ag1; DROP AVAILABILITY GROUP ag2".into(),
                "DROP AVAILABILITY GROUP ag2",
                "expected end of statement, found DROP",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 6)".into(),
                "6",
                "FAILURE_CONDITION_LEVEL must be between 1 and 5, found 6",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 0)".into(),
                "0",
                "FAILURE_CONDITION_LEVEL must be between 1 and 5, found 0",
            ),
            (
                format!("{modify} (BACKUP_PRIORITY = 101)"),
                "101",
                "BACKUP_PRIORITY must be between 0 and 100, found 101",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 9)"
                    .into(),
                "9",
                "REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT must be between 0 and 8",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (HEALTH_CHECK_TIMEOUT = ON)".into(),
                "ON",
                "expected a number for HEALTH_CHECK_TIMEOUT, found ON",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 2, \
                 failure_condition_level = 3)"
                    .into(),
                "failure_condition_level",
                "FAILURE_CONDITION_LEVEL is given twice",
            ),
            (
                format!(
                    "{modify} (PRIMARY_ROLE (ALLOW_CONNECTIONS = ALL, allow_connections = NO))"
                ),
                "allow_connections",
                "ALLOW_CONNECTIONS is given twice",
            ),
            (
                format!(
                    "{modify} (PRIMARY_ROLE (ALLOW_CONNECTIONS = ALL), \
                     primary_role (READ_ONLY_ROUTING_LIST = NONE))"
                ),
                "primary_role",
                "PRIMARY_ROLE is given twice",
            ),
            (
                format!("{modify} (AVAILABILITY_MODE = SYNC)"),
                "SYNC)",
                "expected a value for AVAILABILITY_MODE, found SYNC",
            ),
            (
                format!("{modify} (SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_WRITE))"),
                "READ_WRITE",
                "expected a value for ALLOW_CONNECTIONS, found READ_WRITE",
            ),
            (
                format!("{modify} ()"),
                ")",
                "expected a replica option, found )",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD REPLICA ON 'r4' \
                 WITH (ENDPOINT_URL = 'tcp://h:1', FAILOVER_MODE = MANUAL)"
                    .into(),
                "'r4'",
                "replica 'r4' has no AVAILABILITY_MODE",
            ),
            (
                format!(
                    "ALTER AVAILABILITY GROUP ag1 ADD REPLICA ON {}, {}",
                    replica_sql("r4", 7004),
                    replica_sql("r5", 7005)
                ),
                ", 'r5'",
                "expected end of statement, found ,",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (WITH DHCP)".into(),
                "'l'",
                "listener 'l' has no PORT",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (PORT = 5432, READ_ONLY_PORT = 5432)"
                    .into(),
                "'l'",
                "listener 'l' has READ_ONLY_PORT equal to PORT",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (PORT = 70000)".into(),
                "70000",
                "PORT must be between 1 and 65535, found 70000",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (WITH IP ('10.0.0.1'), PORT = 1)"
                    .into(),
                "'10.0.0.1'",
                "expected (, found '10.0.0.1'",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE REPLICA ON ''".into(),
                "''",
                "expected a replica name in 'single quotes', found ''",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 REMOVE REPLICA ON r4".into(),
                "r4",
                "expected a replica name in 'single quotes', found r4",
            ),
            (
                format!(
                    "CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON 'r1' WITH (ENDPOINT_URL = \
                     'tcp://h:1', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL, \
                     PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = ('r2', 'r9'))), {}",
                    replica_sql("r2", 7002)
                ),
                "'r9'",
                "READ_ONLY_ROUTING_LIST names 'r9', which is not a replica of ag1",
            ),
            (
                format!("{modify} (PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = (('r2', 'R2'))))"),
                "'R2'",
                "replica 'R2' appears twice in READ_ONLY_ROUTING_LIST",
            ),
            (
                format!("{modify} (PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = 'r5'))"),
                "'r5'",
                "expected (, found 'r5'",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 ADD DATABASE app, APP".into(),
                "APP",
                "database app is listed twice",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 OFFLINE".into(),
                "OFFLINE",
                "expected an ALTER AVAILABILITY GROUP action, found OFFLINE",
            ),
            (
                "ALTER AVAILABILITY GROUP ag1 JOIN WITH (DTC_SUPPORT = PER_DB)".into(),
                "DTC_SUPPORT",
                "expected a JOIN option, found DTC_SUPPORT",
            ),
            (
                "ALTER DATABASE app SET HADR PAUSE".into(),
                "PAUSE",
                "expected SUSPEND, RESUME, OFF or AVAILABILITY GROUP = name, found PAUSE",
            ),
            (
                "ALTER TABLE t ADD c".into(),
                "TABLE",
                "expected AVAILABILITY GROUP or DATABASE, found TABLE",
            ),
            (
                "SELECT 1".into(),
                "SELECT",
                "expected CREATE, ALTER or DROP AVAILABILITY GROUP, found SELECT",
            ),
        ];
        for (sql, at, message) in cases {
            let err = parse(&sql).expect_err(&sql);
            let position = sql
                .find(at)
                .unwrap_or_else(|| panic!("{at:?} not in {sql}"));
            assert!(
                err.message.contains(message),
                "{sql}\n got: {}\nwant: {message}",
                err.message
            );
            assert_eq!(err.position, position, "{sql}\n{err}");
        }
    }

    #[test]
    fn hints_list_what_is_accepted() {
        let hint = |sql: &str| parse(sql).expect_err(sql).hint.unwrap_or_default();
        let modify = "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' WITH";
        assert_eq!(
            hint(&format!("{modify} (AVAILABILITY_MODE = SYNC)")),
            "AVAILABILITY_MODE must be SYNCHRONOUS_COMMIT, ASYNCHRONOUS_COMMIT or \
             CONFIGURATION_ONLY"
        );
        assert_eq!(
            hint(&format!("{modify} (COLOR = 1)")),
            "known replica options: ENDPOINT_URL, AVAILABILITY_MODE, FAILOVER_MODE, SEEDING_MODE, \
             SESSION_TIMEOUT, BACKUP_PRIORITY, PRIMARY_ROLE, SECONDARY_ROLE"
        );
        assert_eq!(
            hint("ALTER AVAILABILITY GROUP ag1 SET (BASIC = ON)"),
            "known group options: REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT, CLUSTER_TYPE, \
             FAILURE_CONDITION_LEVEL, HEALTH_CHECK_TIMEOUT, DB_FAILOVER, \
             AUTOMATED_BACKUP_PREFERENCE"
        );
        assert_eq!(
            hint("ALTER AVAILABILITY GROUP ag1 SET (DB_FAILOVER = YES)"),
            "DB_FAILOVER must be ON or OFF"
        );
        assert!(
            hint("CREATE AVAILABILITY GROUP ag1 FOR DATABASE app").contains("at least one replica")
        );
        assert!(
            hint("ALTER AVAILABILITY GROUP ag1 OFFLINE").contains("FORCE_FAILOVER_ALLOW_DATA_LOSS")
        );
        assert!(hint("DROP AVAILABILITY GROUP ag1; x").contains("one statement at a time"));

        let err = parse("DROP AVAILABILITY GROUP ag1 NOW").expect_err("trailing word");
        assert_eq!(
            err.to_string(),
            "expected end of statement, found NOW (at byte 28)"
        );
        let err =
            parse("ALTER AVAILABILITY GROUP ag1 SET (DB_FAILOVER = YES)").expect_err("bad value");
        assert_eq!(
            err.to_string(),
            "expected a value for DB_FAILOVER, found YES (at byte 48); \
             hint: DB_FAILOVER must be ON or OFF"
        );
    }

    #[test]
    fn is_ag_statement_is_a_keyword_prefix_test() {
        let cases = [
            (
                "CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON 'r1' WITH (x = 1)",
                true,
            ),
            ("create availability group ag1", true),
            ("  ALTER AVAILABILITY GROUP ag1 FAILOVER", true),
            ("DROP AVAILABILITY GROUP ag1;", true),
            (
                "-- failover now\nALTER AVAILABILITY GROUP ag1 FAILOVER",
                true,
            ),
            (
                "/* a /* nested */ comment */ DROP AVAILABILITY GROUP ag1",
                true,
            ),
            ("ALTER AVAILABILITY GRUOP ag1", true),
            ("CREATE AVAILABILITY GROUP 'unterminated", true),
            ("ALTER DATABASE app SET HADR SUSPEND", true),
            ("alter database \"App\" set hadr off", true),
            (
                "ALTER DATABASE [app] SET HADR AVAILABILITY GROUP = ag1",
                true,
            ),
            ("ALTER DATABASE app SET READ_ONLY", true),
            ("ALTER TABLE t ADD COLUMN c", false),
            ("SELECT 'CREATE AVAILABILITY GROUP'", false),
            ("CREATE TABLE availability (group_name TEXT)", false),
            ("CREATE availability_group", false),
            ("-- CREATE AVAILABILITY GROUP ag1", false),
            ("/* CREATE AVAILABILITY GROUP ag1", false),
            ("", false),
        ];
        for (sql, want) in cases {
            assert_eq!(is_ag_statement(sql), want, "{sql}");
        }
    }

    #[test]
    fn group_and_replica_names_keep_case_database_names_fold_unless_quoted() {
        let sql = "CREATE AVAILABILITY GROUP SalesAG FOR DATABASE App, \"Billing\", [Old]]Data] \
                   REPLICA ON N'SQL-Node1' WITH (ENDPOINT_URL = 'tcp://node1:5022', \
                   AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC) \
                   LISTENER 'it''s' (PORT = 5432)";
        let AgStatement::CreateGroup(spec) = parsed(sql) else {
            panic!("not CREATE")
        };
        assert_eq!(spec.name, "SalesAG");
        assert_eq!(spec.databases, ["app", "Billing", "Old]Data"]);
        assert_eq!(spec.replicas[0].name, "SQL-Node1");
        assert_eq!(spec.listener.map(|l| l.name).as_deref(), Some("it's"));

        let cases = [
            ("DROP AVAILABILITY GROUP \"My AG\"", "My AG"),
            ("DROP AVAILABILITY GROUP [My \"AG\"]", "My \"AG\""),
            ("DROP AVAILABILITY GROUP My_AG$1", "My_AG$1"),
        ];
        for (sql, want) in cases {
            assert_eq!(
                parsed(sql),
                AgStatement::DropGroup { group: want.into() },
                "{sql}"
            );
        }
        assert_eq!(
            parsed("ALTER DATABASE Shop SET HADR AVAILABILITY GROUP = SalesAG"),
            AgStatement::JoinDatabase {
                database: "shop".into(),
                group: "SalesAG".into()
            }
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_comments_go_anywhere() {
        let sql = "create /* c1 */ availability group ag1 -- c2\n for database app \
                   replica on 'r1' with (endpoint_url = 'tcp://127.0.0.1:7001', \
                   Availability_Mode = synchronous_commit, failover_mode = automatic) ; -- done";
        assert_eq!(
            parsed(sql),
            AgStatement::CreateGroup(group("ag1", &["app"], vec![replica("r1", 7001)]))
        );
    }

    #[test]
    fn endpoint_urls_are_tcp_host_and_port() {
        let ok = [
            ("tcp://127.0.0.1:7001", ("127.0.0.1", 7001)),
            ("TCP://node1.example.com:5022", ("node1.example.com", 5022)),
            ("tcp://[::1]:1", ("::1", 1)),
            ("tcp://h:65535", ("h", 65535)),
        ];
        for (url, want) in ok {
            assert_eq!(parse_tcp_url(url), Ok(want), "{url}");
        }
        let bad = [
            ("http://h:1", "the scheme must be tcp://"),
            ("tcp:/h:1", "the scheme must be tcp://"),
            ("tcp://h", "the :port is missing"),
            ("tcp://:5022", "the host is missing"),
            ("tcp://h:0", "the port must be a number from 1 to 65535"),
            ("tcp://h:65536", "the port must be a number from 1 to 65535"),
            ("tcp://h:+1", "the port must be a number from 1 to 65535"),
            (
                "tcp://h:5022/path",
                "the port must be a number from 1 to 65535",
            ),
            ("tcp://::1:5022", "an IPv6 host goes in [brackets]"),
            ("tcp://[h]:5022", "an IPv6 host goes in [brackets]"),
            ("tcp://a b:5022", "the host is not a host name or address"),
            (
                "tcp://user@h:5022",
                "the host is not a host name or address",
            ),
        ];
        for (url, want) in bad {
            assert_eq!(parse_tcp_url(url), Err(want), "{url}");
        }
    }

    #[test]
    fn range_rules_accept_their_bounds() {
        let cases = [
            "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 1)",
            "ALTER AVAILABILITY GROUP ag1 SET (FAILURE_CONDITION_LEVEL = 5)",
            "ALTER AVAILABILITY GROUP ag1 SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 0)",
            "ALTER AVAILABILITY GROUP ag1 SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 8)",
            "ALTER AVAILABILITY GROUP ag1 SET (HEALTH_CHECK_TIMEOUT = 4294967295)",
            "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r' WITH (SESSION_TIMEOUT = 5)",
            "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r' WITH (BACKUP_PRIORITY = 0)",
            "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r' WITH (BACKUP_PRIORITY = 100)",
            "ALTER AVAILABILITY GROUP ag1 ADD LISTENER 'l' (PORT = 65535)",
        ];
        for sql in cases {
            parsed(sql);
        }
        let nine: Vec<String> = (1..=9)
            .map(|i| replica_sql(&format!("r{i}"), 7000 + i))
            .collect();
        let sql = format!(
            "CREATE AVAILABILITY GROUP ag1 FOR REPLICA ON {}",
            nine.join(", ")
        );
        let AgStatement::CreateGroup(spec) = parsed(&sql) else {
            panic!("not CREATE")
        };
        assert_eq!(spec.replicas.len(), MAX_REPLICAS);
    }

    #[test]
    fn keyword_values_display_as_sql_server_spells_them() {
        fn round_trip<T: Choice + fmt::Display + PartialEq + fmt::Debug>() {
            for (keyword, value) in T::KEYWORDS {
                assert_eq!(value.to_string(), *keyword);
                let found = T::KEYWORDS
                    .iter()
                    .find(|(_, v)| v == value)
                    .map(|(k, _)| *k);
                assert_eq!(found, Some(*keyword), "{value:?} has one keyword");
            }
        }
        round_trip::<ClusterType>();
        round_trip::<AvailabilityMode>();
        round_trip::<FailoverMode>();
        round_trip::<SeedingMode>();
        round_trip::<PrimaryConnections>();
        round_trip::<SecondaryConnections>();
        round_trip::<BackupPreference>();
    }
}
