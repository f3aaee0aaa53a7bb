//! What `sys.dm_hadr_auto_page_repair` shows: one row per repair attempt of
//! a page, its status kept current, at most [`MAX_ROWS_PER_DATABASE`] rows
//! per database (the oldest finished rows go first). Pure; time passed in.

use std::sync::Mutex;

/// Rows kept per database, as SQL Server keeps.
pub const MAX_ROWS_PER_DATABASE: usize = 100;

/// Where a page's repair stands; the numbers are SQL Server's `page_status`
/// where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    /// Found; a partner is being asked (SQL Server 2).
    QueuedForRequest,
    /// A partner answered; the page is being written (SQL Server 4).
    QueuedForRepair,
    /// Written, or replaced by a later record (SQL Server 5).
    Repaired,
    /// No partner has a good copy.
    Irreparable,
}

impl PageStatus {
    /// SQL Server's number (6 for irreparable, which it does not have).
    pub fn code(self) -> i64 {
        match self {
            PageStatus::QueuedForRequest => 2,
            PageStatus::QueuedForRepair => 4,
            PageStatus::Repaired => 5,
            PageStatus::Irreparable => 6,
        }
    }

    /// The name shown in `page_status_desc`.
    pub fn name(self) -> &'static str {
        match self {
            PageStatus::QueuedForRequest => "QUEUED_FOR_REQUEST_FROM_PARTNER",
            PageStatus::QueuedForRepair => "QUEUED_FOR_AUTOMATIC_PAGE_REPAIR",
            PageStatus::Repaired => "AUTOMATIC_PAGE_REPAIR_SUCCEEDED",
            PageStatus::Irreparable => "IRREPARABLE",
        }
    }

    fn finished(self) -> bool {
        matches!(self, PageStatus::Repaired | PageStatus::Irreparable)
    }
}

/// One row of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairRow {
    /// The database.
    pub database: String,
    /// The page.
    pub pgno: u32,
    /// Where the repair stands.
    pub status: PageStatus,
    /// When the row last changed (µs since the Unix epoch).
    pub modified_us: i64,
    /// The replica whose copy was written, when one was.
    pub partner: Option<String>,
    /// What happened last, in words.
    pub detail: String,
}

/// The rows of every database of this node.
#[derive(Debug, Default)]
pub struct History {
    rows: Mutex<Vec<RepairRow>>,
}

impl History {
    /// Records where the repair of `pgno` of `database` stands: updates its
    /// unfinished row, or starts a new row (dropping the database's oldest
    /// finished rows past the limit).
    pub fn record(
        &self,
        database: &str,
        pgno: u32,
        status: PageStatus,
        partner: Option<&str>,
        detail: &str,
        now_us: i64,
    ) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let open = rows
            .iter_mut()
            .rfind(|r| r.database == database && r.pgno == pgno && !r.status.finished());
        let row = RepairRow {
            database: database.to_string(),
            pgno,
            status,
            modified_us: now_us,
            partner: partner.map(str::to_string),
            detail: detail.to_string(),
        };
        if status.finished() {
            crate::telemetry::get().page_repair(status == PageStatus::Repaired);
        }
        match open {
            Some(existing) => *existing = row,
            None => rows.push(row),
        }
        while rows.iter().filter(|r| r.database == database).count() > MAX_ROWS_PER_DATABASE {
            let oldest = rows
                .iter()
                .position(|r| r.database == database && r.status.finished())
                .or_else(|| rows.iter().position(|r| r.database == database));
            match oldest {
                Some(i) => {
                    rows.remove(i);
                }
                None => break,
            }
        }
    }

    /// Every row, oldest first.
    pub fn rows(&self) -> Vec<RepairRow> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repair_is_one_row_whose_status_moves_on() {
        let h = History::default();
        h.record(
            "app",
            7,
            PageStatus::QueuedForRequest,
            None,
            "bad checksum",
            1,
        );
        h.record(
            "app",
            7,
            PageStatus::QueuedForRepair,
            Some("r2"),
            "answered",
            2,
        );
        h.record("app", 7, PageStatus::Repaired, Some("r2"), "written", 3);
        let rows = h.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, PageStatus::Repaired);
        assert_eq!(rows[0].partner.as_deref(), Some("r2"));
        assert_eq!(rows[0].modified_us, 3);
        // The same page damaged again later is a new row.
        h.record("app", 7, PageStatus::QueuedForRequest, None, "again", 4);
        assert_eq!(h.rows().len(), 2);
    }

    #[test]
    fn at_most_one_hundred_rows_per_database_the_oldest_finished_go_first() {
        let h = History::default();
        h.record("other", 1, PageStatus::Repaired, None, "", 0);
        h.record(
            "app",
            1,
            PageStatus::QueuedForRequest,
            None,
            "still open",
            0,
        );
        for pgno in 2..=150u32 {
            h.record(
                "app",
                pgno,
                PageStatus::Irreparable,
                None,
                "",
                i64::from(pgno),
            );
        }
        let rows = h.rows();
        let app: Vec<&RepairRow> = rows.iter().filter(|r| r.database == "app").collect();
        assert_eq!(app.len(), MAX_ROWS_PER_DATABASE);
        assert!(app.iter().any(|r| r.pgno == 1), "the open row stays");
        assert!(app.iter().any(|r| r.pgno == 150));
        assert!(!app.iter().any(|r| r.pgno == 2), "the oldest finished went");
        assert_eq!(rows.iter().filter(|r| r.database == "other").count(), 1);
    }

    #[test]
    fn statuses_have_sql_servers_numbers() {
        let table = [
            (PageStatus::QueuedForRequest, 2),
            (PageStatus::QueuedForRepair, 4),
            (PageStatus::Repaired, 5),
            (PageStatus::Irreparable, 6),
        ];
        for (status, code) in table {
            assert_eq!(status.code(), code, "{}", status.name());
        }
    }
}
