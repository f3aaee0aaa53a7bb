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
//!
//! # Termination
//! `REMOVE SECONDARY` on the source: PLANNED waits (writes open) until the
//! geo-secondary has redone the log's end, then holds the database's
//! writes, takes the end `E` and sends `Terminate` at `E`; FORCED sends it
//! at once and does not wait for an answer long. The geo-secondary's
//! region ([`Manager::make_independent`]) drains the forwarder and changes
//! its group: no `geo_source`, read-write, and an epoch offset that puts
//! its new records' epochs above every epoch its log holds; the restarted
//! primary promotes the database (the driver) and writes it. The source
//! removes the link from its definition before it lets its writes go, so
//! no commit lands between `E` and the link's end.
//!
//! # Geo-failover
//! Planned ([`Manager::geo_failover`] on the geo-secondary's region, then
//! [`Manager::hand_over`] on the source's): the source stops writing
//! (READ_ONLY, durably) before the geo-secondary may start; the handover
//! in `Terminate` gives the new source the links it takes on. The new
//! source's `GeoHello` names whom it succeeds: the old source's copy and
//! its geo-secondaries then take it as their source
//! ([`Manager::take_new_source`]). Forced: the geo-secondary becomes
//! independent with what it has, epochs far above the old source's, and
//! deposes the old source when it is reachable (a rewind discards its
//! divergent tail, reported as the link's `discarded` range).

use std::sync::Arc;

use super::{Manager, Part};
use crate::cluster::Cluster;
use crate::engine::{Error, Fence, Result};
use crate::group::{GeoPartner, SecondaryConnections, MAX_GEO_SECONDARIES};
use crate::log::Lsn;
use crate::replication::geo::{
    Forwarder, GeoDirectory, GeoLinkStatus, GeoLinkView, GeoRequest, TerminateError,
};
use crate::replication::wire::{HandedLink, Handover};

/// Planned termination: how long the geo-secondary may take to catch up
/// while writes go on.
const PLANNED_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);
/// Planned termination: the most this database's writes are held.
const HOLD_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a planned termination waits for the geo-secondary to answer.
const PLANNED_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a forced termination waits for the geo-secondary to answer
/// before it removes the link anyway.
const FORCED_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// After a handover whose answer was lost, how long the old source waits
/// for the new one's link to depose it.
const DEPOSED_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);
/// How long `sys.wait_for_database_copy_sync` waits.
const COPY_SYNC_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a planned geo-failover waits for the source to hand over.
const GEO_FAILOVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(90);
/// How far a forced geo-failover raises the database's epochs: beyond any
/// number of local failovers the cut-off source region can have made.
const FORCED_EPOCH_JUMP: u64 = 1 << 20;
/// How long the geo-secondary may take to redo what it holds.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The cluster's name and partner registry, for the geo senders, and the
/// way back to this node's availability groups (handovers).
pub(super) struct ClusterDirectory {
    pub cluster: Arc<Cluster>,
    pub manager: std::sync::Weak<Manager>,
}

impl GeoDirectory for ClusterDirectory {
    fn server_name(&self) -> Option<String> {
        self.cluster.state().server_name.clone()
    }

    fn partner_endpoints(&self, server: &str) -> Option<Vec<String>> {
        self.cluster
            .state()
            .partners
            .get(&server.to_ascii_lowercase())
            .map(|p| p.endpoint_urls.clone())
    }

