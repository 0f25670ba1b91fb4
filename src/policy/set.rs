//! [`PolicySet`]: a validated, resolved set of layers and a catalog; [`PolicyStore`]: the active
//! set, swapped atomically on hot reload.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde_json::Value;

use super::check::{check_catalog, check_layer};
use super::merge::merge;
use super::model::{Herd, Level, PolicyLayer, Recovery, Triggers};
use super::resolve::{Attrib, LayerDoc, check_narrowing, compute_view, did_you_mean};
use super::resolved::{LayerRef, ResolvedPolicy, ResolvedTier};
use super::routing::{Interner, TenantHandle, TenantRouting};
use super::source::{Parsed, Source, parse, problem};
use crate::catalog::{Catalog, Endpoint};
use crate::digest::ContentDigest;
use crate::error::{PolicyError, Problem, ProblemCode, Severity, ValidationReport};
use crate::id::{LayerId, TaskKind, TenantId};
use crate::trigger::EvaluatorSettings;

/// Maps looked up on every routed call: keyed by ids from the operator's own policy files (not
/// attacker-chosen), so a fast hash (foldhash) instead of SipHash.
type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// Views already digested for one tenant content and task, each with its content digest.
type Digested = Vec<(ResolvedPolicy, ContentDigest)>;

/// Source of [`PolicySet`] epochs.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// One tenant's resolved views: a default view and one per task kind that has its own rules.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    default: Arc<ResolvedPolicy>,
    tasks: FastMap<TaskKind, Arc<ResolvedPolicy>>,
    /// Its handle: its id, the set, and the routing part of its views (shared with every
    /// tenant of the same content).
    handle: TenantHandle,
}

impl TenantPolicy {
    /// The view for `task`: its own when the policy has rules for it, else the default view.
    #[must_use]
    pub fn view(&self, task: &str) -> &Arc<ResolvedPolicy> {
        self.tasks.get(task).unwrap_or(&self.default)
    }

    /// The default view (task kinds without their own rules).
    #[must_use]
    pub fn default_view(&self) -> &Arc<ResolvedPolicy> {
        &self.default
    }

    /// The routing part of its views (interned).
    pub(crate) fn routing(&self) -> &TenantRouting {
        &self.handle.routing
    }

    /// Its [`TenantHandle`] (clone it to keep it).
    #[must_use]
    pub fn handle(&self) -> &TenantHandle {
        &self.handle
    }

    /// Whether this tenant's views route exactly like `other`'s: true for tenants created from
    /// one template with the same constraints, which share one interned routing view.
    #[must_use]
    pub fn shares_routing_with(&self, other: &TenantPolicy) -> bool {
        Arc::ptr_eq(&self.handle.routing, &other.handle.routing)
    }

    /// The task kinds with their own view, sorted.
    #[must_use]
    pub fn task_kinds(&self) -> Vec<&TaskKind> {
        let mut v: Vec<&TaskKind> = self.tasks.keys().collect();
        v.sort();
        v
    }
}

/// A validated, resolved policy set: the catalog, every layer, and every tenant's views.
///
/// Immutable once built; share it behind an `Arc` (see [`PolicyStore`] for hot reload).
///
/// ```
/// use downshift::policy::{PolicySet, Source};
///
/// let catalog = r#"{"kind":"catalog","endpoints":[
///   {"id":"big","provider":"a","model":"m-large","region":"eu-west-1",
///    "capabilities":{"context_window":200000,"max_output_tokens":8192},
///    "pricing":{"input_per_mtok":3.0,"output_per_mtok":15.0}},
///   {"id":"small","provider":"b","model":"m-small","region":"eu-west-1",
///    "capabilities":{"context_window":32000,"max_output_tokens":4096},
///    "pricing":{"input_per_mtok":0.2,"output_per_mtok":0.6}}]}"#;
/// let platform = r#"{"kind":"policy","id":"platform","version":"1","level":"platform",
///   "tiers":[{"name":"primary","endpoints":["big"]},{"name":"small","endpoints":["small"]}],
///   "continuity":{"fit_to_smaller_window":true}}"#;
/// let tenant = r#"{"kind":"policy","id":"acme","version":"3","level":"tenant",
///   "extends":"platform","constraints":{"floor":"primary"}}"#;
///
/// let set = PolicySet::from_sources(vec![
///     Source::new("catalog.json", catalog),
///     Source::new("platform.json", platform),
///     Source::new("acme.json", tenant),
/// ])?;
/// let view = set.view("acme", "copywriting")?;
/// assert_eq!(view.floor, 0);
/// assert_eq!(view.usable_tiers().count(), 1);
/// # Ok::<(), downshift::PolicyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// Unique per built set: a [`TenantHandle`] from another set is not used.
    epoch: u64,
    distinct_routing_views: usize,
    catalog: Arc<Catalog>,
    catalog_digest: ContentDigest,
    tenants: FastMap<TenantId, TenantPolicy>,
    tenant_ids: Vec<TenantId>,
    layers: Vec<LayerRef>,
    warnings: Vec<Problem>,
    digest: ContentDigest,
    platform_triggers: Triggers,
    platform_recovery: Recovery,
    platform_herd: Herd,
}

