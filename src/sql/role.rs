//! Role and privilege statements: `CREATE ROLE/USER`, `ALTER ROLE/USER`,
//! `DROP ROLE/USER`, `GRANT`, `REVOKE` ([`crate::auth`] says what each
//! privilege allows).
//!
//! ```text
//! CREATE {ROLE | USER} name [[WITH] option …]
//! ALTER  {ROLE | USER} name [[WITH] option …]
//!     option: LOGIN | NOLOGIN | [ENCRYPTED] PASSWORD {'text' | NULL}
//!           | CONNECTION LIMIT n       (n ≥ 0 sessions per node; -1: none)
//! DROP   {ROLE | USER} [IF EXISTS] name
//! GRANT  privilege [, …] ON DATABASE db TO role      privilege: CONNECT | READ | WRITE | ALL [PRIVILEGES]
//! GRANT  ADMIN TO role
//! REVOKE privilege [, …] ON DATABASE db FROM role
//! REVOKE ADMIN FROM role
//! ```
//! `CREATE USER` implies LOGIN, `CREATE ROLE` NOLOGIN, as in PostgreSQL.
//! A password that is already a SCRAM-SHA-256 verifier
//! (`SCRAM-SHA-256$4096:…`, what `pg_dumpall` prints) is kept as the
//! verifier; any other text is a password, turned into a verifier by the
//! node that runs the statement. Names fold to lower case unless quoted.
//! Pure: no I/O.

use super::command::{tokenize, Token};
use crate::auth::Privilege;

/// One parsed role or privilege statement.
#[derive(Clone, PartialEq, Eq)]
pub enum RoleStatement {
    /// `CREATE ROLE` / `CREATE USER`.
    Create {
        /// The role.
        name: String,
        /// LOGIN (USER's default) or NOLOGIN (ROLE's).
        login: bool,
        /// `PASSWORD 'text'`: a password or a verifier.
        password: Option<String>,
        /// `CONNECTION LIMIT n` (None: -1 or not given).
        connection_limit: Option<u32>,
    },
    /// `ALTER ROLE` / `ALTER USER`.
    Alter {
        /// The role.
        name: String,
        /// LOGIN / NOLOGIN, when given.
        login: Option<bool>,
        /// `PASSWORD 'text'` (Some(Some)), `PASSWORD NULL` (Some(None)).
        password: Option<Option<String>>,
        /// `CONNECTION LIMIT n` (Some(Some(n))), `CONNECTION LIMIT -1`
        /// (Some(None)).
        connection_limit: Option<Option<u32>>,
    },
    /// `DROP ROLE` / `DROP USER`.
    Drop {
        /// The role.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// `GRANT` (granted) or `REVOKE`.
    Grant {
        /// What.
        privileges: Vec<Privilege>,
        /// To or from whom.
        role: String,
        /// GRANT (true) or REVOKE (false).
        granted: bool,
    },
}

impl std::fmt::Debug for RoleStatement {
    /// Never shows a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleStatement::Create { name, login, .. } => {
                write!(f, "Create {{ name: {name:?}, login: {login} }}")
            }
            RoleStatement::Alter { name, login, .. } => {
                write!(f, "Alter {{ name: {name:?}, login: {login:?} }}")
            }
            RoleStatement::Drop { name, if_exists } => {
                write!(f, "Drop {{ name: {name:?}, if_exists: {if_exists} }}")
            }
            RoleStatement::Grant {
                privileges,
                role,
                granted,
            } => write!(f, "Grant {{ {privileges:?} {role:?} {granted} }}"),
        }
    }
}

/// Whether `stmt` is a role or privilege statement.
pub fn is_role_statement(stmt: &str) -> bool {
    let words: Vec<String> = tokenize(stmt).iter().take(2).map(Token::lower).collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["create" | "alter" | "drop", "role" | "user", ..] | ["grant" | "revoke", ..]
    )
}

