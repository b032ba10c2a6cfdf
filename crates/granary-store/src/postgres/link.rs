//! One connection to PostgreSQL that heals itself, and fails fast while
//! it cannot.
//!
//! A link connects on first use and again after the connection broke.
//! While the server is unreachable it answers `Unavailable` at once and
//! tries again only every [`RETRY_EVERY`], so callers never queue behind
//! a dead server.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, Statement};

use super::tls::MakeRustls;
use crate::error::StoreError;

/// How long a link waits before trying an unreachable server again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A batch of appends to distinct streams as one set-based statement: the
/// versions and idempotency keys of all appends are checked against one
/// snapshot, the events of the accepted ones inserted by one `INSERT`, and
/// one row per append answered (as `granary_append` does). It costs the
/// server a fraction of the per-append loop. Two appends to one stream in
/// a batch would both be checked against the same version, so such a batch
/// goes through `granary_append`; and a writer of the same stream racing
/// the batch makes the statement fail on the primary key (nothing written),
/// after which the batch goes through `granary_append` too.
const APPEND_SET: &str = "
WITH req AS (
    SELECT r.kind, r.grain, r.expected, r.cnt, r.ikey, r.ihash, r.ireply, r.epoch, r.i::int AS i,
           (sum(r.cnt) OVER (ORDER BY r.i) - r.cnt)::int AS used
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $6::text[], $7::bigint[], $8::bytea[], $9::bigint[])
           WITH ORDINALITY AS r(kind, grain, expected, cnt, ikey, ihash, ireply, epoch, i)
), checked AS (
    SELECT req.*,
           coalesce(l.version, 0) AS actual,
           coalesce(l.epoch, 0) AS last_epoch,
           (req.ikey IS NOT NULL AND EXISTS (
               SELECT 1 FROM granary_idempotency d
                WHERE d.kind = req.kind AND d.grain = req.grain AND d.key = req.ikey)) AS dup
      FROM req
      LEFT JOIN LATERAL (
           SELECT e.version, e.epoch FROM granary_events e
            WHERE e.kind = req.kind AND e.grain = req.grain
            ORDER BY e.version DESC LIMIT 1) l ON true
), accepted AS (
    SELECT * FROM checked WHERE epoch >= last_epoch AND actual = expected AND NOT dup
), events AS (
    INSERT INTO granary_events (kind, grain, version, payload, epoch)
    SELECT a.kind, a.grain, a.expected + n, ($5::bytea[])[a.used + n], a.epoch
      FROM accepted a, generate_series(1, a.cnt) AS n
), records AS (
    INSERT INTO granary_idempotency (kind, grain, key, request_hash, reply)
    SELECT a.kind, a.grain, a.ikey, a.ihash, a.ireply FROM accepted a WHERE a.ikey IS NOT NULL
)
SELECT c.i AS out_index,
       CASE WHEN c.epoch < c.last_epoch THEN 'fenced'
            WHEN c.actual <> c.expected THEN 'conflict'
            WHEN c.dup THEN 'duplicate' ELSE 'ok' END AS out_outcome,
       CASE WHEN c.epoch < c.last_epoch THEN c.last_epoch
            WHEN c.actual <> c.expected THEN c.actual
            WHEN c.dup THEN 0 ELSE c.expected + c.cnt END AS out_version
  FROM checked c ORDER BY c.i";

/// The statements a link prepares once per connection.
pub(crate) struct Statements {
    pub append_fast: Statement,
    pub append: Statement,
    pub snapshot: Statement,
    pub load: Statement,
    pub find_idempotent: Statement,
}

pub(crate) struct Link {
    config: Config,
    tls: MakeRustls,
    location: String,
    connect_timeout: Duration,
    live: Option<(Client, Statements)>,
    /// While set and in the future, the server is taken to be unreachable.
    retry_at: Option<Instant>,
    last_error: String,
}

impl Link {
    pub(crate) fn new(
        config: Config,
        tls: MakeRustls,
        location: String,
        connect_timeout: Duration,
    ) -> Link {
        Link {
            config,
            tls,
            location,
            connect_timeout,
            live: None,
            retry_at: None,
            last_error: String::new(),
        }
    }