impl PolicySet {
    /// Reads, validates and resolves the `*.json` policy and catalog files at `paths` (files or
    /// directories).
    ///
    /// # Errors
    /// [`PolicyError::Io`] when a file cannot be read; [`PolicyError::Invalid`] with every
    /// problem found when the set is invalid.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self, PolicyError> {
        Self::from_sources(Source::read_paths(paths)?)
    }

    /// Validates and resolves a set of sources (policy layers and catalogs, in any order).
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] listing every problem (errors and warnings) when any is an
    /// error. Warnings alone do not fail; see [`PolicySet::warnings`].
    pub fn from_sources(sources: impl IntoIterator<Item = Source>) -> Result<Self, PolicyError> {
        let (set, report) = Self::check_sources(sources);
        match set {
            Some(set) if !report.has_errors() => Ok(set),
            _ => Err(PolicyError::Invalid(report)),
        }
    }

    /// Validates `sources` and returns the resolved set (when there are no errors) together with
    /// the full report of errors and warnings. This is what `downshift validate` runs.
    pub fn check_sources(
        sources: impl IntoIterator<Item = Source>,
    ) -> (Option<Self>, ValidationReport) {
        let mut problems = Vec::new();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut endpoint_origin: HashMap<String, String> = HashMap::new();
        let mut catalog_versions = Vec::new();
        let mut docs: Vec<LayerDoc> = Vec::new();
        // Per doc, its content without its identity (see `own_content_key`).
        let mut own_keys: Vec<String> = Vec::new();
        let mut layer_bodies: HashMap<String, ContentDigest> = HashMap::new();

        for src in sources {
            match parse(&src) {
                Err(p) => problems.push(p),
                Ok(Parsed::Catalog(cat)) => {
                    problems.extend(check_catalog(&src.name, &cat));
                    for (i, e) in cat.endpoints.iter().enumerate() {
                        match endpoint_origin.get(e.id.as_str()) {
                            Some(first) if first != &src.name => problems.push(problem(
                                Severity::Error,
                                ProblemCode::DuplicateId,
                                &src.name,
                                format!("$.endpoints[{i}].id"),
                                format!("endpoint id `{}` is already defined in {first}", e.id),
                            )),
                            Some(_) => {}
                            None => {
                                endpoint_origin.insert(e.id.to_string(), src.name.clone());
                                endpoints.push(e.clone());
                            }
                        }
                    }
                    catalog_versions.push(cat);
                }
                Ok(Parsed::Policy(layer, raw)) => {
                    problems.extend(check_layer(&src.name, &layer, &raw));
                    // The layer's digest: its id and version, and the digest of the rest of its
                    // parsed content (defaults filled in; comments and editor hints are not
                    // content). That rest is digested once per distinct text: tenant layers
                    // created from one template differ only in their id.
                    let key = own_content_key(&raw);
                    let body = layer_bodies.entry(key.clone()).or_insert_with(|| {
                        let mut content = (*layer).clone();
                        content.id = LayerId::new("");
                        content.version = String::new();
                        content.description = None;
                        content.schema = None;
                        for t in &mut content.tiers {
                            t.description = None;
                        }
                        ContentDigest::of_json(&content)
                            .unwrap_or_else(|_| ContentDigest::of_bytes(src.text.as_bytes()))
                    });
                    let digest = ContentDigest::of_parts([
                        b"downshift/layer/2" as &[u8],
                        layer.id.as_str().as_bytes(),
                        layer.version.as_bytes(),
                        body.as_str().as_bytes(),
                    ]);
                    own_keys.push(key);
                    docs.push(LayerDoc {
                        file: src.name.clone(),
                        layer: *layer,
                        raw,
                        digest,
                    });
                }
            }
        }
        let catalog = Catalog::new(endpoints);
        let catalog_digest = {
            let mut eps: Vec<&Endpoint> = catalog.endpoints().iter().collect();
            eps.sort_by(|a, b| a.id.cmp(&b.id));
            ContentDigest::of_json(&eps).unwrap_or_else(|_| ContentDigest::of_bytes(b""))
        };

        // Layer ids unique; exactly one platform.
        let mut by_id: HashMap<LayerId, usize> = HashMap::new();
        for (i, d) in docs.iter().enumerate() {
            if let Some(&first) = by_id.get(&d.layer.id) {
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::DuplicateId,
                    &d.file,
                    "$.id",
                    format!(
                        "layer id `{}` is already used by {}",
                        d.layer.id, docs[first].file
                    ),
                ));
            } else {
                by_id.insert(d.layer.id.clone(), i);
            }
        }
        let platforms: Vec<usize> = (0..docs.len())
            .filter(|&i| docs[i].layer.level == Level::Platform)
            .collect();
        if platforms.len() > 1 {
            for &i in &platforms[1..] {
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::PlatformLayer,
                    &docs[i].file,
                    "$.level",
                    format!(
                        "a policy set has exactly one platform layer; `{}` ({}) is already one",
                        docs[platforms[0]].layer.id, docs[platforms[0]].file
                    ),
                ));
            }
        } else if platforms.is_empty() {
            if let Some(d) = docs.first() {
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::PlatformLayer,
                    &d.file,
                    "$",
                    "the policy set has no platform layer (`\"level\": \"platform\"`); every chain must end at one",
                ));
            }
        }

        // Chains: resolve `extends` for every layer.
        let chains: Vec<Option<Vec<usize>>> = (0..docs.len())
            .map(|i| chain_of(i, &docs, &by_id, &mut problems))
            .collect();

        // Ladder checks where a layer defines tiers.
        let mut ladder_ok = vec![true; docs.len()];
        let declared_tasks: Option<BTreeSet<TaskKind>> = platforms
            .first()
            .and_then(|&p| docs[p].layer.task_kinds.as_ref())
            .map(|v| v.iter().cloned().collect());
        for (i, d) in docs.iter().enumerate() {
            if !d.layer.tiers.is_empty() || d.raw.get("tiers").is_some() {
                ladder_ok[i] = check_ladder(d, &catalog, &mut problems);
            }
            if let Some(declared) = &declared_tasks {
                check_task_kinds(d, declared, &mut problems);
            }
        }

        // Effective documents and views, memoized per layer.
        let mut effective: Vec<Option<PolicyLayer>> = vec![None; docs.len()];
        for i in 0..docs.len() {
            let Some(chain) = &chains[i] else { continue };
            let mut value = Value::Object(serde_json::Map::new());
            for &j in chain {
                value = merge(&value, &docs[j].raw);
            }
            match serde_json::from_value::<PolicyLayer>(value) {
                Ok(l) => effective[i] = Some(l),
                Err(e) => problems.push(problem(
                    Severity::Error,
                    ProblemCode::Schema,
                    &docs[i].file,
                    "$",
                    format!("merged with its parents, this layer is not a valid policy: {e}"),
                )),
            }
        }

        let mut views: Vec<Option<BTreeMap<Option<TaskKind>, ResolvedPolicy>>> =
            vec![None; docs.len()];
        // Process parents before children: order by chain length.
        let mut order: Vec<usize> = (0..docs.len()).filter(|&i| chains[i].is_some()).collect();
        order.sort_by_key(|&i| chains[i].as_ref().map_or(0, Vec::len));
        for &i in &order {
            let (Some(chain), Some(eff)) = (&chains[i], &effective[i]) else {
                continue;
            };
            if chain.iter().any(|&j| !ladder_ok[j]) {
                continue;
            }
            let chain_docs: Vec<&LayerDoc> = chain.iter().map(|&j| &docs[j]).collect();
            let at = Attrib { chain: &chain_docs };
            if eff.tiers.is_empty() {
                if docs[i].layer.level == Level::Tenant {
                    problems.push(problem(
                        Severity::Error,
                        ProblemCode::NoTiers,
                        &docs[i].file,
                        "$",
                        "no tier ladder: neither this tenant nor any layer it extends defines `tiers`",
                    ));
                }
                continue;
            }
            let mut tasks: BTreeSet<TaskKind> = BTreeSet::new();
            if let Some(d) = &declared_tasks {
                tasks.extend(d.iter().cloned());
            }
            for t in &eff.tiers {
                tasks.extend(t.tasks.iter().flatten().cloned());
            }
            tasks.extend(eff.constraints.tasks.keys().cloned());
            let mut vs = BTreeMap::new();
            let before = problems.len();
            for task in std::iter::once(None).chain(tasks.iter().map(Some)) {
                if let Some(v) = compute_view(eff, &catalog, task, &at, &mut problems) {
                    vs.insert(task.cloned(), v);
                }
            }
            if problems[before..]
                .iter()
                .any(|p| p.severity == Severity::Error)
            {
                continue;
            }
            // Narrowing against the parent's views.
            if chain.len() >= 2 {
                let parent = chain[chain.len() - 2];
                if let Some(pviews) = &views[parent] {
                    for (task, cv) in &vs {
                        let pv = pviews.get(task).or_else(|| pviews.get(&None));
                        if let Some(pv) = pv {
                            check_narrowing(pv, &docs[parent], cv, eff, &at, &mut problems);
                        }
                    }
                }
            }
            if docs[i].layer.level == Level::Tenant {
                tenant_checks(eff, &catalog, &vs, &at, &mut problems);
            }
            views[i] = Some(vs);
        }

        // Assemble tenants.
        let mut tenants = FastMap::new();
        let mut tenant_ids = Vec::new();
        let epoch = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
        let mut interner = Interner::default();
        let anonymous = TenantId::new("");
        let mut contents: HashMap<(String, Option<TaskKind>), Digested> = HashMap::new();
        for &i in &order {
            if docs[i].layer.level != Level::Tenant {
                continue;
            }
            let (Some(chain), Some(vs)) = (&chains[i], views[i].take()) else {
                continue;
            };
            let layers: Vec<LayerRef> = chain
                .iter()
                .map(|&j| LayerRef {
                    id: docs[j].layer.id.clone(),
                    version: docs[j].layer.version.clone(),
                    level: docs[j].layer.level,
                    source: docs[j].file.clone(),
                    digest: docs[j].digest.clone(),
                })
                .collect();
            let tenant = TenantId::new(docs[i].layer.id.as_str());
            let Some(routing) = interner.tenant(vs.iter().map(|(t, v)| (t.as_ref(), v))) else {
                continue;
            };
            let mut default = None;
            let mut by_task = FastMap::new();
            // Tenants with the same parents and the same own content (but for their id and
            // version) usually resolve to the same views: their content digest is computed once
            // (and reused only for a view found equal).
            let mut own = String::new();
            for &p in &chain[..chain.len().saturating_sub(1)] {
                own.push_str(&p.to_string());
                own.push('/');
            }
            own.push_str(own_keys.get(i).map_or("", String::as_str));
            for (task, mut v) in vs {
                v.tenant = anonymous.clone();
                let known = contents.entry((own.clone(), task.clone())).or_default();
                let content = match known.iter().find(|(same, _)| *same == v) {
                    Some((_, d)) => d.clone(),
                    None => {
                        let d = v.content_digest();
                        known.push((v.clone(), d.clone()));
                        d
                    }
                };
                v.tenant = tenant.clone();
                v.layers.clone_from(&layers);
                v.compute_digest(&content);
                match task {
                    None => default = Some(Arc::new(v)),
                    Some(t) => {
                        by_task.insert(t, Arc::new(v));
                    }
                }
            }
            if let Some(default) = default {
                tenant_ids.push(tenant.clone());
                let tenant_key = tenant.clone();
                tenants.insert(
                    tenant,
                    TenantPolicy {
                        default,
                        tasks: by_task,
                        handle: TenantHandle {
                            tenant: tenant_key.clone(),
                            set: epoch,
                            routing,
                        },
                    },
                );
            }
        }
        drop(contents);
        tenant_ids.sort();

        // Dedupe (a template's problem is found once per layer extending it) and order by file.
        let mut seen = HashSet::new();
        problems.retain(|p| seen.insert((p.file.clone(), p.path.clone(), p.message.clone())));
        problems
            .sort_by(|a, b| (&a.file, b.severity, &a.path).cmp(&(&b.file, a.severity, &b.path)));
        let report = ValidationReport { problems };
        if report.has_errors() {
            return (None, report);
        }
        let layers: Vec<LayerRef> = {
            let mut ls: Vec<LayerRef> = docs
                .iter()
                .map(|d| LayerRef {
                    id: d.layer.id.clone(),
                    version: d.layer.version.clone(),
                    level: d.layer.level,
                    source: d.file.clone(),
                    digest: d.digest.clone(),
                })
                .collect();
            ls.sort_by(|a, b| (a.level, &a.id).cmp(&(b.level, &b.id)));
            ls
        };
        let digest = {
            let parts: Vec<(&str, &str)> = tenant_ids
                .iter()
                .filter_map(|t| {
                    tenants
                        .get(t)
                        .map(|tp| (t.as_str(), tp.default.digest.as_str()))
                })
                .collect();
            let mut all: Vec<String> = Vec::new();
            for t in &tenant_ids {
                if let Some(tp) = tenants.get(t) {
                    for k in tp.task_kinds() {
                        all.push(format!("{t}/{k}={}", tp.view(k.as_str()).digest));
                    }
                }
            }
            ContentDigest::of_json(&(catalog_digest.as_str(), parts, all))
                .unwrap_or_else(|_| ContentDigest::of_bytes(b""))
        };
        let _ = catalog_versions;
        let (platform_triggers, platform_recovery, platform_herd) = platforms
            .first()
            .and_then(|&p| effective[p].as_ref())
            .map(|l| (l.triggers.clone(), l.recovery.clone(), l.herd.clone()))
            .unwrap_or_default();
        let set = PolicySet {
            epoch,
            distinct_routing_views: interner.distinct_views(),
            platform_triggers,
            platform_recovery,
            platform_herd,
            catalog: Arc::new(catalog),
            catalog_digest,
            tenants,
            tenant_ids,
            layers,
            warnings: report.problems.clone(),
            digest,
        };
        (Some(set), report)
    }

    /// The catalog.
    #[must_use]
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Digest of the catalog's endpoints (independent of file order).
    #[must_use]
    pub fn catalog_digest(&self) -> &ContentDigest {
        &self.catalog_digest
    }

    /// Digest of the whole set: the catalog and every tenant view.
    #[must_use]
    pub fn digest(&self) -> &ContentDigest {
        &self.digest
    }

    /// A tenant's views.
    ///
    /// # Errors
    /// [`PolicyError::UnknownTenant`] when no tenant layer has this id.
    pub fn tenant(&self, tenant: &str) -> Result<&TenantPolicy, PolicyError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| PolicyError::UnknownTenant {
                tenant: TenantId::new(tenant),
            })
    }

    /// The resolved view for a tenant and task kind.
    ///
    /// # Errors
    /// [`PolicyError::UnknownTenant`] when no tenant layer has this id.
    pub fn view(&self, tenant: &str, task: &str) -> Result<&Arc<ResolvedPolicy>, PolicyError> {
        Ok(self.tenant(tenant)?.view(task))
    }

    /// A handle to the tenant, for a caller that routes many calls of it (an engine keeps one
    /// per session): see [`TenantHandle`]. Allocates nothing.
    ///
    /// # Errors
    /// [`PolicyError::UnknownTenant`] when no tenant layer has this id.
    pub fn tenant_handle(&self, tenant: &TenantId) -> Result<TenantHandle, PolicyError> {
        Ok(self.tenant(tenant.as_str())?.handle.clone())
    }

    /// The routing of the tenant a handle is for, if the handle belongs to this set and to
    /// `tenant`.
    pub(crate) fn routing_by_handle<'a>(
        &self,
        handle: &'a TenantHandle,
        tenant: &TenantId,
    ) -> Option<&'a TenantRouting> {
        (handle.set == self.epoch && handle.is_for(tenant)).then_some(&*handle.routing)
    }

    /// How many distinct routing views the set's tenants share (tenants of one template with
    /// the same constraints share one).
    #[must_use]
    pub fn distinct_routing_views(&self) -> usize {
        self.distinct_routing_views
    }

    /// Tenant ids, sorted.
    #[must_use]
    pub fn tenants(&self) -> &[TenantId] {
        &self.tenant_ids
    }

    /// Every layer in the set (platform, templates, tenants).
    #[must_use]
    pub fn layers(&self) -> &[LayerRef] {
        &self.layers
    }

    /// The platform layer's shared settings for the [`TriggerEvaluator`](crate::trigger::TriggerEvaluator):
    /// the breaker, half-open probing, the open wait and the latency window. An evaluator is
    /// built from these once; a hot reload that changes them takes effect for a new evaluator.
    pub fn evaluator_settings(&self) -> EvaluatorSettings {
        EvaluatorSettings::from_policy(&self.platform_triggers, &self.platform_recovery)
    }

    /// The platform's herd-control settings.
    #[must_use]
    pub fn herd(&self) -> &Herd {
        &self.platform_herd
    }

    /// Warnings found while validating (legal but suspicious settings).
    #[must_use]
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }
}

