//! Logins, roles and privileges: who may connect, and what each session
//! may do.
//!
//! # Principals
//! * The built-in administrator `availdb`: the node's configured password
//!   (`--password`, `AVAILDB_PASSWORD`, `password` in the config file),
//!   given as the password itself or as a SCRAM-SHA-256 verifier
//!   ([`scram`]). It may do everything, as before roles existed.
//! * Roles ([`RoleRecord`]): made with `CREATE ROLE` / `CREATE USER` and
//!   kept in the cluster's replicated state, so every node of the cluster
//!   knows the same roles — a login works on every replica and after any
//!   failover. A node in no cluster keeps them in its data directory
//!   instead ([`local`]), with the same statements and checks, until
//!   `CREATE CLUSTER` carries them into the cluster it forms. What a
//!   role's password leaves behind is its verifier; the password itself
//!   is neither stored nor replicated.
//!
//! # Privileges
//! | privilege | grants | syntax |
//! | --- | --- | --- |
//! | `CONNECT` on a database | opening a session on it | `GRANT CONNECT ON DATABASE d TO r` |
//! | `READ` on a database | statements that only read (SQLite's own read-only test of the prepared statement), `COPY … TO`, cursors | `GRANT READ ON DATABASE d TO r` |
//! | `WRITE` on a database | statements that write (INSERT, UPDATE, DELETE, DDL on user tables, `COPY … FROM`); includes `READ` | `GRANT WRITE ON DATABASE d TO r` |
//! | `ADMIN` | everything, on every database: availability group and cluster DDL, failover, BACKUP and RESTORE, CREATE/DROP DATABASE, roles and grants | `GRANT ADMIN TO r` |
//!
//! `GRANT ALL ON DATABASE d` is CONNECT, READ and WRITE. `REVOKE … FROM r`
//! takes any of them back; it holds from the next statement of a session
//! already open. Session statements (`BEGIN`, `SET`, `SHOW`, …) need no
//! privilege, nor does a role's change of its own password (`ALTER ROLE
//! me PASSWORD '…'`). Which statement needs which privilege is decided in one
//! place, [`crate::sql::command::Command::access`]; the checks are
//! [`check`] and [`check_connect`].
//!
//! # Refusals
//! A missing privilege is [`Error::MissingPrivilege`]: SQLSTATE 42501 (the
//! front end chooses SQLSTATEs), naming the privilege, the database, and
//! who can grant it. Without CONNECT the session is refused at start-up
//! with FATAL 42501, as PostgreSQL does for a database without CONNECT
//! privilege; a role without LOGIN gets FATAL 28000.
//!
//! # Nodes without a password
//! A node without a password (only on loopback) authenticates nobody: a
//! session whose user name is a role gets that role's privileges, any
//! other user name is the administrator, as before roles existed.

pub mod local;
pub mod scram;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use scram::Verifier;

/// The built-in administrator.
pub const ADMIN_USER: &str = "availdb";

/// A role, as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    /// Its name, as logins give it (unquoted names are folded to lower
    /// case when the role is made, as PostgreSQL does).
    pub name: String,
    /// It may open sessions (`LOGIN`; `CREATE USER` implies it).
    pub login: bool,
    /// Its password's SCRAM-SHA-256 verifier, in PostgreSQL's text form
    /// ([`Verifier`]); None: it cannot authenticate.
    pub verifier: Option<String>,
    /// What it was granted.
    pub privileges: BTreeSet<Privilege>,
    /// Sessions it may have open at once on one node (`CONNECTION LIMIT
    /// n`); None: no limit (PostgreSQL's -1). Roles made before the limit
    /// existed read as None.
    #[serde(default)]
    pub connection_limit: Option<u32>,
}

/// One grantable privilege.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Privilege {
    /// Everything, on every database.
    Admin,
    /// Opening sessions on the database.
    Connect(String),
    /// Statements that only read the database.
    Read(String),
    /// Statements that write the database (and those that read it).
    Write(String),
}

impl Privilege {
    /// `ADMIN`, `CONNECT ON DATABASE d`, …, as GRANT writes it.
    pub fn describe(&self) -> String {
        match self {
            Privilege::Admin => "ADMIN".into(),
            Privilege::Connect(d) => format!("CONNECT ON DATABASE {d}"),
            Privilege::Read(d) => format!("READ ON DATABASE {d}"),
            Privilege::Write(d) => format!("WRITE ON DATABASE {d}"),
        }
    }
}

/// What a statement needs ([`crate::sql::command::Command::access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: session and transaction control.
    Nothing,
    /// `READ` on the session's database.
    Read,
    /// `WRITE` on the session's database.
    Write,
    /// `ADMIN`.
    Admin,
}

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The built-in administrator (or any user of a node without a
    /// password whose name is not a role).
    Administrator,
    /// A role, by name: its privileges are looked up at each check, so a
    /// REVOKE holds from the next statement.
    Role(String),
}

impl Principal {
    /// The user name `current_user` answers.
    pub fn name(&self) -> &str {
        match self {
            Principal::Administrator => ADMIN_USER,
            Principal::Role(name) => name,
        }
    }
}

/// Why a login or a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The role lacks a privilege the statement needs.
    #[error("permission denied for database \"{database}\": role \"{role}\" has no {needed} privilege, which {what} needs")]
    MissingPrivilege {
        /// The role.
        role: String,
        /// `READ`, `WRITE`, `ADMIN`.
        needed: &'static str,
        /// The session's database.
        database: String,
        /// What was refused (`INSERT`, `availability group DDL`, …).
        what: String,
    },
    /// The role may not open sessions on the database.
    #[error("permission denied for database \"{database}\": role \"{role}\" has no CONNECT privilege on it")]
    NoConnect {
        /// The role.
        role: String,
        /// The database.
        database: String,
    },
    /// The role exists but has no LOGIN.
    #[error("role \"{0}\" is not permitted to log in")]
    NoLogin(String),
    /// The session's role was dropped while it was open.
    #[error("role \"{0}\" does not exist any more")]
    Dropped(String),
}