    /// A connected client and its statements, connecting if need be.
    /// `Unavailable` (nothing was sent) when the server cannot be reached.
    pub(crate) async fn get(&mut self) -> Result<&(Client, Statements), StoreError> {
        if self
            .live
            .as_ref()
            .is_some_and(|(client, _)| client.is_closed())
        {
            self.live = None;
        }
        if self.live.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(self.unreachable());
            }
            match tokio::time::timeout(self.connect_timeout, self.connect()).await {
                Ok(Ok(live)) => {
                    if self.retry_at.take().is_some() {
                        tracing::info!(location = %self.location, "PostgreSQL reachable again");
                    }
                    self.live = Some(live);
                }
                Ok(Err(err)) => return Err(self.failed(explain(&err))),
                Err(_) => {
                    return Err(
                        self.failed(format!("no connection within {:?}", self.connect_timeout))
                    );
                }
            }
        }
        Ok(self.live.as_ref().expect("connected"))
    }

    /// Drops the connection (after a timeout or a broken exchange): the
    /// next use connects anew.
    pub(crate) fn reset(&mut self) {
        self.live = None;
    }

    fn failed(&mut self, error: String) -> StoreError {
        if self.retry_at.is_none() {
            tracing::warn!(location = %self.location, %error, "PostgreSQL unreachable; failing fast until it is back");
        }
        self.last_error = error;
        self.retry_at = Some(Instant::now() + RETRY_EVERY);
        self.unreachable()
    }

    fn unreachable(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "PostgreSQL at {} is unreachable ({})",
            self.location, self.last_error
        ))
    }

    async fn connect(&self) -> Result<(Client, Statements), tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let location = self.location.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%location, error = %err, "PostgreSQL connection ended");
            }
        });
        let statements = Statements {
            append_fast: client.prepare(APPEND_SET).await?,
            append: client
                .prepare(
                    "SELECT out_index, out_outcome, out_version
                       FROM granary_append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?,
            snapshot: client
                .prepare("SELECT out_stored, out_last FROM granary_snapshot($1, $2, $3, $4)")
                .await?,
            load: client
                .prepare(
                    "WITH s AS (
                        SELECT version, payload FROM granary_snapshots
                         WHERE kind = $1 AND grain = $2)
                     SELECT 0 AS part, version, payload, 0::bigint AS epoch FROM s
                     UNION ALL
                     SELECT 1, e.version, e.payload, e.epoch FROM granary_events e
                      WHERE e.kind = $1 AND e.grain = $2
                        AND e.version > coalesce((SELECT version FROM s), 0)
                     UNION ALL
                     (SELECT 2, e.version, ''::bytea, e.epoch FROM granary_events e
                       WHERE e.kind = $1 AND e.grain = $2
                       ORDER BY e.version DESC LIMIT 1)
                     ORDER BY 1, 2",
                )
                .await?,
            find_idempotent: client
                .prepare(
                    "SELECT request_hash, reply FROM granary_idempotency
                      WHERE kind = $1 AND grain = $2 AND key = $3",
                )
                .await?,
        };
        Ok((client, statements))
    }
}

/// What a failed exchange means. `sent`: the request may have reached the
/// server. A write whose answer is lost is `Indeterminate`; a read, or a
/// write the server answered with an ordinary error (its transaction was
/// rolled back), is `Unavailable` or `Engine`.
pub(crate) fn classify(err: &tokio_postgres::Error, write: bool) -> StoreError {
    if let Some(db) = err.as_db_error() {
        let class = &db.code().code()[..2];
        let fatal = matches!(db.severity(), "FATAL" | "PANIC");
        if write && fatal {
            // The session was cut while running the batch (e.g. the server
            // is shutting down): whether it committed is not known.
            return StoreError::Indeterminate(format!("PostgreSQL ended the session: {db}"));
        }
        // Connection, resources, operator intervention, serialization:
        // transient. Anything else is a bug or damage.
        return if matches!(class, "08" | "40" | "53" | "57" | "58") {
            StoreError::Unavailable(format!("PostgreSQL: {db}"))
        } else {
            StoreError::Engine(format!("PostgreSQL: {db}"))
        };
    }
    if write {
        StoreError::Indeterminate(format!(
            "the connection to PostgreSQL broke during a write: {}",
            explain(err)
        ))
    } else {
        StoreError::Unavailable(format!(
            "the connection to PostgreSQL broke: {}",
            explain(err)
        ))
    }
}

/// A driver error with its causes ("error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer"): the driver's own message
/// names only the kind of failure.
pub(crate) fn explain(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
