//! The conformance suite every [`CheckpointStore`] must pass.
//!
//! Run it against your own implementation (a database, an object store) from a test, under any
//! executor:
//!
//! ```
//! use downshift::checkpoint::{MemoryCheckpointStore, conformance};
//!
//! let store = MemoryCheckpointStore::new();
//! let report = futures::executor::block_on(conformance::run(&store)).unwrap();
//! assert!(report.checks.contains(&"concurrent_writers"));
//! ```
//!
//! It covers compare-and-swap (create, update, stale versions, create-when-exists, update of a
//! missing session, the store assigning versions, sessions never changing tenant, non-finite
//! measurements refused), listing
//! (tenant isolation, the suspended and workflow filters, ordering), deletion with CAS, a state
//! over 1 MB, odd session and tenant ids (empty, `..`, slashes, NUL, case variants, unicode,
//! 1,000 characters), and concurrency: 16 writers race the same version for several rounds and
//! exactly one wins each round, and 16 creators race to create one session.
//!
//! Every id it uses starts with a per-run prefix, and it deletes what it created, so it can run
//! against a store that holds other data. It needs no async runtime (`futures::join_all`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::join_all;
use serde_json::{Value, json};

use super::{Checkpoint, CheckpointStore, ListFilter, ResumeToken, Suspended, TierAt};
use crate::clock::Timestamp;
use crate::digest::ContentDigest;
use crate::error::CheckpointError;
use crate::id::{EndpointId, SessionId, TenantId, WorkflowId};
use crate::trigger::{TriggerKind, TriggerRecord};

/// The checks that passed, by name, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Names of the checks that passed.
    pub checks: Vec<&'static str>,
}

/// The first check that failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailure {
    /// The check's name.
    pub check: &'static str,
    /// What the store did wrong.
    pub message: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint store conformance `{}`: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ConformanceFailure {}

/// How many writers race in the concurrency checks.
pub const WRITERS: usize = 16;
/// How many rounds the writers race.
pub const ROUNDS: u64 = 6;

/// Runs the whole suite with a fresh per-run id prefix.
///
/// # Errors
/// The first failing check.
pub async fn run(store: &dyn CheckpointStore) -> Result<ConformanceReport, ConformanceFailure> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let now = Timestamp::from_system_time(std::time::SystemTime::now()).as_millis();
    let prefix = format!(
        "conf-{now}-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    run_with_prefix(store, &prefix).await
}

/// Runs the whole suite with ids starting with `prefix` (which must not be in use).
///
/// # Errors
/// The first failing check.
pub async fn run_with_prefix(
    store: &dyn CheckpointStore,
    prefix: &str,
) -> Result<ConformanceReport, ConformanceFailure> {
    let s = Suite { store, prefix };
    let mut checks = Vec::new();
    s.create_update_and_stale(&mut checks).await?;
    s.store_assigns_versions(&mut checks).await?;
    s.tenant_is_fixed(&mut checks).await?;
    s.non_finite_refused(&mut checks).await?;
    s.listing(&mut checks).await?;
    s.deletion(&mut checks).await?;
    s.large_state(&mut checks).await?;
    s.odd_ids(&mut checks).await?;
    s.concurrent_writers(&mut checks).await?;
    s.concurrent_creators(&mut checks).await?;
    Ok(ConformanceReport { checks })
}

struct Suite<'a> {
    store: &'a dyn CheckpointStore,
    prefix: &'a str,
}

fn fail(check: &'static str, message: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        check,
        message: message.into(),
    }
}

fn ensure(
    check: &'static str,
    ok: bool,
    message: impl FnOnce() -> String,
) -> Result<(), ConformanceFailure> {
    if ok {
        Ok(())
    } else {
        Err(fail(check, message()))
    }
}

fn ok<T>(
    check: &'static str,
    what: &str,
    r: Result<T, CheckpointError>,
) -> Result<T, ConformanceFailure> {
    r.map_err(|e| fail(check, format!("{what} failed: {e}")))
}

