//! Metrics: `GET /metrics` in the Prometheus text format.
//!
//! Two kinds of series, both from `prometheus-client`:
//! - recorded on the request path: `hadr_requests_total{instance, status}`
//!   and the `hadr_request_duration_seconds` histogram, one counter bump and
//!   one histogram observation per `/predict` answer;
//! - read at scrape time from what the instances already count (so
//!   `/metrics` and `/topology` can never disagree): load, threshold, role,
//!   busy and idle sandboxes, served, failed, traps, respawns, promotions,
//!   version in force, and the
//!   warm pool of each deployment in force; plus the rollouts applied.
//!
//! May use: `instance`, `routing`, `serving`, `sandbox`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::instance::{Instance, InstanceReport};

/// The label of answers no instance computed (refused before routing).
pub const NO_INSTANCE: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    instance: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    instance: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    instance: String,
    version: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    version: String,
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    /// Each instance's label and its counter of 200s, found by a scan
    /// (topologies hold a few instances) rather than a hash of the name and
    /// of the labels, on every answer.
    instances: Vec<Labelled>,
}

/// An instance's name as a `'static` label (no allocation per request), and
/// its series of successes, made at start: most answers bump it alone.
struct Labelled {
    name: &'static str,
    ok: Counter,
}

/// Rollouts applied (deploys, promotions, aborts, rollbacks), for
/// `hadr_rollouts_total`.
#[derive(Debug, Default)]
pub struct RolloutCount(AtomicU64);

