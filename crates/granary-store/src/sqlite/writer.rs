//! The writer thread: group commit.
//!
//! One thread owns the write connection. It blocks for one request, then
//! takes every request that queued up meanwhile (up to `max_batch`) and
//! writes them all in one transaction, so they share a single fsync. Each
//! request runs in its own savepoint: a version conflict or a failed insert
//! undoes that request only, never its neighbours in the batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::Counters;
use crate::error::StoreError;
use crate::types::{AppendRequest, GrainKey, ReminderChange, Snapshot};

pub(crate) enum WriteOp {
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Snapshot {
        key: GrainKey,
        snapshot: Snapshot,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    FinishReminder {
        key: GrainKey,
        id: String,
        due: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What one request's savepoint produced, answered only after the commit.
enum Outcome {
    Appended(oneshot::Sender<Result<u64, StoreError>>, u64),
    Snapshotted(oneshot::Sender<Result<(), StoreError>>),
    /// Refused inside the batch. Answered only after the batch's commit, so
    /// a refused caller that reloads sees its neighbours' writes.
    Refused(WriteReply, StoreError),
}

enum WriteReply {
    Append(oneshot::Sender<Result<u64, StoreError>>),
    Snapshot(oneshot::Sender<Result<(), StoreError>>),
}

impl WriteReply {
    fn fail(self, err: StoreError) {
        match self {
            WriteReply::Append(reply) => {
                let _ = reply.send(Err(err));
            }
            WriteReply::Snapshot(reply) => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

pub(crate) fn run(
    mut conn: Connection,
    ops: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = ops.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        write_batch(&mut conn, &mut batch, &counters);
    }
}

fn write_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>, counters: &Counters) {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            let err = StoreError::from(err);
            fail_all(batch.drain(..), &err);
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut appended = 0u64;
    let mut ops = batch.drain(..);
    while let Some(op) = ops.next() {
        match op {
            WriteOp::Append { request, reply } => match append_one(&mut tx, &request) {
                Ok(version) => {
                    appended += 1;
                    outcomes.push(Outcome::Appended(reply, version));
                }
                Err(err) => {
                    if matches!(err, StoreError::Conflict { .. }) {
                        counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    outcomes.push(Outcome::Refused(WriteReply::Append(reply), err));
                }
            },
            WriteOp::Snapshot {
                key,
                snapshot,
                reply,
            } => match snapshot_one(&tx, &key, &snapshot) {
                Ok(()) => outcomes.push(Outcome::Snapshotted(reply)),
                Err(err) => outcomes.push(Outcome::Refused(WriteReply::Snapshot(reply), err)),
            },
            WriteOp::FinishReminder {
                key,
                id,
                due,
                reply,
            } => {
                let finished = tx
                    .execute(
                        "DELETE FROM reminders WHERE kind = ?1 AND grain = ?2 AND id = ?3 AND due = ?4",
                        params![key.kind, key.id, id, due as i64],
                    )
                    .map(|_| ())
                    .map_err(StoreError::from);
                match finished {
                    Ok(()) => outcomes.push(Outcome::Snapshotted(reply)),
                    Err(err) => outcomes.push(Outcome::Refused(WriteReply::Snapshot(reply), err)),
                }
            }
        }
        if tx.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk
            // full): nothing of this batch is written, and nothing after
            // this point may run outside a transaction.
            let err = StoreError::Engine("the database rolled the batch back".into());
            tracing::warn!(error = %err, "event store batch aborted");
            fail_outcomes(outcomes, &err);
            fail_all(ops, &err);
            return;
        }
    }
    drop(ops);
    match tx.commit() {
        Ok(()) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.appends.fetch_add(appended, Ordering::Relaxed);
            for outcome in outcomes {
                match outcome {
                    Outcome::Appended(reply, version) => {
                        let _ = reply.send(Ok(version));
                    }
                    Outcome::Snapshotted(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                    Outcome::Refused(reply, err) => reply.fail(err),
                }
            }
        }
        Err(err) => {
            // Nothing of the batch is durable; every caller hears so and
            // none of them applies its events.
            let err = StoreError::from(err);
            tracing::warn!(error = %err, "event store commit failed");
            fail_outcomes(outcomes, &err);
        }
    }
}

fn fail_outcomes(outcomes: Vec<Outcome>, err: &StoreError) {
    for outcome in outcomes {
        match outcome {
            Outcome::Appended(reply, _) => WriteReply::Append(reply).fail(err.clone()),
            Outcome::Snapshotted(reply) => WriteReply::Snapshot(reply).fail(err.clone()),
            // Its own refusal is still the truer answer.
            Outcome::Refused(reply, own) => reply.fail(own),
        }
    }
}

fn fail_all(ops: impl Iterator<Item = WriteOp>, err: &StoreError) {
    for op in ops {
        match op {
            WriteOp::Append { reply, .. } => WriteReply::Append(reply).fail(err.clone()),
            WriteOp::Snapshot { reply, .. } | WriteOp::FinishReminder { reply, .. } => {
                WriteReply::Snapshot(reply).fail(err.clone())
            }
        }
    }
}

fn append_one(tx: &mut Transaction<'_>, request: &AppendRequest) -> Result<u64, StoreError> {
    let key = &request.key;
    let sp = tx.savepoint_with_name("append")?;
    // The stream's version and the epoch of its last writer are read
    // inside the write transaction: writers are serialized by SQLite's
    // write lock (across processes too), so the checks and the insert are
    // atomic.
    let (actual, last_epoch): (u64, u64) = sp
        .prepare_cached(
            "SELECT version, epoch FROM events WHERE kind = ?1 AND grain = ?2 ORDER BY version DESC LIMIT 1",
        )?
        .query_row(params![key.kind, key.id], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .unwrap_or((0, 0));
    if request.epoch < last_epoch {
        return Err(StoreError::Fenced {
            key: key.clone(),
            epoch: request.epoch,
            newer: last_epoch,
        });
    }
    if actual != request.expected_version {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected: request.expected_version,
            actual,
        });
    }
    {
        let mut insert = sp.prepare_cached(
            "INSERT INTO events (kind, grain, version, payload, epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (offset, payload) in request.events.iter().enumerate() {
            let version = request.expected_version + offset as u64 + 1;
            insert.execute(params![
                key.kind,
                key.id,
                version as i64,
                payload,
                request.epoch as i64
            ])?;
        }
    }
    for change in &request.reminders {
        match change {
            ReminderChange::Set(reminder) => {
                sp.prepare_cached(
                    "INSERT INTO reminders (kind, grain, id, due, payload) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (kind, grain, id) DO UPDATE SET due = excluded.due, payload = excluded.payload",
                )?
                .execute(params![
                    key.kind,
                    key.id,
                    reminder.id,
                    reminder.due as i64,
                    reminder.payload
                ])?;
            }
            ReminderChange::Cancel { id } => {
                sp.prepare_cached(
                    "DELETE FROM reminders WHERE kind = ?1 AND grain = ?2 AND id = ?3",
                )?
                .execute(params![key.kind, key.id, id])?;
            }
        }
    }
    if let Some(record) = &request.idempotency {
        let existing: Option<i64> = sp
            .query_row(
                "SELECT request_hash FROM idempotency WHERE kind = ?1 AND grain = ?2 AND key = ?3",
                params![key.kind, key.id, record.key],
                |row| row.get(0),
            )
            .optional()?;
        if existing.is_some() {
            return Err(StoreError::DuplicateIdempotencyKey {
                key: key.clone(),
                idempotency_key: record.key.clone(),
            });
        }
        sp.execute(
            "INSERT INTO idempotency (kind, grain, key, request_hash, reply) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.kind, key.id, record.key, record.request_hash as i64, record.reply],
        )?;
    }
    sp.commit()?;
    Ok(request.expected_version + request.events.len() as u64)
}

fn snapshot_one(
    tx: &Transaction<'_>,
    key: &GrainKey,
    snapshot: &Snapshot,
) -> Result<(), StoreError> {
    let last: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM events WHERE kind = ?1 AND grain = ?2",
        params![key.kind, key.id],
        |row| row.get(0),
    )?;
    if snapshot.version == 0 || snapshot.version > last as u64 {
        return Err(StoreError::Invalid(format!(
            "snapshot of {key} at version {} but the stream is at {last}",
            snapshot.version
        )));
    }
    tx.execute(
        "INSERT INTO snapshots (kind, grain, version, payload) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, grain) DO UPDATE SET version = excluded.version, payload = excluded.payload
         WHERE excluded.version > snapshots.version",
        params![key.kind, key.id, snapshot.version as i64, snapshot.payload],
    )?;
    Ok(())
}
