//! Hot-path benchmarks: what every model call of every agent pays.
//!
//! Groups: `observe` (recording a call's outcome: by tenant id, through a budget handle, and
//! the endpoint side alone), `health` (the per-endpoint, per-tenant usability check, the budget
//! check by id and by handle, the health snapshot), `threads` (one call's check, budget check
//! and observe on one and two threads, for scaling) and `baseline` (a plain `HashMap<String, _>`
//! lookup among the same 100,000 tenants, and one dependent cache miss: the machine's floor for
//! any per-tenant state). `observe_oncpu` and `health_oncpu` repeat the first two groups
//! measuring each thread's time on a CPU instead of elapsed time (see [`OnCpu`]). A later issue
//! adds `route` to this file: build on [`Fixture`] and register it in `hot_path`.
//!
//! The fixture has 500 endpoints and 100,000 tenants, each with an hourly budget, a session
//! budget and a P95 ceiling; inputs are drawn in a pseudo-random order (not one hot tenant), and
//! every tenant and session is observed once before measuring, so this is the steady state.
//!
//! Run: `cargo bench --bench hot_path`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use downshift::policy::{Budget, BudgetAction, RateLimitRemaining, Window, WindowBudget};
use downshift::trigger::{
    BudgetHandle, BudgetScope, EvaluatorSettings, Observation, OutcomeClass, TenantTriggers,
    TriggerEvaluator,
};
use downshift::{EndpointIdx, SessionId, TenantId, Timestamp};

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
fn baseline(c: &mut Criterion, f: &Fixture) {
    let map: HashMap<String, u64> = f
        .callers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.tenant.as_str().to_string(), i as u64))
        .collect();
    let mut g = c.benchmark_group("baseline");
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

fn hot_path(c: &mut Criterion) {
    let f = Fixture::new();
    observe(c, &f, "");
    health(c, &f, "");
    threads(c, &f);
    baseline(c, &f);
}

fn hot_path_on_cpu(c: &mut Criterion<OnCpu>) {
    let f = Fixture::new();
    observe(c, &f, "_oncpu");
    health(c, &f, "_oncpu");
}

criterion_group!(benches, hot_path);
criterion_group! {
    name = benches_on_cpu;
    config = Criterion::default().with_measurement(OnCpu);
    targets = hot_path_on_cpu
}
criterion_main!(benches, benches_on_cpu);
