//! In the steady state (tenants, sessions and endpoints already known) the hot path allocates
//! nothing: `observe`, `check`, `check_budget`, `recent_p95`, `health`, `signal` and an empty
//! `drain_events`, across latency-slice and budget-slice rotations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use downshift::policy::{Budget, BudgetAction, RateLimitRemaining, Window, WindowBudget};
use downshift::trigger::{
    BudgetHandle, BudgetScope, EvaluatorSettings, Observation, OutcomeClass, ProviderSignal,
    RateLimitState, TenantTriggers, TriggerEvaluator,
};
use downshift::{EndpointIdx, SessionId, TenantId, Timestamp};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts calls made on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn the_hot_path_allocates_nothing_in_the_steady_state() {
    const ENDPOINTS: usize = 50;
    const TENANTS: usize = 2_000;
    // Failures are rare enough here that no breaker trips (a trip queues an event, which may
    // allocate the queue: that is not the steady state).
    let mut settings = EvaluatorSettings::default();
    settings.breaker.window = Window::Calls(100);
    settings.breaker.min_calls = 50;
    settings.breaker.consecutive_failures = None;
    let eval = TriggerEvaluator::new(&settings, ENDPOINTS, 1).unwrap();
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::new(format!("tenant-{i:06}")))
        .collect();
    let sessions: Vec<SessionId> = (0..TENANTS)
        .map(|i| SessionId::new(format!("session-{i:06}")))
        .collect();
    let view = TenantTriggers {
        p95_ceiling: Some(Duration::from_secs(3)),
        queue_depth: Some(1_000),
        rate_limit_remaining: Some(RateLimitRemaining {
            min_requests_fraction: Some(0.05),
            min_tokens_fraction: None,
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
    };
    let budget = view.budget.as_ref().unwrap();
    let rl = RateLimitState {
        requests_limit: Some(10_000),
        requests_remaining: Some(9_000),
        requests_reset: Some(Duration::from_secs(60)),
        ..RateLimitState::default()
    };
    let outcomes = [
        OutcomeClass::Ok,
        OutcomeClass::Ok,
        OutcomeClass::Ok,
        OutcomeClass::Timeout,
        OutcomeClass::ContextLengthExceeded,
    ];
    let t0 = Timestamp::from_millis(1_700_000_000_000);
    let handles: Vec<BudgetHandle> = (0..TENANTS)
        .map(|k| eval.budget_handle(&BudgetScope::tenant(&tenants[k]).session(&sessions[k]), t0))
        .collect();
    let run = |from: u64, n: u64| {
        for i in from..from + n {
            let r = mix(i);
            let ep = EndpointIdx((r % ENDPOINTS as u64) as u32);
            let k = ((r >> 16) % TENANTS as u64) as usize;
            // ~4 observations per ms of virtual time: slices and spend rings rotate.
            let now = Timestamp::from_millis(1_700_000_000_000 + i / 4);
            let outcome = outcomes[((r >> 40) % outcomes.len() as u64) as usize];
            let obs = Observation::new(
                ep,
                &tenants[k],
                outcome,
                now,
                Duration::from_millis(200 + (r >> 50) % 2_000),
            )
            .session(&sessions[k])
            .rate_limit(rl)
            .cost(0.001)
            .budget(budget);
            eval.observe(&obs, now).unwrap();
            assert!(eval.check(ep, &view, now).unwrap().is_usable());
            let scope = BudgetScope::tenant(&tenants[k]).session(&sessions[k]);
            let scope = if i % 3 == 0 {
                scope.with_handle(&handles[k])
            } else {
                scope
            };
            assert!(eval.check_budget(&scope, &view, now).is_none());
            let _ = eval.recent_p95(ep, now).unwrap();
            if i % 64 == 0 {
                let _ = eval.health(ep, now).unwrap();
                eval.signal(
                    &ProviderSignal::QueueDepth {
                        endpoint: ep,
                        depth: 10,
                    },
                    now,
                )
                .unwrap();
                assert!(eval.drain_events().is_empty());
            }
        }
    };
    // Warm up: every tenant and session seen, every table at its size.
    run(0, 200_000);
    let before = allocations();
    run(200_000, 400_000);
    assert_eq!(
        allocations() - before,
        0,
        "allocations on the steady-state hot path"
    );
}
