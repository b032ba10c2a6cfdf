//! The node's metrics, served at `GET /metrics` in the OpenMetrics text
//! format (Prometheus scrapes it as is).
//!
//! Two sources. Histograms observed where the work happens: HTTP requests
//! (by method, route pattern and status), calls forwarded to another
//! member (by kind and outcome), store commits (duration, appends per
//! commit) and directory rebuilds after a membership change; counters of
//! reminders fired and members removed. And values read at scrape time
//! from what the node already counts: the grain runtimes' counters per
//! kind, the store's, and the cluster's status (role, term, members live,
//! fenced). Every name starts `granary_`; durations are in seconds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use granary_grain::RuntimeStats;
use granary_store::{CommitObserver, EventStore};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::{ClusterHandle, ClusterStatus};
use crate::grains::Grains;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Labels of an HTTP request: the route's pattern (never the raw path, so
/// the series stay few), `unmatched` for a path no route takes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// Labels of a call forwarded to the member that hosts its grain.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// The grain kind (a registered kind's name: no label is allocated
    /// per call).
    pub kind: &'static str,
    /// `ok` (the grain answered, its reply or its refusal), `moved` (the
    /// member did not host it: routed again), `refused` (fenced or
    /// placing there: nothing ran), `unreachable` (no answer: outcome
    /// unknown).
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the node measures; one per node, shared by its threads.
pub struct Metrics {
    registry: Registry,
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    forwards: Family<ForwardLabels, Histogram, fn() -> Histogram>,
    commit_seconds: Histogram,
    appends_per_commit: Histogram,
    rebuild_seconds: Histogram,
    reminders_fired: Counter,
    members_removed: Counter,
    sources: Arc<Sources>,
    /// Every HTTP request whatever its route, and how many fell in each of
    /// [`LATENCY_BUCKETS`] (the last slot: slower than the last bound):
    /// what the dashboard shows of this member.
    requests: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// What happened to the cluster lately, newest last.
    events: Mutex<VecDeque<Event>>,
}

/// How many cluster events a member keeps.
const EVENTS: usize = 50;

/// Something that happened to the cluster, as this member saw it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub text: String,
}