/// A layer's content without its identity: its canonical JSON text without `id`, `version`
/// and comments (a key: equal keys parse to layers equal but for id and version).
fn own_content_key(raw: &Value) -> String {
    match raw {
        Value::Object(obj) => {
            let mut obj = obj.clone();
            for k in ["id", "version", "description", "$schema"] {
                obj.remove(k);
            }
            crate::digest::canonical_json(&Value::Object(obj))
        }
        other => crate::digest::canonical_json(other),
    }
}

/// Follows `extends` from layer `i` to the platform; returns the chain root first.
fn chain_of(
    i: usize,
    docs: &[LayerDoc],
    by_id: &HashMap<LayerId, usize>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<usize>> {
    let mut chain = vec![i];
    let mut cur = i;
    loop {
        let d = &docs[cur];
        let Some(parent_id) = &d.layer.extends else {
            if d.layer.level != Level::Platform {
                // Reported by the per-file check (a template or tenant must extend).
                return None;
            }
            break;
        };
        let Some(&p) = by_id.get(parent_id) else {
            if cur == i {
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::UnknownParent,
                    &d.file,
                    "$.extends",
                    format!(
                        "`{parent_id}` is not a layer in this policy set{}",
                        did_you_mean(parent_id.as_str(), by_id.keys().map(LayerId::as_str))
                    ),
                ));
            }
            return None;
        };
        if chain.contains(&p) {
            if cur == i || p == i {
                let names: Vec<String> = chain
                    .iter()
                    .rev()
                    .map(|&j| docs[j].layer.id.to_string())
                    .collect();
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::ExtendsCycle,
                    &docs[i].file,
                    "$.extends",
                    format!(
                        "`extends` loops: {} -> {}",
                        names.into_iter().rev().collect::<Vec<_>>().join(" -> "),
                        docs[p].layer.id
                    ),
                ));
            }
            return None;
        }
        let (cl, pl) = (d.layer.level, docs[p].layer.level);
        let ok = match cl {
            Level::Platform => false,
            Level::Template => matches!(pl, Level::Platform | Level::Template),
            Level::Tenant => matches!(pl, Level::Platform | Level::Template),
        };
        if !ok {
            if cur == i {
                problems.push(problem(
                    Severity::Error,
                    ProblemCode::UnknownParent,
                    &d.file,
                    "$.extends",
                    format!(
                        "a {cl} layer cannot extend {pl} layer `{parent_id}`: templates extend the platform or a template, tenants extend a template or the platform"
                    ),
                ));
            }
            return None;
        }
        chain.push(p);
        cur = p;
    }
    chain.reverse();
    Some(chain)
}