    fn hand_over(&self, database: &str, server: &str) {
        let Some(manager) = self.manager.upgrade() else {
            return;
        };
        let (database, server) = (database.to_string(), server.to_string());
        tokio::spawn(async move {
            let handed = manager
                .tracked(
                    "HAND OVER (planned geo-failover)",
                    &database,
                    &server,
                    || manager.hand_over(&database, &server),
                )
                .await;
            match handed {
                Ok(()) => {
                    tracing::info!(database, to = %server, "handed the database over (planned geo-failover)")
                }
                Err(e) => {
                    tracing::warn!(database, to = %server, "planned geo-failover not done: {e}")
                }
            }
        });
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

    /// `ALTER DATABASE d REMOVE SECONDARY ON SERVER 'B' [WITH (TERMINATION =
    /// PLANNED | FORCED)]`, on the source region's primary (see the module
    /// page, "Termination"). Returns a notice for the session: how far the
    /// geo-secondary got.
    pub(super) async fn remove_geo_secondary(
        self: &Arc<Self>,
        database: &str,
        server: &str,
        forced: bool,
    ) -> Result<String> {
        let group = self.primary_group_of(database)?;
        let Some(Part::Primary(primary)) = self.part(&group) else {
            return Err(Error::sql(
                "55000",
                format!("this node stopped being the primary of \"{database}\""),
            ));
        };
        let no_link = || {
            Error::sql(
                "42704",
                format!("database \"{database}\" has no geo-secondary on server '{server}'"),
            )
            .with_hint("see sys.geo_replication_links")
        };
        let linked = primary
            .config()
            .database_options(database)
            .geo_secondaries
            .iter()
            .any(|p| p.server.eq_ignore_ascii_case(server));
        let link = primary.geo_link(database, server);
        let (true, Some(link)) = (linked, link) else {
            return Err(no_link());
        };
        let db = self.engine.database(database)?;
        let (notice, held) = if forced {
            let end = db.log().end_lsn();
            let notice = match link.terminate(false, end, None, FORCED_ANSWER_WITHIN).await {
                Ok(reached) => format!(
                    "the geo-secondary on server '{server}' is an independent read-write database now; it had this database's log up to LSN {reached} of {end} ({} bytes never reached it)",
                    end.saturating_sub(reached)
                ),
                Err(why) => format!(
                    "the link to server '{server}' is removed, but its copy could not be told ({why}): it stays a read-only geo-secondary there until made independent on server '{server}' with ALTER DATABASE … FORCE_FAILOVER_ALLOW_DATA_LOSS"
                ),
            };
            (notice, None)
        } else {
            let (notice, held) = self.planned_termination(&db, server, &link).await?;
            (notice, Some(held))
        };
        self.change(&group, |c, _| {
            let options = c.database_options.entry(database.to_string()).or_default();
            let before = options.geo_secondaries.len();
            options
                .geo_secondaries
                .retain(|p| !p.server.eq_ignore_ascii_case(server));
            if options.geo_secondaries.len() == before {
                return Err(no_link());
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            if held.is_some() {
                e.with_hint(format!("server '{server}' has made its copy independent already: remove the link with TERMINATION = FORCED"))
            } else {
                e
            }
        })?;
        // Commits here waited only for the geo-secondary's last step and
        // the link's removal.
        drop(held);
        tracing::info!(
            database,
            partner = server,
            forced,
            "geo link removed: {notice}"
        );
        Ok(notice)
    }

    /// Planned termination: has the geo-secondary catch up, then ends the
    /// link at exactly this database's log end with writes held (see
    /// [`Manager::catch_up_and_hold`]). Returns the notice and the held
    /// writes: the caller removes the link before it lets them go.
    async fn planned_termination(
        &self,
        db: &Arc<crate::engine::Database>,
        server: &str,
        link: &Arc<GeoLinkStatus>,
    ) -> Result<(String, crate::engine::WriterGuard)> {
        let name = db.name().to_string();
        let (held, at) = self.catch_up_and_hold(db, server, link).await?;
        let reached = link
            .terminate(true, at, None, PLANNED_ANSWER_WITHIN)
            .await
            .map_err(|e| terminate_error(server, e))?;
        Ok((
            format!(
                "the geo-secondary on server '{server}' is an independent read-write database now, with every transaction of \"{name}\" up to LSN {reached}"
            ),
            held,
        ))
    }

    /// Waits (writes open) until the geo-secondary on `server` has redone
    /// this database's log end, then holds the database's writes and waits
    /// until it has redone the end again: returns the held writes and that
    /// end, which no commit passes until the guard drops.
    async fn catch_up_and_hold(
        &self,
        db: &Arc<crate::engine::Database>,
        server: &str,
        link: &Arc<GeoLinkStatus>,
    ) -> Result<(crate::engine::WriterGuard, Lsn)> {
        let name = db.name().to_string();
        // Caught up enough to hold the writes: it has redone the log's end,
        // or the end it had one poll earlier (a record goes to it only once
        // the region's synchronized secondaries hardened it, so under
        // steady writes it is always a little behind the very end).
        let mut earlier_end = Lsn::MAX;
        let mut behind = |link: &GeoLinkStatus| {
            let view = link.view();
            let end = db.log().end_lsn();
            let previous = std::mem::replace(&mut earlier_end, end);
            if view.connected {
                if view.redone_lsn >= previous {
                    return Ok(0);
                }
                Ok(end.saturating_sub(view.redone_lsn))
            } else {
                Err(view
                    .last_error
                    .unwrap_or_else(|| "not connected yet".into()))
            }
        };
        let deadline = std::time::Instant::now() + PLANNED_CATCH_UP;
        loop {
            match behind(link) {
                Ok(0) => break,
                Ok(bytes) if std::time::Instant::now() > deadline => {
                    return Err(Error::sql(
                        "55000",
                        format!(
                            "the geo-secondary of \"{name}\" on server '{server}' is still {bytes} bytes behind after {} s: writes keep coming faster than it takes them",
                            PLANNED_CATCH_UP.as_secs()
                        ),
                    )
                    .with_hint(format!(
                        "stop the writes first (ALTER DATABASE {name} SET READ_ONLY), or act at once with TERMINATION = FORCED (or FORCE_FAILOVER_ALLOW_DATA_LOSS on the geo-secondary)"
                    )))
                }
                Err(why) if std::time::Instant::now() > deadline => {
                    return Err(Error::sql(
                        "08006",
                        format!("the geo link of \"{name}\" to server '{server}' is down: {why}"),
                    )
                    .with_hint("a planned termination or failover needs the link up; see sys.dm_geo_replication_link_status, or use TERMINATION = FORCED (FORCE_FAILOVER_ALLOW_DATA_LOSS)"))
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        // The last step with writes held: nothing commits here after `at`
        // until the caller lets them go.
        let held = db.hold_writes(HOLD_WITHIN).await?;
        let at = db.log().end_lsn();
        let deadline = std::time::Instant::now() + HOLD_WITHIN;
        while link.view().redone_lsn < at {
            if std::time::Instant::now() > deadline {
                return Err(Error::sql(
                    "55000",
                    format!(
                        "the geo-secondary on server '{server}' did not redo the last {} bytes of \"{name}\" within {} s (writes were held meanwhile)",
                        at.saturating_sub(link.view().redone_lsn),
                        HOLD_WITHIN.as_secs()
                    ),
                )
                .with_hint("try again; see sys.dm_geo_replication_link_status"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok((held, at))
    }

    /// A planned geo-failover, on the source's primary, asked for by the
    /// geo-secondary on `to_server` (`FailoverRequest`): with this
    /// database's writes held at its log end `E` and the geo-secondary
    /// caught up to `E`, the database becomes READ_ONLY here (durably),
    /// then the geo-secondary becomes the source at `E` and takes on this
    /// database and its other geo-secondaries as its geo-secondaries. This
    /// copy stays READ_ONLY until the new source's link arrives
    /// ([`Manager::admit_geo_source`] makes it a geo-secondary then). Never
    /// two writers: if the geo-secondary refuses, this database takes
    /// writes again; if it does not answer, it stays READ_ONLY.
    pub(super) async fn hand_over(self: &Arc<Self>, database: &str, to_server: &str) -> Result<()> {
        let group = self.primary_group_of(database)?;
        let Some(Part::Primary(primary)) = self.part(&group) else {
            return Err(Error::sql("55000", "this node stopped being the primary"));
        };
        let config = primary.config();
        let options = config.database_options(database);
        let Some(partner) = options
            .geo_secondaries
            .iter()
            .find(|p| p.server.eq_ignore_ascii_case(to_server))
            .cloned()
        else {
            return Err(Error::sql(
                "42704",
                format!("database \"{database}\" has no geo-secondary on server '{to_server}'"),
            ));
        };
        let Some(link) = primary.geo_link(database, to_server) else {
            return Err(Error::sql("55000", "the geo link is not running"));
        };
        let own = self
            .cluster_member()?
            .state()
            .server_name
            .clone()
            .ok_or_else(|| Error::sql("55000", "this cluster has no server name"))?;
        let db = self.engine.database(database)?;
        let (held, at) = self.catch_up_and_hold(&db, to_server, &link).await?;
        // No more writes here, durably, before the other region may write.
        db.set_read_only(true);
        let name = database.to_string();
        self.change(&group, |c, _| {
            c.database_options
                .entry(name.clone())
                .or_default()
                .read_only = true;
            Ok(())
        })
        .await
        .inspect_err(|_| db.set_read_only(options.read_only))?;
        let mut links = vec![HandedLink {
            server: own,
            database: database.to_string(),
            readable: partner.allow_connections != SecondaryConnections::No,
        }];
        links.extend(
            options
                .geo_secondaries
                .iter()
                .filter(|p| !p.server.eq_ignore_ascii_case(to_server))
                .map(|p| HandedLink {
                    server: p.server.clone(),
                    database: p.database.clone(),
                    readable: p.allow_connections != SecondaryConnections::No,
                }),
        );
        let handover = Handover {
            source_epoch: db.epoch_history().last().map_or(0, |(e, _)| *e),
            links,
        };
        // The new source's link may depose this copy before its answer
        // arrives here (and that restart ends the link): deposed is done.
        let deposed = || {
            self.published_config(&group)
                .and_then(|c| c.database_options(database).geo_source)
                .is_some_and(|s| s.server.eq_ignore_ascii_case(to_server))
        };
        let answer = link
            .terminate(true, at, Some(handover), PLANNED_ANSWER_WITHIN)
            .await;
        let answer = match answer {
            Err(TerminateError::NoAnswer(why)) => {
                let deadline = std::time::Instant::now() + DEPOSED_WITHIN;
                loop {
                    if deposed() {
                        break Ok(at);
                    }
                    if std::time::Instant::now() > deadline {
                        break Err(TerminateError::NoAnswer(why));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            other => other,
        };
        match answer {
            Ok(_) if deposed() => {
                drop(held);
                Ok(())
            }
            Ok(_) => {
                // The new source links to this copy and to the others;
                // this region feeds none of them any more.
                self.change(&group, |c, _| {
                    c.database_options
                        .entry(name.clone())
                        .or_default()
                        .geo_secondaries
                        .clear();
                    Ok(())
                })
                .await?;
                drop(held);
                Ok(())
            }
            Err(TerminateError::Refused(why)) => {
                // Still the source: writable again.
                let restored = self
                    .change(&group, |c, _| {
                        c.database_options
                            .entry(name.clone())
                            .or_default()
                            .read_only = options.read_only;
                        Ok(())
                    })
                    .await;
                if restored.is_ok() {
                    db.set_read_only(options.read_only);
                }
                drop(held);
                Err(Error::sql(
                    "55000",
                    format!("server '{to_server}' refused to take \"{database}\" over: {why}"),
                ))
            }
            Err(e @ TerminateError::NoAnswer(_)) => {
                drop(held);
                Err(Error::sql(
                    "55000",
                    format!("server '{to_server}' did not confirm that it took \"{database}\" over ({e}); the database stays READ_ONLY here"),
                )
                .with_hint(format!("see sys.geo_replication_links on server '{to_server}': if it did not take over, ALTER DATABASE {database} SET READ_WRITE here")))
            }
        }
    }

    /// The geo source ended the link (`Terminate`), or this region forces
    /// a geo-failover: `database`, a geo-secondary of `source_server` in a
    /// group this node is primary of, becomes written in this region (see
    /// the module page). With a handover it takes on the listed geo links
    /// (the old source first) and names the old source as the one it
    /// succeeds. Returns where its log ends.
    pub(super) async fn make_independent(
        self: &Arc<Self>,
        database: &str,
        source_server: &str,
        planned: bool,
        at: Lsn,
        handover: Option<Handover>,
    ) -> std::result::Result<Lsn, String> {
        let mut found = None;
        for (key, slot) in self.lock().iter() {
            if let (Some(Part::Primary(p)), Some(config)) = (&slot.part, &slot.config) {
                let source = config.database_options(database).geo_source;
                if source.is_some_and(|s| s.server.eq_ignore_ascii_case(source_server)) {
                    found = Some((key.clone(), p.clone()));
                }
            }
        }
        let Some((group, primary)) = found else {
            return Err(format!(
                "no geo-secondary \"{database}\" of server '{source_server}' is primary on this node"
            ));
        };
        let forwarder = primary
            .forwarder(database)
            .ok_or_else(|| format!("the geo-secondary \"{database}\" takes no log in here"))?;
        let db = forwarder.intake().database().clone();
        if planned {
            // Every record up to `at` came before `Terminate` on this
            // connection: it is in the log.
            let end = db.log().end_lsn();
            if end != at {
                return Err(format!(
                    "the geo-secondary's log ends at LSN {end}, not at the source's {at}: nothing changed, try again"
                ));
            }
        }
        forwarder.drain(DRAIN_WITHIN).await?;
        let end = db.log().end_lsn();
        let own = self
            .cluster
            .as_ref()
            .and_then(|c| c.state().server_name.clone())
            .unwrap_or_default();
        // This region's records must carry epochs above every epoch the
        // source's log holds: known in a handover; after a forced
        // geo-failover the source may have gone on (local failovers while
        // cut off), so the jump is far beyond what it can have reached.
        let newest = db.epoch_history().last().map_or(0, |(e, _)| *e);
        let above = match &handover {
            Some(h) => newest.max(h.source_epoch) + 1,
            None if planned => newest + 1,
            None => newest + FORCED_EPOCH_JUMP,
        };
        let source_server = source_server.to_string();
        let name = database.to_string();
        self.change(&group, move |c, _| {
            let options = c.database_options.entry(name.clone()).or_default();
            let Some(source) = options
                .geo_source
                .clone()
                .filter(|s| s.server.eq_ignore_ascii_case(&source_server))
            else {
                return Err(Error::sql(
                    "55000",
                    format!("\"{name}\" is no geo-secondary of server '{source_server}' any more"),
                ));
            };
            options.geo_source = None;
            // Written here from now on, and by nobody else.
            options.read_only = false;
            options.epoch_offset = options.epoch_offset.max(above.saturating_sub(c.epoch));
            if let Some(h) = &handover {
                options.succeeded = Some(source);
                for link in &h.links {
                    let taken = options
                        .geo_secondaries
                        .iter()
                        .any(|p| p.server.eq_ignore_ascii_case(&link.server));
                    if taken || link.server.eq_ignore_ascii_case(&own) {
                        continue;
                    }
                    options.geo_secondaries.push(GeoPartner {
                        server: link.server.clone(),
                        database: link.database.clone(),
                        allow_connections: if link.readable {
                            SecondaryConnections::All
                        } else {
                            SecondaryConnections::No
                        },
                    });
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(end)
    }

    /// `ALTER DATABASE d FAILOVER` (planned) or `FORCE_FAILOVER_ALLOW_DATA_LOSS`
    /// on the primary of the geo-secondary's region: planned asks the source
    /// to hand the database over and waits until it is written here; forced
    /// makes it independent at once with what it has, and links the old
    /// source as its geo-secondary (it rejoins, its divergent tail
    /// discarded, when it is reachable).
    pub(super) async fn geo_failover(
        self: &Arc<Self>,
        database: &str,
        forced: bool,
    ) -> Result<String> {
        let mut found = None;
        for (key, slot) in self.lock().iter() {
            if let (Some(part), Some(config)) = (&slot.part, &slot.config) {
                if config.is_geo_secondary(database) {
                    found = Some((key.clone(), part.clone(), config.clone()));
                }
            }
        }
        let Some((group, part, config)) = found else {
            return Err(Error::sql(
                "55000",
                format!("database \"{database}\" is not a geo-secondary here: a geo-failover is run on the geo-secondary's region"),
            )
            .with_hint("see sys.geo_replication_links"));
        };
        let Part::Primary(primary) = part else {
            return Err(Error::sql(
                "55000",
                format!("this node is a secondary of availability group \"{group}\"; its primary is \"{}\"", config.primary),
            )
            .with_hint("run the geo-failover on the region's primary replica"));
        };
        let Some(source) = config.database_options(database).geo_source else {
            return Err(Error::sql(
                "55000",
                format!("database \"{database}\" is not a geo-secondary here"),
            ));
        };
        let forwarder = primary.forwarder(database).ok_or_else(|| {
            Error::sql(
                "55000",
                format!("the geo-secondary \"{database}\" takes no log in here yet"),
            )
        })?;
        if forced {
            let end = self
                .make_independent(
                    database,
                    &source.server,
                    false,
                    0,
                    Some(Handover {
                        source_epoch: 0,
                        links: vec![HandedLink {
                            server: source.server.clone(),
                            database: source.database.clone(),
                            readable: true,
                        }],
                    }),
                )
                .await
                .map_err(|why| Error::sql("55000", why))?;
            return Ok(format!(
                "\"{database}\" is written in this region now, from LSN {end}; transactions of {} on server '{}' after that are lost, and that copy rejoins as a geo-secondary when it is reachable (the range it discards is reported then)",
                source.database, source.server
            ));
        }
        let db = forwarder.intake().database().clone();
        forwarder.request_failover().map_err(|why| {
            Error::sql("08006", why).with_hint(format!(
                "a planned geo-failover needs the link up; ALTER DATABASE {database} FORCE_FAILOVER_ALLOW_DATA_LOSS acts at once, losing what has not arrived"
            ))
        })?;
        let deadline = std::time::Instant::now() + GEO_FAILOVER_WITHIN;
        loop {
            // The definition says so first; the primary restarted with it
            // once the database's fence is a primary's.
            let written = matches!(self.part(&group), Some(Part::Primary(_)))
                && self
                    .published_config(&group)
                    .is_some_and(|c| c.has_database(database) && !c.is_geo_secondary(database))
                && matches!(db.fence(), crate::engine::Fence::Primary(_));
            if written {
                self.wait_writable(&group).await?;
                return Ok(format!(
                    "\"{database}\" is written in this region now; {} on server '{}' is its geo-secondary",
                    source.database, source.server
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::sql(
                    "55000",
                    format!("the source ({} on server '{}') did not hand \"{database}\" over within {} s", source.database, source.server, GEO_FAILOVER_WITHIN.as_secs()),
                )
                .with_hint("see the source region's log and sys.dm_geo_replication_link_status; nothing changed here"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A geo-failover moved `request.database`'s source to the requester:
    /// the database here (a geo-secondary of the old source, or — `deposed`
    /// — the old source itself) takes its log from the new one.
    async fn take_new_source(
        self: &Arc<Self>,
        group: &str,
        request: &GeoRequest,
        deposed: bool,
    ) -> std::result::Result<Arc<Forwarder>, String> {
        let source = GeoPartner {
            server: request.from_server.clone(),
            database: request.source_database.clone(),
            allow_connections: if request.readable {
                SecondaryConnections::All
            } else {
                SecondaryConnections::No
            },
        };
        let (database, read_only) = (request.database.clone(), request.read_only);
        self.change(group, move |c, _| {
            let options = c.database_options.entry(database).or_default();
            options.geo_source = Some(source);
            options.read_only = read_only;
            options.succeeded = None;
            if deposed {
                // Whatever this copy fed follows the new source (a planned
                // handover moved those links) or is cut off with it.
                options.geo_secondaries.clear();
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("cannot follow the new source here: {e}"))?;
        match self.part(group) {
            Some(Part::Primary(p)) => p.forwarder(&request.database).ok_or_else(|| {
                format!(
                    "\"{}\" follows server '{}' now but takes no log in yet",
                    request.database, request.from_server
                )
            }),
            _ => Err("this node stopped being its region's primary".into()),
        }
    }

    /// `SELECT sys.wait_for_database_copy_sync('db', 'server')`, on the
    /// source's primary: waits until the geo-secondary on `server` has
    /// hardened this database's log end as it is now (every transaction
    /// committed so far); returns that LSN.
    pub async fn wait_for_copy_sync(&self, database: &str, server: &str) -> Result<Lsn> {
        let group = self.primary_group_of(database)?;
        let Some(Part::Primary(primary)) = self.part(&group) else {
            return Err(Error::sql("55000", "this node stopped being the primary"));
        };
        let Some(link) = primary.geo_link(database, server) else {
            return Err(Error::sql(
                "42704",
                format!("database \"{database}\" has no geo-secondary on server '{server}'"),
            )
            .with_hint("see sys.geo_replication_links"));
        };
        let target = self.engine.database(database)?.log().end_lsn();
        let deadline = std::time::Instant::now() + COPY_SYNC_WITHIN;
        loop {
            let view = link.view();
            if view.hardened_lsn >= target {
                return Ok(target);
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::sql(
                    "57014",
                    format!(
                        "the geo-secondary on server '{server}' did not harden LSN {target} of \"{database}\" within {} s (it is at {}){}",
                        COPY_SYNC_WITHIN.as_secs(),
                        view.hardened_lsn,
                        view.last_error.map(|e| format!("; the link: {e}")).unwrap_or_default()
                    ),
                )
                .with_hint("see sys.dm_geo_replication_link_status; call it again to keep waiting"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
        for (key, p) in &primaries {
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
            // The source names whom it took the database over from: that
            // copy (deposed) or a geo-secondary of it (re-linked).
            let succeeds = |server: &str, database: &str| {
                request
                    .succeeds
                    .as_ref()
                    .is_some_and(|(s, d)| s.eq_ignore_ascii_case(server) && d == database)
            };
            let own = self
                .cluster
                .as_ref()
                .and_then(|c| c.state().server_name.clone())
                .unwrap_or_default();
            let group = key.clone();
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
                                Some(s) if succeeds(&s.server, &s.database) => {
                    tracing::warn!(database = %request.database, old = %s.server, new = %request.from_server, "the geo source moved (geo-failover): following the new one");
                    self.take_new_source(&group, request, false).await
                }
                None if !own.is_empty() && succeeds(&own, &request.database) => {
                    tracing::warn!(database = %request.database, new = %request.from_server, "server '{}' took this database over (geo-failover): it becomes its geo-secondary here", request.from_server);
                    self.take_new_source(&group, request, true).await
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

/// A termination's failure, for the session.
fn terminate_error(server: &str, e: TerminateError) -> Error {
    match e {
        TerminateError::Refused(why) => Error::sql(
            "55000",
            format!("the geo-secondary on server '{server}' did not become independent: {why}"),
        )
        .with_hint("nothing changed; try again, or use TERMINATION = FORCED"),
        TerminateError::NoAnswer(why) => Error::sql(
            "55000",
            format!("the geo-secondary on server '{server}' did not confirm that it became independent: {why}"),
        )
        .with_hint(format!("see sys.geo_replication_links on server '{server}'; the link stays until removed with TERMINATION = FORCED")),
    }
}
