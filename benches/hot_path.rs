//! Hot-path benchmarks: what every model call of every agent pays.
//!
//! Groups: `observe` (recording a call's outcome: by tenant id, through a budget handle, and
//! the endpoint side alone), `health` (the per-endpoint, per-tenant usability check, the budget
//! check by id and by handle, the health snapshot), `threads` (one call's check, budget check
//! and observe on one and two threads, for scaling) and `baseline` (a plain `HashMap<String, _>`
//! lookup among the same 100,000 tenants, and one dependent cache miss: the machine's floor for
//! any per-tenant state). `observe_oncpu`, `health_oncpu` and `baseline_oncpu` repeat those groups
//! measuring each thread's time on a CPU instead of elapsed time (see [`OnCpu`]).
//!
//! `route` (and `route_oncpu`) measure [`TierRouter::route`] over a real policy set
//! ([`RouteFixture`]: 500 endpoints, 100 templates, 100,000 tenants loaded from generated JSON)
//! on the healthy path, with the outcome observed, and degraded (the primaries' breakers open,
//! falling to the second tier), against the baseline the issue names: per-tenant breakers in a
//! `HashMap<String, _>` behind a `RwLock`. `route_threads` runs routes on one and two threads.
//! Before those, the binary prints per-call latency percentiles of one million healthy routes
//! and the two-thread speed-up (criterion reports batch means and medians, not tails).
//!
//! The fixture has 500 endpoints and 100,000 tenants, each with an hourly budget, a session
//! budget and a P95 ceiling; inputs are drawn in a pseudo-random order (not one hot tenant), and
//! every tenant and session is observed once before measuring, so this is the steady state.
//!
//! Run: `cargo bench --bench hot_path` (only the router: `cargo bench --bench hot_path -- route`)

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use downshift::policy::{
    Budget, BudgetAction, PolicySet, PolicyStore, RateLimitRemaining, Source, TenantHandle, Window,
    WindowBudget,
};
use downshift::router::{CallContext, Decision, TierRouter};
use downshift::trigger::{
    BudgetHandle, BudgetScope, EvaluatorSettings, Observation, OutcomeClass, TenantTriggers,
    TriggerEvaluator,
};
use downshift::{EndpointIdx, Requirements, SessionId, TaskKind, TenantId, Timestamp};
use parking_lot::RwLock;

const ENDPOINTS: usize = 500;
const TENANTS: usize = 100_000;
/// Length of the pre-drawn input sequence (a power of two).
const INPUTS: usize = 1 << 16;
const T0: u64 = 1_700_000_000_000;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One pre-drawn call.
#[derive(Clone, Copy)]
struct Input {
    endpoint: EndpointIdx,
    tenant: usize,
    outcome: OutcomeClass,
    latency: Duration,
}

/// The shared benchmark world: an evaluator, the tenants and their views, and a random input
/// sequence.
struct Fixture {
    eval: TriggerEvaluator,
    /// One record per tenant, as an engine keeps per session: ids and a budget handle together.
    callers: Vec<Caller>,
    views: Vec<TenantTriggers>,
    inputs: Vec<Input>,
}

/// What an engine holds for one of its sessions.
struct Caller {
    tenant: TenantId,
    session: SessionId,
    handle: BudgetHandle,
}

