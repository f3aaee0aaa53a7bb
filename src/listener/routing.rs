//! The two decisions about a new session, as pure functions: where the
//! listener sends it ([`route`]), and whether a node lets it in
//! ([`admit`], the connection settings of SQL Server's
//! `PRIMARY_ROLE`/`SECONDARY_ROLE (ALLOW_CONNECTIONS = …)`).
//!
//! # Read-only routing (as SQL Server does it)
//! * A read-write session goes to the primary.
//! * A read-intent session for a database of the group follows the
//!   **current primary's** `READ_ONLY_ROUTING_LIST`: the sets in order;
//!   within a set (`('r2','r3')`), the replicas are taken round-robin from
//!   a turn counter, and the first that is *eligible* (readable in its role:
//!   a secondary with `ALLOW_CONNECTIONS` READ_ONLY or ALL, the primary
//!   with ALL) and *available* (the caller's knowledge: not failed lately)
//!   wins. The first set with such a replica wins.
//! * No list (or a database outside the group): the primary, as in SQL
//!   Server. A list whose replicas are all unavailable does **not** fall
//!   back to the primary unless the list names it (SQL Server's pattern is
//!   to list the primary last for that): the session waits ([`Route::Wait`])
//!   and is refused when the listener's hold time runs out. A list with no
//!   eligible replica at all is refused at once ([`Route::Refuse`]).

use crate::group::{GroupConfig, LocalRole, PrimaryConnections, SecondaryConnections};

/// What a session declares it will do (`application_intent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Reads and writes (the default).
    ReadWrite,
    /// Reads only: may be routed to a readable secondary.
    ReadOnly,
}

impl Intent {
    /// Parses an `application_intent` value (SQL Server's `ReadOnly` /
    /// `ReadWrite` spellings, with or without `_`, any case); absent is
    /// read-write.
    pub fn parse(value: Option<&str>) -> Result<Intent, String> {
        let Some(value) = value else {
            return Ok(Intent::ReadWrite);
        };
        match value.replace(['_', '-'], "").to_ascii_lowercase().as_str() {
            "readonly" => Ok(Intent::ReadOnly),
            "readwrite" | "" => Ok(Intent::ReadWrite),
            _ => Err(format!(
                "invalid value for parameter \"application_intent\": \"{value}\" (use read_only or read_write)"
            )),
        }
    }
}

/// Where the listener sends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the primary replica (named).
    Primary(String),
    /// To a readable secondary (named).
    Secondary(String),
    /// Eligible replicas exist but none is available now: wait and retry.
    Wait(String),
    /// No replica can take the session: refuse it, saying why.
    Refuse(String),
}

/// Chooses where a session goes. `database_in_group` says whether the
/// session's database belongs to the group; `available` says whether the
/// caller believes a replica can be reached; `turn` drives round-robin.
pub fn route(
    config: &GroupConfig,
    intent: Intent,
    database_in_group: bool,
    available: &dyn Fn(&str) -> bool,
    turn: usize,
) -> Route {
    let primary = config.primary.clone();
    let list = config
        .replica(&primary)
        .map(|r| r.read_only_routing_list.as_slice())
        .unwrap_or_default();
    if intent == Intent::ReadWrite || !database_in_group || list.is_empty() {
        return if available(&primary) {
            Route::Primary(primary)
        } else {
            Route::Wait(format!("the primary replica \"{primary}\" does not answer"))
        };
    }
    let eligible = |name: &str| match config.replica(name) {
        Some(r) if r.name.eq_ignore_ascii_case(&primary) => {
            r.primary_allow_connections == PrimaryConnections::All
        }
        Some(r) => r.secondary_allow_connections != SecondaryConnections::No,
        None => false,
    };
    let mut any_eligible = false;
    for set in list {
        let n = set.len();
        for k in 0..n {
            let name = &set[(turn + k) % n];
            if !eligible(name) {
                continue;
            }
            any_eligible = true;
            if available(name) {
                let name = config
                    .replica(name)
                    .map_or(name.clone(), |r| r.name.clone());
                return if name.eq_ignore_ascii_case(&primary) {
                    Route::Primary(name)
                } else {
                    Route::Secondary(name)
                };
            }
        }
    }
    let listed = list
        .iter()
        .map(|set| format!("({})", set.join(", ")))
        .collect::<Vec<_>>()
        .join(", ");
    if any_eligible {
        Route::Wait(format!(
            "no replica of READ_ONLY_ROUTING_LIST {listed} of \"{primary}\" is available"
        ))
    } else {
        Route::Refuse(format!(
            "no replica of READ_ONLY_ROUTING_LIST {listed} of \"{primary}\" allows read-intent sessions"
        ))
    }
}