/// Checks a ladder a file defines; returns whether it is usable for resolution.
fn check_ladder(d: &LayerDoc, catalog: &Catalog, problems: &mut Vec<Problem>) -> bool {
    let before = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let err = |problems: &mut Vec<Problem>, code, path: String, msg: String| {
        problems.push(problem(Severity::Error, code, &d.file, path, msg));
    };
    if d.layer.tiers.is_empty() {
        err(
            problems,
            ProblemCode::NoTiers,
            "$.tiers".into(),
            "the ladder is empty; list at least the primary tier".into(),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut placed: HashMap<&str, (usize, usize)> = HashMap::new();
    for (ti, tier) in d.layer.tiers.iter().enumerate() {
        if let Some(first) = names.insert(tier.name.as_str(), ti) {
            err(
                problems,
                ProblemCode::DuplicateId,
                format!("$.tiers[{ti}].name"),
                format!(
                    "tier name `{}` is already used by $.tiers[{first}]",
                    tier.name
                ),
            );
        }
        if tier.endpoints.is_empty() {
            err(
                problems,
                ProblemCode::EmptyTier,
                format!("$.tiers[{ti}].endpoints"),
                format!("tier `{}` has no endpoints", tier.name),
            );
        }
        if tier.tasks.as_ref().is_some_and(Vec::is_empty) {
            err(
                problems,
                ProblemCode::EmptyTier,
                format!("$.tiers[{ti}].tasks"),
                format!(
                    "tier `{}` serves no task kind; omit `tasks` to serve all",
                    tier.name
                ),
            );
        }
        for (ei, id) in tier.endpoints.iter().enumerate() {
            if catalog.get(id.as_str()).is_none() {
                err(
                    problems,
                    ProblemCode::UnknownEndpoint,
                    format!("$.tiers[{ti}].endpoints[{ei}]"),
                    format!(
                        "unknown endpoint `{id}`{}",
                        did_you_mean(
                            id.as_str(),
                            catalog.endpoints().iter().map(|e| e.id.as_str())
                        )
                    ),
                );
            }
            if let Some((pt, pe)) = placed.insert(id.as_str(), (ti, ei)) {
                let msg = if pt == ti {
                    format!("endpoint `{id}` is listed twice in tier `{}`", tier.name)
                } else {
                    format!(
                        "endpoint `{id}` is already in tier `{}` ($.tiers[{pt}].endpoints[{pe}]): the fallback order loops back to it",
                        d.layer.tiers[pt].name
                    )
                };
                err(
                    problems,
                    ProblemCode::FallbackLoop,
                    format!("$.tiers[{ti}].endpoints[{ei}]"),
                    msg,
                );
            }
        }
    }
    // Warnings: adjacent tiers in one failure domain; smaller windows without fitting.
    for ti in 1..d.layer.tiers.len() {
        let (upper, lower) = (&d.layer.tiers[ti - 1], &d.layer.tiers[ti]);
        let domains = |t: &super::model::Tier| -> BTreeSet<String> {
            t.endpoints
                .iter()
                .filter_map(|id| catalog.get(id.as_str()))
                .map(|e| e.failure_domain().to_string())
                .collect()
        };
        let (ud, ld) = (domains(upper), domains(lower));
        if !ld.is_empty() && ld.is_subset(&ud) {
            problems.push(problem(
                Severity::Warning,
                ProblemCode::SharedFailureDomain,
                &d.file,
                format!("$.tiers[{ti}]"),
                format!(
                    "tier `{}` shares failure domain(s) {} with tier `{}` above it: one quota or outage can take both",
                    lower.name,
                    ld.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                    upper.name
                ),
            ));
        }
    }
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count()
        == before
}

fn check_task_kinds(d: &LayerDoc, declared: &BTreeSet<TaskKind>, problems: &mut Vec<Problem>) {
    let mut unknown = |path: String, t: &TaskKind| {
        if !declared.contains(t) {
            problems.push(problem(
                Severity::Error,
                ProblemCode::UnknownTaskKind,
                &d.file,
                path,
                format!(
                    "task kind `{t}` is not declared in the platform's `task_kinds`{}",
                    did_you_mean(t.as_str(), declared.iter().map(TaskKind::as_str))
                ),
            ));
        }
    };
    for (ti, tier) in d.layer.tiers.iter().enumerate() {
        for (k, t) in tier.tasks.iter().flatten().enumerate() {
            unknown(format!("$.tiers[{ti}].tasks[{k}]"), t);
        }
    }
    for t in d.layer.constraints.tasks.keys() {
        unknown(format!("$.constraints.tasks.{t}"), t);
    }
}

/// Checks that only make sense for a tenant's final views.
fn tenant_checks(
    eff: &PolicyLayer,
    catalog: &Catalog,
    views: &BTreeMap<Option<TaskKind>, ResolvedPolicy>,
    at: &Attrib<'_>,
    problems: &mut Vec<Problem>,
) {
    let own = at.own().file.clone();
    // The summarizer must be a tier of the ladder; a required summary needs one.
    if let Some(name) = &eff.continuity.summarizer {
        if eff.tiers.iter().all(|t| &t.name != name) {
            let known: Vec<&str> = eff.tiers.iter().map(|t| t.name.as_str()).collect();
            problems.push(problem(
                Severity::Error,
                ProblemCode::UnknownTier,
                &own,
                "$.continuity.summarizer",
                format!(
                    "the summarizer tier `{name}` is not in the ladder ({})",
                    known.join(", ")
                ),
            ));
        }
    }
    if eff.continuity.require_summary && eff.continuity.summarizer.is_none() {
        problems.push(problem(
            Severity::Error,
            ProblemCode::InvalidValue,
            &own,
            "$.continuity.require_summary",
            "a summary is required but no `continuity.summarizer` tier is named to write it: every fitting that drops messages would fail",
        ));
    }
    for (task, v) in views {
        let for_task = task
            .as_ref()
            .map_or_else(|| "its default view".to_string(), |t| format!("task `{t}`"));
        if v.usable_tiers().next().is_none() {
            let why: Vec<String> = v
                .tiers
                .iter()
                .map(|t| match &t.excluded {
                    Some(ex) => format!("`{}`: {ex}", t.name),
                    None => format!(
                        "`{}`: {}",
                        t.name,
                        t.removed
                            .iter()
                            .map(|r| format!("{} ({})", r.endpoint, r.reason))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
                .collect();
            problems.push(problem(
                Severity::Error,
                ProblemCode::NoUsableEndpoint,
                &own,
                "$.constraints",
                format!(
                    "tenant `{}` has no usable endpoint for {for_task}: {}",
                    eff.id,
                    why.join("; ")
                ),
            ));
            continue;
        }
        for t in &v.tiers {
            if t.excluded.is_none() && t.endpoints.is_empty() {
                problems.push(problem(
                    Severity::Warning,
                    ProblemCode::TierEmptiedForTenant,
                    &own,
                    "$.constraints",
                    format!(
                        "tier `{}` is permitted for {for_task} but none of its endpoints is usable: {}",
                        t.name,
                        t.removed
                            .iter()
                            .map(|r| format!("{} ({})", r.endpoint, r.reason))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        // Smaller context window below a usable tier, without a fitting rule.
        if !v.continuity.fit_to_smaller_window {
            let usable: Vec<&ResolvedTier> = v.usable_tiers().collect();
            for w in usable.windows(2) {
                let (upper, lower) = (w[0], w[1]);
                let windows = |t: &ResolvedTier| {
                    t.endpoint_idx
                        .iter()
                        .filter_map(|&i| catalog.try_endpoint(i))
                        .map(|e| e.capabilities.context_window)
                        .collect::<Vec<u32>>()
                };
                let up_min = windows(upper).into_iter().min();
                let low_max = windows(lower).into_iter().max();
                if let (Some(up), Some(low)) = (up_min, low_max) {
                    if low < up {
                        problems.push(problem(
                            Severity::Warning,
                            ProblemCode::SmallerContextWindow,
                            &own,
                            "$.continuity.fit_to_smaller_window",
                            format!(
                                "for {for_task}, tier `{}` has a {low}-token window, smaller than tier `{}` above it ({up}); without `continuity.fit_to_smaller_window` a long session cannot move there",
                                lower.name, upper.name
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// A short-lived borrow of the active [`PolicySet`] (see [`PolicyStore::load`]). Hold it for
/// the duration of one decision, not across awaits.
pub struct PolicyGuard(arc_swap::Guard<Arc<PolicySet>>);

impl std::ops::Deref for PolicyGuard {
    type Target = PolicySet;
    fn deref(&self) -> &PolicySet {
        &self.0
    }
}

impl std::fmt::Debug for PolicyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PolicyGuard")
            .field(&self.0.digest())
            .finish()
    }
}

/// The active policy set, replaced atomically on hot reload.
///
/// Readers take a cheap snapshot ([`PolicyStore::current`]); a reload validates the new set
/// whole and swaps it in only when it is valid, so a rejected reload leaves the old set active.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<PolicySet>,
}

impl PolicyStore {
    /// A store holding `set`.
    #[must_use]
    pub fn new(set: PolicySet) -> Self {
        PolicyStore {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// The active set, as a shared handle.
    #[must_use]
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The active set, borrowed for a short read (cheaper than [`PolicyStore::current`] on the
    /// hot path: no reference-count traffic between threads).
    #[must_use]
    pub fn load(&self) -> PolicyGuard {
        PolicyGuard(self.current.load())
    }

    /// Makes `set` the active set; returns the previous one.
    pub fn replace(&self, set: PolicySet) -> Arc<PolicySet> {
        self.current.swap(Arc::new(set))
    }

    /// Validates `sources` whole and, only if valid, swaps them in.
    ///
    /// # Errors
    /// The validation errors; the active set is then unchanged.
    pub fn reload(
        &self,
        sources: impl IntoIterator<Item = Source>,
    ) -> Result<Arc<PolicySet>, PolicyError> {
        let set = PolicySet::from_sources(sources)?;
        let set = Arc::new(set);
        self.current.store(Arc::clone(&set));
        Ok(set)
    }
}
