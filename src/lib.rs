//! availdb: SQL Server–style Always On availability groups for SQLite,
//! spoken over the PostgreSQL wire protocol. See `docs/ARCHITECTURE.md`.

pub mod ag;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod crashpoint;
pub mod durable;
pub mod engine;
pub mod failstop;
pub mod frontend;
#[cfg(test)]
mod fuzz;
pub mod group;
pub mod http;
pub mod listener;
pub mod log;
pub mod net;
pub mod repair;
pub mod replication;
pub mod runtime;
#[cfg(test)]
mod sim;
pub mod sql;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod upgrade;