impl RolloutCount {
    /// Counts one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Metrics over `instances`.
    pub fn new(instances: Vec<Arc<Instance>>, rollouts: Arc<RolloutCount>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "hadr_requests",
            "Answers to /predict (POST and GET) and /v2 infer requests, by the instance that computed them and status",
            requests.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "hadr_request_duration_seconds",
            "Time from a /predict or /v2 infer request's arrival to its answer",
            latency.clone(),
        );
        let labelled = instances
            .iter()
            .map(|i| {
                let name: &'static str = Box::leak(i.name().to_string().into_boxed_str());
                let labels = RequestLabels {
                    instance: name,
                    status: 200,
                };
                let ok = requests.get_or_create(&labels).clone();
                Labelled { name, ok }
            })
            .collect();
        registry.register_collector(Box::new(InstanceCollector {
            instances,
            rollouts,
        }));
        Self {
            registry,
            requests,
            latency,
            instances: labelled,
        }
    }

    /// Records one `/predict` answer.
    pub fn observe(&self, instance: Option<&str>, status: u16, took: Duration) {
        let labelled = instance.and_then(|n| self.instances.iter().find(|i| i.name == n));
        match (labelled, status) {
            (Some(labelled), 200) => {
                labelled.ok.inc();
            }
            _ => {
                let instance = labelled.map_or(NO_INSTANCE, |l| l.name);
                self.requests
                    .get_or_create(&RequestLabels { instance, status })
                    .inc();
            }
        }
        self.latency.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A per-instance series: name, help, and how to read it from a report.
type Series<T> = (&'static str, &'static str, fn(&InstanceReport) -> T);

/// Reads the instances' own counters at scrape time.
#[derive(Debug)]
struct InstanceCollector {
    instances: Vec<Arc<Instance>>,
    rollouts: Arc<RolloutCount>,
}

impl Collector for InstanceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports: Vec<_> = self
            .instances
            .iter()
            .map(|i| (i.name().to_string(), i.report(), i.serving()))
            .collect();
        let label = |name: &String| InstanceLabels {
            instance: name.clone(),
        };
        let gauges: [Series<i64>; 6] = [
            (
                "hadr_instance_load",
                "Requests in flight or waiting for the instance (the article's load)",
                |r| r.load as i64,
            ),
            (
                "hadr_instance_max_load",
                "The instance's saturation threshold",
                |r| r.max_load as i64,
            ),
            (
                "hadr_instance_broken",
                "1 while the instance has no working sandbox",
                |r| i64::from(r.broken),
            ),
            (
                "hadr_instance_sandboxes_busy",
                "The instance's sandboxes in a call now",
                |r| r.sandboxes.busy as i64,
            ),
            (
                "hadr_instance_sandboxes_idle",
                "The instance's sandboxes ready and waiting for a call",
                |r| r.sandboxes.idle as i64,
            ),
            (
                "hadr_instance_concurrency",
                "Most calls the instance runs at once",
                |r| r.sandboxes.concurrency as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let family = Family::<InstanceLabels, Gauge>::default();
            for (n, r, _) in &reports {
                family.get_or_create(&label(n)).set(value(r));
            }
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        let counters: [Series<u64>; 8] = [
            (
                "hadr_instance_served",
                "Predictions the instance answered with 200",
                |r| r.served,
            ),
            (
                "hadr_instance_failed",
                "Calls that failed in the instance (traps, deadlines, model failures)",
                |r| r.failed,
            ),
            (
                "hadr_instance_traps",
                "Traps in the instance, deadlines included",
                |r| r.traps,
            ),
            (
                "hadr_instance_respawns",
                "Faulted sandboxes replaced",
                |r| r.respawns,
            ),
            (
                "hadr_instance_promotions",
                "Times the instance was promoted from standby",
                |r| r.promotions,
            ),
            (
                "hadr_instance_batches",
                "Merged calls of two requests or more (dynamic batching)",
                |r| r.batching.map_or(0, |b| b.batches),
            ),
            (
                "hadr_instance_batched_requests",
                "Requests answered by merged calls",
                |r| r.batching.map_or(0, |b| b.batched_requests),
            ),
            (
                "hadr_instance_poisoned_batches",
                "Merged calls that faulted, whose requests then ran on their own",
                |r| r.batching.map_or(0, |b| b.poisoned),
            ),
        ];
        for (name, help, value) in counters {
            let family = Family::<InstanceLabels, Counter>::default();
            for (n, r, _) in &reports {
                family.get_or_create(&label(n)).inc_by(value(r));
            }
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        let roles = Family::<RoleLabels, Gauge>::default();
        let versions = Family::<VersionLabels, Gauge>::default();
        let pools = Family::<PoolLabels, Gauge>::default();
        for (n, r, serving) in &reports {
            roles
                .get_or_create(&RoleLabels {
                    instance: n.clone(),
                    role: r.role.as_str().to_string(),
                })
                .set(1);
            versions
                .get_or_create(&VersionLabels {
                    instance: n.clone(),
                    version: r.version.clone(),
                    source: r.source.as_str().to_string(),
                })
                .set(1);
            let deployment = &serving.current.deployment;
            pools
                .get_or_create(&PoolLabels {
                    version: deployment.version.clone(),
                })
                .set(deployment.spares() as i64);
        }
        roles.encode(encoder.encode_descriptor(
            "hadr_instance_role",
            "1 for the instance's role (active, standby, promoted)",
            None,
            roles.metric_type(),
        )?)?;
        versions.encode(encoder.encode_descriptor(
            "hadr_instance_version",
            "1 for the deployment version the instance serves",
            None,
            versions.metric_type(),
        )?)?;
        pools.encode(encoder.encode_descriptor(
            "hadr_warm_pool_spares",
            "Warm spare sandboxes ready, per deployment in force",
            None,
            pools.metric_type(),
        )?)?;
        let rollouts = Counter::<u64>::default();
        rollouts.inc_by(self.rollouts.0.load(Ordering::Relaxed));
        rollouts.encode(encoder.encode_descriptor(
            "hadr_rollouts",
            "Rollouts applied: deploys, canaries, promotions, aborts, rollbacks",
            None,
            rollouts.metric_type(),
        )?)?;
        Ok(())
    }
}
