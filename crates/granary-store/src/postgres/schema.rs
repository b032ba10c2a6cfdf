//! The PostgreSQL schema, its migrations, and the functions that make a
//! batch of appends one round trip.

use tokio_postgres::Client;

use crate::error::StoreError;

/// The schema version this build writes. Each entry of [`MIGRATIONS`] takes
/// the schema from its index to the next version.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the advisory lock that serializes migrations of nodes starting
/// at once ("granary" in ASCII).
const MIGRATION_LOCK: i64 = 0x0067_7261_6e61_7279;

const MIGRATIONS: &[&str] = &[
    // 1: events, snapshots, idempotency records, and the batch functions.
    r#"
    CREATE TABLE granary_events (
        kind text NOT NULL,
        grain text NOT NULL,
        version bigint NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (kind, grain, version)
    );
    CREATE TABLE granary_snapshots (
        kind text NOT NULL,
        grain text NOT NULL,
        version bigint NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (kind, grain)
    );
    CREATE TABLE granary_idempotency (
        kind text NOT NULL,
        grain text NOT NULL,
        key text NOT NULL,
        request_hash bigint NOT NULL,
        reply bytea NOT NULL,
        PRIMARY KEY (kind, grain, key)
    );

    -- A batch of appends in one statement, so in one transaction and one
    -- round trip (group commit). Request i appends p_count[i] events (its
    -- payloads follow the previous requests' in p_payload) to the stream
    -- (p_kind[i], p_grain[i]) if it is at p_expected[i], with an optional
    -- idempotency record. Each request runs in its own subtransaction: a
    -- refusal undoes that request only. One row per request, in order:
    -- ('ok', new version), ('conflict', actual version) or ('duplicate', 0).
    -- Two writers of one stream both read its version, both insert the
    -- next one; the primary key makes the second wait for the first and
    -- then fail, which is a conflict.
    CREATE FUNCTION granary_append(
        p_kind text[], p_grain text[], p_expected bigint[], p_count int[],
        p_payload bytea[], p_idem_key text[], p_idem_hash bigint[], p_idem_reply bytea[])
    RETURNS TABLE (out_index int, out_outcome text, out_version bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        i int;
        used int := 0;
        actual bigint;
        violated text;
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_kind, 1), 0) LOOP
            out_index := i;
            BEGIN
                SELECT coalesce(max(e.version), 0) INTO actual
                  FROM granary_events e
                 WHERE e.kind = p_kind[i] AND e.grain = p_grain[i];
                IF actual <> p_expected[i] THEN
                    out_outcome := 'conflict';
                    out_version := actual;
                ELSIF p_idem_key[i] IS NOT NULL AND EXISTS (
                    SELECT 1 FROM granary_idempotency d
                     WHERE d.kind = p_kind[i] AND d.grain = p_grain[i] AND d.key = p_idem_key[i]) THEN
                    out_outcome := 'duplicate';
                    out_version := 0;
                ELSE
                    INSERT INTO granary_events (kind, grain, version, payload)
                    SELECT p_kind[i], p_grain[i], p_expected[i] + n, p_payload[used + n]
                      FROM generate_series(1, p_count[i]) AS n;
                    IF p_idem_key[i] IS NOT NULL THEN
                        INSERT INTO granary_idempotency (kind, grain, key, request_hash, reply)
                        VALUES (p_kind[i], p_grain[i], p_idem_key[i], p_idem_hash[i], p_idem_reply[i]);
                    END IF;
                    out_outcome := 'ok';
                    out_version := p_expected[i] + p_count[i];
                END IF;
            EXCEPTION WHEN unique_violation THEN
                GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
                IF violated = 'granary_idempotency_pkey' THEN
                    out_outcome := 'duplicate';
                    out_version := 0;
                ELSE
                    out_outcome := 'conflict';
                    SELECT coalesce(max(e.version), 0) INTO out_version
                      FROM granary_events e
                     WHERE e.kind = p_kind[i] AND e.grain = p_grain[i];
                END IF;
            END;
            used := used + p_count[i];
            RETURN NEXT;
        END LOOP;
    END $$;

    -- Stores a snapshot unless a newer one is stored; refuses (answers
    -- false) a snapshot beyond the stream's end. Answers the stream's
    -- version too.
    CREATE FUNCTION granary_snapshot(p_kind text, p_grain text, p_version bigint, p_payload bytea)
    RETURNS TABLE (out_stored boolean, out_last bigint)
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT coalesce(max(e.version), 0) INTO out_last
          FROM granary_events e
         WHERE e.kind = p_kind AND e.grain = p_grain;
        IF p_version < 1 OR p_version > out_last THEN
            out_stored := false;
        ELSE
            INSERT INTO granary_snapshots AS s (kind, grain, version, payload)
            VALUES (p_kind, p_grain, p_version, p_payload)
            ON CONFLICT (kind, grain) DO UPDATE
               SET version = excluded.version, payload = excluded.payload
             WHERE excluded.version > s.version;
            out_stored := true;
        END IF;
        RETURN NEXT;
    END $$;
    "#,
    // 2: the owner epoch (fencing token) that wrote each event, and the
    // batch function that refuses a stale owner's append. The 8-argument
    // function of version 1 stays for nodes of the previous release
    // during a rolling upgrade.
    r#"
    ALTER TABLE granary_events ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

    -- As granary_append of version 1, with p_epoch[i], the writer's owner
    -- epoch: an append whose epoch is below that of the stream's last
    -- event is refused with ('fenced', that epoch).
    CREATE FUNCTION granary_append(
        p_kind text[], p_grain text[], p_expected bigint[], p_count int[],
        p_payload bytea[], p_idem_key text[], p_idem_hash bigint[], p_idem_reply bytea[],
        p_epoch bigint[])
    RETURNS TABLE (out_index int, out_outcome text, out_version bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        i int;
        used int := 0;
        actual bigint;
        last_epoch bigint;
        violated text;
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_kind, 1), 0) LOOP
            out_index := i;
            BEGIN
                SELECT e.version, e.epoch INTO actual, last_epoch
                  FROM granary_events e
                 WHERE e.kind = p_kind[i] AND e.grain = p_grain[i]
                 ORDER BY e.version DESC LIMIT 1;
                actual := coalesce(actual, 0);
                last_epoch := coalesce(last_epoch, 0);
                IF p_epoch[i] < last_epoch THEN
                    out_outcome := 'fenced';
                    out_version := last_epoch;
                ELSIF actual <> p_expected[i] THEN
                    out_outcome := 'conflict';
                    out_version := actual;
                ELSIF p_idem_key[i] IS NOT NULL AND EXISTS (
                    SELECT 1 FROM granary_idempotency d
                     WHERE d.kind = p_kind[i] AND d.grain = p_grain[i] AND d.key = p_idem_key[i]) THEN
                    out_outcome := 'duplicate';
                    out_version := 0;
                ELSE
                    INSERT INTO granary_events (kind, grain, version, payload, epoch)
                    SELECT p_kind[i], p_grain[i], p_expected[i] + n, p_payload[used + n], p_epoch[i]
                      FROM generate_series(1, p_count[i]) AS n;
                    IF p_idem_key[i] IS NOT NULL THEN
                        INSERT INTO granary_idempotency (kind, grain, key, request_hash, reply)
                        VALUES (p_kind[i], p_grain[i], p_idem_key[i], p_idem_hash[i], p_idem_reply[i]);
                    END IF;
                    out_outcome := 'ok';
                    out_version := p_expected[i] + p_count[i];
                END IF;
            EXCEPTION WHEN unique_violation THEN
                GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
                IF violated = 'granary_idempotency_pkey' THEN
                    out_outcome := 'duplicate';
                    out_version := 0;
                ELSE
                    out_outcome := 'conflict';
                    SELECT coalesce(max(e.version), 0) INTO out_version
                      FROM granary_events e
                     WHERE e.kind = p_kind[i] AND e.grain = p_grain[i];
                END IF;
            END;
            used := used + p_count[i];
            RETURN NEXT;
        END LOOP;
    END $$;
    "#,
    // 3: reminders (durable timers), set and cancelled with appends.
    r#"
    CREATE TABLE granary_reminders (
        kind text NOT NULL,
        grain text NOT NULL,
        id text NOT NULL,
        due bigint NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (kind, grain, id)
    );
    CREATE INDEX granary_reminders_due ON granary_reminders (due);
    "#,
];

/// Brings the database's schema up to [`SCHEMA_VERSION`] in one
/// transaction, under an advisory lock so nodes starting at once migrate
/// one after the other. Refuses a schema newer than this build.
pub(crate) async fn migrate(client: &mut Client, location: &str) -> Result<(), StoreError> {
    let engine = |e: tokio_postgres::Error| {
        StoreError::Engine(format!("{location}: {}", super::link::explain(&e)))
    };
    let tx = client.transaction().await.map_err(engine)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(engine)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS granary_meta (key text PRIMARY KEY, value text NOT NULL)",
    )
    .await
    .map_err(engine)?;
    let found = tx
        .query_opt(
            "SELECT value FROM granary_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(engine)?
        .map(|row| row.get::<_, String>(0).parse::<i64>().unwrap_or(i64::MAX))
        .unwrap_or(0);
    if found < 0 {
        return Err(StoreError::Engine(format!(
            "{location}: schema_version {found} is not a version; the database is damaged"
        )));
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: location.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(migration).await.map_err(engine)?;
        tracing::info!(version = index + 1, %location, "applied event store migration");
    }
    tx.execute(
        "INSERT INTO granary_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(engine)?;
    tx.commit().await.map_err(engine)?;
    Ok(())
}
