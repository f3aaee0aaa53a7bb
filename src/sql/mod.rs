//! The SQL layer: what a statement is before it reaches SQLite.
//!
//! * [`split`] cuts a simple-protocol query string into statements.
//! * [`command`] recognises what availdb answers itself (transaction
//!   control, `SET`/`SHOW`, `CREATE/DROP DATABASE`, client start-up chatter);
//!   everything else goes to the engine, through [`pg`].
//! * [`pg`] is the PostgreSQL compatibility layer: PostgreSQL's dialect
//!   (casts, arrays, regular expressions, SERIAL, `COPY`, catalog names…)
//!   rewritten on the parsed statement into SQLite's.
//! * [`types`] maps SQLite declared types to PostgreSQL types, and
//!   [`typing`] infers parameter and result types from the SQL text, because
//!   PostgreSQL drivers need them before a statement runs.
//! * [`temporal`] converts dates, times, intervals and UUIDs between their
//!   stored text and PostgreSQL's binary format.
//! * [`tag`] builds the command tags (`INSERT 0 1`) drivers read counts from.
//!
//! * [`ag`] parses SQL Server's availability group DDL, [`backup`] its
//!   BACKUP and RESTORE statements.
//!
//! Everything here is pure: no connections, no I/O.

pub mod ag;
pub mod backup;
pub mod command;
pub mod pg;
pub mod role;
pub mod split;
pub mod tag;
pub mod temporal;
pub mod types;
pub mod typing;
