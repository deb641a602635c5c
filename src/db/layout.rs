//! The storage layout of the event tables (docs/schema.md, "Storage
//! layouts"): `rowstore`, where the wide tables' primary key finds resends,
//! or `columnstore`, where TimescaleDB's direct compress COPYs rows straight
//! into compressed chunks and narrow key tables find resends
//! (`sql/timescaledb/layout.sql`).
//!
//! The layout is chosen once per database and recorded
//! (`agent_telemetry_settings`), with its reason; `--storage-layout` names
//! one to switch to. Plain PostgreSQL has only the row store. The copy
//! stage reads the [`Layout`] this hands on and writes accordingly.

use std::{fmt, time::Duration};

use tokio_postgres::Client;

use crate::config::StorageLayout;

/// How much longer than `--key-window` the key tables keep a key. The
/// writer relies on a key while its row is younger than the window by the
/// service's clock; the retention job deletes by the database's. The margin
/// covers the clocks' difference, so a key is never gone while a resend of
/// its row would skip the look-up in the stored rows (docs/reliability.md).
pub const KEY_MARGIN: Duration = Duration::from_secs(3_600);

/// Arbitrary, fixed: the advisory lock the key tables' retention job
/// (`agent_telemetry_prune_keys`, which writes it as a literal) takes
/// exclusively and a flush with rows past the key window takes shared,
/// from its look-up in the stored rows to its commit (src/copy/writer.rs).
pub const KEY_PRUNE_LOCK: i64 = 0x6167_656e_746b_6579; // "agentkey"

/// The first TimescaleDB whose direct compress takes a COPY into a
/// hypertable with continuous aggregates (2.21 to 2.23 refuse it, "the
/// destination table has continuous aggregates", and fall back to the row
/// store; every event table here has them).
const DIRECT_COMPRESS_SINCE: (u32, u32) = (2, 24);
/// The first with the setting at all: an explicit `--storage-layout
/// columnstore` is allowed from here, and the start-up probe says whether
/// direct compress takes its COPYs.
const COLUMNSTORE_SINCE: (u32, u32) = (2, 21);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Rowstore,
    Columnstore,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Rowstore => "rowstore",
            Layout::Columnstore => "columnstore",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rowstore" => Some(Layout::Rowstore),
            "columnstore" => Some(Layout::Columnstore),
            _ => None,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The layout in use and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub layout: Layout,
    pub reason: String,
    /// What a switch did this run (keys copied, keys dropped), if any.
    pub switched: Option<String>,
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.layout, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("--storage-layout columnstore needs TimescaleDB {}.{} or later (direct compress); this server has {version}", COLUMNSTORE_SINCE.0, COLUMNSTORE_SINCE.1)]
    Unsupported { version: String },
    #[error("--storage-layout columnstore needs TimescaleDB; this database is in plain mode")]
    Plain,
    #[error("database error: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// `version` ("2.28.3", "2.23.0-dev") as (major, minor).
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether `version` has direct compress on COPY into our tables.
fn supports_direct_compress(version: &str) -> bool {
    major_minor(version) >= DIRECT_COMPRESS_SINCE
}

/// The recorded layout, or rowstore where none is (plain mode, a database
/// from before layouts).
pub async fn recorded(client: &Client) -> Result<Option<Layout>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT value FROM agent_telemetry_settings WHERE name = 'layout'",
            &[],
        )
        .await?
        .and_then(|r| Layout::parse(r.get(0))))
}

