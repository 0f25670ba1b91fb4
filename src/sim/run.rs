//! The run: builds the real [`Engine`] over virtual time and the scripted providers, drives
//! the workload's sessions step by step, runs the platform's orchestrator every tick (provider
//! signals, probes, approvals, resumes), and collects what every call experienced.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::audit::{AuditRecord, MemoryAuditSink};
use crate::catalog::{EndpointIdx, Requirements};
use crate::clock::Timestamp;
use crate::engine::{Call, CallResult, Engine, Recorder, RejectKind, StreamEvent, StreamOutcome};
use crate::error::{Error, SimError};
use crate::id::{SessionId, TaskKind, TenantId};
use crate::policy::PolicySet;
use crate::router::ReasonKind;
use crate::trigger::{BreakerEvent, ProviderSignal};

use super::client::{ScriptedProviders, Sent, Window, response_of, signals_at, splitmix, unit};
use super::exec::{Executor, VirtualSleeper, VirtualTime};
use super::scenario::{ApproverAnswer, RequestShape, Scenario, base_dir, parse_time};

/// How one call ended, as the simulation keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    Served {
        tier: u32,
        endpoint: EndpointIdx,
        degraded: bool,
    },
    Suspended,
    Awaiting,
    Rejected {
        deadline: bool,
    },
    Interrupted,
}

/// One call of the workload.
#[derive(Debug, Clone)]
pub(crate) struct CallRec {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) tenant: usize,
    pub(crate) task: usize,
    pub(crate) outcome: Outcome,
    pub(crate) deadline: Option<u64>,
    pub(crate) cost: f64,
    pub(crate) primary_cost: f64,
    pub(crate) continued: bool,
    /// The session's index, or the recorded call's in a replay.
    pub(crate) key: usize,
}

/// Everything a run produced, before it is summarised.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) start: Timestamp,
    pub(crate) end: Timestamp,
    pub(crate) set: Arc<PolicySet>,
    pub(crate) tenants: Vec<TenantId>,
    pub(crate) tasks: Vec<TaskKind>,
    pub(crate) calls: Vec<CallRec>,
    pub(crate) audit: Vec<AuditRecord>,
    pub(crate) breaker: Vec<BreakerEvent>,
    pub(crate) sent: Vec<Sent>,
    /// Sessions waiting: (tenant, task, `S` or `A`, from, until).
    pub(crate) waits: Vec<(usize, usize, char, u64, u64)>,
    pub(crate) shadow: Option<crate::engine::ShadowReport>,
}

/// Options of a run beyond the scenario file.
#[derive(Default)]
#[must_use]
pub struct RunOptions {
    /// Records the engine's observations, signals, calls and results.
    pub recorder: Option<Arc<dyn Recorder>>,
    /// Runs under this policy set instead of the scenario's `policies`.
    pub policies: Option<PolicySet>,
    /// Evaluates this candidate policy set in shadow (instead of the scenario's
    /// `shadow_policies`).
    pub shadow: Option<PolicySet>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("recorder", &self.recorder.is_some())
            .field("policies", &self.policies.is_some())
            .field("shadow", &self.shadow.is_some())
            .finish_non_exhaustive()
    }
}