impl Fixture {
    fn new() -> Self {
        let mut settings = EvaluatorSettings::default();
        // Rare failures must not trip breakers during the run (that is not the steady state).
        settings.breaker.window = Window::Calls(100);
        settings.breaker.min_calls = 50;
        settings.breaker.consecutive_failures = None;
        let eval = TriggerEvaluator::new(&settings, ENDPOINTS, 42).expect("evaluator");
        let tenants: Vec<TenantId> = (0..TENANTS)
            .map(|i| TenantId::new(format!("tenant-{i:06}")))
            .collect();
        let sessions: Vec<SessionId> = (0..TENANTS)
            .map(|i| SessionId::new(format!("session-{i:06}")))
            .collect();
        // A handful of distinct policies, as resolved views are shared per policy.
        let views: Vec<TenantTriggers> = (0..8u64)
            .map(|k| TenantTriggers {
                p95_ceiling: Some(Duration::from_millis(2_000 + 1_000 * k)),
                queue_depth: Some(500),
                rate_limit_remaining: Some(RateLimitRemaining {
                    min_requests_fraction: Some(0.05),
                    min_tokens_fraction: Some(0.05),
                }),
                budget: Some(Budget {
                    tenant: Some(WindowBudget {
                        limit_usd: 1e9,
                        window: Duration::from_secs(3600),
                    }),
                    session_usd: Some(1e9),
                    workflow_usd: None,
                    on_exceeded: BudgetAction::Reject,
                }),
                ..TenantTriggers::default()
            })
            .collect();
        let outcomes = {
            let mut o = [OutcomeClass::Ok; 20];
            o[5] = OutcomeClass::Timeout;
            o[13] = OutcomeClass::RateLimited;
            o
        };
        let inputs = (0..INPUTS as u64)
            .map(|i| {
                let r = mix(i ^ 0xABCD);
                Input {
                    endpoint: EndpointIdx((r % ENDPOINTS as u64) as u32),
                    tenant: ((r >> 16) % TENANTS as u64) as usize,
                    outcome: outcomes[((r >> 40) % 20) as usize],
                    latency: Duration::from_millis(150 + (r >> 48) % 3_000),
                }
            })
            .collect();
        let now = Timestamp::from_millis(T0);
        let callers = tenants
            .into_iter()
            .zip(sessions)
            .map(|(tenant, session)| {
                let handle =
                    eval.budget_handle(&BudgetScope::tenant(&tenant).session(&session), now);
                Caller {
                    tenant,
                    session,
                    handle,
                }
            })
            .collect();
        let f = Fixture {
            eval,
            callers,
            views,
            inputs,
        };
        // Every tenant and session known before measuring.
        for k in 0..TENANTS {
            let now = Timestamp::from_millis(T0);
            let view = f.view(k);
            let obs = Observation::new(
                EndpointIdx((k % ENDPOINTS) as u32),
                &f.callers[k].tenant,
                OutcomeClass::Ok,
                now,
                Duration::from_millis(500),
            )
            .session(&f.callers[k].session)
            .cost(0.0001)
            .budget(view.budget.as_ref().expect("budget"));
            f.eval.observe(&obs, now).expect("observe");
        }
        f
    }

    fn view(&self, tenant: usize) -> &TenantTriggers {
        &self.views[tenant % self.views.len()]
    }

    /// Virtual time for the i-th operation: ~16 calls per millisecond, so windows rotate.
    fn now(i: u64) -> Timestamp {
        Timestamp::from_millis(T0 + 1 + i / 16)
    }

    fn observe(&self, i: u64) {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let view = self.view(inp.tenant);
        let now = Self::now(i);
        let obs = Observation::new(
            inp.endpoint,
            &self.callers[inp.tenant].tenant,
            inp.outcome,
            now,
            inp.latency,
        )
        .session(&self.callers[inp.tenant].session)
        .usage(1_200, 300)
        .cost(0.0005)
        .budget(view.budget.as_ref().expect("budget"));
        self.eval.observe(black_box(&obs), now).expect("observe");
    }

    /// As an engine that keeps a budget handle per session calls it.
    fn observe_with_handle(&self, i: u64) {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let view = self.view(inp.tenant);
        let now = Self::now(i);
        let obs = Observation::new(
            inp.endpoint,
            &self.callers[inp.tenant].tenant,
            inp.outcome,
            now,
            inp.latency,
        )
        .session(&self.callers[inp.tenant].session)
        .usage(1_200, 300)
        .cost(0.0005)
        .budget(view.budget.as_ref().expect("budget"))
        .budget_handle(&self.callers[inp.tenant].handle);
        self.eval.observe(black_box(&obs), now).expect("observe");
    }

    fn check_budget_with_handle(&self, i: u64) -> bool {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let scope = BudgetScope::tenant(&self.callers[inp.tenant].tenant)
            .session(&self.callers[inp.tenant].session)
            .with_handle(&self.callers[inp.tenant].handle);
        self.eval
            .check_budget(black_box(&scope), self.view(inp.tenant), Self::now(i))
            .is_none()
    }

