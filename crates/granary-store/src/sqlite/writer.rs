//! The writer thread: group commit.
//!
//! One thread owns the write connection. It blocks for one request, then
//! takes every request that queued up meanwhile (up to `max_batch`) and
//! writes them all in one transaction, so they share a single fsync. A
//! request's checks are reads; its writes are one statement (atomic on its
//! own) or run in a savepoint: a version conflict or a failed insert undoes
//! that request only, never its neighbours in the batch.
//!
//! The writer remembers the head of each stream it appended to ([`Heads`]),
//! so the common append (at the head it last wrote) reads nothing; what it
//! remembers is dropped whenever another connection has committed.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::store::Counters;
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
    let mut heads = Heads::default();
    while let Ok(first) = ops.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        write_batch(&mut conn, &mut heads, &mut batch, &counters);
    }
}

/// The most streams whose heads the writer remembers; past it, it forgets
/// them all and starts again (a stream not remembered costs two point
/// look-ups, not a wrong answer).
const MAX_HEADS: usize = 100_000;

/// The head (version, epoch of its last event) of streams this writer
/// appended to, as of its last commit. Valid only while no other
/// connection has written: `PRAGMA data_version` changes exactly when one
/// has committed, and it is read at the start of every batch, inside its
/// write transaction (so nobody else can commit until the batch's own
/// commit). A refusal is never taken from here: a head that does not match
/// the request is read again from the table.
#[derive(Default)]
pub(crate) struct Heads {
    known: HashMap<GrainKey, (u64, u64)>,
    data_version: Option<i64>,
}

impl Heads {
    /// Forgets everything if another connection committed since the last
    /// batch (or that cannot be told).
    fn start_batch(&mut self, conn: &Connection) {
        let now = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut pragma| pragma.query_row([], |row| row.get::<_, i64>(0)))
            .ok();
        if now.is_none() || now != self.data_version {
            self.known.clear();
        }
        self.data_version = now;
    }

    /// The batch did not commit: what it wrote here is not in the table.
    fn forget_all(&mut self) {
        self.known.clear();
        self.data_version = None;
    }

    fn get(&self, key: &GrainKey) -> Option<(u64, u64)> {
        self.known.get(key).copied()
    }

    fn set(&mut self, key: &GrainKey, head: (u64, u64)) {
        if let Some(known) = self.known.get_mut(key) {
            *known = head;
            return;
        }
        if self.known.len() >= MAX_HEADS {
            self.known.clear();
        }
        self.known.insert(key.clone(), head);
    }
}

