//! `downshift report AUDIT_LOG [--stats STATS_JSON]`: the per-tenant degradation report as a
//! table, as JSON, and as a self-contained HTML page with a tier timeline.

mod visibility;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use downshift::OutcomeClass;
use downshift::audit::JsonlAuditSink;
use downshift::engine::Call;
use futures::executor::block_on;
use serde_json::Value;
use visibility::{SECRET_PROMPT, payload};

fn downshift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_downshift"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An outage written to a JSON-lines audit log, and the stats snapshot after it.
fn outage(dir: &Path) -> (String, String) {
    let log = dir.join("audit.jsonl");
    let sink = Arc::new(JsonlAuditSink::open(&log).unwrap());
    let w = visibility::world_with(|b| b.audit(sink.clone()));
    // acme: healthy, then `big` is rate limited for a minute; its session falls to `small`.
    block_on(
        w.engine
            .call(Call::new("acme", "summarization", payload()).session("a-1")),
    );
    w.clock.advance(Duration::from_secs(60));
    w.script.fail(
        "big",
        OutcomeClass::RateLimited,
        Some(Duration::from_secs(60)),
    );
    for _ in 0..3 {
        block_on(
            w.engine
                .call(Call::new("acme", "summarization", payload()).session("a-1")),
        );
        block_on(w.engine.call(Call::new("acme", "summarization", payload())));
        w.clock.advance(Duration::from_secs(10));
    }
    // hold may not fall back: its session is suspended.
    block_on(
        w.engine
            .call(Call::new("hold", "summarization", payload()).session("h-1")),
    );
    // Capacity returns: a session-less call is served by `big` again at +390 s; five minutes
    // later (healthy for 2 min, 5 min dwell) the session is promoted at a step boundary.
    w.script.heal("big");
    w.clock.advance(Duration::from_secs(300));
    block_on(w.engine.call(Call::new("acme", "summarization", payload())));
    w.clock.advance(Duration::from_secs(300));
    block_on(
        w.engine
            .call(Call::new("acme", "summarization", payload()).session("a-1")),
    );
    block_on(sink.sync()).unwrap();
    let stats = dir.join("stats.json");
    std::fs::write(&stats, serde_json::to_string(&w.engine.stats()).unwrap()).unwrap();
    (
        log.to_str().unwrap().to_string(),
        stats.to_str().unwrap().to_string(),
    )
}

