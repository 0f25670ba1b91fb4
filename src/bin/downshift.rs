//! `downshift`: validate, inspect and explain degradation policies.
//!
//! Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use downshift::catalog::Requirements;
use downshift::policy::{
    self, ApprovalRule, CandidateStatus, PolicySet, PolicyStore, ResolvedPolicy, Source,
    TenantPolicy,
};
use downshift::router::{CallContext, CandidateVerdict, Decision, TierRouter};
use downshift::trigger::{BreakerMode, TriggerEvaluator};
use downshift::{PolicyError, Severity, TaskKind, TenantId, Timestamp};
use std::sync::Arc;

#[path = "downshift_sim.rs"]
mod sim_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "downshift",
    version,
    about = "Validate, inspect and explain per-tenant degradation policies",
    long_about = "Validate, inspect and explain per-tenant degradation policies.\n\nExit codes: 0 ok, 1 a check failed, 2 bad input or usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate policy and catalog files (or directories of them); print one line per tenant.
    Validate {
        /// Files or directories (searched recursively for *.json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Work with audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run scenario files through the real engine in virtual time and check their
    /// expectations: exit 0 when all hold, 1 when any fails (each is printed), 2 for bad input.
    Simulate(SimulateArgs),
    /// Re-run a recorded capacity event against a candidate policy and show, per tenant, what
    /// it would have experienced beside what it did: exit 0 when every call is decided the
    /// same, 1 when some differ, 2 for bad input.
    Replay {
        /// The recording (JSON lines, from `simulate --record` or an engine's `Recorder`).
        recording: PathBuf,
        /// The candidate policy set: files or directories (repeatable).
        #[arg(long = "policy", required = true, value_name = "PATH")]
        policy: Vec<PathBuf>,
        /// Machine-readable output: the what-if report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a file format.
    Schema {
        /// Which format.
        #[arg(value_enum, default_value_t = SchemaKind::Policy)]
        kind: SchemaKind,
    },
    /// Print a tenant's resolved ladder for a task: tiers, endpoints, why any is removed.
    Explain {
        /// Files or directories of the policy set.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The task kind (default: the tenant's default view).
        #[arg(long)]
        task: Option<String>,
        /// Input tokens of the request (checked against context windows).
        #[arg(long, default_value_t = 0)]
        input_tokens: u32,
        /// Output tokens the request expects.
        #[arg(long, default_value_t = 0)]
        output_tokens: u32,
        /// The request uses tools.
        #[arg(long)]
        tools: bool,
        /// The request sends images.
        #[arg(long)]
        vision: bool,
        /// The request needs JSON mode.
        #[arg(long)]
        json_mode: bool,
        /// Treat this endpoint as down (repeatable): shows where the router would send the
        /// call during such an outage, and why each candidate was taken or passed over.
        #[arg(long = "down", value_name = "ENDPOINT")]
        down: Vec<String>,
        /// The session is on this tier already (stickiness; promotion is not simulated).
        #[arg(long)]
        session_tier: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A per-tenant degradation report from a JSON-lines audit log (verified first): events,
    /// degradation episodes and time degraded; with --stats, calls and cost per tier and the
    /// saving against the primary tier's prices.
    Report {
        /// The audit log (JSON lines).
        audit_log: PathBuf,
        /// A stats snapshot (`Engine::stats()` as JSON) to join.
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Leave out records before this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Leave out records after this time (RFC 3339); open episodes end here.
        #[arg(long)]
        until: Option<String>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML page with a per-tenant tier timeline.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

/// `simulate` and `replay` (kept apart so the other subcommands stay easy to read).
#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// Scenario files.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Machine-readable output (one report, or an array for several scenarios).
    #[arg(long)]
    json: bool,
    /// Write the run's audit log (JSON lines) to this file.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// Record the engine's observations, signals, calls and results (JSON lines) to this file,
    /// for `downshift replay`.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Evaluate this candidate policy set in shadow (files or directories; repeatable).
    #[arg(long = "shadow", value_name = "PATH")]
    shadow: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Verify a JSON-lines audit log: exit 0 when the hash chain is intact (and contains the kept
    /// head, with --head), 1 naming the first bad record when it is not, 2 when it cannot be read.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// A signed-off head (`{"seq": N, "digest": "sha256:..."}`) kept by an auditor: the log
        /// must still contain it.
        #[arg(long)]
        head: Option<PathBuf>,
        /// Print the head of the verified log as JSON (to keep for the next check).
        #[arg(long)]
        print_head: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum SchemaKind {
    /// A policy layer file.
    Policy,
    /// A catalog file.
    Catalog,
    /// A simulation scenario file.
    Scenario,
    /// The agent state a checkpoint holds.
    AgentState,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Validate {
            paths,
            deny_warnings,
        } => validate(&paths, deny_warnings),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    head,
                    print_head,
                },
        } => audit_verify(&file, head.as_deref(), print_head),
        Command::Simulate(a) => sim_cmd::simulate(
            &a.scenarios,
            a.json,
            a.audit.as_deref(),
            a.record.as_deref(),
            &a.shadow,
        ),
        Command::Replay {
            recording,
            policy,
            json,
        } => sim_cmd::replay(&recording, &policy, json),
        Command::Schema { kind } => {
            let s = match kind {
                SchemaKind::Policy => policy::schema::policy_schema(),
                SchemaKind::Catalog => policy::schema::catalog_schema(),
                SchemaKind::Scenario => downshift::sim::scenario_schema(),
                SchemaKind::AgentState => downshift::checkpoint::agent_state_schema(),
            };
            print!("{s}");
            ExitCode::SUCCESS
        }
        Command::Explain {
            paths,
            tenant,
            task,
            input_tokens,
            output_tokens,
            tools,
            vision,
            json_mode,
            down,
            session_tier,
            json,
        } => {
            let req = Requirements {
                input_tokens,
                output_tokens,
                tools,
                parallel_tool_calls: false,
                vision,
                json_mode,
            };
            let what = What {
                tenant: &tenant,
                task: task.as_deref(),
                req,
                down: &down,
                session_tier,
            };
            explain(&paths, &what, json)
        }
        Command::Report {
            audit_log,
            stats,
            since,
            until,
            json,
            html,
        } => report(&ReportArgs {
            log: &audit_log,
            stats: stats.as_deref(),
            since: since.as_deref(),
            until: until.as_deref(),
            json,
            html: html.as_deref(),
        }),
    }
}

struct ReportArgs<'a> {
    log: &'a std::path::Path,
    stats: Option<&'a std::path::Path>,
    since: Option<&'a str>,
    until: Option<&'a str>,
    json: bool,
    html: Option<&'a std::path::Path>,
}

fn report(a: &ReportArgs<'_>) -> ExitCode {
    use downshift::AuditError;
    use downshift::stats::StatsSnapshot;
    use downshift::stats::report::{DegradationReport, Period, read_verified_log};
    let time = |flag: &str, v: Option<&str>| -> Result<Option<downshift::Timestamp>, ExitCode> {
        v.map(|v| {
            downshift::Timestamp::parse_rfc3339(v).map_err(|e| {
                eprintln!("error: --{flag} `{v}` is not an RFC 3339 time: {e}");
                ExitCode::from(2)
            })
        })
        .transpose()
    };
    let period = match (time("since", a.since), time("until", a.until)) {
        (Ok(since), Ok(until)) => Period { since, until },
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let records = match read_verified_log(a.log) {
        Ok(r) => r,
        Err(e @ AuditError::Tampered { .. }) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stats = match a.stats {
        None => None,
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<StatsSnapshot>(&t).map_err(|e| {
                    format!(
                        "not a stats snapshot (line {}, column {}): {e}",
                        e.line(),
                        e.column()
                    )
                })
            }) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let r = DegradationReport::build(&records, stats.as_ref(), period);
    if let Some(path) = a.html {
        if let Err(e) = std::fs::write(path, r.html()) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if a.json {
        match serde_json::to_string_pretty(&r) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", r.table());
    }
    ExitCode::SUCCESS
}

fn audit_verify(
    file: &std::path::Path,
    head: Option<&std::path::Path>,
    print_head: bool,
) -> ExitCode {
    use downshift::AuditError;
    use downshift::audit::{AuditHead, verify_file};
    let kept = match head.map(AuditHead::read).transpose() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("downshift: {e}");
            return ExitCode::from(2);
        }
    };
    match verify_file(file, kept.as_ref()) {
        Ok(report) => {
            println!("{}: {report}", file.display());
            if print_head {
                if let Some(h) = &report.head {
                    println!("{}", serde_json::to_string(h).unwrap_or_default());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e @ AuditError::Io { .. }) => {
            eprintln!("downshift: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

fn read(paths: &[PathBuf]) -> Result<Vec<Source>, ExitCode> {
    Source::read_paths(paths).map_err(|e| {
        eprintln!("downshift: {e}");
        ExitCode::from(2)
    })
}

fn validate(paths: &[PathBuf], deny_warnings: bool) -> ExitCode {
    let sources = match read(paths) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let files = sources.len();
    let (set, report) = PolicySet::check_sources(sources);
    let mut err = std::io::stderr().lock();
    for p in &report.problems {
        let _ = writeln!(err, "{p}");
    }
    let warnings = report.warnings().count();
    let Some(set) = set else {
        let _ = writeln!(
            err,
            "downshift: {} error(s), {warnings} warning(s) in {files} file(s)",
            report.errors().count()
        );
        return ExitCode::from(2);
    };
    let mut out = std::io::stdout().lock();
    for t in set.tenants() {
        if let Ok(tp) = set.tenant(t.as_str()) {
            let _ = writeln!(out, "{}", summary(tp));
        }
    }
    let _ = writeln!(
        out,
        "ok: {} tenant(s), {} layer(s), {} endpoint(s), {warnings} warning(s); set digest {}",
        set.tenants().len(),
        set.layers().len(),
        set.catalog().len(),
        set.digest().short()
    );
    if deny_warnings && warnings > 0 {
        let _ = writeln!(err, "downshift: warnings denied (--deny-warnings)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn tier_label(v: &ResolvedPolicy, i: u32) -> String {
    v.tier(i)
        .map_or_else(|| format!("tier {i}"), |t| format!("{i} `{}`", t.name))
}

fn approval_text(v: &ResolvedPolicy) -> String {
    match v.approval {
        ApprovalRule::Never => "never".into(),
        ApprovalRule::Always => "before any change".into(),
        ApprovalRule::AtOrBelow(k) => format!("before tier {} or below", tier_label(v, k)),
    }
}

fn snake<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One line per tenant: version, ladder, floor, approval, notification, digest.
fn summary(tp: &TenantPolicy) -> String {
    let v = tp.default_view();
    let version = v.layers.last().map_or("?", |l| l.version.as_str());
    let ladder: Vec<String> = v
        .usable_tiers()
        .map(|t| format!("{}:{}", t.index, t.name))
        .collect();
    let tasks = tp.task_kinds().len();
    format!(
        "{} v{version}: ladder [{}]{}; floor {}; approval {}; notify {}; when exhausted {}; {} task view(s); digest {}",
        v.tenant,
        ladder.join(" > "),
        if v.suspension.is_some() {
            " > suspend"
        } else {
            ""
        },
        tier_label(v, v.floor),
        approval_text(v),
        snake(&v.notification),
        snake(&v.when_exhausted),
        tasks,
        v.digest.short()
    )
}

/// What `explain` is asked about.
struct What<'a> {
    tenant: &'a str,
    task: Option<&'a str>,
    req: Requirements,
    down: &'a [String],
    session_tier: Option<u32>,
}

/// Routes one call of the explained tenant with the `--down` endpoints forced open.
fn live_explanation(
    set: &PolicySet,
    what: &What<'_>,
) -> Result<downshift::router::Explanation, String> {
    let eval = TriggerEvaluator::for_catalog(&set.evaluator_settings(), set.catalog(), 0)
        .map_err(|e| e.to_string())?;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    for d in what.down {
        let idx = set.catalog().index_of(d).ok_or_else(|| {
            format!(
                "--down {d}: unknown endpoint{}",
                set.catalog()
                    .endpoints()
                    .iter()
                    .map(|e| e.id.as_str())
                    .min_by_key(|c| strsim::levenshtein(d, c))
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default()
            )
        })?;
        eval.set_mode(idx, BreakerMode::ForcedOpen, now)
            .map_err(|e| e.to_string())?;
    }
    let store = Arc::new(PolicyStore::new(set.clone()));
    let router = TierRouter::new(store, Arc::new(eval), 0);
    let tenant = TenantId::new(what.tenant);
    let task = TaskKind::new(what.task.unwrap_or("default"));
    let mut ctx = CallContext::new(&tenant, &task).requirements(what.req);
    if let Some(t) = what.session_tier {
        ctx = ctx.on_tier(t, now).step_boundary(false);
    }
    Ok(router.explain(&ctx, now))
}

fn explain(paths: &[PathBuf], what: &What<'_>, json: bool) -> ExitCode {
    let (tenant, task, req) = (what.tenant, what.task, &what.req);
    let sources = match read(paths) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let set = match PolicySet::from_sources(sources) {
        Ok(s) => s,
        Err(PolicyError::Invalid(report)) => {
            for p in &report.problems {
                eprintln!("{p}");
            }
            eprintln!("downshift: the policy set is invalid; nothing to explain");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("downshift: {e}");
            return ExitCode::from(2);
        }
    };
    let tp = match set.tenant(tenant) {
        Ok(tp) => tp,
        Err(e) => {
            let known: Vec<&str> = set.tenants().iter().map(|t| t.as_str()).collect();
            eprintln!("downshift: {e}; tenants: {}", known.join(", "));
            return ExitCode::from(2);
        }
    };
    let v = match task {
        Some(t) => tp.view(t),
        None => tp.default_view(),
    };
    let ladder = v.explain_ladder(set.catalog(), req);
    let live = match live_explanation(&set, what) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("downshift: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        let doc = serde_json::json!({
            "tenant": v.tenant,
            "task": task,
            "view": if v.task.is_some() { "task" } else { "default" },
            "policy": &**v,
            "ladder": ladder,
            "route": {
                "down": what.down,
                "decision": live.decision,
                "reason": live.reason,
                "candidates": live.candidates,
            },
            "warnings": set.warnings().iter().filter(|p| p.severity == Severity::Warning).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let mut o = String::new();
    let view = match (&v.task, task) {
        (Some(t), _) => format!("task `{t}` (its own rules)"),
        (None, Some(t)) => format!("task `{t}` (no rules of its own: the tenant's default view)"),
        (None, None) => "default view".to_string(),
    };
    o.push_str(&format!("tenant `{}` — {view}\n", v.tenant));
    let chain: Vec<String> = v
        .layers
        .iter()
        .map(|l| format!("{} v{} ({})", l.id, l.version, l.source))
        .collect();
    o.push_str(&format!("layers:        {}\n", chain.join(" -> ")));
    o.push_str(&format!("digest:        {}\n", v.digest));
    o.push_str(&format!("floor:         tier {}\n", tier_label(v, v.floor)));
    o.push_str(&format!("approval:      {}", approval_text(v)));
    if v.approval != ApprovalRule::Never {
        o.push_str(&format!(
            " (expires after {}, then {})",
            policy::duration::format(v.approval_timeout),
            snake(&v.on_approval_timeout)
        ));
    }
    o.push('\n');
    o.push_str(&format!("notification:  {}\n", snake(&v.notification)));
    o.push_str(&format!("when exhausted: {}\n", snake(&v.when_exhausted)));
    o.push_str(&format!(
        "probe eligible: {}\n",
        if v.probe_eligible { "yes" } else { "no" }
    ));
    if let Some(r) = &v.allowed_regions {
        o.push_str(&format!("regions:       {}\n", r.join(", ")));
    }
    if let Some(q) = v.min_quality {
        o.push_str(&format!("min quality:   {q}\n"));
    }
    if let Some(d) = v.sla.p95_ceiling {
        o.push_str(&format!("p95 ceiling:   {}\n", policy::duration::format(d)));
    }
    if let Some(d) = v.sla.default_deadline {
        o.push_str(&format!("deadline:      {}\n", policy::duration::format(d)));
    }
    match &v.consent {
        Some(c) => o.push_str(&format!(
            "consent:       agreement `{}` v{} accepted {} by {}; lowest tier {}; document {}\n",
            c.agreement_id,
            c.version,
            c.accepted_at,
            c.accepted_by,
            match &c.lowest_tier {
                policy::TierRef::Index(i) => i.to_string(),
                policy::TierRef::Name(n) => format!("`{n}`"),
            },
            c.document_digest
        )),
        None => o.push_str("consent:       none recorded\n"),
    }
    o.push_str("ladder:\n");
    for t in &ladder.tiers {
        o.push_str(&format!(
            "  {} {}{}\n",
            t.index,
            t.name,
            if t.approval_required
                && t.index > 0
                && t.candidates
                    .iter()
                    .any(|c| !matches!(c.status, CandidateStatus::TierExcluded { .. }))
            {
                "  [approval required]"
            } else {
                ""
            }
        ));
        for c in &t.candidates {
            let status = match &c.status {
                CandidateStatus::Usable => "usable".to_string(),
                CandidateStatus::TierExcluded { reason } => format!("excluded: tier {reason}"),
                CandidateStatus::Removed { reason } => format!("removed: {reason}"),
                CandidateStatus::Incapable { gap } => format!("incapable: {gap}"),
            };
            o.push_str(&format!(
                "      {:<24} {:<14} {:<22} {:<14} {:>7} ctx  ${:.2}/${:.2} per Mtok  {status}\n",
                c.endpoint.as_str(),
                c.provider,
                c.model,
                c.region,
                c.context_window,
                c.input_per_mtok,
                c.output_per_mtok
            ));
        }
    }
    match &v.suspension {
        Some(s) => o.push_str(&format!(
            "  then: suspend (up to {}{})\n",
            policy::duration::format(s.max_duration),
            if s.notify { ", user notified" } else { "" }
        )),
        None => o.push_str("  then: no suspension step\n"),
    }
    let usable = ladder.usable().count();
    o.push_str(&format!("{usable} usable endpoint(s) for this request\n"));
    if what.down.is_empty() {
        o.push_str("\nroute with every endpoint healthy:\n");
    } else {
        o.push_str(&format!("\nroute with {} down:\n", what.down.join(", ")));
    }
    let name = |e: downshift::EndpointIdx| {
        set.catalog()
            .try_endpoint(e)
            .map_or("?", |x| x.id.as_str())
            .to_string()
    };
    let tier_name = |i: u32| v.tier(i).map_or("?", |t| &*t.name).to_string();
    match &live.decision {
        Decision::Route(r) => o.push_str(&format!(
            "  -> ROUTE to {} (tier {} `{}`){}{}{}\n",
            name(r.endpoint),
            r.tier,
            tier_name(r.tier),
            if r.degraded { ", degraded" } else { "" },
            if r.notice {
                ", user told in real time"
            } else {
                ""
            },
            if r.fit_context {
                ", context fitted"
            } else {
                ""
            },
        )),
        Decision::AwaitApproval {
            proposed_tier,
            proposed_endpoint,
            ticket,
            ..
        } => o.push_str(&format!(
            "  -> AWAIT APPROVAL ({ticket}) to move to {} (tier {proposed_tier} `{}`)\n",
            name(*proposed_endpoint),
            tier_name(*proposed_tier)
        )),
        Decision::Suspend { retry_at, .. } => o.push_str(&format!(
            "  -> SUSPEND{}\n",
            retry_at
                .map(|t| format!(", retry at {t}"))
                .unwrap_or_default()
        )),
        Decision::Reject { .. } => o.push_str("  -> REJECT\n"),
    }
    o.push_str(&format!("  because: {}\n", live.reason));
    for c in &live.candidates {
        let verdict = match &c.verdict {
            CandidateVerdict::Chosen => "chosen".to_string(),
            CandidateVerdict::NotChosen => "usable, not needed".to_string(),
            CandidateVerdict::TierExcluded { reason } => format!("tier {reason}"),
            CandidateVerdict::Removed { reason } => format!("removed: {reason}"),
            CandidateVerdict::OverBudget => "above the budget's tier".to_string(),
            CandidateVerdict::AlreadyTried { attempts } => format!("already tried {attempts}x"),
            CandidateVerdict::Incapable { gap } => format!("incapable: {gap}"),
            CandidateVerdict::HerdCapped { trigger }
            | CandidateVerdict::TooSlowForDeadline { trigger }
            | CandidateVerdict::Unusable { trigger }
            | CandidateVerdict::ProbeRefused { trigger } => trigger.to_string(),
        };
        o.push_str(&format!(
            "    {} {:<12} {:<26} {verdict}\n",
            c.tier,
            c.tier_name,
            c.endpoint.as_str()
        ));
    }
    print!("{o}");
    ExitCode::SUCCESS
}