    /// The endpoint side alone: no budget configured for the call.
    fn observe_endpoint_only(&self, i: u64) {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let now = Self::now(i);
        let obs = Observation::new(
            inp.endpoint,
            &self.callers[inp.tenant].tenant,
            inp.outcome,
            now,
            inp.latency,
        )
        .usage(1_200, 300)
        .cost(0.0005);
        self.eval.observe(black_box(&obs), now).expect("observe");
    }

    fn check(&self, i: u64) -> bool {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let v = self
            .eval
            .check(black_box(inp.endpoint), self.view(inp.tenant), Self::now(i));
        v.map(|v| v.is_usable()).unwrap_or(false)
    }

    fn check_budget(&self, i: u64) -> bool {
        let inp = self.inputs[(i as usize) & (INPUTS - 1)];
        let scope = BudgetScope::tenant(&self.callers[inp.tenant].tenant)
            .session(&self.callers[inp.tenant].session);
        self.eval
            .check_budget(black_box(&scope), self.view(inp.tenant), Self::now(i))
            .is_none()
    }
}

fn observe<M: Measurement>(c: &mut Criterion<M>, f: &Fixture, suffix: &str) {
    let mut g = c.benchmark_group(format!("observe{suffix}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("observe_500_endpoints_100k_tenants", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.observe(i);
        });
    });
    g.bench_function("observe_with_budget_handle", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.observe_with_handle(i);
        });
    });
    g.bench_function("observe_endpoint_only_no_budget", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.observe_endpoint_only(i);
        });
    });
    g.finish();
}

fn health<M: Measurement>(c: &mut Criterion<M>, f: &Fixture, suffix: &str) {
    let mut g = c.benchmark_group(format!("health{suffix}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("check_endpoint_for_tenant", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.check(i))
        });
    });
    g.bench_function("check_budget_tenant_and_session", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.check_budget(i))
        });
    });
    g.bench_function("check_budget_with_handle", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.check_budget_with_handle(i))
        });
    });
    g.bench_function("health_snapshot", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let inp = f.inputs[(i as usize) & (INPUTS - 1)];
            black_box(
                f.eval
                    .health(inp.endpoint, Fixture::now(i))
                    .expect("health"),
            )
        });
    });
    g.finish();
}

/// This thread's time on a CPU so far (`CLOCK_THREAD_CPUTIME_ID`, nanosecond resolution), or
/// `None` where there is no such clock.
#[cfg(unix)]
fn on_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes the `timespec` we own and pass by valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    (rc == 0).then(|| Duration::new(secs, nanos))
}

#[cfg(not(unix))]
fn on_cpu() -> Option<Duration> {
    None
}

/// What one call of an agent pays (check the endpoint, check the budget, observe the outcome,
/// through the session's budget handle), on one and two threads.
///
/// Two clocks: `wall` is elapsed time (the slowest thread), which on a shared machine includes
/// time other processes hold the CPU; `oncpu` is each thread's own time on a CPU (averaged over
/// the threads), which is what the code costs. With no lock contention or cache-line
/// ping-pong, `oncpu` per call is the same on two threads as on one.
fn threads(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("threads");
    for n in [1u64, 2] {
        for clock in ["wall", "oncpu"] {
            g.throughput(Throughput::Elements(n));
            g.bench_function(format!("call_{n}_threads_{clock}"), |b| {
                b.iter_custom(|iters| {
                    let barrier = Barrier::new(n as usize);
                    let times: Vec<Duration> = std::thread::scope(|s| {
                        let handles: Vec<_> = (0..n)
                            .map(|t| {
                                let barrier = &barrier;
                                s.spawn(move || {
                                    barrier.wait();
                                    let cpu = on_cpu();
                                    let start = Instant::now();
                                    let base = t * 1_000_003;
                                    for k in 0..iters {
                                        let i = base + k;
                                        black_box(f.check(i));
                                        black_box(f.check_budget_with_handle(i));
                                        f.observe_with_handle(i);
                                    }
                                    let wall = start.elapsed();
                                    match (clock, cpu, on_cpu()) {
                                        ("oncpu", Some(a), Some(b)) => b.saturating_sub(a),
                                        _ => wall,
                                    }
                                })
                            })
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().expect("thread"))
                            .collect()
                    });
                    if clock == "wall" {
                        times.into_iter().max().unwrap_or_default()
                    } else {
                        times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(1)
                    }
                });
            });
        }
    }
    g.finish();
}