/// A refused session: SQLSTATE, message and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE (08004: the server rejected the connection).
    pub sqlstate: &'static str,
    /// What happened.
    pub message: String,
    /// What to do next.
    pub hint: String,
}

/// The connection settings: may a session with `intent` use `database`,
/// which belongs to `group`, on replica `replica` in `role`?
pub fn admit(
    role: &LocalRole,
    intent: Intent,
    database: &str,
    group: &str,
    replica: &str,
) -> Result<(), Refusal> {
    let refuse = |message: String, hint: &str| {
        Err(Refusal {
            sqlstate: "08004",
            message,
            hint: hint.to_string(),
        })
    };
    match (role, intent) {
        (LocalRole::Secondary { allow: SecondaryConnections::No }, _) => refuse(
            format!(
                "database \"{database}\" is not readable on replica \"{replica}\": it is a secondary of availability group \"{group}\" with SECONDARY_ROLE (ALLOW_CONNECTIONS = NO)"
            ),
            "connect to the primary through the group's listener, or with target_session_attrs=read-write",
        ),
        (LocalRole::Secondary { allow: SecondaryConnections::ReadOnly }, Intent::ReadWrite) => {
            refuse(
                format!(
                    "replica \"{replica}\" accepts only read-intent sessions for database \"{database}\" (availability group \"{group}\", SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_ONLY))"
                ),
                "declare read intent with options='-c application_intent=read_only' (PGOPTIONS), or use the listener's read-only port",
            )
        }
        (LocalRole::Primary { allow: PrimaryConnections::ReadWrite }, Intent::ReadOnly) => refuse(
            format!(
                "the primary replica \"{replica}\" of availability group \"{group}\" refuses read-intent sessions for database \"{database}\" (PRIMARY_ROLE (ALLOW_CONNECTIONS = READ_WRITE))"
            ),
            "connect through the listener so read-only routing picks a readable secondary, or connect without application_intent=read_only",
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn config(list: &[&[&str]], allow: &[(&str, SecondaryConnections)]) -> GroupConfig {
        let mut g = crate::group::fixtures::group(&["r1", "r2", "r3", "r4"]);
        for r in &mut g.replicas {
            if let Some((_, a)) = allow.iter().find(|(n, _)| *n == r.name) {
                r.secondary_allow_connections = *a;
            }
        }
        g.replicas[0].read_only_routing_list = list
            .iter()
            .map(|set| set.iter().map(|s| s.to_string()).collect())
            .collect();
        g
    }

    fn all(_: &str) -> bool {
        true
    }

    fn routes(c: &GroupConfig, down: &[&str], turns: usize) -> Vec<Route> {
        let down: HashSet<String> = down.iter().map(|s| s.to_string()).collect();
        (0..turns)
            .map(|t| route(c, Intent::ReadOnly, true, &|n| !down.contains(n), t))
            .collect()
    }

    fn sec(n: &str) -> Route {
        Route::Secondary(n.into())
    }

    #[test]
    fn read_write_sessions_go_to_the_primary() {
        let c = config(&[&["r2", "r3"]], &[]);
        assert_eq!(
            route(&c, Intent::ReadWrite, true, &all, 5),
            Route::Primary("r1".into())
        );
        assert!(matches!(
            route(&c, Intent::ReadWrite, true, &|n| n != "r1", 0),
            Route::Wait(_)
        ));
    }

    #[test]
    fn without_a_routing_list_or_outside_the_group_read_intent_goes_to_the_primary() {
        let c = config(&[], &[]);
        assert_eq!(
            route(&c, Intent::ReadOnly, true, &all, 0),
            Route::Primary("r1".into())
        );
        let c = config(&[&["r2"]], &[]);
        assert_eq!(
            route(&c, Intent::ReadOnly, false, &all, 0),
            Route::Primary("r1".into())
        );
    }

    #[test]
    fn a_load_balanced_set_is_taken_round_robin() {
        let c = config(&[&["r2", "r3"], &["r4"]], &[]);
        assert_eq!(
            routes(&c, &[], 4),
            [sec("r2"), sec("r3"), sec("r2"), sec("r3")]
        );
    }

    #[test]
    fn the_first_set_with_an_available_readable_replica_wins() {
        let c = config(&[&["r2", "r3"], &["r4"]], &[]);
        assert_eq!(routes(&c, &["r2"], 2), [sec("r3"), sec("r3")]);
        assert_eq!(routes(&c, &["r2", "r3"], 2), [sec("r4"), sec("r4")]);
        let c = config(
            &[&["r2", "r3"], &["r4"]],
            &[("r3", SecondaryConnections::No)],
        );
        assert_eq!(routes(&c, &[], 2), [sec("r2"), sec("r2")]);
    }

    #[test]
    fn read_only_secondaries_are_eligible_and_no_secondaries_are_not() {
        let c = config(
            &[&["r2"], &["r3"]],
            &[
                ("r2", SecondaryConnections::No),
                ("r3", SecondaryConnections::ReadOnly),
            ],
        );
        assert_eq!(routes(&c, &[], 1), [sec("r3")]);
    }

    #[test]
    fn the_primary_takes_read_intent_only_when_the_list_names_it() {
        let c = config(&[&["r2", "r3"], &["r1"]], &[]);
        assert_eq!(routes(&c, &["r2", "r3"], 1), [Route::Primary("r1".into())]);
        let c = config(&[&["r2", "r3"]], &[]);
        assert!(matches!(routes(&c, &["r2", "r3"], 1)[0], Route::Wait(_)));
        let mut c = config(&[&["r2"], &["r1"]], &[]);
        c.replicas[0].primary_allow_connections = PrimaryConnections::ReadWrite;
        assert!(matches!(routes(&c, &["r2"], 1)[0], Route::Wait(_)));
    }

    #[test]
    fn a_list_without_an_eligible_replica_is_refused_at_once() {
        let c = config(
            &[&["r2", "r3"], &["r9"]],
            &[
                ("r2", SecondaryConnections::No),
                ("r3", SecondaryConnections::No),
            ],
        );
        let Route::Refuse(why) = routes(&c, &[], 1).remove(0) else {
            panic!("expected a refusal")
        };
        assert!(why.contains("(r2, r3), (r9)"), "{why}");
    }

    #[test]
    fn application_intent_accepts_sql_server_spellings() {
        for (v, want) in [
            (None, Intent::ReadWrite),
            (Some("read_only"), Intent::ReadOnly),
            (Some("ReadOnly"), Intent::ReadOnly),
            (Some("READ-ONLY"), Intent::ReadOnly),
            (Some("ReadWrite"), Intent::ReadWrite),
        ] {
            assert_eq!(Intent::parse(v), Ok(want), "{v:?}");
        }
        assert!(Intent::parse(Some("sometimes"))
            .unwrap_err()
            .contains("read_only"));
    }

    #[test]
    fn connection_settings_table() {
        use Intent::*;
        let s = |allow| LocalRole::Secondary { allow };
        let p = |allow| LocalRole::Primary { allow };
        let cases = [
            (s(SecondaryConnections::No), ReadOnly, false),
            (s(SecondaryConnections::No), ReadWrite, false),
            (s(SecondaryConnections::ReadOnly), ReadOnly, true),
            (s(SecondaryConnections::ReadOnly), ReadWrite, false),
            (s(SecondaryConnections::All), ReadOnly, true),
            (s(SecondaryConnections::All), ReadWrite, true),
            (p(PrimaryConnections::ReadWrite), ReadOnly, false),
            (p(PrimaryConnections::ReadWrite), ReadWrite, true),
            (p(PrimaryConnections::All), ReadOnly, true),
            (p(PrimaryConnections::All), ReadWrite, true),
        ];
        for (role, intent, ok) in cases {
            let got = admit(&role, intent, "app", "ag1", "r2");
            assert_eq!(got.is_ok(), ok, "{role:?} {intent:?}: {got:?}");
            if let Err(r) = got {
                assert_eq!(r.sqlstate, "08004");
                assert!(r.message.contains("ALLOW_CONNECTIONS"), "{}", r.message);
                assert!(!r.hint.is_empty());
            }
        }
    }
}