/// Runs `sql`, a statement without parameters, through the connection's
/// statement cache. The writer begins, commits and opens a savepoint
/// thousands of times a second; parsing each (as `execute_batch` and
/// rusqlite's transaction types do) cost more than running it.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn write_batch(
    conn: &mut Connection,
    heads: &mut Heads,
    batch: &mut Vec<WriteOp>,
    counters: &Counters,
) {
    let began = std::time::Instant::now();
    if let Err(err) = run_cached(conn, "BEGIN IMMEDIATE") {
        let err = StoreError::from(err);
        fail_all(batch.drain(..), &err);
        return;
    }
    heads.start_batch(conn);
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut appended = 0u64;
    let mut ops = batch.drain(..);
    while let Some(op) = ops.next() {
        match op {
            WriteOp::Append { request, reply } => match append_one(conn, heads, &request) {
                Ok(version) => {
                    appended += 1;
                    outcomes.push(Outcome::Appended(reply, version));
                }
                Err(err) => {
                    if matches!(err, StoreError::Conflict { .. }) {
                        counters.conflict();
                    }
                    outcomes.push(Outcome::Refused(WriteReply::Append(reply), err));
                }
            },
            WriteOp::Snapshot {
                key,
                snapshot,
                reply,
            } => match snapshot_one(conn, &key, &snapshot) {
                Ok(()) => outcomes.push(Outcome::Snapshotted(reply)),
                Err(err) => outcomes.push(Outcome::Refused(WriteReply::Snapshot(reply), err)),
            },
            WriteOp::FinishReminder {
                key,
                id,
                due,
                reply,
            } => {
                let finished = conn
                    .prepare_cached(
                        "DELETE FROM reminders WHERE kind = ?1 AND grain = ?2 AND id = ?3 AND due = ?4",
                    )
                    .and_then(|mut delete| {
                        delete.execute(params![key.kind, key.id, id, due as i64])
                    })
                    .map(|_| ())
                    .map_err(StoreError::from);
                match finished {
                    Ok(()) => outcomes.push(Outcome::Snapshotted(reply)),
                    Err(err) => outcomes.push(Outcome::Refused(WriteReply::Snapshot(reply), err)),
                }
            }
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk
            // full): nothing of this batch is written, and nothing after
            // this point may run outside a transaction.
            let err = StoreError::Engine("the database rolled the batch back".into());
            tracing::warn!(error = %err, "event store batch aborted");
            heads.forget_all();
            fail_outcomes(outcomes, &err);
            fail_all(ops, &err);
            return;
        }
    }
    drop(ops);
    match run_cached(conn, "COMMIT") {
        Ok(()) => {
            counters.committed(appended, began.elapsed());
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
            // none of them applies its events. A transaction the failed
            // COMMIT left open is rolled back.
            if !conn.is_autocommit() {
                let _ = run_cached(conn, "ROLLBACK");
            }
            heads.forget_all();
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

/// One append: its checks (reads), then its writes. Refused or failed, it
/// leaves nothing behind and its neighbours in the batch stand: a single
/// statement is undone by SQLite on its own, several run in a savepoint.
fn append_one(
    conn: &Connection,
    heads: &mut Heads,
    request: &AppendRequest,
) -> Result<u64, StoreError> {
    let key = &request.key;
    let head = match heads.get(key) {
        Some((version, epoch)) if version == request.expected_version && request.epoch >= epoch => {
            (version, epoch)
        }
        // Not remembered, or a refusal: the table decides.
        _ => stream_head(conn, key, request.expected_version)?,
    };
    check_append(conn, request, head)?;
    let writes =
        request.events.len() + request.reminders.len() + usize::from(request.idempotency.is_some());
    if writes <= 1 {
        write_append(conn, request)?;
    } else {
        run_cached(conn, "SAVEPOINT append")?;
        let written =
            write_append(conn, request).and_then(|()| Ok(run_cached(conn, "RELEASE append")?));
        if written.is_err() && !conn.is_autocommit() {
            // Undo this append only. (If SQLite already rolled the whole
            // transaction back there is no savepoint left; the batch sees
            // that and fails as a whole.)
            let _ = run_cached(conn, "ROLLBACK TO append");
            let _ = run_cached(conn, "RELEASE append");
        }
        written?;
    }
    let version = request.expected_version + request.events.len() as u64;
    let epoch = if request.events.is_empty() {
        head.1
    } else {
        request.epoch
    };
    heads.set(key, (version, epoch));
    Ok(version)
}

/// The stream's version and the epoch of its last event ((0, 0) for a
/// new stream), read inside the write transaction: writers are serialized
/// by SQLite's write lock (across processes too), so the checks and the
/// insert that follow are atomic.
///
/// The common case, a stream at `expected`, is two point lookups on the
/// primary key. Asking for the head directly (`ORDER BY version DESC
/// LIMIT 1`) makes SQLite re-prepare the statement on every run (measured
/// with `SQLITE_STMTSTATUS_REPREPARE`: once per step), so that query is
/// kept for a stream that is not where the caller expected.
const EPOCH_AT: &str = "SELECT epoch FROM events WHERE kind = ?1 AND grain = ?2 AND version = ?3";
const HEAD: &str = "SELECT version, epoch FROM events WHERE kind = ?1 AND grain = ?2 ORDER BY version DESC LIMIT 1";

fn stream_head(conn: &Connection, key: &GrainKey, expected: u64) -> Result<(u64, u64), StoreError> {
    let epoch_at = |version: u64| -> rusqlite::Result<Option<u64>> {
        conn.prepare_cached(EPOCH_AT)?
            .query_row(params![key.kind, key.id, version as i64], |row| {
                Ok(row.get::<_, i64>(0)? as u64)
            })
            .optional()
    };
    // Versions are contiguous from 1 (each append checks its start).
    let at_expected = if expected == 0 {
        Some(0)
    } else {
        epoch_at(expected)?
    };
    if let Some(epoch) = at_expected
        && epoch_at(expected + 1)?.is_none()
    {
        return Ok((expected, epoch));
    }
    Ok(conn
        .prepare_cached(HEAD)?
        .query_row(params![key.kind, key.id], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .unwrap_or((0, 0)))
}

/// Whether `request` may be written on a stream at `head` (its version
/// and last epoch): refused if fenced by a newer epoch, if the stream is
/// not at the expected version, or if its idempotency key was used.
fn check_append(
    conn: &Connection,
    request: &AppendRequest,
    (actual, last_epoch): (u64, u64),
) -> Result<(), StoreError> {
    let key = &request.key;
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
    if let Some(record) = &request.idempotency {
        let existing: Option<i64> = conn
            .prepare_cached(
                "SELECT request_hash FROM idempotency WHERE kind = ?1 AND grain = ?2 AND key = ?3",
            )?
            .query_row(params![key.kind, key.id, record.key], |row| row.get(0))
            .optional()?;
        if existing.is_some() {
            return Err(StoreError::DuplicateIdempotencyKey {
                key: key.clone(),
                idempotency_key: record.key.clone(),
            });
        }
    }
    Ok(())
}

/// The writes of a checked append: its events, reminder changes and
/// idempotency record.
fn write_append(conn: &Connection, request: &AppendRequest) -> Result<(), StoreError> {
    let key = &request.key;
    if !request.events.is_empty() {
        let mut insert = conn.prepare_cached(
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
                conn.prepare_cached(
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
                conn.prepare_cached(
                    "DELETE FROM reminders WHERE kind = ?1 AND grain = ?2 AND id = ?3",
                )?
                .execute(params![key.kind, key.id, id])?;
            }
        }
    }
    if let Some(record) = &request.idempotency {
        conn.prepare_cached(
            "INSERT INTO idempotency (kind, grain, key, request_hash, reply) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![key.kind, key.id, record.key, record.request_hash as i64, record.reply])?;
    }
    Ok(())
}

fn snapshot_one(conn: &Connection, key: &GrainKey, snapshot: &Snapshot) -> Result<(), StoreError> {
    let last: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE kind = ?1 AND grain = ?2",
        )?
        .query_row(params![key.kind, key.id], |row| row.get(0))?;
    if snapshot.version == 0 || snapshot.version > last as u64 {
        return Err(StoreError::Invalid(format!(
            "snapshot of {key} at version {} but the stream is at {last}",
            snapshot.version
        )));
    }
    conn.prepare_cached(
        "INSERT INTO snapshots (kind, grain, version, payload) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, grain) DO UPDATE SET version = excluded.version, payload = excluded.payload
         WHERE excluded.version > snapshots.version",
    )?
    .execute(params![key.kind, key.id, snapshot.version as i64, snapshot.payload])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    fn request(expected_version: u64, epoch: u64) -> AppendRequest {
        AppendRequest {
            key: GrainKey::new("cart", "c1"),
            expected_version,
            events: vec![b"e".to_vec(), b"f".to_vec()],
            idempotency: None,
            epoch,
            reminders: Vec::new(),
        }
    }

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let mut conn =
            super::super::open_connection(&path, std::time::Duration::from_secs(1)).expect("open");
        super::super::schema::migrate(&mut conn, &path).expect("migrate");
        (dir, conn)
    }

    /// An append that fills the file (it is at its page limit) makes
    /// SQLite roll the whole transaction back: every append of the batch
    /// fails (the one before it too, its insert undone), nothing of it is
    /// written, and the writer's next batch runs (no transaction was left
    /// open).
    #[test]
    fn a_batch_the_database_rolls_back_fails_whole_and_the_writer_goes_on() {
        let (_dir, mut conn) = store();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page count");
        conn.pragma_update(None, "max_page_count", pages + 16)
            .expect("page limit");
        let for_grain = |grain: &str, payload: Vec<u8>| AppendRequest {
            key: GrainKey::new("cart", grain),
            events: vec![payload],
            ..request(0, 1)
        };
        let counters = Counters::default();
        let mut replies = Vec::new();
        let mut batch = Vec::new();
        for request in [
            for_grain("before", b"e".to_vec()),
            for_grain("too-big", vec![7; 1 << 20]),
            for_grain("after", b"e".to_vec()),
        ] {
            let (reply, answer) = oneshot::channel();
            batch.push(WriteOp::Append { request, reply });
            replies.push(answer);
        }
        let mut heads = Heads::default();
        write_batch(&mut conn, &mut heads, &mut batch, &counters);
        let answers: Vec<_> = replies
            .into_iter()
            .map(|mut answer| answer.try_recv().expect("answered"))
            .collect();
        assert!(
            matches!(&answers[1], Err(StoreError::Engine(why)) if why.contains("full")),
            "{answers:?}"
        );
        for answer in [&answers[0], &answers[2]] {
            assert!(
                matches!(answer, Err(StoreError::Engine(why)) if why.contains("rolled the batch back")),
                "{answers:?}"
            );
        }
        assert!(conn.is_autocommit(), "a transaction was left open");

        let (reply, mut answer) = oneshot::channel();
        let mut next = vec![WriteOp::Append {
            request: for_grain("later", b"e".to_vec()),
            reply,
        }];
        write_batch(&mut conn, &mut heads, &mut next, &counters);
        assert!(matches!(answer.try_recv(), Ok(Ok(1))));
        // The writer does not remember the head of an append the database
        // undid: "before" is still empty.
        let (reply, mut answer) = oneshot::channel();
        let mut next = vec![WriteOp::Append {
            request: AppendRequest {
                expected_version: 1,
                ..for_grain("before", b"e".to_vec())
            },
            reply,
        }];
        write_batch(&mut conn, &mut heads, &mut next, &counters);
        assert!(
            matches!(
                answer.try_recv(),
                Ok(Err(StoreError::Conflict { actual: 0, .. }))
            ),
            "an append after a head that was rolled back"
        );
        let grains: Vec<String> = conn
            .prepare("SELECT grain FROM events ORDER BY grain")
            .expect("select")
            .query_map([], |row| row.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("grains");
        assert_eq!(grains, ["later"]);
        let stats = counters.snapshot();
        // The later batches committed; one of them appended.
        assert_eq!((stats.commits, stats.appends), (2, 1));
    }

    /// Appends at the stream's head never re-prepare a statement, and the
    /// head check's answers (conflict, fence) match the stream. (Each with
    /// nothing remembered, so the table is read every time.)
    #[test]
    fn appends_run_prepared_statements_and_check_the_head() {
        let (_dir, conn) = store();
        let append = |request: AppendRequest| append_one(&conn, &mut Heads::default(), &request);
        run_cached(&conn, "BEGIN IMMEDIATE").expect("begin");
        for n in 0..50 {
            assert_eq!(append(request(n * 2, 3)).expect("append"), n * 2 + 2);
        }
        run_cached(&conn, "COMMIT").expect("commit");
        for sql in [
            EPOCH_AT,
            "INSERT INTO events (kind, grain, version, payload, epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
            // Two events: two statements, in a savepoint.
            "SAVEPOINT append",
        ] {
            let statement = conn.prepare_cached(sql).expect("cached");
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "{sql}");
            assert!(statement.get_status(StatementStatus::Run) >= 50, "{sql}");
        }
        run_cached(&conn, "BEGIN IMMEDIATE").expect("begin");
        // Behind the head, ahead of it, and from an older epoch.
        for (expected, epoch) in [(98, 3), (101, 3), (100, 2)] {
            match append(request(expected, epoch)) {
                Err(StoreError::Conflict { actual, .. }) if epoch == 3 => assert_eq!(actual, 100),
                Err(StoreError::Fenced { newer, .. }) if epoch == 2 => assert_eq!(newer, 3),
                other => panic!("append at {expected}, epoch {epoch}: {other:?}"),
            }
        }
        // A refused append left nothing behind; the next one lands.
        assert_eq!(append(request(100, 4)).expect("append"), 102);
        run_cached(&conn, "COMMIT").expect("commit");
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .expect("count");
        assert_eq!(count, 102);
    }

    /// The writer reads a stream's head from the table only when it does
    /// not know it: appends one event at a time at the head it wrote run
    /// one statement each, no look-up and no savepoint. Once another
    /// connection (another process) has committed, it reads the table
    /// again, and its answers match the table.
    #[test]
    fn the_writer_remembers_heads_it_wrote_until_another_connection_writes() {
        let (dir, mut conn) = store();
        let counters = Counters::default();
        let mut heads = Heads::default();
        let mut append = |conn: &mut Connection, expected_version: u64, epoch: u64| {
            let (reply, mut answer) = oneshot::channel();
            let request = AppendRequest {
                expected_version,
                events: vec![b"e".to_vec()],
                ..request(0, epoch)
            };
            write_batch(
                conn,
                &mut heads,
                &mut vec![WriteOp::Append { request, reply }],
                &counters,
            );
            answer.try_recv().expect("answered")
        };
        let runs = |conn: &Connection, sql: &str| {
            conn.prepare_cached(sql)
                .expect("cached")
                .get_status(StatementStatus::Run)
        };
        let look_ups = |conn: &Connection| runs(conn, EPOCH_AT) + runs(conn, HEAD);
        for n in 0..20 {
            assert_eq!(append(&mut conn, n, 3).expect("append"), n + 1);
        }
        // The first append read the (empty) stream; the rest, nothing.
        assert_eq!(look_ups(&conn), 1);
        assert_eq!(runs(&conn, "SAVEPOINT append"), 0);

        let other = super::super::open_connection(
            &dir.path().join("events.db"),
            std::time::Duration::from_secs(1),
        )
        .expect("open");
        other
            .execute(
                "INSERT INTO events (kind, grain, version, payload, epoch) VALUES ('cart', 'c1', 21, x'65', 5)",
                [],
            )
            .expect("another writer");
        match append(&mut conn, 20, 5) {
            Err(StoreError::Conflict { actual: 21, .. }) => {}
            other => panic!("an append behind another writer's: {other:?}"),
        }
        match append(&mut conn, 21, 3) {
            Err(StoreError::Fenced { newer: 5, .. }) => {}
            other => panic!("an append from an older epoch: {other:?}"),
        }
        assert_eq!(append(&mut conn, 21, 5).expect("append"), 22);
        let before = look_ups(&conn);
        assert_eq!(append(&mut conn, 22, 5).expect("append"), 23);
        assert_eq!(look_ups(&conn), before, "known again after its own append");
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM events ORDER BY version")
            .expect("select")
            .query_map([], |row| row.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("versions");
        assert_eq!(versions, (1..=23).collect::<Vec<_>>());
    }
}