/// The floor: one random lookup among 100,000 string keys in a std `HashMap`.
fn baseline<M: Measurement>(c: &mut Criterion<M>, f: &Fixture, suffix: &str) {
    let map: HashMap<String, u64> = f
        .callers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.tenant.as_str().to_string(), i as u64))
        .collect();
    let mut g = c.benchmark_group(format!("baseline{suffix}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("std_hashmap_lookup_100k_tenants", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = f.inputs[(i as usize) & (INPUTS - 1)].tenant;
            black_box(map.get(f.callers[k].tenant.as_str()))
        });
    });
    // One dependent random read per iteration in 32 MiB (a pointer chase through a random
    // cycle): the latency of one cache and TLB miss on this machine, the unit the figures
    // above are made of.
    let n = (32usize << 20) / 8;
    let mut order: Vec<usize> = (0..n).collect();
    for k in (1..n).rev() {
        order.swap(k, (mix(k as u64) as usize) % (k + 1));
    }
    let mut next = vec![0usize; n];
    for w in 0..n {
        next[order[w]] = order[(w + 1) % n];
    }
    let mut at = 0usize;
    g.bench_function("dependent_miss_32mib", |b| {
        b.iter(|| {
            at = next[at];
            black_box(at)
        });
    });
    g.finish();
}

/// Criterion measurement of this thread's time on a CPU instead of elapsed time: on a shared,
/// overloaded machine elapsed time also counts the time other processes hold the CPU. Reads
/// zero (meaningless figures) where the thread CPU-time clock does not exist.
struct OnCpu;

static WALL: WallTime = WallTime;

impl Measurement for OnCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        on_cpu().unwrap_or_default()
    }
    fn end(&self, i: Duration) -> Duration {
        on_cpu().unwrap_or_default().saturating_sub(i)
    }
    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

// ---------------------------------------------------------------------------------------------
// route

/// Templates in the route fixture, each with its own five endpoints (100 x 5 = 500).
const TEMPLATES: usize = 100;

/// The router's world: 500 endpoints, 100 templates each with a three-tier ladder over its own
/// five endpoints, and 100,000 tenants extending them with a mix of constraints (real-time
/// notice, a floor, residency, a budget guardrail), loaded from generated JSON as a platform
/// would load its policy files.
struct RouteFixture {
    router: TierRouter,
    eval: Arc<TriggerEvaluator>,
    tenants: Vec<TenantId>,
    /// What an engine keeps per session: ids, the tenant handle, the budget handle.
    callers: Vec<RouteCaller>,
    /// Each tenant's budget guardrails, as an engine keeps them with the session.
    budgets: Vec<Option<Budget>>,
    task: TaskKind,
    /// Tenant indices in a shuffled order (no hot tenant).
    order: Vec<u32>,
    /// Every template's primary endpoints.
    primaries: Vec<EndpointIdx>,
}

