//! The engine's visibility hooks: the per-call span, the stats counters, metrics, and the
//! dispatch by [`EngineMode`]. Kept apart from the routing code; `mod.rs` calls in at four
//! points (call start/end, each attempt, each tier change or suspension, approvals).

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Call, CallResult, Engine, EngineMode, TokenUsage};
use crate::catalog::{Catalog, Endpoint};
use crate::clock::Timestamp;
use crate::id::TenantId;
use crate::policy::ResolvedPolicy;
use crate::router::{Decision, ReasonKind, Route};
use crate::stats::collector::{AttemptRecord, CallRecord, Ending};
use crate::stats::{Collector, EndpointStats, StatsSnapshot};
use crate::telemetry::TenantLabels;
use crate::trigger::OutcomeClass;

/// What the engine keeps for visibility.
#[derive(Debug)]
pub(crate) struct Visibility {
    pub(crate) stats: Collector,
    pub(crate) mode: ArcSwap<EngineMode>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) labels: ArcSwap<TenantLabels>,
    /// Whether calls are counted through the `metrics` facade (feature `metrics`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) metrics: std::sync::atomic::AtomicBool,
}

impl Visibility {
    pub(crate) fn new(
        now: Timestamp,
        stats: bool,
        mode: EngineMode,
        labels: TenantLabels,
        metrics: bool,
    ) -> Self {
        Visibility {
            stats: Collector::new(now, stats),
            mode: ArcSwap::from_pointee(mode),
            labels: ArcSwap::from_pointee(labels),
            metrics: std::sync::atomic::AtomicBool::new(metrics),
        }
    }