/// The forms this module reads, for refusals.
const FORMS: &str = "availdb grants CONNECT, READ, WRITE or ALL ON DATABASE db TO role, and ADMIN TO role (REVOKE … FROM role)";

/// Parses one statement; `Err` says what is wrong.
pub fn parse(stmt: &str) -> Result<RoleStatement, String> {
    let tokens = tokenize(stmt);
    let word = |i: usize| tokens.get(i).map(Token::lower).unwrap_or_default();
    let name_at = |i: usize| -> Result<String, String> {
        match tokens.get(i) {
            Some(t @ (Token::Word(_) | Token::Quoted(_))) => Ok(t.ident()),
            _ => Err("a role name is missing".into()),
        }
    };
    match (word(0).as_str(), word(1).as_str()) {
        ("create", "role" | "user") => {
            let name = name_at(2)?;
            let options = options(&tokens[3..])?;
            Ok(RoleStatement::Create {
                name,
                login: options.login.unwrap_or(word(1) == "user"),
                password: options.password.flatten(),
                connection_limit: options.connection_limit.flatten(),
            })
        }
        ("alter", "role" | "user") => {
            let name = name_at(2)?;
            let options = options(&tokens[3..])?;
            if options.login.is_none()
                && options.password.is_none()
                && options.connection_limit.is_none()
            {
                return Err(
                    "ALTER ROLE needs an option: LOGIN, NOLOGIN, PASSWORD 'text' | NULL or CONNECTION LIMIT n".into(),
                );
            }
            Ok(RoleStatement::Alter {
                name,
                login: options.login,
                password: options.password,
                connection_limit: options.connection_limit,
            })
        }
        ("drop", "role" | "user") => {
            let if_exists = word(2) == "if" && word(3) == "exists";
            let at = if if_exists { 4 } else { 2 };
            let name = name_at(at)?;
            if tokens.len() > at + 1 {
                return Err("DROP ROLE takes one role".into());
            }
            Ok(RoleStatement::Drop { name, if_exists })
        }
        ("grant" | "revoke", _) => grant(&tokens, word(0) == "grant"),
        _ => Err("not a role statement".into()),
    }
}

#[derive(Default)]
struct Options {
    login: Option<bool>,
    password: Option<Option<String>>,
    connection_limit: Option<Option<u32>>,
}