fn route_sources() -> Vec<Source> {
    let mut catalog = String::from(r#"{"kind": "catalog", "endpoints": ["#);
    for i in 0..ENDPOINTS {
        if i > 0 {
            catalog.push(',');
        }
        let region = if i % 5 == 1 { "us-east-1" } else { "eu-west-1" };
        let _ = write!(
            catalog,
            r#"{{"id": "ep{i}", "provider": "p{}", "model": "m{}", "region": "{region}",
              "capabilities": {{"context_window": 128000, "max_output_tokens": 8192, "tools": true}},
              "pricing": {{"input_per_mtok": 1.0, "output_per_mtok": 2.0}}}}"#,
            i % 5,
            i % 5
        );
    }
    catalog.push_str("]}");
    // Breakers that open stay open for the whole run: the degraded path stays degraded.
    let platform = r#"{"kind": "policy", "id": "platform", "version": "1", "level": "platform",
        "recovery": {"open_wait": {"initial": "24h", "max": "24h"}}}"#;
    let mut out = vec![
        Source::new("catalog.json", catalog),
        Source::new("platform.json", platform),
    ];
    for t in 0..TEMPLATES {
        let e = |k: usize| format!("\"ep{}\"", t * 5 + k);
        out.push(Source::new(
            format!("template-{t}.json"),
            format!(
                r#"{{"kind": "policy", "id": "template-{t}", "version": "1", "level": "template",
                    "extends": "platform",
                    "tiers": [
                        {{"name": "primary", "endpoints": [{}, {}]}},
                        {{"name": "standby", "endpoints": [{}]}},
                        {{"name": "small", "endpoints": [{}, {}]}}
                    ],
                    "suspension": {{"max_duration": "4h"}}}}"#,
                e(0),
                e(1),
                e(2),
                e(3),
                e(4)
            ),
        ));
    }
    for i in 0..TENANTS {
        let constraints = match i % 4 {
            0 => r#"{"notification": "realtime"}"#,
            1 => r#"{"floor": "standby", "when_exhausted": "suspend"}"#,
            2 => r#"{"allowed_regions": ["eu-*"]}"#,
            _ => {
                r#"{"budget": {"tenant": {"limit_usd": 1000000, "window": "1h"},
                    "on_exceeded": {"downshift_to": "small"}}}"#
            }
        };
        out.push(Source::new(
            format!("tenant-{i}.json"),
            format!(
                r#"{{"kind": "policy", "id": "tenant-{i:06}", "version": "1", "level": "tenant",
                    "extends": "template-{}", "constraints": {constraints}}}"#,
                i % TEMPLATES
            ),
        ));
    }
    out
}

