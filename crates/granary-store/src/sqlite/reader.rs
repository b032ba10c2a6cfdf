//! Reader threads: activation loads and idempotency look-ups.

use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::store::Counters;
use crate::types::{
    DueReminder, EventRecord, GrainKey, IdempotencyRecord, LoadedGrain, Reminder, Snapshot,
};

pub(crate) enum ReadOp {
    Load {
        key: GrainKey,
        reply: oneshot::Sender<Result<LoadedGrain, StoreError>>,
    },
    FindIdempotent {
        key: GrainKey,
        idempotency_key: String,
        reply: oneshot::Sender<Result<Option<IdempotencyRecord>, StoreError>>,
    },
    DueReminders {
        now: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<DueReminder>, StoreError>>,
    },
}

pub(crate) fn run(
    mut conn: Connection,
    ops: Arc<Mutex<mpsc::Receiver<ReadOp>>>,
    counters: Arc<Counters>,
) {
    loop {
        let op = {
            let Ok(rx) = ops.lock() else { return };
            match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            }
        };
        match op {
            ReadOp::Load { key, reply } => {
                let result = load(&mut conn, &key);
                counters.loaded();
                let _ = reply.send(result);
            }
            ReadOp::FindIdempotent {
                key,
                idempotency_key,
                reply,
            } => {
                let _ = reply.send(find_idempotent(&conn, &key, &idempotency_key));
            }
            ReadOp::DueReminders { now, limit, reply } => {
                let _ = reply.send(due_reminders(&conn, now, limit));
            }
        }
    }
}

fn load(conn: &mut Connection, key: &GrainKey) -> Result<LoadedGrain, StoreError> {
    // One read transaction: the snapshot and the events after it come from
    // the same point in time even while another process is appending.
    let tx = conn.transaction()?;
    let snapshot = tx
        .query_row(
            "SELECT version, payload FROM snapshots WHERE kind = ?1 AND grain = ?2",
            params![key.kind, key.id],
            |row| {
                Ok(Snapshot {
                    version: row.get::<_, i64>(0)? as u64,
                    payload: row.get(1)?,
                })
            },
        )
        .optional()?;
    let after = snapshot.as_ref().map_or(0, |s| s.version);
    let mut events = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT version, payload FROM events WHERE kind = ?1 AND grain = ?2 AND version > ?3 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![key.kind, key.id, after as i64], |row| {
            Ok(EventRecord {
                version: row.get::<_, i64>(0)? as u64,
                payload: row.get(1)?,
            })
        })?;
        for row in rows {
            events.push(row?);
        }
    }
    // The epoch of the stream's last writer: a newer owner than the one
    // loading may have written (the loader is then a stale owner).
    let epoch = tx
        .prepare_cached(
            "SELECT epoch FROM events WHERE kind = ?1 AND grain = ?2 ORDER BY version DESC LIMIT 1",
        )?
        .query_row(params![key.kind, key.id], |row| row.get::<_, i64>(0))
        .optional()?
        .map_or(0, |e| e as u64);
    tx.commit()?;
    let version = events.last().map_or(after, |e| e.version);
    Ok(LoadedGrain {
        snapshot,
        events,
        version,
        epoch,
    })
}

fn find_idempotent(
    conn: &Connection,
    key: &GrainKey,
    idempotency_key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT request_hash, reply FROM idempotency WHERE kind = ?1 AND grain = ?2 AND key = ?3",
    )?;
    let found = stmt
        .query_row(params![key.kind, key.id, idempotency_key], |row| {
            Ok(IdempotencyRecord {
                key: idempotency_key.to_owned(),
                request_hash: row.get::<_, i64>(0)? as u64,
                reply: row.get(1)?,
            })
        })
        .optional()?;
    Ok(found)
}

fn due_reminders(
    conn: &Connection,
    now: u64,
    limit: usize,
) -> Result<Vec<DueReminder>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, grain, id, due, payload FROM reminders WHERE due <= ?1 ORDER BY due LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now as i64, limit as i64], |row| {
        Ok(DueReminder {
            key: GrainKey::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
            reminder: Reminder {
                id: row.get(2)?,
                due: row.get::<_, i64>(3)? as u64,
                payload: row.get(4)?,
            },
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(StoreError::from)
}