    /// Whether metrics export is on.
    #[cfg(feature = "metrics")]
    fn exporting(&self) -> bool {
        self.metrics.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How a call or a stream ended, as the stats and metrics count it.
struct Ended<'a> {
    /// The metrics `result` label.
    outcome: &'static str,
    ending: Ending,
    /// The rejection's reason.
    reason: Option<ReasonKind>,
    /// Whether a model was called (its latency is counted).
    reached_model: bool,
    audit_seq: Option<u64>,
    /// The serving endpoint and the tokens, for a served call.
    served: Option<(&'a str, TokenUsage)>,
}

impl Ended<'_> {
    /// Ended at a gate (suspension, approval) before any model was called.
    fn gate(outcome: &'static str, ending: Ending) -> Self {
        Ended {
            outcome,
            ending,
            reason: None,
            reached_model: false,
            audit_seq: None,
            served: None,
        }
    }

    fn rejected(r: &super::Rejection) -> Self {
        Ended {
            outcome: "rejected",
            ending: Ending::Rejected,
            reason: r.reason.map(|r| r.kind),
            reached_model: matches!(r.kind, super::RejectKind::Provider { .. }),
            audit_seq: None,
            served: None,
        }
    }
}

/// What the same tokens cost at the tenant's primary tier (its top tier's first endpoint).
pub(crate) fn primary_cost(view: &ResolvedPolicy, catalog: &Catalog, usage: TokenUsage) -> f64 {
    view.top_tier()
        .and_then(|t| view.tier(t))
        .and_then(|t| t.endpoint_idx.first())
        .and_then(|&e| catalog.try_endpoint(e))
        .map_or(0.0, |e| {
            e.pricing.cost(usage.input_tokens, usage.output_tokens)
        })
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<P, O> Engine<P, O>
where
    P: Clone + Send + Sync + 'static,
    O: Send + Sync + 'static,
{
    /// A snapshot of the engine's statistics (see [`crate::stats`]). Never blocks a call.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        let mut out = StatsSnapshot::default();
        self.stats_into(&mut out);
        out
    }

    /// Takes a snapshot into `out` (see [`Engine::stats`]), reusing its buffers: for a caller
    /// taking snapshots periodically, keeping one `StatsSnapshot` and passing it back saves
    /// allocating and faulting in the tenants' and routes' arrays (about 60 MB for 100,000
    /// tenants) each time. Everything in `out` is replaced. Never blocks a call.
    pub fn stats_into(&self, out: &mut StatsSnapshot) {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let set = inner.policies.current();
        let catalog = set.catalog();
        let ev = &inner.evaluator;
        let endpoints = catalog
            .endpoints()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let idx = crate::catalog::EndpointIdx(u32::try_from(i).unwrap_or(u32::MAX));
                let h = ev.health(idx, now).ok();
                EndpointStats {
                    endpoint: e.id.clone(),
                    state: h.as_ref().map_or_else(
                        || "unknown".to_string(),
                        |h| {
                            serde_json::to_value(h.state)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default()
                        },
                    ),
                    breaker_transitions: ev.breaker_transitions(idx).unwrap_or(0),
                    attempts: 0,
                    window_failures: h.as_ref().map_or(0, |h| h.failures),
                    failure_rate: h.as_ref().and_then(|h| h.failure_rate),
                    p95_ms: h.as_ref().and_then(|h| h.latency.p95).map(ms),
                    queue_depth: h.as_ref().and_then(|h| h.signals.queue_depth),
                    status_page: h
                        .as_ref()
                        .and_then(|h| h.signals.status_page)
                        .and_then(|s| {
                            serde_json::to_value(s)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                        }),
                    requests_remaining: h.as_ref().and_then(|h| h.signals.requests_remaining),
                    tokens_remaining: h.as_ref().and_then(|h| h.signals.tokens_remaining),
                    not_before: h.as_ref().and_then(|h| h.not_before),
                }
            })
            .collect();
        inner
            .visibility
            .stats
            .snapshot_into(now, self.mode(), catalog, endpoints, out);
    }

    /// Turns the statistics counters on or off at run time (on by default; see
    /// [`EngineBuilder::stats`](super::EngineBuilder::stats)).
    pub fn set_stats_enabled(&self, on: bool) {
        self.inner.visibility.stats.set_enabled(on);
    }

    /// Replaces how tenants are labelled in exported metrics (see
    /// [`TenantLabels`]): refresh it from a snapshot with [`TenantLabels::top_by_calls`].
    pub fn set_metric_labels(&self, labels: TenantLabels) {
        self.inner.visibility.labels.store(Arc::new(labels));
    }

    /// Turns metrics export through the `metrics` facade on or off at run time (feature
    /// `metrics`; see [`EngineBuilder::metrics`](super::EngineBuilder::metrics)). Without the
    /// feature the engine exports nothing either way.
    pub fn set_metrics_enabled(&self, on: bool) {
        self.inner
            .visibility
            .metrics
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The call, traced, counted and dispatched by mode.
    pub(crate) async fn call_visible(&self, call: Call<P>) -> CallResult<O> {
        let inner = &*self.inner;
        let start = inner.clock.now();
        let mode = inner.visibility.mode.load_full();
        // The call loop's state lives on the heap: one allocation instead of copying several
        // kilobytes each time a caller's executor moves the future `Engine::call` returns
        // (`tests/call_future_is_small.rs`).
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = CallResult<O>> + Send + '_>> =
            match &*mode {
                EngineMode::PerTenant => Box::pin(self.call_per_tenant(&call)),
                EngineMode::ObserveOnly => Box::pin(self.call_observe_only(&call)),
                EngineMode::PlatformBreaker { fallback } => {
                    Box::pin(self.call_platform_breaker(&call, fallback))
                }
            };
        #[cfg(feature = "tracing")]
        let (result, span) = {
            // Entered around each poll, as `Instrument` does, but kept here rather than moved
            // into a wrapper: no clone of the span (and its close) per call.
            let span = tracing_span::call_span(&call, mode.name());
            let mut fut = fut;
            let r = std::future::poll_fn(|cx| {
                let _entered = span.enter();
                fut.as_mut().poll(cx)
            })
            .await;
            (r, span)
        };
        #[cfg(not(feature = "tracing"))]
        let result = fut.await;
        let end = inner.clock.now();
        self.record_call(&call, &result, start, end);
        #[cfg(feature = "tracing")]
        tracing_span::record_result(&span, &result);
        result
    }

    fn record_call(
        &self,
        call: &Call<P>,
        result: &CallResult<O>,
        start: Timestamp,
        end: Timestamp,
    ) {
        let ended = match result {
            CallResult::Completed(c) => Ended {
                outcome: "completed",
                ending: Ending::Served {
                    degraded: c.degraded,
                    tier: c.served_by.tier,
                },
                reason: None,
                reached_model: true,
                audit_seq: c.audit.first().copied(),
                served: Some((c.served_by.endpoint.as_str(), c.response.usage)),
            },
            CallResult::Suspended { .. } => Ended::gate("suspended", Ending::Suspended),
            CallResult::AwaitingApproval { .. } => {
                Ended::gate("awaiting_approval", Ending::AwaitingApproval)
            }
            CallResult::Rejected(r) => Ended::rejected(r),
        };
        self.record_ended(call, &ended, start, end);
    }

    /// Counts a streamed call when its stream ends, exactly as [`Engine::call`] counts a call:
    /// a completed stream as served (latency to the end of the stream, the tokens the stream
    /// reported), a stream cut mid-answer and not continued as a failed call (its attempt's
    /// class, e.g. `server_error` for a cut, is counted with the attempt).
    pub(crate) fn record_stream(
        &self,
        call: &Call<P>,
        end: &super::StreamEnd,
        start: Timestamp,
        now: Timestamp,
    ) {
        use super::StreamOutcome as S;
        let ended = match &end.outcome {
            S::Completed(c) => Ended {
                outcome: "completed",
                ending: Ending::Served {
                    degraded: c.degraded,
                    tier: c.served_by.tier,
                },
                reason: None,
                reached_model: true,
                audit_seq: c.audit.first().copied(),
                served: Some((c.served_by.endpoint.as_str(), end.usage)),
            },
            S::Interrupted(_) => Ended {
                outcome: "interrupted",
                ending: Ending::Rejected,
                reason: None,
                reached_model: true,
                audit_seq: None,
                served: None,
            },
            S::Suspended { .. } => Ended::gate("suspended", Ending::Suspended),
            S::AwaitingApproval { .. } => {
                Ended::gate("awaiting_approval", Ending::AwaitingApproval)
            }
            S::Rejected(r) => Ended::rejected(r),
        };
        self.record_ended(call, &ended, start, now);
    }

    fn record_ended(&self, call: &Call<P>, ended: &Ended<'_>, start: Timestamp, end: Timestamp) {
        let inner = &*self.inner;
        let stats = &inner.visibility.stats;
        #[cfg(feature = "metrics")]
        if inner.visibility.exporting() {
            crate::telemetry::emit_result(
                &inner.visibility.labels.load(),
                &call.tenant,
                ended.outcome,
            );
        }
        if !stats.enabled() {
            return;
        }
        if ended.reason == Some(ReasonKind::UnknownTenant) {
            stats.unknown_tenant();
            return;
        }
        let (mut cost, mut primary) = (0.0, 0.0);
        if let (Ending::Served { degraded: true, .. }, Some((endpoint, usage))) =
            (ended.ending, ended.served)
        {
            // Only degraded calls are priced here (for their degradation episode).
            let set = inner.policies.load();
            let catalog = set.catalog();
            if let Some(e) = catalog
                .index_of(endpoint)
                .and_then(|i| catalog.try_endpoint(i))
            {
                cost = e.pricing.cost(usage.input_tokens, usage.output_tokens);
            }
            if let Ok(view) = set.view(call.tenant.as_str(), call.task.as_str()) {
                primary = primary_cost(view, catalog, usage);
            }
        }
        stats.call(
            &call.tenant,
            &CallRecord {
                session: call.session.as_ref(),
                ending: ended.ending,
                latency_ms: ended.reached_model.then(|| ms(end.duration_since(start))),
                deadline_missed: call.deadline.is_some_and(|d| end > d)
                    || ended.reason == Some(ReasonKind::DeadlineUnreachable),
                audit_seq: ended.audit_seq,
                cost,
                primary_cost: primary,
                now: end,
            },
        );
    }

    /// Counts one attempt (called from `observe_attempt`, for calls and streams alike).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_attempt(
        &self,
        tenant: &TenantId,
        view: &ResolvedPolicy,
        route: &Route,
        ep: &Endpoint,
        class: OutcomeClass,
        usage: TokenUsage,
        cost: f64,
        latency: std::time::Duration,
    ) {
        let vis = &self.inner.visibility;
        let top = view.top_tier();
        let primary = if top == Some(route.tier) {
            cost
        } else {
            primary_cost(view, self.inner.policies.load().catalog(), usage)
        };
        let tier_name = view.tier(route.tier).map_or("?", |t| &*t.name);
        #[cfg(feature = "metrics")]
        if vis.exporting() {
            crate::telemetry::emit_attempt(
                &vis.labels.load(),
                tenant,
                route.tier,
                &ep.id,
                class,
                route.degraded,
                latency,
                usage,
                cost,
                primary,
            );
        }
        vis.stats.attempt(
            tenant,
            &AttemptRecord {
                tier: route.tier,
                tier_name,
                endpoint: route.endpoint,
                degraded: route.degraded,
                class,
                latency_ms: ms(latency),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost,
                primary_cost: primary,
            },
        );
        let _ = ep;
    }
}

