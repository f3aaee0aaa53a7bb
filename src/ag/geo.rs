//! Geo-replication statements and admission on this node: the part of
//! `ALTER DATABASE … ADD/REMOVE SECONDARY ON SERVER` that belongs to the
//! availability groups (the links themselves are `replication::geo`).
//!
//! # Where a link is kept
//! * In the source region, the database's options in its group's definition
//!   name its geo-secondaries (`geo_secondaries`): every replica of the
//!   region has them, so whichever replica is primary runs the geo senders,
//!   after any local failover.
//! * In the geo-secondary region, the database belongs to that region's
//!   group with a `geo_source`: its primary is the forwarder, its
//!   secondaries are ordinary secondaries of the forwarded log.
//!
//! # Admission of a source (the geo-secondary region's primary)
//! A `GeoHello` names the source server, its cluster and the database. It
//! is refused when it comes from this cluster, when this node is not the
//! primary of the group holding (or to hold) the database, when the
//! database here is not a geo-secondary of that source, and when it would
//! have to be created but a database of that name exists. A database to
//! create is added to the one group this node is primary of (a region holds
//! its geo-secondaries in its availability group), fenced as a
//! geo-secondary from its first moment.

use std::sync::Arc;

use super::{Manager, Part};
use crate::cluster::Cluster;
use crate::engine::{Error, Fence, Result};
use crate::group::{GeoPartner, SecondaryConnections, MAX_GEO_SECONDARIES};
use crate::replication::geo::{Forwarder, GeoDirectory, GeoLinkView, GeoRequest};

/// The cluster's name and partner registry, for the geo senders.
pub(super) struct ClusterDirectory(pub Arc<Cluster>);

impl GeoDirectory for ClusterDirectory {
    fn server_name(&self) -> Option<String> {
        self.0.state().server_name.clone()
    }

    fn partner_endpoints(&self, server: &str) -> Option<Vec<String>> {
        self.0
            .state()
            .partners
            .get(&server.to_ascii_lowercase())
            .map(|p| p.endpoint_urls.clone())
    }
}