impl RouteFixture {
    fn new() -> Self {
        let sources = route_sources();
        let started = Instant::now();
        let set = PolicySet::from_sources(sources).expect("policy set");
        eprintln!(
            "route fixture: {} tenants, {} endpoints, loaded in {:.1?}",
            set.tenants().len(),
            set.catalog().len(),
            started.elapsed()
        );
        let eval = Arc::new(
            TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 42)
                .expect("evaluator"),
        );
        let task = TaskKind::new("summarization");
        let tenants: Vec<TenantId> = (0..TENANTS)
            .map(|i| TenantId::new(format!("tenant-{i:06}")))
            .collect();
        let sessions: Vec<SessionId> = (0..TENANTS)
            .map(|i| SessionId::new(format!("session-{i:06}")))
            .collect();
        let budgets = tenants
            .iter()
            .map(|t| {
                set.view(t.as_str(), task.as_str())
                    .expect("tenant")
                    .tenant_triggers
                    .budget
                    .clone()
            })
            .collect();
        let primaries = (0..TEMPLATES)
            .flat_map(|t| [t * 5, t * 5 + 1])
            .map(|i| set.catalog().index_of(&format!("ep{i}")).expect("endpoint"))
            .collect();
        let mut order: Vec<u32> = (0..TENANTS as u32).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, (mix(k as u64 ^ 0x5EED) as usize) % (k + 1));
        }
        let now = Timestamp::from_millis(T0);
        let callers = tenants
            .iter()
            .zip(sessions)
            .zip(&budgets)
            .map(
                |((t, session), b): ((&TenantId, SessionId), &Option<Budget>)| {
                    // A caller holding handles names the tenant by the handle's own id, so
                    // the router's and the evaluator's checks are pointer comparisons.
                    let handle = set.tenant_handle(t).expect("tenant");
                    let budget = b.as_ref().map(|_| {
                        eval.budget_handle(
                            &BudgetScope::tenant(handle.tenant()).session(&session),
                            now,
                        )
                    });
                    RouteCaller {
                        tenant: t.clone(),
                        handle,
                        session,
                        budget,
                    }
                },
            )
            .collect();
        eprintln!(
            "route fixture: {} distinct routing views",
            set.distinct_routing_views()
        );
        let store = Arc::new(PolicyStore::new(set));
        let f = RouteFixture {
            router: TierRouter::new(store, Arc::clone(&eval), 7),
            eval,
            tenants,
            callers,
            budgets,
            task,
            order,
            primaries,
        };
        // Every endpoint has a latency history and every budget tenant has spent something:
        // the steady state, not a cold start.
        for k in 0..TENANTS {
            f.route_observe(k as u64, false);
        }
        f
    }

    /// Virtual time for the i-th operation: ~16 calls per millisecond, so windows rotate.
    fn now(i: u64) -> Timestamp {
        Timestamp::from_millis(T0 + 1 + i / 16)
    }

    /// The i-th call: a session on the tenant's top tier with requirements and a deadline;
    /// `by_handle`: with the tenant and budget handles an engine keeps per session.
    fn ctx(&self, i: u64, by_handle: bool) -> (usize, CallContext<'_>) {
        self.ctx_of(i, i, by_handle)
    }

    /// The call of the `slot`-th tenant in the shuffled order at the i-th call's time.
    fn ctx_of(&self, slot: u64, i: u64, by_handle: bool) -> (usize, CallContext<'_>) {
        let k = self.order[(slot as usize) % TENANTS] as usize;
        let now = Self::now(i);
        let caller = &self.callers[k];
        let mut c = CallContext::new(&caller.tenant, &self.task);
        if by_handle {
            // As an engine does: the context names the tenant by the handle's own id.
            c = CallContext::for_handle(&caller.handle, &self.task);
            if let Some(b) = &caller.budget {
                c = c.budget_handle(b);
            }
        }
        let c = c
            .session(&caller.session)
            .requirements(Requirements {
                input_tokens: 12_000,
                output_tokens: 1_000,
                tools: true,
                ..Requirements::default()
            })
            .deadline(now.saturating_add(Duration::from_secs(60)))
            .on_tier(0, Timestamp::from_millis(T0));
        (k, c)
    }

    fn route(&self, i: u64, by_handle: bool) -> Decision {
        let (_, c) = self.ctx(i, by_handle);
        self.router.route(black_box(&c), Self::now(i))
    }

    /// Routes the i-th call and reports its (successful) outcome, as an engine does.
    fn route_observe(&self, i: u64, by_handle: bool) {
        self.route_observe_of(i, i, by_handle);
    }

    /// Routes and observes the call of the `slot`-th tenant at the i-th call's time.
    fn route_observe_of(&self, slot: u64, i: u64, by_handle: bool) {
        let (k, c) = self.ctx_of(slot, i, by_handle);
        let now = Self::now(i);
        let caller = &self.callers[k];
        if let Decision::Route(r) = self.router.route(black_box(&c), now) {
            let tenant = if by_handle {
                caller.handle.tenant()
            } else {
                &caller.tenant
            };
            let mut obs = Observation::new(
                r.endpoint,
                tenant,
                OutcomeClass::Ok,
                now,
                Duration::from_millis(400 + (mix(i) >> 54)),
            )
            .session(&caller.session)
            .usage(12_000, 1_000)
            .cost(0.001);
            if let Some(b) = &self.budgets[k] {
                obs = obs.budget(b);
                if let (true, Some(h)) = (by_handle, &caller.budget) {
                    obs = obs.budget_handle(h);
                }
            }
            self.eval.observe(black_box(&obs), now).expect("observe");
        }
    }

    /// Closes them again (an operator reset), back to the healthy state.
    fn close_primaries(&self) {
        for &e in &self.primaries {
            self.eval
                .reset(e, Timestamp::from_millis(T0))
                .expect("reset");
        }
    }

    /// Opens the breaker of every template's primary endpoints (five `overloaded` in a row) at
    /// `now`: the virtual time of the calls that follow (the hot-tenant bench moves it on by
    /// hours), so the breakers stay open for them.
    fn open_primaries(&self, now: Timestamp) {
        let ops = TenantId::new("ops");
        for &e in &self.primaries {
            for _ in 0..5 {
                let obs = Observation::new(e, &ops, OutcomeClass::Overloaded, now, Duration::ZERO);
                self.eval.observe(&obs, now).expect("observe");
            }
        }
    }
}

/// What an engine keeps for one of its sessions on the router's path.
struct RouteCaller {
    tenant: TenantId,
    session: SessionId,
    handle: TenantHandle,
    budget: Option<BudgetHandle>,
}

/// The baseline the issue names: per-tenant breakers in a `HashMap<String, _>` behind a
/// `RwLock`, looked up by `&str` on every call.
#[derive(Default)]
struct SimpleBreaker {
    consecutive: AtomicU32,
    open_until: AtomicU64,
}

