//! `TierRouter::route` allocates nothing in the steady state — on the healthy path, the degraded
//! path (primary blocked, falling to the next tiers), the approval path and the suspend path —
//! with 100,000 tenants loaded.
//!
//! A counting global allocator counts the allocations made *on the current thread* while
//! counting is switched on, so the test harness's other threads cannot disturb the count. Each
//! path is routed once first (thread-local caches of `arc-swap` are set up on first use: that is
//! not the steady state), then thousands of times over different tenants with counting on, by
//! tenant id and through the tenant's `TenantHandle`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use downshift::policy::{PolicySet, PolicyStore, Source, TenantHandle};
use downshift::router::{CallContext, Decision, ReasonKind, TierRouter};
use downshift::trigger::{Observation, TriggerEvaluator};
use downshift::{OutcomeClass, Requirements, SessionId, TaskKind, TenantId, Timestamp};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if ON.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// thread-local cells with const initialisers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    ON.with(|o| o.set(true));
    f();
    ON.with(|o| o.set(false));
    COUNT.with(Cell::get)
}

const TENANTS: usize = 100_000;
const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// Tenant `i`'s kind: 0 plain, 1 needs approval below the primary, 2 primary only and suspends,
/// 3 has a budget guardrail.
fn kind(i: usize) -> usize {
    i % 4
}

/// A catalog of 500 endpoints, a platform, one template with a four-tier ladder, and 100,000
/// tenant layers extending it.
fn sources() -> Vec<Source> {
    let mut catalog = String::from(r#"{"kind": "catalog", "endpoints": ["#);
    for i in 0..500 {
        if i > 0 {
            catalog.push(',');
        }
        let region = if i % 2 == 0 { "eu-west-1" } else { "us-east-1" };
        write!(
            catalog,
            r#"{{"id": "ep{i}", "provider": "p{}", "model": "m{i}", "region": "{region}",
              "capabilities": {{"context_window": 128000, "max_output_tokens": 4096, "tools": true}},
              "pricing": {{"input_per_mtok": 1.0, "output_per_mtok": 2.0}}}}"#,
            i % 7
        )
        .unwrap();
    }
    catalog.push_str("]}");
    let platform = r#"{"kind": "policy", "id": "platform", "version": "1", "level": "platform"}"#;
    let template = r#"{"kind": "policy", "id": "agents", "version": "1", "level": "template",
        "extends": "platform",
        "tiers": [
            {"name": "primary", "endpoints": ["ep0", "ep2"]},
            {"name": "standby", "endpoints": ["ep1", "ep3"]},
            {"name": "mid", "endpoints": ["ep4", "ep6"], "selection": "least_latency"},
            {"name": "small", "endpoints": ["ep8"]}
        ],
        "suspension": {"max_duration": "4h"}}"#;
    let mut out = vec![
        Source::new("catalog.json", catalog),
        Source::new("platform.json", platform),
        Source::new("agents.json", template),
    ];
    for i in 0..TENANTS {
        let constraints = match kind(i) {
            0 => String::from(r#"{"notification": "realtime"}"#),
            1 => String::from(r#"{"approval": {"at_or_below": "standby"}}"#),
            2 => String::from(r#"{"floor": "primary", "when_exhausted": "suspend"}"#),
            _ => String::from(
                r#"{"budget": {"tenant": {"limit_usd": 100, "window": "1h"}, "session_usd": 10,
                    "on_exceeded": {"downshift_to": "mid"}},
                    "tasks": {"summarization": {"floor": "mid"}}}"#,
            ),
        };
        out.push(Source::new(
            format!("tenant-{i}.json"),
            format!(
                r#"{{"kind": "policy", "id": "tenant-{i}", "version": "1", "level": "tenant",
                    "extends": "agents", "constraints": {constraints}}}"#
            ),
        ));
    }
    out
}

struct World {
    router: TierRouter,
    eval: Arc<TriggerEvaluator>,
    set: Arc<PolicySet>,
    tenants: Vec<TenantId>,
    /// A handle per tenant, as an engine keeps one per session.
    handles: Vec<TenantHandle>,
}

fn world() -> World {
    let srcs = sources();
    let started = Instant::now();
    let set = PolicySet::from_sources(srcs).unwrap();
    eprintln!(
        "loaded {} tenants (500 endpoints) in {:.2?}",
        set.tenants().len(),
        started.elapsed()
    );
    assert_eq!(set.tenants().len(), TENANTS);
    let eval = Arc::new(
        TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 1).unwrap(),
    );
    let store = Arc::new(PolicyStore::new(set));
    let set = store.current();
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::new(format!("tenant-{i}")))
        .collect();
    let handles = tenants
        .iter()
        .map(|t| set.tenant_handle(t).unwrap())
        .collect();
    World {
        router: TierRouter::new(store, Arc::clone(&eval), 2),
        eval,
        set,
        tenants,
        handles,
    }
}