fn expect_conflict(
    check: &'static str,
    what: &str,
    r: Result<impl fmt::Debug, CheckpointError>,
    expected: Option<u64>,
    actual: Option<u64>,
) -> Result<(), ConformanceFailure> {
    match r {
        Err(CheckpointError::Conflict {
            expected: e,
            actual: a,
            ..
        }) if e == expected && a == actual => Ok(()),
        other => Err(fail(
            check,
            format!(
                "{what}: expected Conflict {{ expected: {expected:?}, actual: {actual:?} }}, got {other:?}"
            ),
        )),
    }
}

fn sample(tenant: &TenantId, session: &SessionId, marker: u64) -> Checkpoint {
    Checkpoint::new(
        tenant.clone(),
        session.clone(),
        Timestamp::from_millis(1_800_000_000_000 + marker),
        TierAt::new(1, "mid").on(EndpointId::new("mid-eu")),
        ContentDigest::of_bytes(b"conformance-policy"),
        json!({
            "goal": "résumé the filing — 日本語 🚀",
            "marker": marker,
            "floats": [0.1, 1e300, -2.5e-300, 1.7976931348623157e308],
            "nested": {"steps": [{"tier": 0, "ok": true}, {"tier": 1, "ok": null}]},
        }),
    )
}

fn suspended(session: &SessionId, version: u64) -> Suspended {
    Suspended {
        reason: "every permissible tier is unavailable".to_string(),
        trigger: Some(TriggerRecord {
            kind: TriggerKind::LatencyP95,
            endpoint: Some(EndpointId::new("primary-us")),
            measured: 4200.5,
            threshold: 3000.0,
            unit: "ms".to_string(),
            window_ms: Some(60_000),
            samples: 212,
            until: None,
            text: "p95 4.2 s >= ceiling 3.0 s over 1m, 212 samples".to_string(),
        }),
        retry_at: Some(Timestamp::from_millis(1_800_000_060_000)),
        resume_token: ResumeToken::derive(session, version, b"conformance"),
    }
}

