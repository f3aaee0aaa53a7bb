//! Role and privilege statements run by a session, and the SQLSTATEs of
//! [`crate::auth`]'s refusals.
//!
//! A statement becomes one cluster command ([`crate::cluster::Command`]):
//! the node that runs it turns a password into a SCRAM verifier *here*,
//! so only the verifier reaches the cluster's log, its snapshots and the
//! other nodes — or, on a node in no cluster, its roles file
//! ([`crate::auth::local`]), which applies the same command. Existence is checked first against this node's copy of
//! the cluster state, for PostgreSQL's SQLSTATEs (42710 a role that
//! exists, 42704 one that does not); the cluster's own check, on apply,
//! is the one that holds when two nodes race (55000 then).

use crate::auth::{RoleRecord, Verifier, ADMIN_USER};
use crate::cluster::Command as ClusterCommand;
use crate::engine::{Error, Result};
use crate::sql::role::{parse, RoleStatement};

/// What a role statement did.
pub(super) struct Done {
    /// Its command tag.
    pub tag: String,
    /// A NOTICE for the client (`DROP ROLE IF EXISTS` of no role).
    pub notice: Option<String>,
}

/// The front end's SQLSTATE for a refusal of [`crate::auth`]: 28000 for a
/// role without LOGIN (PostgreSQL's), 42501 for a missing privilege.
pub(super) fn denied(err: crate::auth::Error) -> Error {
    let state = match err {
        crate::auth::Error::NoLogin(_) => "28000",
        _ => "42501",
    };
    Error::sql(state, err.to_string()).with_hint(err.hint())
}

/// The stored form of a password given in a statement: a verifier stays
/// one, any other text becomes one.
fn verifier_of(password: &str) -> Result<String> {
    if Verifier::is_verifier_text(password) {
        Verifier::parse(password)
            .map(|v| v.to_string())
            .map_err(|e| Error::sql("22023", e.to_string()))
    } else {
        Ok(Verifier::new(password).to_string())
    }
}

fn reserved(name: &str) -> Result<()> {
    if name.eq_ignore_ascii_case(ADMIN_USER) {
        return Err(Error::sql(
            "42939",
            format!("role name \"{name}\" is reserved for the built-in administrator"),
        )
        .with_hint("its password is the node's --password; choose another name"));
    }
    Ok(())
}

fn no_such_role(name: &str) -> Error {
    Error::sql("42704", format!("role \"{name}\" does not exist"))
        .with_hint("see the roles with SELECT rolname FROM pg_roles")
}

/// Runs one role or privilege statement through the cluster.
pub(super) async fn execute(ag: &crate::ag::Manager, sql: &str) -> Result<Done> {
    let statement = parse(sql).map_err(|message| Error::sql("42601", message))?;
    let done = |tag: &str| Done {
        tag: tag.into(),
        notice: None,
    };
    let exists = |name: &str| ag.role(name).is_some();
    let (command, tag) = match statement {
        RoleStatement::Create {
            name,
            login,
            password,
            connection_limit,
        } => {
            reserved(&name)?;
            if exists(&name) {
                return Err(Error::sql(
                    "42710",
                    format!("role \"{name}\" already exists"),
                ));
            }
            let verifier = password.as_deref().map(verifier_of).transpose()?;
            let role = RoleRecord {
                name,
                login,
                verifier,
                privileges: Default::default(),
                connection_limit,
            };
            (ClusterCommand::CreateRole(role), "CREATE ROLE")
        }
        RoleStatement::Alter {
            name,
            login,
            password,
            connection_limit,
        } => {
            reserved(&name)?;
            if !exists(&name) {
                return Err(no_such_role(&name));
            }
            let verifier = match &password {
                Some(Some(p)) => Some(verifier_of(p)?),
                _ => None,
            };
            let command = ClusterCommand::AlterRole {
                name,
                login,
                verifier,
                clear_password: password == Some(None),
                connection_limit,
            };
            (command, "ALTER ROLE")
        }
        RoleStatement::Drop { name, if_exists } => {
            reserved(&name)?;
            if !exists(&name) {
                if if_exists {
                    return Ok(Done {
                        tag: "DROP ROLE".into(),
                        notice: Some(format!("role \"{name}\" does not exist, skipping")),
                    });
                }
                return Err(no_such_role(&name));
            }
            (ClusterCommand::DropRole(name), "DROP ROLE")
        }
        RoleStatement::Grant {
            privileges,
            role,
            granted,
        } => {
            reserved(&role)?;
            if !exists(&role) {
                return Err(no_such_role(&role));
            }
            let command = ClusterCommand::SetPrivileges {
                role,
                privileges,
                granted,
            };
            (command, if granted { "GRANT" } else { "REVOKE" })
        }
    };
    let name = match &command {
        ClusterCommand::CreateRole(r) => r.name.clone(),
        ClusterCommand::AlterRole { name, .. } | ClusterCommand::DropRole(name) => name.clone(),
        ClusterCommand::SetPrivileges { role, .. } => role.clone(),
        _ => unreachable!("made above"),
    };
    let expected = expected_after(ag.role(&name), &name, &command);
    ag.change_roles(command).await?;
    // The leader applied it; this node's copy follows within a heartbeat
    // or so. Wait for it, so that the client's next session here sees the
    // change (a login of a new role, a revoked privilege).
    let deadline = std::time::Instant::now() + SETTLE;
    while ag.role(&name) != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(done(tag))
}

/// The longest a role statement waits for this node's copy of the
/// cluster state to show its change.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The role `name` once `command` is applied to `before`.
fn expected_after(
    before: Option<RoleRecord>,
    name: &str,
    command: &ClusterCommand,
) -> Option<RoleRecord> {
    let mut state = crate::cluster::ClusterState::default();
    if let Some(role) = before {
        state.roles.insert(role.name.clone(), role);
    }
    state.apply(command);
    state.role(name).cloned()
}