impl World {
    fn block(&self, id: &str, now: Timestamp) {
        let who = TenantId::new("ops");
        let e = self.set.catalog().index_of(id).unwrap();
        let obs = Observation::new(e, &who, OutcomeClass::RateLimited, now, Duration::ZERO)
            .retry_after(Duration::from_secs(3_600));
        self.eval.observe(&obs, now).unwrap();
    }

    fn name(&self, d: &Decision) -> String {
        match d {
            Decision::Route(r) => format!(
                "route {} tier {}",
                self.set.catalog().endpoint(r.endpoint).id,
                r.tier
            ),
            other => format!("{other:?}"),
        }
    }
}

/// The tenants of one kind, in a scattered order (a stride coprime with the count).
fn of_kind(k: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |j| ((j * 7_919) % (TENANTS / 4)) * 4 + k)
}

/// How a call is made.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Tenant and task only.
    Plain,
    /// With a session on the primary, requirements and a deadline.
    Rich,
    /// With a session already on tier 1.
    Sticky,
}

struct Extras {
    task: TaskKind,
    session: SessionId,
    req: Requirements,
    deadline: Timestamp,
}

fn ctx<'a>(shape: Shape, tenant: &'a TenantId, x: &'a Extras) -> CallContext<'a> {
    let c = CallContext::new(tenant, &x.task);
    match shape {
        Shape::Plain => c,
        Shape::Rich => c
            .session(&x.session)
            .requirements(x.req)
            .deadline(x.deadline)
            .on_tier(0, T0),
        Shape::Sticky => c.session(&x.session).on_tier(1, T0),
    }
}

/// Routes `n` calls of tenants of kind `k` (after one warm-up call) and returns the
/// allocations counted, checking each decision with `expect`.
fn count(
    w: &World,
    x: &Extras,
    k: usize,
    n: usize,
    now: Timestamp,
    shape: Shape,
    expect: &dyn Fn(&Decision) -> bool,
) -> u64 {
    let d = w.router.route(&ctx(shape, &w.tenants[k], x), now);
    assert!(expect(&d), "warm-up: {}", w.name(&d));
    let mut bad = None;
    let allocs = allocations(|| {
        for i in of_kind(k, n) {
            let d = w.router.route(&ctx(shape, &w.tenants[i], x), now);
            if !expect(&d) && bad.is_none() {
                bad = Some(d);
            }
            // The same call through the tenant's handle.
            let c = ctx(shape, &w.tenants[i], x).tenant_handle(&w.handles[i]);
            let d = w.router.route(&c, now);
            if !expect(&d) && bad.is_none() {
                bad = Some(d);
            }
        }
    });
    if let Some(d) = bad {
        panic!("unexpected decision: {}", w.name(&d));
    }
    allocs
}

#[test]
fn route_allocates_nothing_on_any_path_with_100k_tenants() {
    let w = world();
    let x = Extras {
        task: TaskKind::new("summarization"),
        session: SessionId::new("session-1"),
        req: Requirements {
            input_tokens: 20_000,
            output_tokens: 1_000,
            tools: true,
            ..Requirements::default()
        },
        deadline: T0.saturating_add(Duration::from_secs(30)),
    };
    let tier = |t: u32| move |d: &Decision| matches!(d, Decision::Route(r) if r.tier == t);

    // Healthy: every tenant kind on its primary (the budget kind checks its guardrail too).
    for k in 0..4 {
        for shape in [Shape::Plain, Shape::Rich] {
            let n = count(&w, &x, k, 10_000, T0, shape, &tier(0));
            assert_eq!(
                n, 0,
                "healthy path, tenant kind {k}, {shape:?}: {n} allocations"
            );
        }
    }

    // Degraded: the primary's endpoints are throttled; plain tenants fall to the standby...
    let now = T0.saturating_add(Duration::from_secs(1));
    w.block("ep0", now);
    w.block("ep2", now);
    for shape in [Shape::Plain, Shape::Rich] {
        let n = count(&w, &x, 0, 10_000, now, shape, &tier(1));
        assert_eq!(n, 0, "degraded path (tier 1), {shape:?}: {n} allocations");
    }
    // ...a session already on the standby stays there (sticky)...
    let n = count(&w, &x, 3, 10_000, now, Shape::Sticky, &tier(1));
    assert_eq!(n, 0, "sticky degraded path: {n} allocations");
    // ...and with the standby down too, to the third tier (least-latency selection).
    w.block("ep1", now);
    w.block("ep3", now);
    let n = count(&w, &x, 0, 10_000, now, Shape::Plain, &tier(2));
    assert_eq!(n, 0, "degraded path (tier 2): {n} allocations");

    // Approval: the switch below the primary waits for a human.
    let n = count(&w, &x, 1, 10_000, now, Shape::Rich, &|d| {
        matches!(d, Decision::AwaitApproval { .. })
    });
    assert_eq!(n, 0, "approval path: {n} allocations");

    // Suspend: primary-only tenants have nothing left.
    let n = count(
        &w,
        &x,
        2,
        10_000,
        now,
        Shape::Rich,
        &|d| matches!(d, Decision::Suspend { reason, .. } if reason.kind == ReasonKind::NothingUsable),
    );
    assert_eq!(n, 0, "suspend path: {n} allocations");
}
