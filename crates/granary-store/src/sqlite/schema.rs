//! The embedded store's schema and its migrations.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::StoreError;

/// The schema version this build writes. Each entry of [`MIGRATIONS`] takes
/// the schema from its index to the next version.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[
    // 1: events, snapshots, idempotency records.
    "CREATE TABLE events (
        kind TEXT NOT NULL,
        grain TEXT NOT NULL,
        version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (kind, grain, version)
    ) WITHOUT ROWID;
    CREATE TABLE snapshots (
        kind TEXT NOT NULL,
        grain TEXT NOT NULL,
        version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (kind, grain)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency (
        kind TEXT NOT NULL,
        grain TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash INTEGER NOT NULL,
        reply BLOB NOT NULL,
        PRIMARY KEY (kind, grain, key)
    ) WITHOUT ROWID;",
    // 2: the owner epoch (fencing token) that wrote each event.
    "ALTER TABLE events ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;",
    // 3: reminders (durable timers), set and cancelled with appends.
    "CREATE TABLE reminders (
        kind TEXT NOT NULL,
        grain TEXT NOT NULL,
        id TEXT NOT NULL,
        due INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (kind, grain, id)
    ) WITHOUT ROWID;
    CREATE INDEX reminders_due ON reminders (due);",
];

/// Brings the file's schema up to [`SCHEMA_VERSION`], in one immediate
/// transaction so two processes starting at once do not both migrate.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS granary_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )?;
    let found: i64 = tx
        .query_row(
            "SELECT value FROM granary_meta WHERE key = 'schema_version'",
            [],
            |row| row.get::<_, String>(0),
        )
        .optional()?
        .map(|v| v.parse::<i64>().unwrap_or(i64::MAX))
        .unwrap_or(0);
    if found < 0 {
        return Err(StoreError::Engine(format!(
            "{}: schema_version {found} is not a version; the file is damaged",
            path.display()
        )));
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(migration)?;
        tracing::info!(version = index + 1, path = %path.display(), "applied event store migration");
    }
    tx.execute(
        "INSERT INTO granary_meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}
