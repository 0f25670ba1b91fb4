//! With 100,000 tenants calling, the `tenant` label of every exported metric takes at most
//! `TenantLabels::cardinality_bound()` values: the top-N tenants, their groups, and `other`.

mod visibility;

use std::collections::BTreeSet;
use std::sync::Arc;

use downshift::engine::Call;
use downshift::telemetry::TenantLabels;
use futures::executor::block_on;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use visibility::{payload, world};

/// Records every registered series (name and labels).
/// A series: its name and its labels.
type SeriesKey = (String, Vec<(String, String)>);

#[derive(Default)]
struct Series(Mutex<BTreeSet<SeriesKey>>);

impl Series {
    fn add(&self, key: &Key) {
        let labels = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        self.0.lock().insert((key.name().to_string(), labels));
    }
    fn label_values(&self, label: &str) -> BTreeSet<String> {
        self.0
            .lock()
            .iter()
            .flat_map(|(_, ls)| {
                ls.iter()
                    .filter(|(k, _)| k == label)
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }
    fn of(&self, name: &str) -> usize {
        self.0.lock().iter().filter(|(n, _)| n == name).count()
    }
}

struct Rec(Arc<Series>);

impl Recorder for Rec {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0.add(key);
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0.add(key);
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0.add(key);
        Histogram::noop()
    }
}

#[test]
fn the_tenant_label_stays_within_its_bound_with_100_000_tenants() {
    let w = world();
    let series = Arc::new(Series::default());
    let rec = Rec(Arc::clone(&series));
    // Export is off by default: calls build no metric keys at all.
    metrics::with_local_recorder(&rec, || {
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    });
    assert!(
        series.label_values("tenant").is_empty(),
        "nothing is exported before metrics are turned on"
    );
    w.engine.set_metrics_enabled(true);
    // Traffic: acme calls most, hold once.
    metrics::with_local_recorder(&rec, || {
        for _ in 0..3 {
            block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        }
        block_on(w.engine.call(Call::new("hold", "summarization", payload())));
    });
    // The top tenant by calls keeps its label; a group for a class of tenants; the rest `other`.
    let labels = TenantLabels::new()
        .top_by_calls(&w.engine.stats(), 1)
        .group("tenant-00042", "plan:enterprise")
        .group("tenant-00043", "plan:enterprise");
    assert_eq!(labels.cardinality_bound(), 3);
    w.engine.set_metric_labels(labels.clone());
    metrics::with_local_recorder(&rec, || {
        // 100,000 tenants call (ids the policy set does not know: rejected, but counted).
        for i in 0..100_000 {
            block_on(w.engine.call(Call::new(
                format!("tenant-{i:05}"),
                "summarization",
                payload(),
            )));
        }
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        block_on(w.engine.call(Call::new("hold", "summarization", payload())));
    });
    let values = series.label_values("tenant");
    assert!(
        values.len() <= labels.cardinality_bound(),
        "{} tenant label values: {values:?}",
        values.len()
    );
    assert!(values.contains("acme"));
    assert!(values.contains("other"));
    assert!(values.contains("plan:enterprise"));
    assert!(
        !values.contains("hold"),
        "hold is not in the top 1 after the refresh"
    );
    // Every metric is labelled and bounded: calls by (tenant, result), attempts by
    // (tenant, tier, endpoint, outcome).
    assert!(series.of("downshift.calls") <= labels.cardinality_bound() * 4);
    assert!(series.of("downshift.attempts") >= 1);
    for (name, ls) in series.0.lock().iter() {
        assert!(
            ls.iter().any(|(k, _)| k == "tenant"),
            "{name} has no tenant label"
        );
    }
    // The per-tenant detail stays in the stats: unknown ids cost no memory there.
    assert_eq!(w.engine.stats().unknown_tenant_calls, 100_000);
}

#[test]
fn top_by_calls_ranks_by_calls_then_id() {
    let w = world();
    for _ in 0..2 {
        block_on(w.engine.call(Call::new("hold", "summarization", payload())));
    }
    block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    let labels = TenantLabels::new().top_by_calls(&w.engine.stats(), 1);
    assert_eq!(&*labels.label(&"hold".into()), "hold");
    assert_eq!(&*labels.label(&"acme".into()), "other");
}