#[test]
fn report_json_has_episodes_time_degraded_and_the_saving() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stats) = outage(dir.path());
    let out = downshift(&["report", &log, "--stats", &stats, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tenants = r["tenants"].as_array().unwrap();
    let acme = tenants.iter().find(|t| t["tenant"] == "acme").unwrap();
    let hold = tenants.iter().find(|t| t["tenant"] == "hold").unwrap();
    // acme: the session's episode (tier change at +60 s, promoted at +690 s) and the
    // session-less calls' episode.
    let eps = acme["episodes"].as_array().unwrap();
    let session_ep = eps.iter().find(|e| e["session"] == "a-1").unwrap();
    assert_eq!(session_ep["from_tier"], 0);
    assert_eq!(session_ep["lowest_tier"], 1);
    assert_eq!(session_ep["lowest_tier_name"], "fallback");
    assert_eq!(session_ep["duration_ms"], 630_000, "{session_ep}");
    assert!(session_ep["trigger"].as_str().unwrap().contains("big"));
    assert_eq!(session_ep["calls_affected"], 3, "{session_ep}");
    let delta = session_ep["cost_delta_usd"].as_f64().unwrap();
    assert!((delta - 3.0 * (0.0005 - 0.006)).abs() < 1e-12, "{delta}");
    let sessionless = eps.iter().find(|e| e.get("session").is_none()).unwrap();
    assert_eq!(sessionless["calls_affected"], 3);
    assert_eq!(sessionless["duration_ms"], 330_000, "{sessionless}");
    assert_eq!(acme["time_degraded_ms"], 630_000);
    // Session-less traffic audits its transitions, not every degraded call: one move down
    // and one back up, beside the session's own change and promotion.
    assert_eq!(acme["events"]["tier_change"], 2);
    assert_eq!(acme["events"]["promotion"], 2);
    // Calls and cost per tier; the saving against big's prices.
    assert_eq!(acme["calls"], 9);
    let saving = acme["saving_usd"].as_f64().unwrap();
    assert!((saving - 6.0 * (0.006 - 0.0005)).abs() < 1e-12, "{saving}");
    let tiers = acme["tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 2);
    assert_eq!(tiers[1]["endpoint"], "small");
    assert_eq!(tiers[1]["attempts"], 6);
    // hold: suspended, still open at the end of the log.
    assert_eq!(hold["events"]["suspension"], 1);
    let h = &hold["episodes"][0];
    assert_eq!(h["suspended"], true);
    assert!(h.get("ended_at").is_none());
    assert!(!text(&out.stdout).contains(SECRET_PROMPT));
}

#[test]
fn report_prints_a_table_and_works_without_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = outage(dir.path());
    let out = downshift(&["report", &log]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let first = t.lines().next().unwrap();
    assert!(first.starts_with("TENANT"), "{t}");
    assert!(first.contains("SAVING $"));
    let acme = t.lines().find(|l| l.starts_with("acme")).unwrap();
    assert!(acme.contains("10m 30s"), "{acme}");
    assert!(
        acme.contains(" - "),
        "no stats: calls and cost unknown: {acme}"
    );
    assert!(t.contains("episode"), "{t}");
    // A period that ends before the outage has no episodes.
    let before = downshift(&["report", &log, "--until", "2026-11-18T11:00:00Z", "--json"]);
    assert_eq!(before.status.code(), Some(0), "{}", text(&before.stderr));
    let r: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(r["records"], 0);
}

#[test]
fn report_refuses_a_tampered_log_bad_stats_and_bad_times() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stats) = outage(dir.path());
    let bad_time = downshift(&["report", &log, "--since", "yesterday"]);
    assert_eq!(bad_time.status.code(), Some(2));
    assert!(text(&bad_time.stderr).contains("--since `yesterday`"));
    std::fs::write(&stats, "{\"tenants\": 3}").unwrap();
    let bad_stats = downshift(&["report", &log, "--stats", &stats]);
    assert_eq!(bad_stats.status.code(), Some(2));
    assert!(
        text(&bad_stats.stderr).contains("stats.json"),
        "{}",
        text(&bad_stats.stderr)
    );
    let missing = downshift(&["report", "/nonexistent/audit.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, original.replacen("\"acme\"", "\"acne\"", 1)).unwrap();
    let tampered = downshift(&["report", &log]);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        text(&tampered.stderr).contains("does not verify"),
        "{}",
        text(&tampered.stderr)
    );
}

fn html_report(dir: &Path) -> String {
    let (log, stats) = outage(dir);
    let page = dir.join("report.html");
    let out = downshift(&[
        "report",
        &log,
        "--stats",
        &stats,
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    std::fs::read_to_string(page).unwrap()
}

#[test]
fn the_html_page_is_self_contained_with_a_timeline_row_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let html = html_report(dir.path());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    // Self-contained: no script, no stylesheet or image fetched.
    assert!(!html.contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("src="));
    let without_ns = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    // The timeline: one row per tenant, an episode bar per episode.
    assert_eq!(html.matches("<svg id=\"timeline\"").count(), 1);
    assert!(html.contains("<g class=\"tenant\" data-tenant=\"acme\">"));
    assert!(html.contains("<g class=\"tenant\" data-tenant=\"hold\">"));
    assert_eq!(html.matches("class=\"episode tier1\"").count(), 2, "{html}");
    assert_eq!(html.matches("class=\"episode susp\"").count(), 1);
    // Tags balance.
    for tag in ["svg", "g", "table", "tr", "html", "body"] {
        let open =
            html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count();
        let close = html.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> opened {open} closed {close}");
    }
    assert!(html.contains("<table id=\"tiers\">"));
    assert!(!html.contains(SECRET_PROMPT));
}

/// Renders the page in headless Chromium when one is installed (CI has only the Rust
/// toolchain: the test then says so and passes without rendering).
#[test]
fn the_html_page_renders_in_headless_chromium_when_available() {
    let Some(browser) = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipped: no chromium on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let html = html_report(dir.path());
    let page = dir.path().join("page.html");
    std::fs::write(&page, &html).unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dom = text(&out.stdout);
    // The browser parsed the page into a DOM holding the timeline and both tenants' rows.
    assert!(dom.contains("id=\"timeline\""), "{dom}");
    assert!(dom.contains("data-tenant=\"acme\""));
    assert!(dom.contains("data-tenant=\"hold\""));
    assert!(dom.contains("<rect class=\"episode tier1\""));
    let shot = dir.path().join("shot.png");
    let png = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,400",
            &format!("file://{}", page.display()),
        ])
        .output()
        .unwrap();
    assert!(png.status.success(), "{}", text(&png.stderr));
    let bytes = std::fs::read(&shot).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG"),
        "a PNG screenshot was rendered"
    );
}