impl SimpleBreaker {
    fn allows(&self, now: u64) -> bool {
        self.open_until.load(Ordering::Acquire) <= now
    }
    fn record(&self, ok: bool, now: u64) {
        if ok {
            self.consecutive.store(0, Ordering::Release);
        } else if self.consecutive.fetch_add(1, Ordering::AcqRel) + 1 >= 5 {
            self.open_until.store(now + 30_000, Ordering::Release);
        }
    }
}

fn route_group<M: Measurement>(c: &mut Criterion<M>, f: &RouteFixture, suffix: &str) {
    let mut g = c.benchmark_group(format!("route{suffix}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("healthy_100k_tenants_500_endpoints", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.route(i, true))
        });
    });
    // The same call for one tenant over and over: everything it touches stays in cache, so
    // this is the computation alone, without the memory latency of 100,000 tenants.
    g.bench_function("healthy_one_hot_tenant", |b| {
        b.iter(|| {
            i = i.wrapping_add(TENANTS as u64);
            black_box(f.route(i, true))
        });
    });
    g.bench_function("healthy_by_id", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.route(i, false))
        });
    });
    g.bench_function("route_and_observe", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.route_observe(i, true);
        });
    });
    // The same for one hot tenant (a budget tenant, so the charge is included) with time
    // moving as above: the computation alone, its memory staying in cache.
    let hot = (0..TENANTS as u64)
        .find(|&s| f.budgets[f.order[s as usize] as usize].is_some())
        .expect("a tenant with a budget");
    g.bench_function("route_and_observe_one_hot_tenant", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.route_observe_of(hot, i, true);
        });
    });
    g.bench_function("route_and_observe_by_id", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            f.route_observe(i, false);
        });
    });
    let baseline: RwLock<HashMap<String, SimpleBreaker>> = RwLock::new(
        f.tenants
            .iter()
            .map(|t| (t.as_str().to_string(), SimpleBreaker::default()))
            .collect(),
    );
    g.bench_function("baseline_rwlock_string_hashmap_lookup", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = f.order[(i as usize) % TENANTS] as usize;
            let map = baseline.read();
            black_box(
                map.get(black_box(f.tenants[k].as_str()))
                    .is_some_and(|s| s.allows(T0 + i / 16)),
            )
        });
    });
    g.bench_function("baseline_rwlock_string_hashmap_lookup_and_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = f.order[(i as usize) % TENANTS] as usize;
            let now = T0 + i / 16;
            let map = baseline.read();
            if let Some(s) = map.get(black_box(f.tenants[k].as_str())) {
                if s.allows(now) {
                    s.record(true, now);
                }
            }
        });
    });
    // Degraded last: it opens the primaries' breakers for the rest of the run.
    f.open_primaries(RouteFixture::now(i));
    match f.route(i + 1, true) {
        Decision::Route(r) if r.tier == 1 => {}
        other => panic!("degraded fixture: expected tier 1, got {other:?}"),
    }
    g.bench_function("degraded_primary_open_to_tier_2", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.route(i, true))
        });
    });
    g.bench_function("degraded_by_id", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(f.route(i, false))
        });
    });
    g.finish();
    f.close_primaries();
}

/// Route on one and on two threads; `wall` and `oncpu` as in [`threads`].
fn route_threads(c: &mut Criterion, f: &RouteFixture) {
    let mut g = c.benchmark_group("route_threads");
    for n in [1u64, 2] {
        for clock in ["wall", "oncpu"] {
            g.throughput(Throughput::Elements(n));
            g.bench_function(format!("route_{n}_threads_{clock}"), |b| {
                b.iter_custom(|iters| split_routes(f, n, iters, clock == "oncpu").0);
            });
        }
    }
    g.finish();
}