impl Manager {
    /// `ALTER DATABASE d ADD SECONDARY ON SERVER 'B' [WITH (…)]`, on the
    /// source region's primary.
    pub(super) async fn add_geo_secondary(
        self: &Arc<Self>,
        database: &str,
        server: &str,
        allow_connections: Option<SecondaryConnections>,
        database_name: Option<String>,
    ) -> Result<()> {
        let group = self.primary_group_of(database)?;
        let state = self.cluster_member()?.state();
        let Some(own) = state.server_name.clone() else {
            return Err(Error::sql("55000", "this cluster has no server name")
                .with_hint("name it first: ALTER CLUSTER SET (SERVER_NAME = 'name')"));
        };
        if own.eq_ignore_ascii_case(server) {
            return Err(Error::sql(
                "42P17",
                format!("'{server}' is this cluster's own server name: a geo-secondary lives in another region"),
            )
            .with_hint("add a secondary replica to the availability group for a copy in this region"));
        }
        if !state.partners.contains_key(&server.to_ascii_lowercase()) {
            return Err(Error::sql(
                "42704",
                format!("no partner server '{server}' is registered in this cluster"),
            )
            .with_hint(format!(
                "register it first: ALTER CLUSTER ADD PARTNER SERVER '{server}' WITH (ENDPOINT_URL = 'tcp://host:port')"
            )));
        }
        let partner = GeoPartner {
            server: server.to_string(),
            database: database_name.unwrap_or_else(|| database.to_string()),
            allow_connections: allow_connections.unwrap_or(SecondaryConnections::All),
        };
        self.change(&group, |c, _| {
            let options = c.database_options.entry(database.to_string()).or_default();
            if options
                .geo_source
                .as_ref()
                .is_some_and(|s| s.server.eq_ignore_ascii_case(server))
            {
                return Err(Error::sql(
                    "42P17",
                    format!("database \"{database}\" is a geo-secondary of server '{server}': it cannot also feed it"),
                ));
            }
            if options
                .geo_secondaries
                .iter()
                .any(|p| p.server.eq_ignore_ascii_case(server))
            {
                return Err(Error::sql(
                    "42710",
                    format!("database \"{database}\" already has a geo-secondary on server '{server}'"),
                )
                .with_hint("see sys.geo_replication_links"));
            }
            if options.geo_secondaries.len() >= MAX_GEO_SECONDARIES {
                return Err(Error::sql(
                    "54000",
                    format!("database \"{database}\" already has {MAX_GEO_SECONDARIES} geo-secondaries, the most one database may have"),
                )
                .with_hint("chain another one from an existing geo-secondary, or remove one first"));
            }
            options.geo_secondaries.push(partner);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `ALTER DATABASE d REMOVE SECONDARY ON SERVER 'B'`, on the source
    /// region's primary: the link ends (FORCED: at once).
    pub(super) async fn remove_geo_secondary(
        self: &Arc<Self>,
        database: &str,
        server: &str,
        forced: bool,
    ) -> Result<()> {
        let group = self.primary_group_of(database)?;
        if !forced {
            return Err(Error::sql(
                "0A000",
                "planned termination (waiting until the geo-secondary has everything) is not available in this version",
            )
            .with_hint(format!(
                "wait until sys.dm_geo_replication_link_status shows replication_lag_sec = 0, then run ALTER DATABASE {database} REMOVE SECONDARY ON SERVER '{server}' WITH (TERMINATION = FORCED)"
            )));
        }
        self.change(&group, |c, _| {
            let options = c.database_options.entry(database.to_string()).or_default();
            let before = options.geo_secondaries.len();
            options
                .geo_secondaries
                .retain(|p| !p.server.eq_ignore_ascii_case(server));
            if options.geo_secondaries.len() == before {
                return Err(Error::sql(
                    "42704",
                    format!("database \"{database}\" has no geo-secondary on server '{server}'"),
                )
                .with_hint("see sys.geo_replication_links"));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Every geo link of the groups this node is primary of.
    pub fn geo_links(&self) -> Vec<GeoLinkView> {
        self.lock()
            .values()
            .filter_map(|slot| match &slot.part {
                Some(Part::Primary(p)) => Some(p.geo_links()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Decides on a source's `GeoHello` (see the module page).
    pub(super) async fn admit_geo_source(
        self: &Arc<Self>,
        request: &GeoRequest,
    ) -> std::result::Result<Arc<Forwarder>, String> {
        let mut primaries = Vec::new();
        let mut secondary_of = None;
        for (key, slot) in self.lock().iter() {
            match (&slot.part, &slot.config) {
                (Some(Part::Primary(p)), _) => primaries.push((key.clone(), p.clone())),
                (Some(Part::Secondary(_)), Some(c)) => secondary_of = Some(c.primary.clone()),
                _ => {}
            }
        }
        for (_, p) in &primaries {
            let config = p.config();
            if config.cluster_id == request.cluster_id {
                return Err(format!(
                    "server '{}' is in this cluster ({}): a geo-secondary lives in another region",
                    request.from_server, config.cluster_id
                ));
            }
            if !config.has_database(&request.database) {
                continue;
            }
            let source = config.database_options(&request.database).geo_source;
            return match source {
                Some(s)
                    if s.server.eq_ignore_ascii_case(&request.from_server)
                        && s.database == request.source_database =>
                {
                    p.forwarder(&request.database).ok_or_else(|| {
                        format!(
                            "the geo-secondary \"{}\" is not taking its log in yet",
                            request.database
                        )
                    })
                }
                Some(s) => Err(format!(
                    "database \"{}\" here is a geo-secondary of \"{}\" on server '{}', not of \"{}\" on '{}'",
                    request.database, s.database, s.server, request.source_database, request.from_server
                )),
                None => Err(format!(
                    "database \"{}\" here is written in this region: it cannot become a geo-secondary of server '{}'",
                    request.database, request.from_server
                )),
            };
        }
        if primaries.is_empty() {
            return Err(match secondary_of {
                Some(primary) => format!(
                    "this node is a secondary of its region's availability group; its primary is \"{primary}\""
                ),
                None => "this server holds no availability group to hold geo-secondaries: create one here (CREATE AVAILABILITY GROUP)".into(),
            });
        }
        if !request.create {
            return Err(format!(
                "no geo-secondary \"{}\" of server '{}' here",
                request.database, request.from_server
            ));
        }
        if primaries.len() > 1 {
            return Err(format!(
                "this node is primary of {} availability groups: a geo-secondary goes into a region with one",
                primaries.len()
            ));
        }
        let (group, _) = primaries.remove(0);
        let source = GeoPartner {
            server: request.from_server.clone(),
            database: request.source_database.clone(),
            allow_connections: if request.readable {
                SecondaryConnections::All
            } else {
                SecondaryConnections::No
            },
        };
        match self.engine.database(&request.database) {
            Err(Error::NoSuchDatabase(_)) => {}
            Ok(_) => return Err(format!(
                "a database named \"{}\" exists on this server already; name another one with DATABASE_NAME",
                request.database
            )),
            Err(e) => return Err(e.to_string()),
        }
        self.engine
            .create_database_fenced(
                &request.database,
                Fence::GeoSecondary {
                    server: source.server.clone(),
                    database: source.database.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
        tracing::info!(database = %request.database, source = %request.from_server, group, "creating a geo-secondary");
        let read_only = request.read_only;
        let database = request.database.clone();
        let added = self
            .change(&group, move |c, _| {
                if !c.has_database(&database) {
                    c.databases.push(database.clone());
                }
                let options = c.database_options.entry(database).or_default();
                options.geo_source = Some(source);
                options.read_only = read_only;
                Ok(())
            })
            .await;
        if let Err(e) = added {
            let _ = self.engine.drop_database(&request.database);
            return Err(format!(
                "cannot add the geo-secondary to availability group \"{group}\": {e}"
            ));
        }
        match self.part(&group) {
            Some(Part::Primary(p)) => p.forwarder(&request.database).ok_or_else(|| {
                format!(
                    "the geo-secondary \"{}\" was added but is not taking its log in yet",
                    request.database
                )
            }),
            _ => Err("this node stopped being its region's primary".into()),
        }
    }
}