/// Decides the layout (TimescaleDB mode), switches to it if it is not the
/// recorded one, and records it. `version` is TimescaleDB's; `key_window`
/// how long the recent key tables keep a key, `archive_window` the
/// archives (the longest asked for yet: it only grows).
pub async fn apply(
    client: &mut Client,
    wanted: StorageLayout,
    version: &str,
    key_window: Duration,
    archive_window: Duration,
) -> Result<Chosen, LayoutError> {
    let supported = supports_direct_compress(version);
    let was = recorded(client).await?;
    let (layout, reason) = match (wanted, was) {
        (StorageLayout::Columnstore, _) if major_minor(version) < COLUMNSTORE_SINCE => {
            return Err(LayoutError::Unsupported {
                version: version.to_owned(),
            });
        }
        (StorageLayout::Columnstore, _) => (
            Layout::Columnstore,
            "--storage-layout columnstore".to_owned(),
        ),
        (StorageLayout::Rowstore, _) => (Layout::Rowstore, "--storage-layout rowstore".to_owned()),
        (StorageLayout::Auto, Some(l)) => (l, "recorded for this database".to_owned()),
        (StorageLayout::Auto, None) if !supported => (
            Layout::Rowstore,
            format!(
                "TimescaleDB {version} has no direct compress (since {}.{})",
                DIRECT_COMPRESS_SINCE.0, DIRECT_COMPRESS_SINCE.1
            ),
        ),
        (StorageLayout::Auto, None) => {
            // An existing database is switched only when asked: the switch
            // copies the key window's keys, which takes a while on a big one.
            let rows: bool = client
                .query_one("SELECT EXISTS (SELECT FROM agent_events)", &[])
                .await?
                .get(0);
            if rows {
                (
                    Layout::Rowstore,
                    "an existing database keeps the row store; switch with --storage-layout columnstore"
                        .to_owned(),
                )
            } else {
                (
                    Layout::Columnstore,
                    format!("TimescaleDB {version} has direct compress"),
                )
            }
        }
    };
    let tx = client.transaction().await?;
    let done: String = tx
        .query_one(
            "SELECT agent_telemetry_set_layout($1, $2::text::interval, $3::text::interval)",
            &[
                &layout.as_str(),
                &crate::time::pg_interval(key_window),
                &crate::time::pg_interval(archive_window),
            ],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO agent_telemetry_settings (name, value, reason) VALUES ('layout', $1, $2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, reason = excluded.reason, set_at = now()
         WHERE agent_telemetry_settings.value IS DISTINCT FROM excluded.value",
        &[&layout.as_str(), &reason],
    )
    .await?;
    tx.commit().await?;
    let mut reason = reason;
    if layout == Layout::Columnstore && !direct_compress_takes_a_copy(client).await? {
        // Still exact (the key tables find resends), only slower: said
        // loudly, in the reason `migrate` prints and in the log.
        reason.push_str(&format!(
            "; but direct compress did not take a test COPY on TimescaleDB {version} (its WARNING in the server log says why): rows go to the row store"
        ));
        tracing::error!(
            version,
            "direct compress is not active: COPYs fall back to the row store (slower; resends are still found)"
        );
    }
    Ok(Chosen {
        layout,
        reason,
        switched: (!done.is_empty()).then_some(done),
    })
}

/// Whether a COPY into agent_events with direct compress on lands in a
/// compressed chunk: one row, COPYed in a transaction that is rolled back,
/// then looked for in its chunk's heap, where a fallback puts it.
async fn direct_compress_takes_a_copy(client: &mut Client) -> Result<bool, tokio_postgres::Error> {
    use futures_util::SinkExt;
    let probe = uuid::Uuid::new_v4();
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL timescaledb.enable_direct_compress_copy = on")
        .await?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(
            "COPY agent_events (id, \"timestamp\", event_type, agent_id, agent_version, session_id, project_id) FROM STDIN",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    sink.send(bytes::Bytes::from(format!(
        "{probe}\t{now}\tprobe\tprobe\t0\t{probe}\t0\n"
    )))
    .await?;
    sink.finish().await?;
    let chunk: String = tx
        .query_one(
            "SELECT tableoid::regclass::text FROM agent_events WHERE id = $1",
            &[&probe],
        )
        .await?
        .get(0);
    // The chunk's own heap: a compressed row is not in it.
    let in_heap: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM ONLY {chunk} WHERE id = $1"),
            &[&probe],
        )
        .await?
        .get(0);
    tx.rollback().await?;
    Ok(in_heap == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retention_job_takes_the_writers_lock() {
        let sql = include_str!("../../sql/timescaledb/layout.sql");
        assert!(
            sql.contains(&format!("pg_advisory_xact_lock({KEY_PRUNE_LOCK})")),
            "layout.sql's prune job must lock {KEY_PRUNE_LOCK}"
        );
    }

    #[test]
    fn direct_compress_is_known_from_its_first_version() {
        assert!(supports_direct_compress("2.24.0"));
        assert!(!supports_direct_compress("2.23.0-dev"));
        assert!(supports_direct_compress("2.28.3"));
        assert!(supports_direct_compress("3.0.0"));
        assert!(!supports_direct_compress("2.20.9"));
        assert!(!supports_direct_compress("2.9.3"));
        assert!(!supports_direct_compress(""));
    }
}