/// Records the route that served on the call's span (reason, tier, degraded) and, when the
/// endpoint is known, the served model and provider and the requested (primary) model: one
/// `Span::current()` and one `record` call per route.
pub(crate) fn record_route(
    route: &Route,
    view: &ResolvedPolicy,
    catalog: &Catalog,
    served: Option<&Endpoint>,
) {
    #[cfg(feature = "tracing")]
    {
        let span = tracing::Span::current();
        let Some(f) = tracing_span::fields_of(&span) else {
            return;
        };
        let models = served.map(|served| {
            let requested = view
                .top_tier()
                .and_then(|t| view.tier(t))
                .and_then(|t| t.endpoint_idx.first())
                .and_then(|&e| catalog.try_endpoint(e))
                .map_or(&*served.model, |e| &*e.model);
            (&*served.model, served.provider.as_str(), requested)
        });
        f.route(
            &span,
            route.reason.kind.as_str(),
            route.degraded,
            route.tier,
            models,
        );
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (route, view, catalog, served);
}

/// Records what the policy would have done (`observe_only`) on the call's span.
pub(crate) fn record_would_be(decision: &Decision, catalog: &Catalog) {
    #[cfg(feature = "tracing")]
    {
        let span = tracing::Span::current();
        if let Some(f) = tracing_span::fields_of(&span) {
            let text = match decision {
                Decision::Route(r) => format!(
                    "route tier {} `{}` ({})",
                    r.tier,
                    catalog
                        .try_endpoint(r.endpoint)
                        .map_or("?", |e| e.id.as_str()),
                    r.reason
                ),
                Decision::AwaitApproval {
                    proposed_tier,
                    reason,
                    ..
                } => format!("await_approval for tier {proposed_tier} ({reason})"),
                Decision::Suspend { reason, .. } => format!("suspend ({reason})"),
                Decision::Reject { reason } => format!("reject ({reason})"),
            };
            f.would_be(&span, &text);
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (decision, catalog);
}

/// A tier change, promotion or suspension of a call's session: a `tracing` event inside the
/// call's span.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tier_event(
    kind: &'static str,
    tenant: &TenantId,
    session: Option<&crate::id::SessionId>,
    from: u32,
    to: Option<u32>,
    endpoint: Option<&str>,
    reason: &str,
) {
    #[cfg(feature = "tracing")]
    tracing::event!(
        target: "downshift",
        tracing::Level::INFO,
        downshift.event = kind,
        downshift.tenant = tenant.as_str(),
        downshift.session = session.map(crate::id::SessionId::as_str),
        downshift.from_tier = from,
        downshift.to_tier = to,
        downshift.endpoint = endpoint,
        downshift.reason = reason,
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (kind, tenant, session, from, to, endpoint, reason);
}

#[cfg(feature = "tracing")]
pub(crate) use tracing_span::{call_span, record_stream_result};

#[cfg(feature = "tracing")]
mod tracing_span {
    use std::sync::LazyLock;

    use super::super::{Call, CallResult, StreamEnd};
    use tracing::field::{Field, FieldSet, Value};
    use tracing::{Level, Metadata};
    use tracing_core::Kind;
    use tracing_core::callsite::DefaultCallsite;

    /// The call span's fields. Field names follow the OpenTelemetry GenAI semantic conventions
    /// where one applies (`gen_ai.*`, `error.type`); the rest are `downshift.*`. Never the
    /// payload, the prompt or the output.
    const NAMES: &[&str] = &[
        "otel.name",
        "otel.kind",
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.conversation.id",
        "error.type",
        "downshift.tenant",
        "downshift.session",
        "downshift.workflow",
        "downshift.task",
        "downshift.mode",
        "downshift.tier",
        "downshift.tier_name",
        "downshift.endpoint",
        "downshift.degraded",
        "downshift.attempts",
        "downshift.reason",
        "downshift.outcome",
        "downshift.would_be",
    ];

    /// The call span's callsite and metadata, declared as `info_span!` declares them (target
    /// `downshift`, name `downshift.call`, level INFO), but built here so that a span is made
    /// with the values it has at creation only: `info_span!` passes a value for each of the 23
    /// fields, and a subscriber's visitor walks all of them, the 15 `Empty` ones included.
    static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
    static META: Metadata<'static> = Metadata::new(
        "downshift.call",
        "downshift",
        Level::INFO,
        Some(file!()),
        Some(line!()),
        Some(module_path!()),
        FieldSet::new(NAMES, tracing_core::identify_callsite!(&CALLSITE)),
        Kind::SPAN,
    );

    /// The call span's fields, looked up by name once per process (`Span::record` by name
    /// scans the span's field names on every call). The span has one callsite, so these are
    /// the same `Field`s for every call's span.
    pub(super) struct CallFields {
        set: &'static FieldSet,
        otel_kind: Field,
        operation: Field,
        conversation: Field,
        tenant: Field,
        session: Field,
        workflow: Field,
        task: Field,
        mode: Field,
        outcome: Field,
        tier: Field,
        tier_name: Field,
        endpoint: Field,
        degraded: Field,
        attempts: Field,
        input_tokens: Field,
        output_tokens: Field,
        error_type: Field,
        reason: Field,
        response_model: Field,
        provider: Field,
        request_model: Field,
        otel_name: Field,
        would_be: Field,
    }

    static FIELDS: LazyLock<Option<CallFields>> = LazyLock::new(|| {
        let set = META.fields();
        let get = |name: &str| set.field(name);
        Some(CallFields {
            set,
            otel_kind: get("otel.kind")?,
            operation: get("gen_ai.operation.name")?,
            conversation: get("gen_ai.conversation.id")?,
            tenant: get("downshift.tenant")?,
            session: get("downshift.session")?,
            workflow: get("downshift.workflow")?,
            task: get("downshift.task")?,
            mode: get("downshift.mode")?,
            outcome: get("downshift.outcome")?,
            tier: get("downshift.tier")?,
            tier_name: get("downshift.tier_name")?,
            endpoint: get("downshift.endpoint")?,
            degraded: get("downshift.degraded")?,
            attempts: get("downshift.attempts")?,
            input_tokens: get("gen_ai.usage.input_tokens")?,
            output_tokens: get("gen_ai.usage.output_tokens")?,
            error_type: get("error.type")?,
            reason: get("downshift.reason")?,
            response_model: get("gen_ai.response.model")?,
            provider: get("gen_ai.provider.name")?,
            request_model: get("gen_ai.request.model")?,
            otel_name: get("otel.name")?,
            would_be: get("downshift.would_be")?,
        })
    });

    /// The call span's fields, when `span` is an enabled call span (`None` for a disabled span
    /// or another span).
    pub(super) fn fields_of(span: &tracing::Span) -> Option<&'static CallFields> {
        if span.is_disabled() {
            return None;
        }
        let meta = span.metadata()?;
        // Only the call span's own callsite (the current span may be another one).
        if !std::ptr::eq(meta, &META) {
            return None;
        }
        FIELDS.as_ref()
    }

    impl CallFields {
        /// Records the route that served: the reason, degraded and tier (one `record` call).
        pub(super) fn route(
            &self,
            span: &tracing::Span,
            reason: &str,
            degraded: bool,
            tier: u32,
            models: Option<(&str, &str, &str)>,
        ) {
            let (response, provider, request) = models.unzip3();
            let name = request.map(|r| tracing::field::display(OtelName(r)));
            span.record_all(&self.set.value_set(&[
                (&self.reason, Some(&reason as &dyn Value)),
                (&self.degraded, Some(&degraded as &dyn Value)),
                (&self.tier, Some(&tier as &dyn Value)),
                (
                    &self.response_model,
                    response.as_ref().map(|v| v as &dyn Value),
                ),
                (&self.provider, provider.as_ref().map(|v| v as &dyn Value)),
                (
                    &self.request_model,
                    request.as_ref().map(|v| v as &dyn Value),
                ),
                (&self.otel_name, name.as_ref().map(|n| n as &dyn Value)),
            ]));
        }

        /// Records the would-be decision (`observe_only`).
        pub(super) fn would_be(&self, span: &tracing::Span, text: &str) {
            span.record_all(
                &self
                    .set
                    .value_set(&[(&self.would_be, Some(&text as &dyn Value))]),
            );
        }

        /// Records how a call or stream ended, in one `record` call: each `None` is left as
        /// it was.
        fn end(&self, span: &tracing::Span, e: &End<'_>) {
            let End {
                outcome,
                served,
                attempts,
                usage,
                error_type,
                reason,
                tier,
            } = *e;
            let tier = served.map(|s| s.0).or(tier);
            let (tier_name, endpoint, degraded) = served.map(|s| (s.1, s.2, s.3)).unzip3();
            let (input, output) = usage.unzip();
            span.record_all(&self.set.value_set(&[
                (&self.outcome, Some(&outcome as &dyn Value)),
                (&self.tier, tier.as_ref().map(|v| v as &dyn Value)),
                (&self.tier_name, tier_name.as_ref().map(|v| v as &dyn Value)),
                (&self.endpoint, endpoint.as_ref().map(|v| v as &dyn Value)),
                (&self.degraded, degraded.as_ref().map(|v| v as &dyn Value)),
                (&self.attempts, attempts.as_ref().map(|v| v as &dyn Value)),
                (&self.input_tokens, input.as_ref().map(|v| v as &dyn Value)),
                (
                    &self.output_tokens,
                    output.as_ref().map(|v| v as &dyn Value),
                ),
                (
                    &self.error_type,
                    error_type.as_ref().map(|v| v as &dyn Value),
                ),
                (&self.reason, reason.as_ref().map(|v| v as &dyn Value)),
            ]));
        }
    }

    /// How a call or stream ended, for [`CallFields::end`]: `None` leaves a field as it was.
    #[derive(Clone, Copy, Default)]
    struct End<'a> {
        outcome: &'a str,
        /// Tier, tier name, endpoint, degraded.
        served: Option<(u32, &'a str, &'a str, bool)>,
        attempts: Option<u32>,
        /// Input and output tokens.
        usage: Option<(u64, u64)>,
        error_type: Option<&'a str>,
        reason: Option<&'a str>,
        /// The tier proposed (when nothing served).
        tier: Option<u32>,
    }

    impl<'a> End<'a> {
        fn rejected(self, r: &'a super::super::Rejection) -> Self {
            End {
                error_type: Some(super::reject_name(r.kind)),
                reason: r.reason.as_ref().map(|x| x.kind.as_str()),
                ..self
            }
        }

        fn suspended(self) -> Self {
            End {
                reason: Some("suspended"),
                ..self
            }
        }

        fn awaiting(self, proposed_tier: u32) -> Self {
            End {
                reason: Some("approval_required"),
                tier: Some(proposed_tier),
                ..self
            }
        }
    }

    /// `otel.name`: "chat {requested model}", formatted only by a subscriber that reads it.
    struct OtelName<'a>(&'a str);

    impl std::fmt::Display for OtelName<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("chat ")?;
            f.write_str(self.0)
        }
    }

    trait Unzip3<A, B, C> {
        fn unzip3(self) -> (Option<A>, Option<B>, Option<C>);
    }

    impl<A, B, C> Unzip3<A, B, C> for Option<(A, B, C)> {
        fn unzip3(self) -> (Option<A>, Option<B>, Option<C>) {
            match self {
                Some((a, b, c)) => (Some(a), Some(b), Some(c)),
                None => (None, None, None),
            }
        }
    }

    /// Whether call spans are enabled, as `info_span!` decides it: the level filters, then the
    /// callsite's cached interest, asking the subscriber only when that is "sometimes".
    fn enabled() -> bool {
        use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
        if Level::INFO > STATIC_MAX_LEVEL || Level::INFO > LevelFilter::current() {
            return false;
        }
        let interest = CALLSITE.interest();
        !interest.is_never()
            && (interest.is_always() || tracing::dispatcher::get_default(|d| d.enabled(&META)))
    }

    fn opt<'a>(v: &'a Option<&str>) -> Option<&'a dyn Value> {
        v.as_ref().map(|v| v as &dyn Value)
    }

    /// The span of one call (fields: [`NAMES`]). What is known at the start is given at
    /// creation, and only that (an absent session or workflow is left out): the other fields
    /// stay empty until recorded, once routed and once ended, one `record` call each.
    pub(crate) fn call_span<P>(call: &Call<P>, mode: &'static str) -> tracing::Span {
        // Disabled: `Span::none()`, as `info_span!` makes it (without `tracing`'s `log` feature).
        let Some(f) = FIELDS.as_ref().filter(|_| enabled()) else {
            return tracing::Span::none();
        };
        let session = call.session.as_ref().map(crate::id::SessionId::as_str);
        let workflow = call.workflow.as_ref().map(crate::id::WorkflowId::as_str);
        let (kind, operation) = ("client", "chat");
        tracing::Span::new(
            &META,
            &f.set.value_set(&[
                (&f.otel_kind, Some(&kind as &dyn Value)),
                (&f.operation, Some(&operation as &dyn Value)),
                (&f.conversation, opt(&session)),
                (&f.tenant, Some(&call.tenant.as_str() as &dyn Value)),
                (&f.session, opt(&session)),
                (&f.workflow, opt(&workflow)),
                (&f.task, Some(&call.task.as_str() as &dyn Value)),
                (&f.mode, Some(&mode as &dyn Value)),
            ]),
        )
    }

    fn served(by: &super::super::ServedBy, degraded: bool) -> (u32, &str, &str, bool) {
        (by.tier, &*by.tier_name, by.endpoint.as_str(), degraded)
    }

    /// Records how a streamed call ended, with the fields a unary call's span gets (and
    /// `error.type` set to the failure's class for a stream cut mid-answer).
    pub(crate) fn record_stream_result(span: &tracing::Span, end: &StreamEnd) {
        use super::super::StreamOutcome as S;
        let Some(f) = fields_of(span) else { return };
        let base = End {
            outcome: end.outcome_name(),
            attempts: Some(end.attempts),
            usage: Some((end.usage.input_tokens, end.usage.output_tokens)),
            ..End::default()
        };
        let e = match &end.outcome {
            S::Completed(c) => End {
                served: Some(served(&c.served_by, c.degraded)),
                ..base
            },
            S::Interrupted(i) => End {
                served: Some(served(&i.served_by, i.degraded)),
                error_type: Some(i.error.class().as_str()),
                ..base
            },
            S::Rejected(r) => base.rejected(r),
            S::Suspended { .. } => base.suspended(),
            S::AwaitingApproval { proposed_tier, .. } => base.awaiting(*proposed_tier),
        };
        f.end(span, &e);
    }

    /// Records how the call ended.
    pub(super) fn record_result<O>(span: &tracing::Span, result: &CallResult<O>) {
        let Some(f) = fields_of(span) else { return };
        let base = End {
            outcome: result.outcome(),
            ..End::default()
        };
        let e = match result {
            CallResult::Completed(c) => End {
                served: Some(served(&c.served_by, c.degraded)),
                attempts: Some(c.attempts),
                usage: Some((
                    c.response.usage.input_tokens,
                    c.response.usage.output_tokens,
                )),
                ..base
            },
            CallResult::Rejected(r) => base.rejected(r),
            CallResult::Suspended { .. } => base.suspended(),
            CallResult::AwaitingApproval { proposed_tier, .. } => base.awaiting(*proposed_tier),
        };
        f.end(span, &e);
    }
}

/// A rejection kind's name, for `error.type` and metrics.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn reject_name(kind: super::RejectKind) -> &'static str {
    use super::RejectKind as K;
    match kind {
        K::Policy => "policy",
        K::Provider { class } => class.as_str(),
        K::RetryBudget => "retry_budget",
        K::ApprovalDenied => "approval_denied",
        K::ApprovalExpired => "approval_expired",
        K::NoSession => "no_session",
        K::Durability => "durability",
        K::Context => "context",
        K::SuspensionExpired => "suspension_expired",
    }
}