/// A session of the workload.
#[derive(Debug)]
struct Sess {
    id: SessionId,
    tenant: usize,
    task: usize,
    request: RequestShape,
    deadline: Option<Duration>,
    stream: bool,
    every: Duration,
    steps_left: Option<u32>,
    until: u64,
    step: u32,
    last_start: u64,
    state: State,
    waiting_since: Option<(char, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Scheduled,
    InCall,
    Suspended,
    Waiting(u64),
    Done,
}

enum Msg {
    Done {
        sess: usize,
        rec: CallRec,
        ticket: Option<u64>,
    },
    Resumed(SessionId),
    Tick {
        pending: BTreeSet<u64>,
    },
}

struct Ctx {
    path: PathBuf,
}

impl Ctx {
    fn invalid(&self, at: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Sim(SimError::Invalid {
            path: self.path.clone(),
            at: at.into(),
            message: message.into(),
        })
    }
    fn time(&self, at: &str, s: &str, start: Timestamp) -> Result<Timestamp, Error> {
        parse_time(s, start).map_err(|m| self.invalid(at, m))
    }
}

/// Loads the policy files a scenario names (relative to the scenario's directory).
pub(crate) fn load_policies(paths: &[String], base: &Path) -> Result<PolicySet, Error> {
    let paths: Vec<PathBuf> = paths.iter().map(|p| base.join(p)).collect();
    Ok(PolicySet::load(&paths)?)
}

/// Runs a scenario file.
///
/// # Errors
/// [`SimError`] for a file that cannot be read or run; [`PolicyError`](crate::PolicyError)
/// for its policy files.
pub fn run_file(path: impl AsRef<Path>, options: RunOptions) -> Result<super::Report, Error> {
    let path = path.as_ref();
    let scenario = Scenario::load(path)?;
    run(&scenario, path, options)
}

/// Runs a parsed scenario; `path` is where its relative paths are resolved from and how
/// errors name it.
///
/// # Errors
/// As [`run_file`].
pub fn run(scenario: &Scenario, path: &Path, options: RunOptions) -> Result<super::Report, Error> {
    let raw = execute(scenario, path, options, None)?;
    super::report::summarise(scenario, path, raw)
}

#[allow(clippy::too_many_lines)]
pub(crate) fn execute(
    scenario: &Scenario,
    path: &Path,
    options: RunOptions,
    replay: Option<Arc<super::replay::Recording>>,
) -> Result<Raw, Error> {
    let cx = Ctx {
        path: path.to_path_buf(),
    };
    let base = base_dir(path);
    let start = Timestamp::parse_rfc3339(&scenario.start).map_err(|m| cx.invalid("start", m))?;
    let end = start.saturating_add(scenario.duration);
    if scenario.tick.is_zero() || scenario.bucket.is_zero() {
        return Err(cx.invalid("tick", "`tick` and `bucket` must be longer than 0"));
    }
    let set = match options.policies {
        Some(s) => s,
        None => load_policies(&scenario.policies, &base)?,
    };
    let shadow = match options.shadow {
        Some(s) => Some(s),
        None if !scenario.shadow_policies.is_empty() => {
            Some(load_policies(&scenario.shadow_policies, &base)?)
        }
        None => None,
    };
    let catalog = Arc::clone(set.catalog());
    let ep = |at: String, id: &str| -> Result<EndpointIdx, Error> {
        catalog
            .index_of(id)
            .ok_or_else(|| cx.invalid(at, format!("unknown endpoint `{id}` (not in the catalog)")))
    };

    // The providers.
    let mut normal = vec![(Duration::from_secs(2), 0.25); catalog.endpoints().len()];
    for (id, b) in &scenario.endpoints {
        let i = ep(format!("endpoints.{id}"), id)?;
        if let Some(n) = normal.get_mut(i.0 as usize) {
            *n = (b.latency, b.jitter);
        }
    }
    let mut windows = Vec::new();
    for (n, f) in scenario.faults.iter().enumerate() {
        let at = format!("faults[{n}]");
        let endpoints = f
            .endpoints
            .iter()
            .enumerate()
            .map(|(k, id)| ep(format!("{at}.endpoints[{k}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let from = cx.time(&format!("{at}.from"), &f.from, start)?;
        let until = cx.time(&format!("{at}.until"), &f.until, start)?;
        if until <= from {
            return Err(cx.invalid(format!("{at}.until"), "the window ends before it starts"));
        }
        if !(0.0..=1.0).contains(&f.error_rate) {
            return Err(cx.invalid(format!("{at}.error_rate"), "a share between 0 and 1"));
        }
        windows.push(Window {
            endpoints,
            from: from.as_millis(),
            until: until.as_millis(),
            error: f.error.as_ref().map(response_of),
            error_rate: f.error_rate,
            error_latency: f.error_latency.unwrap_or(Duration::from_millis(300)),
            added_latency: f.added_latency.unwrap_or_default(),
            queue_depth: f.queue_depth,
            status_page: f.status_page,
            rate_limit: f.rate_limit.clone(),
            cut_stream_after: f.cut_stream_after,
        });
    }
    let time = VirtualTime::new(start);
    let providers = Arc::new(ScriptedProviders {
        time: time.clone(),
        windows: windows.clone(),
        normal,
        seed: scenario.seed,
        counter: AtomicU64::new(0),
        sent: parking_lot::Mutex::new(Vec::new()),
    });
    let audit = Arc::new(MemoryAuditSink::new());
    let client: Arc<dyn crate::engine::ModelClient> = match &replay {
        Some(r) => Arc::new(super::replay::ReplayProviders::new(
            Arc::clone(r),
            time.clone(),
            Arc::clone(&providers),
        )),
        None => providers.clone(),
    };
    let mut builder = Engine::builder(set, client)
        .clock(Arc::new(time.clock().clone()))
        .sleeper(Arc::new(VirtualSleeper(time.clone())))
        .audit(audit.clone())
        .replica("sim")
        .ids(Arc::new(crate::engine::SeededIds::new(scenario.seed)))
        .seed(scenario.seed);
    if let Some(r) = options.recorder.clone() {
        builder = builder.recorder(r);
    }
    let engine: Engine = builder.build()?;
    if let Some(s) = shadow {
        engine.set_shadow(s);
    }
    let set = engine.policies().current();
    if let Some(r) = engine.recorder() {
        r.record(crate::engine::Recorded::Header {
            start,
            end,
            tick_ms: u64::try_from(scenario.tick.as_millis()).unwrap_or(u64::MAX),
            seed: scenario.seed,
            policy_digest: set.digest().to_string(),
        });
    }

    // The tenants, tasks and sessions.
    let mut tenants: BTreeSet<String> = BTreeSet::new();
    let mut tasks: BTreeSet<String> = BTreeSet::new();
    for w in &scenario.workload {
        tenants.insert(w.tenant.clone());
        tasks.insert(w.task.clone());
    }
    for a in &scenario.arrivals {
        tenants.insert(a.tenant.clone());
        tasks.insert(a.task.clone());
    }
    if let Some(r) = &replay {
        for c in &r.calls {
            tenants.insert(c.tenant.to_string());
            tasks.insert(c.task.to_string());
        }
    }
    let tenants: Vec<TenantId> = tenants.into_iter().map(TenantId::from).collect();
    let tasks: Vec<TaskKind> = tasks.into_iter().map(TaskKind::from).collect();
    let tenant_ix = |t: &str| tenants.iter().position(|x| x.as_str() == t).unwrap_or(0);
    let task_ix = |t: &str| tasks.iter().position(|x| x.as_str() == t).unwrap_or(0);
    for (n, w) in scenario.workload.iter().enumerate() {
        check_view(&cx, &set, &format!("workload[{n}]"), &w.tenant, &w.task)?;
    }
    for (n, a) in scenario.arrivals.iter().enumerate() {
        check_view(&cx, &set, &format!("arrivals[{n}]"), &a.tenant, &a.task)?;
    }
    for (n, a) in scenario.approvers.iter().enumerate() {
        set.tenant(&a.tenant)
            .map_err(|e| cx.invalid(format!("approvers[{n}].tenant"), e.to_string()))?;
    }

    // All-primary prices per (tenant, task): the top usable tier's first endpoint.
    let mut primary: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
    for (ti, t) in tenants.iter().enumerate() {
        for (ki, k) in tasks.iter().enumerate() {
            if let Ok(view) = set.view(t.as_str(), k.as_str()) {
                let price = view
                    .usable_tiers()
                    .next()
                    .and_then(|tier| tier.endpoint_idx.first())
                    .and_then(|&e| catalog.try_endpoint(e))
                    .map_or((0.0, 0.0), |e| {
                        (e.pricing.input_per_mtok, e.pricing.output_per_mtok)
                    });
                primary.insert((ti, ki), price);
            }
        }
    }

    let smallest_window = catalog
        .endpoints()
        .iter()
        .map(|e| e.capabilities.context_window)
        .min()
        .unwrap_or(u32::MAX);
    let mut sessions: Vec<Sess> = Vec::new();
    let mut agenda: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut seq = 0u64;
    let mut schedule = |agenda: &mut BTreeMap<(u64, u64), usize>, t: u64, s: usize| {
        agenda.insert((t, seq), s);
        seq += 1;
    };
    let end_ms = end.as_millis();
    if replay.is_none() {
        for (n, w) in scenario.workload.iter().enumerate() {
            let at = format!("workload[{n}]");
            let from = match &w.from {
                Some(s) => cx.time(&format!("{at}.from"), s, start)?,
                None => start,
            };
            let until = match &w.until {
                Some(s) => cx.time(&format!("{at}.until"), s, start)?,
                None => end,
            }
            .min(end)
            .as_millis();
            let every = w.every.unwrap_or(Duration::from_secs(60));
            if every.is_zero() {
                return Err(cx.invalid(format!("{at}.every"), "must be longer than 0"));
            }
            let prefix = w
                .session_prefix
                .clone()
                .unwrap_or_else(|| format!("{}/{}/", w.tenant, w.task));
            let add = |sessions: &mut Vec<Sess>, k: u64, at_ms: u64, steps: Option<u32>| {
                sessions.push(Sess {
                    id: SessionId::new(format!("{prefix}{k}")),
                    tenant: tenant_ix(&w.tenant),
                    task: task_ix(&w.task),
                    request: w.request,
                    deadline: w.deadline,
                    stream: w.stream,
                    every,
                    steps_left: steps,
                    until,
                    step: 0,
                    last_start: at_ms,
                    state: State::Scheduled,
                    waiting_since: None,
                });
                sessions.len() - 1
            };
            match (w.sessions, w.per_minute) {
                (Some(k), None) => {
                    for i in 0..u64::from(k) {
                        let s = add(&mut sessions, i + 1, from.as_millis(), w.steps);
                        schedule(&mut agenda, from.as_millis(), s);
                    }
                }
                (None, Some(rate)) if rate > 0.0 && rate.is_finite() => {
                    let gap = 60_000.0 / rate;
                    let mut t = from.as_millis() as f64;
                    let mut k = 0u64;
                    let mut r = splitmix(scenario.seed ^ splitmix(n as u64 + 1));
                    loop {
                        let step = if w.poisson {
                            r = splitmix(r);
                            -gap * (1.0 - unit(r)).ln()
                        } else {
                            gap
                        };
                        if k > 0 || w.poisson {
                            t += step;
                        }
                        if t >= until as f64 {
                            break;
                        }
                        k += 1;
                        let s = add(&mut sessions, k, t as u64, Some(w.steps.unwrap_or(1)));
                        schedule(&mut agenda, t as u64, s);
                    }
                }
                _ => {
                    return Err(cx.invalid(
                        at,
                        "give exactly one of `sessions` (a number) or `per_minute` (a rate above 0)",
                    ));
                }
            }
        }
        for (n, a) in scenario.arrivals.iter().enumerate() {
            let at = cx
                .time(&format!("arrivals[{n}].at"), &a.at, start)?
                .as_millis();
            sessions.push(Sess {
                id: SessionId::new(
                    a.session
                        .clone()
                        .unwrap_or_else(|| format!("{}/{}/a{}", a.tenant, a.task, n + 1)),
                ),
                tenant: tenant_ix(&a.tenant),
                task: task_ix(&a.task),
                request: a.request,
                deadline: a.deadline,
                stream: a.stream,
                every: a.every.unwrap_or(Duration::from_secs(60)),
                steps_left: Some(a.steps.unwrap_or(1)),
                until: end_ms,
                step: 0,
                last_start: at,
                state: State::Scheduled,
                waiting_since: None,
            });
            schedule(&mut agenda, at, sessions.len() - 1);
        }
    }
    // A replay re-issues every recorded call at its time, in its order.
    let mut replay_calls: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    if let Some(r) = &replay {
        for (k, c) in r.calls.iter().enumerate() {
            replay_calls.insert((c.at.as_millis(), k as u64), k);
        }
    }

    let inbox: Rc<RefCell<VecDeque<Msg>>> = Rc::new(RefCell::new(VecDeque::new()));
    let breaker: Rc<RefCell<Vec<BreakerEvent>>> = Rc::new(RefCell::new(Vec::new()));
    let tick_running = Rc::new(RefCell::new(false));
    let mut exec = Executor::new(time.clone());
    let mut calls: Vec<CallRec> = Vec::new();
    let mut next_tick = start.as_millis();
    let approvers: BTreeMap<String, (String, ApproverAnswer, Duration)> = scenario
        .approvers
        .iter()
        .map(|a| {
            (
                a.tenant.clone(),
                (
                    a.name.clone(),
                    a.answer,
                    a.after.unwrap_or(Duration::from_secs(120)),
                ),
            )
        })
        .collect();
    let approvers = Rc::new(approvers);
    let windows = Rc::new(windows);
    let mut waits: Vec<(usize, usize, char, u64, u64)> = Vec::new();
    // Sessions awaiting an approval answer.
    let mut waiting: BTreeSet<usize> = BTreeSet::new();
    let mut by_id: BTreeMap<SessionId, usize> = BTreeMap::new();
    for (i, s) in sessions.iter().enumerate() {
        by_id.insert(s.id.clone(), i);
    }

    loop {
        let first_agenda = agenda.keys().next().map(|k| k.0);
        let first_replay = replay_calls.keys().next().map(|k| k.0);
        let tick = (next_tick <= end_ms).then_some(next_tick);
        let Some(t) = [first_agenda, first_replay, tick, exec.next_due()]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        exec.advance(Timestamp::from_millis(t));
        exec.run_ready();
        if tick == Some(t) {
            next_tick =
                t.saturating_add(u64::try_from(scenario.tick.as_millis()).unwrap_or(u64::MAX));
            if !*tick_running.borrow() {
                *tick_running.borrow_mut() = true;
                exec.spawn(orchestrate(
                    engine.clone(),
                    Rc::clone(&windows),
                    Rc::clone(&approvers),
                    Rc::clone(&inbox),
                    Rc::clone(&breaker),
                    Rc::clone(&tick_running),
                    replay.clone(),
                    scenario.tick,
                ));
                exec.run_ready();
            }
        }
        loop {
            // Settle what finished, then start what is due now.
            while let Some(msg) = inbox.borrow_mut().pop_front() {
                match msg {
                    Msg::Done { sess, rec, ticket } => {
                        let now = t;
                        let outcome = rec.outcome;
                        calls.push(rec);
                        let Some(s) = sessions.get_mut(sess) else {
                            continue;
                        };
                        match outcome {
                            Outcome::Suspended => {
                                s.state = State::Suspended;
                                s.waiting_since = Some(('S', now));
                            }
                            Outcome::Awaiting => {
                                waiting.insert(sess);
                                s.state = State::Waiting(ticket.unwrap_or(0));
                                s.waiting_since = Some(('A', now));
                            }
                            _ => {
                                s.step += 1;
                                if let Some(left) = s.steps_left.as_mut() {
                                    *left = left.saturating_sub(1);
                                }
                                let next = s
                                    .last_start
                                    .saturating_add(
                                        u64::try_from(s.every.as_millis()).unwrap_or(u64::MAX),
                                    )
                                    .max(now);
                                if s.steps_left == Some(0) || next >= s.until {
                                    s.state = State::Done;
                                    // The platform cleans up a finished session.
                                    let id = s.id.clone();
                                    engine.forget_session(&id);
                                    let store = engine.checkpoints();
                                    futures::executor::block_on(async {
                                        if let Ok(Some(cp)) = store.load(&id).await {
                                            let _ = store.delete(&id, cp.version).await;
                                        }
                                    });
                                } else {
                                    s.state = State::Scheduled;
                                    schedule(&mut agenda, next, sess);
                                }
                            }
                        }
                    }
                    Msg::Resumed(id) => {
                        if let Some(&i) = by_id.get(&id) {
                            if let Some(s) = sessions.get_mut(i) {
                                if s.state == State::Suspended {
                                    if let Some((k, since)) = s.waiting_since.take() {
                                        waits.push((s.tenant, s.task, k, since, t));
                                    }
                                    s.state = State::Scheduled;
                                    schedule(&mut agenda, t, i);
                                }
                            }
                        }
                    }
                    Msg::Tick { pending } => {
                        let ids: Vec<usize> = waiting.iter().copied().collect();
                        for i in ids {
                            let Some(s) = sessions.get_mut(i) else {
                                continue;
                            };
                            if let State::Waiting(ticket) = s.state {
                                if !pending.contains(&ticket) {
                                    waiting.remove(&i);
                                    if let Some((k, since)) = s.waiting_since.take() {
                                        waits.push((s.tenant, s.task, k, since, t));
                                    }
                                    s.state = State::Scheduled;
                                    schedule(&mut agenda, t, i);
                                }
                            }
                        }
                    }
                }
            }
            let mut started = false;
            while let Some(entry) = agenda.first_entry() {
                if entry.key().0 > t {
                    break;
                }
                let i = entry.remove();
                let Some(s) = sessions.get_mut(i) else {
                    continue;
                };
                s.state = State::InCall;
                s.last_start = t;
                let tenant = tenants
                    .get(s.tenant)
                    .cloned()
                    .unwrap_or_else(|| TenantId::new("?"));
                let task = tasks
                    .get(s.task)
                    .cloned()
                    .unwrap_or_else(|| TaskKind::new("?"));
                let input = s
                    .request
                    .input_tokens
                    .saturating_add(s.request.growth.saturating_mul(s.step));
                let deadline = s
                    .deadline
                    .map(|d| Timestamp::from_millis(t).saturating_add(d));
                let mut call = Call::new(
                    tenant,
                    task,
                    json!({
                        "input_tokens": input,
                        "output_tokens": s.request.output_tokens,
                        "step": s.step,
                    }),
                )
                .session(s.id.clone())
                .requirements(Requirements {
                    input_tokens: input,
                    output_tokens: s.request.output_tokens,
                    tools: s.request.tools,
                    vision: s.request.vision,
                    ..Requirements::default()
                })
                .state(json!({"session": s.id.as_str(), "step": s.step}));
                if let Some(d) = deadline {
                    call = call.deadline(d);
                }
                // A context larger than the catalog's smallest window goes with an agent state
                // the engine can fit (messages carrying their token estimates).
                if input.saturating_add(s.request.output_tokens) > smallest_window {
                    call = call.agent_state(agent_state(task_name(&tasks, s.task), input, s.step));
                }
                let price = primary
                    .get(&(s.tenant, s.task))
                    .copied()
                    .unwrap_or((0.0, 0.0));
                spawn_call(
                    &mut exec,
                    &engine,
                    call,
                    s.stream,
                    i,
                    false,
                    (s.tenant, s.task),
                    price,
                    Rc::clone(&inbox),
                );
                started = true;
            }
            while let Some(entry) = replay_calls.first_entry() {
                if entry.key().0 > t {
                    break;
                }
                let k = entry.remove();
                let Some(c) = replay.as_ref().and_then(|r| r.calls.get(k)) else {
                    continue;
                };
                let ti = tenant_ix(c.tenant.as_str());
                let ki = task_ix(c.task.as_str());
                let mut call = Call::new(
                    c.tenant.clone(),
                    c.task.clone(),
                    json!({
                        "input_tokens": c.input_tokens,
                        "output_tokens": c.output_tokens,
                        "tenant": c.tenant.as_str(),
                        "session": c.session.as_ref().map(|s| s.as_str()),
                    }),
                )
                .requirements(Requirements {
                    input_tokens: c.input_tokens,
                    output_tokens: c.output_tokens,
                    ..Requirements::default()
                })
                .new_step(c.new_step);
                if let Some(sid) = &c.session {
                    call = call
                        .session(sid.clone())
                        .state(json!({"session": sid.as_str()}));
                }
                if let Some(d) = c.deadline {
                    call = call.deadline(d);
                }
                let price = primary.get(&(ti, ki)).copied().unwrap_or((0.0, 0.0));
                spawn_call(
                    &mut exec,
                    &engine,
                    call,
                    false,
                    k,
                    true,
                    (ti, ki),
                    price,
                    Rc::clone(&inbox),
                );
                started = true;
            }
            if !started && inbox.borrow().is_empty() {
                break;
            }
            exec.run_ready();
        }
        if t > end_ms && exec.live() == 0 && agenda.is_empty() && replay_calls.is_empty() {
            break;
        }
    }
    let mut breaker_events = breaker.take();
    breaker_events.extend(engine.evaluator().drain_events());
    let shadow = engine.shadow_report();
    let sent = providers.sent.lock().clone();
    let end_all = time.now().as_millis().max(end_ms);
    for s in &sessions {
        if let Some((k, since)) = s.waiting_since {
            waits.push((s.tenant, s.task, k, since, end_all));
        }
    }
    // Calls still in flight at the end of the run are dropped with the executor.
    drop(exec);
    Ok(Raw {
        start,
        end,
        set,
        tenants,
        tasks,
        calls,
        audit: audit.records(),
        breaker: breaker_events,
        sent,
        waits,
        shadow,
    })
}

fn check_view(cx: &Ctx, set: &PolicySet, at: &str, tenant: &str, task: &str) -> Result<(), Error> {
    set.tenant(tenant)
        .map_err(|e| cx.invalid(format!("{at}.tenant"), e.to_string()))?;
    set.view(tenant, task)
        .map_err(|e| cx.invalid(format!("{at}.task"), e.to_string()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn spawn_call(
    exec: &mut Executor,
    engine: &Engine,
    call: Call<Value>,
    stream: bool,
    sess: usize,
    replayed: bool,
    (tenant, task): (usize, usize),
    (pin, pout): (f64, f64),
    inbox: Rc<RefCell<VecDeque<Msg>>>,
) {
    let engine = engine.clone();
    exec.spawn(async move {
        let start = engine_now(&engine);
        let deadline = call.deadline.map(Timestamp::as_millis);
        let set = engine.policies().current();
        let catalog = Arc::clone(set.catalog());
        let (outcome, usage, ticket, continued) = if stream {
            let mut events = engine.call_stream(call);
            let mut end = None;
            while let Some(ev) = events.next().await {
                if let StreamEvent::End(e) = ev {
                    end = Some(e);
                }
            }
            match end {
                Some(e) => {
                    let usage = e.usage;
                    let continued = e.continued;
                    let (o, ticket) = match e.outcome {
                        StreamOutcome::Completed(c) => (
                            Outcome::Served {
                                tier: c.served_by.tier,
                                endpoint: catalog
                                    .index_of(c.served_by.endpoint.as_str())
                                    .unwrap_or(EndpointIdx(0)),
                                degraded: c.degraded,
                            },
                            None,
                        ),
                        StreamOutcome::Interrupted(_) => (Outcome::Interrupted, None),
                        StreamOutcome::Suspended { .. } => (Outcome::Suspended, None),
                        StreamOutcome::AwaitingApproval { ticket, .. } => {
                            (Outcome::Awaiting, Some(ticket.0))
                        }
                        StreamOutcome::Rejected(r) => (rejected(&r), None),
                    };
                    (o, Some(usage), ticket, continued)
                }
                None => (Outcome::Interrupted, None, None, false),
            }
        } else {
            match engine.call(call).await {
                CallResult::Completed(c) => (
                    Outcome::Served {
                        tier: c.served_by.tier,
                        endpoint: catalog
                            .index_of(c.served_by.endpoint.as_str())
                            .unwrap_or(EndpointIdx(0)),
                        degraded: c.degraded,
                    },
                    Some(c.response.usage),
                    None,
                    false,
                ),
                CallResult::Suspended { .. } => (Outcome::Suspended, None, None, false),
                CallResult::AwaitingApproval { ticket, .. } => {
                    (Outcome::Awaiting, None, Some(ticket.0), false)
                }
                CallResult::Rejected(r) => (rejected(&r), None, None, false),
            }
        };
        let end = engine_now(&engine);
        let (cost, primary_cost) = match (outcome, usage) {
            (Outcome::Served { endpoint, .. }, Some(u)) => (
                catalog
                    .try_endpoint(endpoint)
                    .map_or(0.0, |e| e.pricing.cost(u.input_tokens, u.output_tokens)),
                (u.input_tokens as f64 * pin + u.output_tokens as f64 * pout) / 1_000_000.0,
            ),
            _ => (0.0, 0.0),
        };
        let outcome = match outcome {
            Outcome::Rejected { deadline: d } => Outcome::Rejected {
                deadline: d || deadline.is_some_and(|dl| end.as_millis() >= dl),
            },
            o => o,
        };
        inbox.borrow_mut().push_back(Msg::Done {
            sess: if replayed { usize::MAX } else { sess },
            rec: CallRec {
                start: start.as_millis(),
                end: end.as_millis(),
                tenant,
                task,
                outcome,
                deadline,
                cost,
                primary_cost,
                continued,
                key: sess,
            },
            ticket,
        });
    });
}

fn rejected(r: &crate::engine::Rejection) -> Outcome {
    let deadline = r
        .reason
        .as_ref()
        .is_some_and(|x| x.kind == ReasonKind::DeadlineUnreachable)
        || matches!(r.kind, RejectKind::Provider { class } if class == crate::trigger::OutcomeClass::Timeout);
    Outcome::Rejected { deadline }
}

fn engine_now(engine: &Engine) -> Timestamp {
    engine.now()
}

/// The platform's orchestrator, once per tick: provider signals, half-open probes, approvals,
/// resumes.
#[allow(clippy::too_many_arguments)]
async fn orchestrate(
    engine: Engine,
    windows: Rc<Vec<Window>>,
    approvers: Rc<BTreeMap<String, (String, ApproverAnswer, Duration)>>,
    inbox: Rc<RefCell<VecDeque<Msg>>>,
    breaker: Rc<RefCell<Vec<BreakerEvent>>>,
    running: Rc<RefCell<bool>>,
    replay: Option<Arc<super::replay::Recording>>,
    tick: Duration,
) {
    let now = engine.now();
    match &replay {
        Some(r) => {
            let set = engine.policies().current();
            for (signal, _) in r.signals_between(now, tick, set.catalog()) {
                let _ = engine.signal(&signal, now);
            }
        }
        None => {
            let mut sig: Vec<_> = signals_at(&windows, now).into_iter().collect();
            sig.sort_by_key(|(e, _)| *e);
            for (endpoint, (depth, status)) in sig {
                if let Some(depth) = depth {
                    let _ = engine.signal(&ProviderSignal::QueueDepth { endpoint, depth }, now);
                }
                if let Some(state) = status {
                    let _ = engine.signal(&ProviderSignal::StatusPage { endpoint, state }, now);
                }
            }
        }
    }
    breaker
        .borrow_mut()
        .extend(engine.evaluator().drain_events());
    for endpoint in engine.probes_due() {
        let mut n = 0;
        while let Ok(Some(class)) = engine
            .probe(
                &endpoint,
                json!({"probe": true, "input_tokens": 16, "output_tokens": 1}),
            )
            .await
        {
            n += 1;
            if class != crate::trigger::OutcomeClass::Ok || n >= 5 {
                break;
            }
        }
    }
    let _ = engine.expire_approvals().await;
    let now = engine.now();
    let mut pending = engine.pending_approvals().await.unwrap_or_default();
    pending.sort_by_key(|p| p.ticket.0);
    for p in &pending {
        let Some((name, answer, after)) = approvers.get(p.tenant.as_str()) else {
            continue;
        };
        if now.duration_since(p.requested_at) < *after {
            continue;
        }
        let answered = match answer {
            ApproverAnswer::Approve => engine.approve(p.ticket, name).await.is_ok(),
            ApproverAnswer::Deny => engine.deny(p.ticket, name, None).await.is_ok(),
            ApproverAnswer::Timeout => false,
        };
        if let (true, Some(r)) = (answered, engine.recorder()) {
            r.record(crate::engine::Recorded::Approval {
                at: now,
                tenant: p.tenant.clone(),
                approver: name.clone(),
                granted: *answer == ApproverAnswer::Approve,
                after_ms: u64::try_from(now.duration_since(p.requested_at).as_millis())
                    .unwrap_or(u64::MAX),
            });
        }
    }
    let still: BTreeSet<u64> = engine
        .pending_approvals()
        .await
        .unwrap_or_default()
        .iter()
        .map(|p| p.ticket.0)
        .collect();
    let mut ready = engine.ready_to_resume().await.unwrap_or_default();
    ready.sort_by(|a, b| a.session.cmp(&b.session));
    for r in ready {
        if engine.resume(&r.session, &r.resume_token).await.is_ok() {
            inbox.borrow_mut().push_back(Msg::Resumed(r.session));
        }
    }
    inbox.borrow_mut().push_back(Msg::Tick { pending: still });
    *running.borrow_mut() = false;
}

fn task_name(tasks: &[TaskKind], i: usize) -> &str {
    tasks.get(i).map_or("?", TaskKind::as_str)
}

/// A synthetic agent state of about `tokens` tokens: a system prompt and twenty turns, each
/// carrying its estimate (so fitting never counts text).
fn agent_state(goal: &str, tokens: u32, step: u32) -> crate::checkpoint::AgentState {
    use crate::checkpoint::{AgentState, Message, TokenCounter as _};
    let mut s = AgentState::new(goal);
    let per = tokens / 21;
    let with = |mut m: Message| {
        m.tokens = Some(per);
        m
    };
    s.messages
        .push(with(Message::system(format!("step {step}: system prompt"))));
    for i in 1..=20 {
        let text = format!("step {step} turn {i}");
        s.messages.push(with(if i % 2 == 1 {
            Message::user(text)
        } else {
            Message::assistant(text)
        }));
    }
    s.token_counter = Some(crate::checkpoint::HeuristicCounter.name().to_string());
    s
}