/// What is read at scrape time, attached once the node has started it.
#[derive(Default)]
struct Sources {
    grains: OnceLock<Grains>,
    store: OnceLock<Arc<dyn EventStore>>,
    cluster: OnceLock<ClusterHandle>,
    /// The cluster's status as the scrape in progress read it.
    status: Mutex<Option<ClusterStatus>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("granary");
        let http = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "HTTP requests by method, route and status, and how long they took",
            Unit::Seconds,
            http.clone(),
        );
        let forwards = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "grain_forwarded_call_duration",
            "Grain calls forwarded to the member that hosts the grain, by kind and outcome, and their round trip",
            Unit::Seconds,
            forwards.clone(),
        );
        let commit_seconds = latency_histogram();
        registry.register_with_unit(
            "store_commit_duration",
            "Durable store commits (one sync each), from the start of the transaction to the end of the sync",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        let appends_per_commit = Histogram::new([
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ]);
        registry.register(
            "store_appends_per_commit",
            "Appends made durable by one commit (group commit)",
            appends_per_commit.clone(),
        );
        let rebuild_seconds = Histogram::new([
            0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
        ]);
        registry.register_with_unit(
            "directory_rebuild_duration",
            "Directory rebuilds after a membership change: from the new view to every partition placeable again",
            Unit::Seconds,
            rebuild_seconds.clone(),
        );
        let reminders_fired = Counter::default();
        registry.register(
            "reminders_fired",
            "Reminders delivered to their grain (taken or refused by it)",
            reminders_fired.clone(),
        );
        let members_removed = Counter::default();
        registry.register(
            "cluster_members_removed",
            "Members dropped by a committed view (failed over or left) since this node started",
            members_removed.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(sources.clone()));
        Metrics {
            registry,
            http,
            forwards,
            commit_seconds,
            appends_per_commit,
            rebuild_seconds,
            reminders_fired,
            members_removed,
            sources,
            requests: AtomicU64::new(0),
            latency: Default::default(),
            events: Mutex::new(VecDeque::with_capacity(EVENTS)),
        }
    }

    /// Reads the grain runtimes' and the store's counters at each scrape,
    /// and takes the store's commits.
    pub fn attach(self: &Arc<Self>, grains: Grains, store: Arc<dyn EventStore>) {
        store.observe_commits(Arc::new(Commits(self.clone())));
        let _ = self.sources.grains.set(grains);
        let _ = self.sources.store.set(store);
    }

    /// Reads the cluster's status at each scrape.
    pub fn attach_cluster(&self, cluster: ClusterHandle) {
        let _ = self.sources.cluster.set(cluster);
    }

    pub fn http_request(&self, labels: &HttpLabels, took: Duration) {
        let seconds = took.as_secs_f64();
        self.http.get_or_create(labels).observe(seconds);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < seconds);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP requests served so far, and how many fell in each bucket of
    /// [`LATENCY_BUCKETS`] (one more slot: slower than the last bound).
    pub fn http_summary(&self) -> (u64, Vec<u64>) {
        (
            self.requests.load(Ordering::Relaxed),
            self.latency
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Records a cluster event (a member joined or left the view, this
    /// member fenced itself, ...).
    pub fn event(&self, text: impl Into<String>) {
        let at_ms = crate::reminders::now_unix_ms();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == EVENTS {
            events.pop_front();
        }
        events.push_back(Event {
            at_ms,
            text: text.into(),
        });
    }

    /// The events this member kept, oldest first.
    pub fn events(&self) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().cloned().collect()
    }

    pub fn forwarded(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.forwards
            .get_or_create(&ForwardLabels { kind, outcome })
            .observe(took.as_secs_f64());
    }

    pub fn rebuilt(&self, took: Duration) {
        self.rebuild_seconds.observe(took.as_secs_f64());
    }

    pub fn reminder_fired(&self) {
        self.reminders_fired.inc();
    }

    pub fn members_removed(&self, count: u64) {
        self.members_removed.inc_by(count);
    }

    /// The exposition: reads the cluster's status first (it is asked of
    /// the membership task), then encodes every metric.
    pub async fn render(&self) -> String {
        if let Some(cluster) = self.sources.cluster.get() {
            let status = cluster.status().await;
            *self
                .sources
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = status;
        }
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The store's commit observer.
struct Commits(Arc<Metrics>);

impl CommitObserver for Commits {
    fn committed(&self, appends: u64, took: Duration) {
        self.0.commit_seconds.observe(took.as_secs_f64());
        self.0.appends_per_commit.observe(appends as f64);
    }
}

/// The grain runtimes' counters, per kind: name, help, which counter.
type GrainCounter = (&'static str, &'static str, fn(&RuntimeStats) -> u64);

const GRAIN_COUNTERS: [GrainCounter; 5] = [
    (
        "grain_activations",
        "Grains activated (loaded from the store)",
        |s| s.activations,
    ),
    (
        "grain_passivations",
        "Grains passivated for being idle",
        |s| s.passivations,
    ),
    (
        "grain_evictions",
        "Grains evicted to stay under the cap on live grains",
        |s| s.evictions,
    ),
    (
        "grain_restarts",
        "Grains restarted from the store after their code panicked",
        |s| s.restarts,
    ),
    (
        "grain_conflicts",
        "Grain appends refused because another writer got there first",
        |s| s.conflicts,
    ),
];

/// One metric of the scrape-time values: name, help, and its samples.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (kind, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&[("kind", kind)])?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(grains) = self.grains.get() {
            let stats = grains.stats();
            let e = &mut encoder;
            for (name, help, read) in GRAIN_COUNTERS {
                let samples = stats.iter().map(|(kind, s)| (*kind, read(s)));
                counter_family(e, name, help, samples)?;
            }
            let mut live = e.encode_descriptor(
                "grains_live",
                "Grains live in memory here now",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for (kind, s) in &stats {
                ConstGauge::new(s.live as i64).encode(live.encode_family(&[("kind", *kind)])?)?;
            }
        }
        if let Some(store) = self.store.get() {
            let s = store.stats();
            for (name, help, value) in [
                ("store_appends", "Appends made durable", s.appends),
                (
                    "store_commits",
                    "Durable commits (one sync each)",
                    s.commits,
                ),
                (
                    "store_conflicts",
                    "Appends refused with a version conflict",
                    s.conflicts,
                ),
                ("store_loads", "Grain streams read", s.loads),
            ] {
                counter(&mut encoder, name, help, value)?;
            }
        }
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(cluster) = self.cluster.get() {
            gauge(
                &mut encoder,
                "cluster_fenced",
                "1 while this member sees no majority and serves no grain",
                i64::from(!cluster.is_serving()),
            )?;
        }
        if let Some(status) = status {
            let mut role = encoder.encode_descriptor(
                "cluster_role",
                "This member's role: 1 for the one it has",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for name in ["leader", "follower", "candidate"] {
                ConstGauge::new(i64::from(status.role == name))
                    .encode(role.encode_family(&[("role", name)])?)?;
            }
            gauge(
                &mut encoder,
                "cluster_term",
                "The election term this member is in",
                status.term as i64,
            )?;
            gauge(
                &mut encoder,
                "cluster_members",
                "Members of the committed view",
                status.members as i64,
            )?;
            // `peers` lists every member of the view, this one included.
            let live = status.peers.iter().filter(|p| p.live).count();
            gauge(
                &mut encoder,
                "cluster_members_live",
                "Members this one has heard from within the dead-after window (itself included)",
                live as i64,
            )?;
            gauge(
                &mut encoder,
                "cluster_config_version",
                "Version of the committed view",
                status.committed_version as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_and_counters_are_exposed_with_conventional_names() {
        let metrics = Arc::new(Metrics::new());
        let labels = HttpLabels {
            method: "POST",
            route: "/carts/{id}/items",
            status: 200,
        };
        metrics.http_request(&labels, Duration::from_millis(3));
        metrics.http_request(&labels, Duration::from_millis(30));
        metrics.forwarded("cart", "ok", Duration::from_micros(300));
        metrics.reminder_fired();
        Commits(metrics.clone()).committed(3, Duration::from_millis(2));
        let text =
            futures_util::FutureExt::now_or_never(metrics.render()).expect("no cluster: ready");
        assert!(
            text.contains("# TYPE granary_http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"granary_http_request_duration_seconds_count{method="POST",route="/carts/{id}/items",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"granary_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/carts/{id}/items",status="200"} 1"#)
                || text.contains(r#"granary_http_request_duration_seconds_bucket{method="POST",route="/carts/{id}/items",status="200",le="0.005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"granary_grain_forwarded_call_duration_seconds_count{kind="cart",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("granary_reminders_fired_total 1"), "{text}");
        assert!(
            text.contains("granary_store_appends_per_commit_count 1"),
            "{text}"
        );
        assert!(
            text.contains("granary_store_appends_per_commit_sum 3.0"),
            "{text}"
        );
        assert!(
            text.contains("granary_store_commit_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The dashboard's summary: both requests, 3 ms and 30 ms, in the
        // buckets bounded by 5 ms and 50 ms.
        let (requests, buckets) = metrics.http_summary();
        assert_eq!(requests, 2);
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        let at = |bound: f64| {
            LATENCY_BUCKETS
                .iter()
                .position(|b| *b == bound)
                .expect("a bound")
        };
        assert_eq!((buckets[at(0.005)], buckets[at(0.05)]), (1, 1));
        assert_eq!(buckets.iter().sum::<u64>(), 2);
    }

    #[test]
    fn events_are_kept_newest_last_and_bounded() {
        let metrics = Metrics::new();
        for n in 0..EVENTS + 5 {
            metrics.event(format!("event {n}"));
        }
        let events = metrics.events();
        assert_eq!(events.len(), EVENTS);
        assert_eq!(events[0].text, "event 5");
        assert_eq!(events[EVENTS - 1].text, format!("event {}", EVENTS + 4));
    }
}