/// Runs `iters` routes on each of `n` threads; returns (the slowest thread's elapsed time, or
/// the mean time on a CPU; the slowest elapsed time).
fn split_routes(f: &RouteFixture, n: u64, iters: u64, oncpu: bool) -> (Duration, Duration) {
    let barrier = Barrier::new(n as usize);
    let times: Vec<(Duration, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let cpu = on_cpu();
                    let start = Instant::now();
                    let base = t * 1_000_003;
                    for k in 0..iters {
                        black_box(f.route(base + k, true));
                    }
                    let wall = start.elapsed();
                    let used = match (cpu, on_cpu()) {
                        (Some(a), Some(b)) => b.saturating_sub(a),
                        _ => wall,
                    };
                    (used, wall)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let wall = times.iter().map(|t| t.1).max().unwrap_or_default();
    if oncpu {
        let mean = times.iter().map(|t| t.0).sum::<Duration>() / u32::try_from(n).unwrap_or(1);
        (mean, wall)
    } else {
        (wall, wall)
    }
}

/// Per-call latency percentiles (criterion reports means and medians of batches, not tails):
/// one million healthy routes, each timed on its own into a pre-allocated buffer, then the
/// throughput of two threads against one. Printed, not asserted.
fn route_tail_and_scaling(f: &RouteFixture) {
    const CALLS: usize = 1_000_000;
    let mut lat: Vec<u32> = Vec::with_capacity(CALLS);
    let mut timer: Vec<u32> = Vec::with_capacity(CALLS);
    let base = 7_000_000u64;
    for k in 0..10_000 {
        black_box(f.route(base + k, true));
    }
    for k in 0..CALLS as u64 {
        let i = base + k;
        let t = Instant::now();
        black_box(f.route(i, true));
        lat.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    for _ in 0..CALLS {
        let t = Instant::now();
        black_box(());
        timer.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    let pct = |v: &mut Vec<u32>, p: f64| {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    let (p50, p99, p999) = (
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99),
        pct(&mut lat, 0.999),
    );
    let (t50, t99) = (pct(&mut timer, 0.50), pct(&mut timer, 0.99));
    println!(
        "route/healthy per-call latency over {CALLS} calls: p50 {p50} ns, p99 {p99} ns, \
         p99.9 {p999} ns (timer alone: p50 {t50} ns, p99 {t99} ns)"
    );
    const N: u64 = 2_000_000;
    let (one, _) = split_routes(f, 1, N, false);
    let (two, _) = split_routes(f, 2, N / 2, false);
    let (one_cpu, _) = split_routes(f, 1, N, true);
    let (two_cpu, _) = split_routes(f, 2, N / 2, true);
    println!(
        "route/threads: {N} routes on 1 thread {one:.2?} ({:.1} M/s), on 2 threads {two:.2?} \
         ({:.1} M/s): speed-up {:.2}x; on-CPU time per route 1 thread {:.0} ns, 2 threads {:.0} ns",
        N as f64 / one.as_secs_f64() / 1e6,
        N as f64 / two.as_secs_f64() / 1e6,
        one.as_secs_f64() / two.as_secs_f64(),
        one_cpu.as_nanos() as f64 / N as f64,
        two_cpu.as_nanos() as f64 / (N / 2) as f64,
    );
}

/// One route fixture for the wall-clock and the on-CPU groups (it takes a while to load).
fn route_fixture() -> &'static RouteFixture {
    static FIXTURE: OnceLock<RouteFixture> = OnceLock::new();
    FIXTURE.get_or_init(RouteFixture::new)
}

fn route_bench(c: &mut Criterion) {
    let f = route_fixture();
    route_tail_and_scaling(f);
    route_threads(c, f);
    route_group(c, f, "");
}

fn route_bench_on_cpu(c: &mut Criterion<OnCpu>) {
    route_group(c, route_fixture(), "_oncpu");
}

fn hot_path(c: &mut Criterion) {
    let f = Fixture::new();
    observe(c, &f, "");
    health(c, &f, "");
    threads(c, &f);
    baseline(c, &f, "");
}

fn hot_path_on_cpu(c: &mut Criterion<OnCpu>) {
    let f = Fixture::new();
    observe(c, &f, "_oncpu");
    health(c, &f, "_oncpu");
    baseline(c, &f, "_oncpu");
}

criterion_group!(benches, hot_path);
criterion_group! {
    name = benches_on_cpu;
    config = Criterion::default().with_measurement(OnCpu);
    targets = hot_path_on_cpu
}
criterion_group!(benches_route, route_bench);
criterion_group! {
    name = benches_route_on_cpu;
    config = Criterion::default().with_measurement(OnCpu);
    targets = route_bench_on_cpu
}
criterion_main!(benches, benches_on_cpu, benches_route, benches_route_on_cpu);