impl Suite<'_> {
    fn tenant(&self, name: &str) -> TenantId {
        TenantId::new(format!("{}-{name}", self.prefix))
    }

    fn session(&self, name: &str) -> SessionId {
        SessionId::new(format!("{}-{name}", self.prefix))
    }

    async fn load(
        &self,
        check: &'static str,
        s: &SessionId,
    ) -> Result<Option<Checkpoint>, ConformanceFailure> {
        ok(check, &format!("load `{s}`"), self.store.load(s).await)
    }

    async fn create_update_and_stale(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        let t = self.tenant("a");
        let s = self.session("cas");
        const C: &str = "create";
        ensure(C, self.load(C, &s).await?.is_none(), || {
            "a fresh session loads as Some".into()
        })?;
        let v1 = ok(
            C,
            "create with expected None",
            self.store.save(sample(&t, &s, 1), None).await,
        )?;
        ensure(C, v1 == 1, || {
            format!("creation returned version {v1}, not 1")
        })?;
        let mut want = sample(&t, &s, 1);
        want.version = 1;
        let got = self.load(C, &s).await?;
        ensure(C, got.as_ref() == Some(&want), || {
            format!("loaded checkpoint differs from the saved one: {got:?}")
        })?;
        checks.push(C);

        const U: &str = "update";
        let next = sample(&t, &s, 2).suspend(suspended(&s, 2));
        let v2 = ok(
            U,
            "update with the right version",
            self.store.save(next.clone(), Some(1)).await,
        )?;
        ensure(U, v2 == 2, || {
            format!("update returned version {v2}, not 2")
        })?;
        let mut want = next;
        want.version = 2;
        let got = self.load(U, &s).await?;
        ensure(U, got.as_ref() == Some(&want), || {
            format!("loaded {got:?}, saved {want:?}")
        })?;
        checks.push(U);

        const ST: &str = "stale_version_refused";
        let r = self.store.save(sample(&t, &s, 3), Some(1)).await;
        expect_conflict(ST, "update with a stale version", r, Some(1), Some(2))?;
        let got = self.load(ST, &s).await?;
        ensure(ST, got.as_ref() == Some(&want), || {
            "a refused save changed the stored checkpoint".into()
        })?;
        checks.push(ST);

        const CE: &str = "create_when_exists_refused";
        let r = self.store.save(sample(&t, &s, 4), None).await;
        expect_conflict(CE, "create over an existing checkpoint", r, None, Some(2))?;
        checks.push(CE);

        const UM: &str = "update_of_missing_refused";
        let missing = self.session("missing");
        let r = self.store.save(sample(&t, &missing, 5), Some(1)).await;
        expect_conflict(
            UM,
            "update of a session that has no checkpoint",
            r,
            Some(1),
            None,
        )?;
        ensure(UM, self.load(UM, &missing).await?.is_none(), || {
            "a refused update created a checkpoint".into()
        })?;
        checks.push(UM);

        ok(C, "cleanup", self.store.delete(&s, 2).await)?;
        Ok(())
    }

    async fn store_assigns_versions(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        const C: &str = "store_assigns_versions";
        let t = self.tenant("a");
        let s = self.session("versions");
        let mut cp = sample(&t, &s, 1);
        cp.version = 99;
        let v = ok(C, "create", self.store.save(cp.clone(), None).await)?;
        ensure(C, v == 1, || {
            format!("the caller's version 99 was kept: {v}")
        })?;
        let v = ok(C, "update", self.store.save(cp, Some(1)).await)?;
        let got = self.load(C, &s).await?.map(|c| c.version);
        ensure(C, v == 2 && got == Some(2), || {
            format!("returned {v}, stored {got:?}")
        })?;
        ok(C, "cleanup", self.store.delete(&s, 2).await)?;
        checks.push(C);
        Ok(())
    }

    async fn tenant_is_fixed(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        const C: &str = "session_never_changes_tenant";
        let (a, b) = (self.tenant("a"), self.tenant("b"));
        let s = self.session("owned");
        ok(C, "create", self.store.save(sample(&a, &s, 1), None).await)?;
        let r = self.store.save(sample(&b, &s, 2), Some(1)).await;
        ensure(
            C,
            matches!(r, Err(CheckpointError::TenantMismatch { .. })),
            || format!("saving another tenant's session gave {r:?}, not TenantMismatch"),
        )?;
        let listed = ok(C, "list", self.store.list(&b, &ListFilter::all()).await)?;
        ensure(C, listed.sessions.iter().all(|x| x.session != s), || {
            "the session leaked into the other tenant's listing".into()
        })?;
        ok(C, "cleanup", self.store.delete(&s, 1).await)?;
        checks.push(C);
        Ok(())
    }

    async fn non_finite_refused(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        const C: &str = "non_finite_trigger_refused";
        let t = self.tenant("a");
        let s = self.session("nan");
        let mut susp = suspended(&s, 1);
        if let Some(tr) = susp.trigger.as_mut() {
            tr.measured = f64::NAN;
        }
        let r = self.store.save(sample(&t, &s, 1).suspend(susp), None).await;
        ensure(C, matches!(r, Err(CheckpointError::Invalid { .. })), || {
            format!("a NaN measurement (unreadable once stored as JSON) gave {r:?}, not Invalid")
        })?;
        ensure(C, self.load(C, &s).await?.is_none(), || {
            "a refused save stored something".into()
        })?;
        checks.push(C);
        Ok(())
    }

    async fn listing(&self, checks: &mut Vec<&'static str>) -> Result<(), ConformanceFailure> {
        let (a, b, empty) = (
            self.tenant("list-a"),
            self.tenant("list-b"),
            self.tenant("list-none"),
        );
        let w = WorkflowId::new(format!("{}-wf", self.prefix));
        let other_w = WorkflowId::new(format!("{}-wf-other", self.prefix));
        let sa: Vec<SessionId> = (0..4).map(|i| self.session(&format!("la{i}"))).collect();
        let sb: Vec<SessionId> = (0..2).map(|i| self.session(&format!("lb{i}"))).collect();
        const L: &str = "list_tenant_isolation";
        // a0 plain, a1 suspended, a2 in workflow w, a3 suspended in w; b0 suspended in w, b1 in other w.
        let plans: [(&TenantId, &SessionId, bool, Option<&WorkflowId>); 6] = [
            (&a, &sa[0], false, None),
            (&a, &sa[1], true, None),
            (&a, &sa[2], false, Some(&w)),
            (&a, &sa[3], true, Some(&w)),
            (&b, &sb[0], true, Some(&w)),
            (&b, &sb[1], false, Some(&other_w)),
        ];
        // Save in reverse order: the listing must still be ordered by session id.
        for (i, (t, s, susp, wf)) in plans.iter().enumerate().rev() {
            let mut cp = sample(t, s, i as u64);
            if let Some(wf) = wf {
                cp = cp.in_workflow((*wf).clone());
            }
            if *susp {
                cp = cp.suspend(suspended(s, 1));
            }
            ok(L, "create", self.store.save(cp, None).await)?;
        }
        let names = |l: &super::CheckpointList| {
            l.sessions
                .iter()
                .map(|x| x.session.clone())
                .collect::<Vec<_>>()
        };
        let all_a = ok(L, "list", self.store.list(&a, &ListFilter::all()).await)?;
        ensure(L, names(&all_a) == sa, || {
            format!("tenant a lists {:?}, expected {sa:?}", names(&all_a))
        })?;
        ensure(L, all_a.unreadable.is_empty(), || {
            format!("unreadable entries: {:?}", all_a.unreadable)
        })?;
        ensure(
            L,
            all_a
                .sessions
                .iter()
                .all(|x| x.tenant == a && x.version == 1),
            || "a summary has the wrong tenant or version".into(),
        )?;
        let all_b = ok(L, "list", self.store.list(&b, &ListFilter::all()).await)?;
        ensure(L, names(&all_b) == sb, || {
            format!("tenant b lists {:?}, expected {sb:?}", names(&all_b))
        })?;
        let none = ok(L, "list", self.store.list(&empty, &ListFilter::all()).await)?;
        ensure(L, none.sessions.is_empty(), || {
            "a tenant with no sessions lists some".into()
        })?;
        checks.push(L);

        const S: &str = "list_suspended_filter";
        let susp = ok(
            S,
            "list",
            self.store
                .list(&a, &ListFilter::all().suspended_only())
                .await,
        )?;
        ensure(
            S,
            names(&susp) == vec![sa[1].clone(), sa[3].clone()],
            || format!("suspended filter gave {:?}", names(&susp)),
        )?;
        let token_ok = susp.sessions.iter().all(|x| {
            x.suspended.as_ref().map(|s| &s.resume_token)
                == Some(&ResumeToken::derive(&x.session, 1, b"conformance"))
        });
        ensure(S, token_ok, || {
            "a suspended summary lost its resume token".into()
        })?;
        checks.push(S);

        const WF: &str = "list_workflow_filter";
        let in_w = ok(
            WF,
            "list",
            self.store
                .list(&a, &ListFilter::all().workflow(w.clone()))
                .await,
        )?;
        ensure(
            WF,
            names(&in_w) == vec![sa[2].clone(), sa[3].clone()],
            || format!("workflow filter gave {:?}", names(&in_w)),
        )?;
        let both = ok(
            WF,
            "list",
            self.store
                .list(&a, &ListFilter::all().suspended_only().workflow(w.clone()))
                .await,
        )?;
        ensure(WF, names(&both) == vec![sa[3].clone()], || {
            format!("suspended + workflow filter gave {:?}", names(&both))
        })?;
        let b_w = ok(
            WF,
            "list",
            self.store
                .list(&b, &ListFilter::all().workflow(w.clone()))
                .await,
        )?;
        ensure(WF, names(&b_w) == vec![sb[0].clone()], || {
            format!("tenant b's workflow filter gave {:?}", names(&b_w))
        })?;
        checks.push(WF);

        for s in sa.iter().chain(sb.iter()) {
            ok(L, "cleanup", self.store.delete(s, 1).await)?;
        }
        let after = ok(L, "list", self.store.list(&a, &ListFilter::all()).await)?;
        ensure(L, after.sessions.is_empty(), || {
            "deleted sessions are still listed".into()
        })?;
        Ok(())
    }

    async fn deletion(&self, checks: &mut Vec<&'static str>) -> Result<(), ConformanceFailure> {
        const D: &str = "delete_with_cas";
        let t = self.tenant("a");
        let s = self.session("del");
        ok(D, "create", self.store.save(sample(&t, &s, 1), None).await)?;
        ok(
            D,
            "update",
            self.store.save(sample(&t, &s, 2), Some(1)).await,
        )?;
        let r = self.store.delete(&s, 1).await;
        expect_conflict(D, "delete with a stale version", r, Some(1), Some(2))?;
        ensure(D, self.load(D, &s).await?.is_some(), || {
            "a refused delete removed the checkpoint".into()
        })?;
        ok(
            D,
            "delete with the right version",
            self.store.delete(&s, 2).await,
        )?;
        ensure(D, self.load(D, &s).await?.is_none(), || {
            "a deleted checkpoint still loads".into()
        })?;
        let r = self.store.delete(&s, 2).await;
        expect_conflict(D, "delete of a missing checkpoint", r, Some(2), None)?;
        let listed = ok(D, "list", self.store.list(&t, &ListFilter::all()).await)?;
        ensure(D, listed.sessions.iter().all(|x| x.session != s), || {
            "a deleted session is listed".into()
        })?;
        let v = ok(
            D,
            "re-create after delete",
            self.store.save(sample(&t, &s, 3), None).await,
        )?;
        ensure(D, v == 1, || format!("re-creation returned version {v}"))?;
        ok(D, "cleanup", self.store.delete(&s, 1).await)?;
        checks.push(D);
        Ok(())
    }

    async fn large_state(&self, checks: &mut Vec<&'static str>) -> Result<(), ConformanceFailure> {
        const C: &str = "large_state";
        let t = self.tenant("a");
        let s = self.session("large");
        let mut cp = sample(&t, &s, 1);
        let messages: Vec<Value> = (0..4_000)
            .map(|i| json!({"role": "tool", "id": i, "text": format!("finding {i}: ünïcödé ✓ {}", "x".repeat(64))}))
            .collect();
        cp.state = json!({"blob": "é".repeat(300_000), "messages": messages});
        let size = serde_json::to_vec(&cp.state).map(|v| v.len()).unwrap_or(0);
        ensure(C, size >= 1_000_000, || {
            format!("test state is only {size} bytes")
        })?;
        let v = ok(
            C,
            "save a large state",
            self.store.save(cp.clone(), None).await,
        )?;
        cp.version = v;
        let got = self.load(C, &s).await?;
        ensure(C, got.as_ref() == Some(&cp), || {
            "the large state did not round-trip".into()
        })?;
        ok(C, "cleanup", self.store.delete(&s, v).await)?;
        checks.push(C);
        Ok(())
    }

    async fn odd_ids(&self, checks: &mut Vec<&'static str>) -> Result<(), ConformanceFailure> {
        const C: &str = "odd_ids";
        let t = TenantId::new(format!("{}-Tenant/../ÄÖ %2F", self.prefix));
        let raw = [
            String::new(),
            ".".into(),
            "..".into(),
            "../../etc/passwd".into(),
            "a/b\\c".into(),
            "CON".into(),
            "con".into(),
            "nul\0byte".into(),
            "with space\tand\nnewline".into(),
            "%41".into(),
            "A".into(),
            "a".into(),
            "日本語のセッション".into(),
            "🚀".into(),
            "x".repeat(1_000),
            format!("{}y", "x".repeat(999)),
        ];
        // The per-run prefix keeps ids unique between runs sharing a store; the odd part follows.
        let all: Vec<SessionId> = raw
            .iter()
            .map(|r| SessionId::new(format!("{}{r}", self.prefix)))
            .collect();
        for (i, s) in all.iter().enumerate() {
            let v = ok(
                C,
                &format!("create {s:?}"),
                self.store.save(sample(&t, s, i as u64), None).await,
            )?;
            ensure(C, v == 1, || format!("{s:?} created at version {v}"))?;
        }
        for (i, s) in all.iter().enumerate() {
            let got = self.load(C, s).await?;
            let mut want = sample(&t, s, i as u64);
            want.version = 1;
            ensure(C, got.as_ref() == Some(&want), || {
                format!("{s:?} did not load back as saved: {got:?}")
            })?;
        }
        let listed = ok(C, "list", self.store.list(&t, &ListFilter::all()).await)?;
        let mut want: Vec<SessionId> = all.clone();
        want.sort();
        let got: Vec<SessionId> = listed.sessions.iter().map(|x| x.session.clone()).collect();
        ensure(C, got == want, || format!("listing odd ids gave {got:?}"))?;
        for s in &all {
            ok(C, &format!("delete {s:?}"), self.store.delete(s, 1).await)?;
        }
        checks.push(C);
        Ok(())
    }

    async fn concurrent_writers(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        const C: &str = "concurrent_writers";
        let t = self.tenant("race");
        let s = self.session("race");
        let mut version = ok(C, "create", self.store.save(sample(&t, &s, 0), None).await)?;
        for round in 0..ROUNDS {
            let saves = (0..WRITERS).map(|w| {
                let cp = sample(&t, &s, round * 100 + w as u64);
                self.store.save(cp, Some(version))
            });
            let results = join_all(saves).await;
            let winners: Vec<usize> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.is_ok().then_some(i))
                .collect();
            let [winner] = winners.as_slice() else {
                return Err(fail(
                    C,
                    format!(
                        "round {round}: {} writers won, expected exactly one",
                        winners.len()
                    ),
                ));
            };
            let next = version + 1;
            for (i, r) in results.into_iter().enumerate() {
                if i == *winner {
                    let v = ok(C, "the winning save", r)?;
                    ensure(C, v == next, || {
                        format!("round {round}: winner got version {v}, expected {next}")
                    })?;
                } else {
                    expect_conflict(
                        C,
                        &format!("round {round}, losing writer {i}"),
                        r,
                        Some(version),
                        Some(next),
                    )?;
                }
            }
            let got = self.load(C, &s).await?;
            let marker = got
                .as_ref()
                .and_then(|c| c.state.get("marker"))
                .and_then(Value::as_u64);
            let want = round * 100 + *winner as u64;
            ensure(
                C,
                marker == Some(want) && got.map(|c| c.version) == Some(next),
                || {
                    format!(
                        "round {round}: stored state is from writer {marker:?}, the winner was {want}"
                    )
                },
            )?;
            version = next;
        }
        ok(C, "cleanup", self.store.delete(&s, version).await)?;
        checks.push(C);
        Ok(())
    }

    async fn concurrent_creators(
        &self,
        checks: &mut Vec<&'static str>,
    ) -> Result<(), ConformanceFailure> {
        const C: &str = "concurrent_creators";
        let t = self.tenant("race");
        let s = self.session("race-create");
        let saves = (0..WRITERS).map(|w| self.store.save(sample(&t, &s, w as u64), None));
        let results = join_all(saves).await;
        let wins = results.iter().filter(|r| r.is_ok()).count();
        ensure(C, wins == 1, || {
            format!("{wins} creators won, expected exactly one")
        })?;
        for (i, r) in results.into_iter().enumerate() {
            if r.is_err() {
                expect_conflict(C, &format!("losing creator {i}"), r, None, Some(1))?;
            }
        }
        ok(C, "cleanup", self.store.delete(&s, 1).await)?;
        checks.push(C);
        Ok(())
    }
}