impl Error {
    /// What to do about it.
    pub fn hint(&self) -> String {
        let grant = |what: String| {
            format!("the administrator ({ADMIN_USER}, or a role with ADMIN) can grant it: {what}")
        };
        match self {
            Error::MissingPrivilege {
                role,
                needed: "ADMIN",
                ..
            } => grant(format!("GRANT ADMIN TO {role}")),
            Error::MissingPrivilege {
                role,
                needed,
                database,
                ..
            } => grant(format!("GRANT {needed} ON DATABASE {database} TO {role}")),
            Error::NoConnect { role, database } => {
                grant(format!("GRANT CONNECT ON DATABASE {database} TO {role}"))
            }
            Error::NoLogin(role) => format!(
                "the administrator ({ADMIN_USER}, or a role with ADMIN) can allow it: ALTER ROLE {role} LOGIN"
            ),
            Error::Dropped(_) => "log in as another role".into(),
        }
    }
}

/// Whether `role` has `privilege` (ADMIN implies every privilege, WRITE
/// implies READ).
pub fn has(role: &RoleRecord, wanted: &Privilege) -> bool {
    use Privilege::*;
    role.privileges.iter().any(|held| match (held, wanted) {
        (Admin, _) => true,
        (Connect(a), Connect(b)) | (Read(a), Read(b)) | (Write(a), Write(b) | Read(b)) => {
            a.eq_ignore_ascii_case(b)
        }
        _ => false,
    })
}

/// May `role` (None: it was dropped) open a session on `database`?
pub fn check_connect(name: &str, role: Option<&RoleRecord>, database: &str) -> Result<(), Error> {
    let role = role.ok_or_else(|| Error::Dropped(name.to_string()))?;
    if !role.login {
        return Err(Error::NoLogin(role.name.clone()));
    }
    if has(role, &Privilege::Connect(database.to_string())) {
        Ok(())
    } else {
        Err(Error::NoConnect {
            role: role.name.clone(),
            database: database.to_string(),
        })
    }
}

/// May `role` (None: it was dropped) run a statement that needs `need` on
/// `database`? `what` names the statement for the refusal.
pub fn check(
    name: &str,
    role: Option<&RoleRecord>,
    need: Need,
    database: &str,
    what: &str,
) -> Result<(), Error> {
    let role = role.ok_or_else(|| Error::Dropped(name.to_string()))?;
    let (wanted, needed) = match need {
        Need::Nothing => return Ok(()),
        Need::Read => (Privilege::Read(database.to_string()), "READ"),
        Need::Write => (Privilege::Write(database.to_string()), "WRITE"),
        Need::Admin => (Privilege::Admin, "ADMIN"),
    };
    if has(role, &wanted) {
        Ok(())
    } else {
        Err(Error::MissingPrivilege {
            role: role.name.clone(),
            needed,
            database: database.to_string(),
            what: what.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(privileges: &[Privilege]) -> RoleRecord {
        RoleRecord {
            name: "u".into(),
            login: true,
            verifier: None,
            privileges: privileges.iter().cloned().collect(),
            connection_limit: None,
        }
    }

    fn db(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn each_statement_class_needs_its_own_privilege() {
        use Need::*;
        let reader = role(&[Privilege::Connect(db("app")), Privilege::Read(db("app"))]);
        let writer = role(&[Privilege::Write(db("app"))]);
        let admin = role(&[Privilege::Admin]);
        let nobody = role(&[]);
        // (role, need, database, allowed)
        let table = [
            (&reader, Nothing, "app", true),
            (&reader, Read, "app", true),
            (&reader, Write, "app", false),
            (&reader, Admin, "app", false),
            (&reader, Read, "other", false),
            (&writer, Read, "app", true),
            (&writer, Write, "APP", true),
            (&writer, Write, "other", false),
            (&writer, Admin, "app", false),
            (&admin, Read, "any", true),
            (&admin, Write, "any", true),
            (&admin, Admin, "any", true),
            (&nobody, Nothing, "app", true),
            (&nobody, Read, "app", false),
        ];
        for (r, need, d, allowed) in table {
            assert_eq!(
                check("u", Some(r), need, d, "x").is_ok(),
                allowed,
                "{:?} {need:?} on {d}",
                r.privileges
            );
        }
    }

    #[test]
    fn a_refused_write_names_the_missing_privilege_and_who_can_grant_it() {
        let reader = role(&[Privilege::Read(db("app"))]);
        let err = check("u", Some(&reader), Need::Write, "app", "INSERT").unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied for database \"app\": role \"u\" has no WRITE privilege, which INSERT needs"
        );
        assert!(err.hint().contains("GRANT WRITE ON DATABASE app TO u"));
        assert!(err.hint().contains(ADMIN_USER));
    }

    #[test]
    fn connecting_needs_login_and_connect_on_that_database() {
        let mut r = role(&[Privilege::Connect(db("app"))]);
        assert!(check_connect("u", Some(&r), "app").is_ok());
        assert!(matches!(
            check_connect("u", Some(&r), "other"),
            Err(Error::NoConnect { .. })
        ));
        r.login = false;
        assert_eq!(
            check_connect("u", Some(&r), "app"),
            Err(Error::NoLogin("u".into()))
        );
        assert_eq!(
            check_connect("u", None, "app"),
            Err(Error::Dropped("u".into()))
        );
        assert!(check_connect("u", Some(&role(&[Privilege::Admin])), "any").is_ok());
    }
}