fn options(tokens: &[Token]) -> Result<Options, String> {
    let mut out = Options::default();
    let mut i = usize::from(tokens.first().is_some_and(|t| t.lower() == "with"));
    while i < tokens.len() {
        match tokens[i].lower().as_str() {
            "login" => out.login = Some(true),
            "nologin" => out.login = Some(false),
            "encrypted" if tokens.get(i + 1).is_some_and(|t| t.lower() == "password") => {}
            "password" => {
                i += 1;
                out.password = Some(match tokens.get(i) {
                    Some(Token::Str(s)) => Some(s.clone()),
                    Some(t) if t.lower() == "null" => None,
                    _ => return Err("PASSWORD takes a string literal or NULL".into()),
                });
            }
            "connection" if tokens.get(i + 1).is_some_and(|t| t.lower() == "limit") => {
                let (limit, used) = connection_limit(&tokens[i + 2..])?;
                out.connection_limit = Some(limit);
                i += 1 + used;
            }
            other => {
                return Err(format!(
                "role option {other} is not supported: availdb knows LOGIN, NOLOGIN, PASSWORD and CONNECTION LIMIT"
            ))
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The number after `CONNECTION LIMIT`: -1 is no limit (None); returns
/// it and how many tokens it took.
fn connection_limit(tokens: &[Token]) -> Result<(Option<u32>, usize), String> {
    let wrong =
        || "CONNECTION LIMIT takes a whole number of sessions, or -1 for no limit".to_string();
    match tokens {
        [Token::Symbol('-'), Token::Word(n), ..] if n == "1" => Ok((None, 2)),
        [Token::Word(n), ..] => n.parse::<u32>().map(|n| (Some(n), 1)).map_err(|_| wrong()),
        _ => Err(wrong()),
    }
}

fn grant(tokens: &[Token], granted: bool) -> Result<RoleStatement, String> {
    let to = if granted { "to" } else { "from" };
    let words: Vec<String> = tokens.iter().map(Token::lower).collect();
    let at_to = words.iter().position(|w| w == to).ok_or_else(|| {
        format!(
            "{} needs {} role; {FORMS}",
            words[0].to_uppercase(),
            to.to_uppercase()
        )
    })?;
    let role = match &tokens[at_to + 1..] {
        [t @ (Token::Word(_) | Token::Quoted(_))] => t.ident(),
        _ => return Err(format!("{} names one role; {FORMS}", to.to_uppercase())),
    };
    let head = &words[1..at_to];
    if head == ["admin"] {
        return Ok(RoleStatement::Grant {
            privileges: vec![Privilege::Admin],
            role,
            granted,
        });
    }
    let on = head
        .iter()
        .position(|w| w == "on")
        .ok_or_else(|| format!("unsupported privilege; {FORMS}"))?;
    let database = match (&head[on + 1..], &tokens[on + 3..at_to]) {
        ([kw, _], [t @ (Token::Word(_) | Token::Quoted(_))]) if kw == "database" => t.ident(),
        _ => return Err(format!("privileges are granted ON DATABASE db; {FORMS}")),
    };
    let mut privileges = Vec::new();
    for name in head[..on].iter().filter(|w| *w != ",") {
        match name.as_str() {
            "connect" => privileges.push(Privilege::Connect(database.clone())),
            "read" => privileges.push(Privilege::Read(database.clone())),
            "write" => privileges.push(Privilege::Write(database.clone())),
            "all" => privileges.extend([
                Privilege::Connect(database.clone()),
                Privilege::Read(database.clone()),
                Privilege::Write(database.clone()),
            ]),
            "privileges" if privileges.len() == 3 => {}
            other => return Err(format!("unsupported privilege {other}; {FORMS}")),
        }
    }
    if privileges.is_empty() {
        return Err(format!("no privilege named; {FORMS}"));
    }
    Ok(RoleStatement::Grant {
        privileges,
        role,
        granted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(p: fn(String) -> Privilege) -> Privilege {
        p("shop".into())
    }

    #[test]
    fn role_statements_read_as_postgresql_writes_them() {
        let table: Vec<(&str, RoleStatement)> = vec![
            (
                "CREATE USER Alice WITH PASSWORD 'pw'",
                RoleStatement::Create {
                    name: "alice".into(),
                    login: true,
                    password: Some("pw".into()),
                    connection_limit: None,
                },
            ),
            (
                "create role \"Bob\" login encrypted password 'it''s'",
                RoleStatement::Create {
                    name: "Bob".into(),
                    login: true,
                    password: Some("it's".into()),
                    connection_limit: None,
                },
            ),
            (
                "CREATE ROLE readers",
                RoleStatement::Create {
                    name: "readers".into(),
                    login: false,
                    password: None,
                    connection_limit: None,
                },
            ),
            (
                "CREATE USER app CONNECTION LIMIT 20 PASSWORD 'pw'",
                RoleStatement::Create {
                    name: "app".into(),
                    login: true,
                    password: Some("pw".into()),
                    connection_limit: Some(20),
                },
            ),
            (
                "ALTER ROLE app WITH CONNECTION LIMIT -1",
                RoleStatement::Alter {
                    name: "app".into(),
                    login: None,
                    password: None,
                    connection_limit: Some(None),
                },
            ),
            (
                "ALTER ROLE app CONNECTION LIMIT 0 LOGIN",
                RoleStatement::Alter {
                    name: "app".into(),
                    login: Some(true),
                    password: None,
                    connection_limit: Some(Some(0)),
                },
            ),
            (
                "ALTER ROLE alice WITH NOLOGIN PASSWORD NULL",
                RoleStatement::Alter {
                    name: "alice".into(),
                    login: Some(false),
                    password: Some(None),
                    connection_limit: None,
                },
            ),
            (
                "ALTER USER alice PASSWORD 'new'",
                RoleStatement::Alter {
                    name: "alice".into(),
                    login: None,
                    password: Some(Some("new".into())),
                    connection_limit: None,
                },
            ),
            (
                "DROP ROLE IF EXISTS alice",
                RoleStatement::Drop {
                    name: "alice".into(),
                    if_exists: true,
                },
            ),
            (
                "DROP USER alice",
                RoleStatement::Drop {
                    name: "alice".into(),
                    if_exists: false,
                },
            ),
            (
                "GRANT CONNECT, READ ON DATABASE shop TO alice",
                RoleStatement::Grant {
                    privileges: vec![db(Privilege::Connect), db(Privilege::Read)],
                    role: "alice".into(),
                    granted: true,
                },
            ),
            (
                "GRANT ALL PRIVILEGES ON DATABASE Shop TO alice",
                RoleStatement::Grant {
                    privileges: vec![
                        db(Privilege::Connect),
                        db(Privilege::Read),
                        db(Privilege::Write),
                    ],
                    role: "alice".into(),
                    granted: true,
                },
            ),
            (
                "REVOKE WRITE ON DATABASE shop FROM alice",
                RoleStatement::Grant {
                    privileges: vec![db(Privilege::Write)],
                    role: "alice".into(),
                    granted: false,
                },
            ),
            (
                "GRANT ADMIN TO alice",
                RoleStatement::Grant {
                    privileges: vec![Privilege::Admin],
                    role: "alice".into(),
                    granted: true,
                },
            ),
        ];
        for (sql, want) in table {
            assert!(is_role_statement(sql), "{sql}");
            assert_eq!(parse(sql), Ok(want), "{sql}");
        }
    }

    #[test]
    fn other_statements_are_not_role_statements() {
        for sql in [
            "CREATE TABLE role (x)",
            "SELECT 1",
            "DROP TABLE user",
            "ALTER TABLE t ADD c",
        ] {
            assert!(!is_role_statement(sql), "{sql}");
        }
    }

    #[test]
    fn unsupported_forms_say_what_availdb_grants() {
        for sql in [
            "GRANT SELECT ON TABLE t TO alice",
            "GRANT READ ON SCHEMA public TO alice",
            "GRANT READ ON DATABASE shop TO alice, bob",
            "GRANT readers TO alice",
            "REVOKE READ ON DATABASE shop TO alice",
        ] {
            let err = parse(sql).unwrap_err();
            assert!(
                err.contains("availdb grants") || err.contains("names one role"),
                "{sql}: {err}"
            );
        }
        assert!(parse("CREATE ROLE x SUPERUSER")
            .unwrap_err()
            .contains("SUPERUSER".to_lowercase().as_str()));
        assert!(parse("ALTER ROLE x").is_err());
        assert!(parse("CREATE ROLE x PASSWORD 42").is_err());
        for sql in [
            "CREATE ROLE x CONNECTION LIMIT",
            "CREATE ROLE x CONNECTION LIMIT -2",
            "CREATE ROLE x CONNECTION LIMIT many",
            "ALTER ROLE x CONNECTION LIMIT 1.5",
        ] {
            assert!(
                parse(sql).unwrap_err().contains("CONNECTION LIMIT takes"),
                "{sql}"
            );
        }
    }

    #[test]
    fn the_debug_form_never_shows_a_password() {
        let stmt = parse("CREATE USER a PASSWORD 'hunter2'").unwrap();
        assert!(!format!("{stmt:?}").contains("hunter2"));
    }
}
