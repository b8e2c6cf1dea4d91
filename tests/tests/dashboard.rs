//! The web dashboard (issue 16) in a real headless Chromium against a real fleet: the fleet view
//! lists every host; a rollout started from the CLI appears without a reload and its hosts
//! advance to done, each one the page shows done serving the new release when its service is
//! polled directly (the observer's evidence, not the coordinator's word); a bad release shows as failed with its reason; the pause button (after the
//! confirmation dialog; Cancel does nothing) pauses a running rollout, checked through the CLI
//! and the audit log; a canary at a manual gate says why it waits, and promote, rollback and
//! abort work from the buttons; a viewer's buttons are refused; the page says when the
//! coordinator is away and picks up after its restart; filters, history, an offline host.
//! Every test fails on a browser console error. Screenshots are kept in
//! `target/test-artifacts/dashboard/` (paths printed). Without the login cookie the dashboard answers 401,
//! and it refuses to listen on a non-loopback address.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::browser::Browser;
use rollgate_tests::dashboard::Dashboard;
use rollgate_tests::pb::Phase;
use rollgate_tests::pki::TlsFiles;
use rollgate_tests::{bin, Fleet, FleetOpts, Mode};
use serde_json::Value;

const OPERATOR: &str = "spiffe://test/operator/tester";
/// How long the page may take to show something the coordinator knows.
const PAGE: Duration = Duration::from_secs(30);

/// A JavaScript expression's value as a string, for scripts.
fn js(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The phase of a rollout, as `rollgate rollout status` tells it.
fn cli_phase(fleet: &Fleet, id: &str) -> anyhow::Result<String> {
    let out = fleet.cli_ok(&["-o", "json", "rollout", "status", id])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    Ok(v["phase"].as_str().unwrap_or_default().to_string())
}

/// Waits until the rollout view shows `phase` in its phase field.
fn wait_page_phase(b: &Browser, id: &str, phase: &str) -> anyhow::Result<()> {
    let script = format!(
        "const p = document.getElementById('rollout-phase'); \
         return location.hash === '#/rollout/' + {id} && p && p.textContent === {phase};",
        id = js(id),
        phase = js(&phase.replace('_', " "))
    );
    b.wait_for(&format!("the page to show {id} {phase}"), PAGE, &script)
        .map(drop)
}

/// Where a screenshot is kept after the test (the fleet's directory goes with the fleet):
/// `target/test-artifacts/dashboard/`.
fn artifact(name: &str) -> std::path::PathBuf {
    let dir = rollgate_tests::own_bin_dir()
        .parent()
        .expect("target dir")
        .join("test-artifacts")
        .join("dashboard");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts/dashboard");
    dir.join(name)
}

/// Watches the rollout view until every host in `hosts` shows done, checking each time that a
/// host the page shows done answers `version`, healthy, from its own service (polled
/// directly). The hosts in the order the page showed them done.
fn page_done_matches_the_service(
    fleet: &Fleet,
    b: &Browser,
    hosts: &[String],
    version: &str,
) -> anyhow::Result<Vec<String>> {
    let read = "return [...document.querySelectorAll('#rollout-body tr[data-host]')]\
                .filter(tr => tr.querySelector('td.state')?.textContent === 'done')\
                .map(tr => tr.dataset.host);";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut order: Vec<String> = Vec::new();
    while order.len() < hosts.len() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the page showed only {order:?} done within 60 s"
        );
        let shown: Vec<String> = serde_json::from_value(b.eval(read)?)?;
        let new: Vec<String> = shown.into_iter().filter(|h| !order.contains(h)).collect();
        for h in new {
            // A poll can time out on a loaded machine: a few tries before calling it wrong.
            let mut serves = None;
            for _ in 0..5 {
                serves = fleet.serving(&h);
                if serves.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            anyhow::ensure!(
                serves.as_deref() == Some(version),
                "the page shows {h} done, but its service answers {serves:?}, not {version}"
            );
            order.push(h);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(order)
}

/// Clicks an action button on the rollout view, then the dialog's confirm button.
fn act(b: &Browser, action: &str) -> anyhow::Result<()> {
    let button = format!("button[data-action={action}]");
    b.wait_for(
        &format!("the {action} button"),
        PAGE,
        &format!("return document.querySelector({}) !== null;", js(&button)),
    )?;
    b.click(&button)?;
    b.wait_for(
        "the confirmation dialog",
        PAGE,
        "return document.getElementById('confirm').open;",
    )?;
    b.click("#confirm-yes")
}

#[test]
fn a_newcomer_follows_a_rollout_live_and_pauses_it_from_the_browser() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        sites: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let mut dash = Dashboard::start(&fleet)?;
    let mut browser = Browser::start(&fleet.dir.join("browser"))?;
    browser.goto(&dash.login)?;

    // The fleet view lists every host, the login token gone from the address bar.
    let hosts: Vec<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    let all_listed = format!(
        "return {}.every(h => document.querySelector('#fleet-body tr[data-host=\"' + h + '\"]'));",
        serde_json::to_string(&hosts)?
    );
    browser.wait_for("every host in the fleet view", PAGE, &all_listed)?;
    let url = browser.eval("return location.href")?;
    assert!(!url.to_string().contains("token"), "token left in {url}");
    let shot = browser.screenshot(&artifact("dashboard-fleet.png"))?;
    println!("screenshot: {}", shot.display());

    // A rollout started from the CLI appears without a reload; its hosts advance to done.
    browser.eval("window.__same_page = true; return true;")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id =
        fleet.start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"1s\"")?)?;
    let row = format!("tr[data-rollout={}] a", js(&id));
    browser.wait_for(
        "the new rollout on the page",
        PAGE,
        &format!("return document.querySelector({}) !== null;", js(&row)),
    )?;
    browser.click(&row)?;
    browser.wait_for(
        "the rollout view with a host updating or done",
        PAGE,
        "return [...document.querySelectorAll('#rollout-body td.state')]\
         .some(td => /updating|done/.test(td.textContent));",
    )?;
    let shot = browser.screenshot(&artifact("dashboard-rollout.png"))?;
    println!("screenshot: {}", shot.display());
    // Each host the page shows done serves 2.0.0 when polled directly (the observer's view,
    // not the coordinator's word), and every host gets there.
    let done_order = page_done_matches_the_service(&fleet, &browser, &hosts, "2.0.0")?;
    println!("the page showed done, each confirmed by the host's own service: {done_order:?}");
    wait_page_phase(&browser, &id, "succeeded")?;
    let states = browser.eval(
        "return [...document.querySelectorAll('#rollout-body td.state')].map(td => td.textContent);",
    )?;
    assert_eq!(
        states,
        serde_json::json!(["done", "done", "done"]),
        "{states}"
    );
    let by = browser.eval("return document.getElementById('rollout-by').textContent")?;
    assert!(by.to_string().contains(OPERATOR), "started by: {by}");
    let same_page = browser.eval("return window.__same_page === true")?;
    assert_eq!(same_page, Value::Bool(true), "the page was reloaded");
    // The fleet view's event panel has told the story as it happened.
    browser.click("#nav-fleet")?;
    browser.wait_for(
        "the rollout's end in the event panel",
        PAGE,
        &format!(
            "const e = document.getElementById('events');              return e && e.textContent.includes('rollout_succeeded') && e.textContent.includes({});",
            js(&id)
        ),
    )?;

    // The pause button, after the confirmation, pauses a running rollout.
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let id3 =
        fleet.start_rollout(&fleet.spec(&v3, "max_unavailable = 1\nmin_healthy_time = \"3s\"")?)?;
    browser.eval(&format!(
        "location.hash = '#/rollout/' + {}; return true;",
        js(&id3)
    ))?;
    wait_page_phase(&browser, &id3, "rolling")?;
    // Cancel in the dialog does nothing.
    browser.click("button[data-action=pause]")?;
    browser.wait_for(
        "the confirmation dialog",
        PAGE,
        "return document.getElementById('confirm').open;",
    )?;
    let asks = browser.eval("return document.getElementById('confirm').textContent")?;
    assert!(
        asks.to_string()
            .contains("hosts in the middle of an update finish"),
        "{asks}"
    );
    browser.click("#confirm-no")?;
    browser.wait_for(
        "the dialog to close",
        PAGE,
        "return !document.getElementById('confirm').open;",
    )?;
    assert_eq!(
        cli_phase(&fleet, &id3)?,
        "rolling",
        "cancelled, yet not rolling"
    );
    act(&browser, "pause")?;
    fleet.wait(&format!("{id3} paused"), PAGE, || {
        Ok((cli_phase(&fleet, &id3)? == "paused").then_some(()))
    })?;
    wait_page_phase(&browser, &id3, "paused")?;
    let shot = browser.screenshot(&artifact("dashboard-paused.png"))?;
    println!("screenshot: {}", shot.display());
    // The pause is in the audit trail under the operator's own identity.
    let log = fleet.cli_ok(&["-o", "json", "events", "--rollout", &id3])?;
    let paused_by_operator = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| e["kind"] == "rollout_paused" && e["by"] == OPERATOR);
    assert!(
        paused_by_operator,
        "no rollout_paused by {OPERATOR} in:\n{log}"
    );

    // Resume from the browser too; the rollout finishes.
    act(&browser, "resume")?;
    let end = fleet.wait_settled(&id3, Duration::from_secs(60))?;
    assert_eq!(end.phase(), Phase::Succeeded, "{end:?}");
    wait_page_phase(&browser, &id3, "succeeded")?;

    browser.no_console_errors()?;
    assert!(browser.driver_alive(), "chromedriver exited on its own");
    dash.still_running()
}

#[test]
fn a_bad_release_shows_failed_with_its_reason() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let mut dash = Dashboard::start(&fleet)?;
    let mut browser = Browser::start(&fleet.dir.join("browser"))?;
    browser.goto(&dash.login)?;
    browser.wait_for(
        "the fleet view",
        PAGE,
        "return document.querySelector('#fleet-body tr[data-host]') !== null;",
    )?;
    let bad = fleet.release("2.0.0", Mode::Unhealthy)?;
    let spec = fleet.spec(
        &bad,
        "max_unavailable = 1\nmax_failures = 0\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"3s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    browser.eval(&format!(
        "location.hash = '#/rollout/' + {}; return true;",
        js(&id)
    ))?;
    wait_page_phase(&browser, &id, "failed")?;
    let status = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(status.phase(), Phase::Failed, "{status:?}");
    // The page shows the coordinator's reason (its last word: the page may lag a moment).
    let reason = browser.wait_for(
        "the failure's reason",
        PAGE,
        &format!(
            "const r = document.getElementById('rollout-reason'); \
             return r && r.textContent.includes({}) && r.textContent;",
            js(&status.reason)
        ),
    )?;
    println!("the page says: {reason}");
    browser.wait_for(
        "a host shown rolled back or failed",
        PAGE,
        "return [...document.querySelectorAll('#rollout-body td.state')]\
         .some(td => /rolled back|failed/.test(td.textContent));",
    )?;
    let shot = browser.screenshot(&artifact("dashboard-failed.png"))?;
    println!("screenshot: {}", shot.display());
    // On a narrow window (a phone, a split screen) nothing spills sideways: wide tables
    // scroll in their own box.
    browser.resize(480, 900)?;
    browser.wait_for(
        "the page to fit a 480 px window",
        PAGE,
        "return document.documentElement.scrollWidth <= window.innerWidth;",
    )?;
    let shot = browser.screenshot(&artifact("dashboard-narrow.png"))?;
    println!("screenshot (480 px wide): {}", shot.display());

    // A rollout that does not exist: the view says so, in the coordinator's words.
    browser.eval("location.hash = '#/rollout/r-nosuch'; return true;")?;
    let said = browser.wait_for(
        "the view of a rollout that does not exist",
        PAGE,
        "const r = document.getElementById('rollout-refused'); return r && r.textContent;",
    )?;
    assert!(said.to_string().contains("r-nosuch"), "{said}");
    browser.no_console_errors()?;
    assert!(browser.driver_alive(), "chromedriver exited on its own");
    dash.still_running()
}

/// Fails naming the controls a screen reader could not name.
fn all_labelled(b: &Browser, view: &str) -> anyhow::Result<()> {
    let bad = b.unlabelled_controls()?;
    if !bad.is_empty() {
        bail!("controls without a label on the {view} view: {bad:#?}");
    }
    Ok(())
}

/// The rollout id in the page's address (`#/rollout/ID`).
fn page_rollout(b: &Browser) -> anyhow::Result<String> {
    let hash = b.eval("return location.hash")?;
    Ok(hash
        .as_str()
        .and_then(|h| h.strip_prefix("#/rollout/"))
        .unwrap_or_default()
        .to_string())
}

#[test]
fn the_canary_says_why_it_waits_and_the_buttons_promote_and_roll_back() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        sites: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;
    let mut dash = Dashboard::start(&fleet)?;
    let mut browser = Browser::start(&fleet.dir.join("browser"))?;
    browser.resize(1920, 1080)?;
    browser.goto(&dash.login)?;
    browser.wait_for(
        "the fleet view",
        PAGE,
        "return document.querySelectorAll('#fleet-body tr[data-host]').length === 4;",
    )?;
    all_labelled(&browser, "fleet")?;

    // A canary at a manual gate: the page says what it waits for, in words, and the budget
    // per site.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 2\ngroup_by = \"site\"\nmax_unavailable_per_group = 1\ncanary = 1\n\
         canary_gate = \"manual\"\nmin_healthy_time = \"300ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    browser.eval(&format!(
        "location.hash = '#/rollout/' + {}; return true;",
        js(&id)
    ))?;
    let waiting = browser.wait_for(
        "the canary gate's waiting line",
        PAGE,
        "const w = document.getElementById('rollout-waiting'); \
         const g = document.getElementById('rollout-gate'); \
         return w && g && /promote/.test(g.textContent) && w.textContent;",
    )?;
    let status = fleet.status(&id)?;
    assert!(
        waiting.to_string().contains(&status.blocked_by),
        "page: {waiting}; coordinator: {:?}",
        status.blocked_by
    );
    let groups = browser.eval("return document.getElementById('rollout-groups').textContent")?;
    assert!(
        groups.to_string().contains("site-0"),
        "per-site budget: {groups}"
    );
    all_labelled(&browser, "rollout")?;
    let shot = browser.screenshot(&artifact("dashboard-canary-wall.png"))?;
    println!("screenshot (1920x1080): {}", shot.display());

    // At the gate the fleet runs two versions: the version filter shows the canary alone.
    browser.click("#nav-fleet")?;
    let canary = browser.wait_for(
        "the version filter to show the canary alone",
        PAGE,
        "const v = document.getElementById('filter-version'); \
         if (![...v.options].some(o => o.value === '2.0.0')) return null; \
         if (v.value !== '2.0.0') { v.value = '2.0.0'; v.dispatchEvent(new Event('change')); } \
         const rows = [...document.querySelectorAll('#fleet-body tr[data-host]')]; \
         return rows.length === 1 && rows[0].dataset.host;",
    )?;
    let first = status
        .hosts
        .iter()
        .find(|h| h.wave == 0)
        .map(|h| h.host_id.clone());
    assert_eq!(canary.as_str().map(str::to_string), first, "the canary");
    browser.eval(&format!(
        "location.hash = '#/rollout/' + {}; return true;",
        js(&id)
    ))?;

    // Promote from the browser: the other hosts follow.
    act(&browser, "promote")?;
    let end = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(end.phase(), Phase::Succeeded, "{end:?}");
    wait_page_phase(&browser, &id, "succeeded")?;

    // Roll back from the browser: the page follows the new rollback rollout.
    act(&browser, "rollback")?;
    let back = browser.wait_for(
        "the page to show the rollback rollout",
        PAGE,
        &format!(
            "return location.hash.startsWith('#/rollout/') && location.hash !== '#/rollout/' + {};",
            js(&id)
        ),
    )?;
    assert_eq!(back, Value::Bool(true));
    let rollback_id = page_rollout(&browser)?;
    let undone = fleet.wait_settled(&rollback_id, Duration::from_secs(60))?;
    assert_eq!(undone.rollback_of, id, "{undone:?}");
    wait_page_phase(&browser, &rollback_id, undone.phase().word())?;

    // The service's release history, from the rollout view's link.
    browser.click("#rollout-summary a[href^='#/history/']")?;
    browser.wait_for(
        "the release history with 1.0.0 and 2.0.0",
        PAGE,
        "const t = document.getElementById('history-body'); \
         return t && /2\\.0\\.0/.test(t.textContent) && /1\\.0\\.0/.test(t.textContent);",
    )?;

    // The fleet view's label filter, and an offline host highlighted.
    browser.click("#nav-fleet")?;
    let site1 = fleet.agents.iter().filter(|a| a.group == "site-1").count();
    // (The view changes on the hashchange event, after the click returns: wait for it.)
    let shown = browser.wait_for(
        "the label filter",
        PAGE,
        "const f = document.getElementById('filter-label'); \
         if (!f || !document.querySelector('#fleet-body tr[data-host]')) return null; \
         if (f.value !== 'site=site-1') { f.value = 'site=site-1'; f.dispatchEvent(new Event('input')); } \
         return document.querySelectorAll('#fleet-body tr[data-host]').length;",
    )?;
    assert_eq!(
        shown,
        serde_json::json!(site1),
        "hosts shown for site=site-1"
    );
    browser.eval(
        "const f = document.getElementById('filter-label'); f.value = ''; \
         f.dispatchEvent(new Event('input')); return true;",
    )?;
    let gone = fleet.agents[3].id.clone();
    fleet.kill_host(&gone);
    browser.wait_for(
        &format!("{gone} highlighted offline"),
        PAGE,
        &format!(
            "return document.querySelector('#fleet-body tr.offline[data-host=\"' + {} + '\"]') !== null \
             && document.getElementById('count-offline').textContent === '1';",
            js(&gone)
        ),
    )?;
    let shot = browser.screenshot(&artifact("dashboard-fleet-offline.png"))?;
    println!("screenshot: {}", shot.display());

    browser.no_console_errors()?;
    assert!(browser.driver_alive(), "chromedriver exited on its own");
    dash.still_running()?;
    // Ctrl-C stops it even with the page's live streams open; the page says it lost it.
    dash.interrupt_and_wait()?;
    browser.wait_for(
        "the page to say it lost the dashboard",
        PAGE,
        "return /reconnecting|disconnected/.test(document.getElementById('live').textContent);",
    )?;
    Ok(())
}

#[test]
fn the_page_says_when_the_coordinator_is_away_and_picks_up_when_it_is_back() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let mut dash = Dashboard::start(&fleet)?;
    let browser = Browser::start(&fleet.dir.join("browser"))?;
    browser.goto(&dash.login)?;
    browser.eval("location.hash = '#/rollouts'; return true;")?;
    browser.wait_for(
        "the rollout list",
        PAGE,
        "return document.querySelector('#rollouts-body tr[data-rollout]') !== null;",
    )?;
    browser.eval("window.__same_page = true; return true;")?;

    fleet.coordinator().kill9();
    let said = browser.wait_for(
        "the page to say the coordinator is away",
        PAGE,
        "const p = document.getElementById('problem'); return !p.hidden && p.textContent;",
    )?;
    println!("while the coordinator was down the page said: {said}");
    assert!(said.to_string().contains("Coordinator"), "{said}");

    fleet.coordinator().restart()?;
    fleet.wait_coordinator()?;
    fleet.wait_connected(2)?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id =
        fleet.start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"3s\"")?)?;
    browser.wait_for(
        "the rollout started after the restart, listed without a reload",
        PAGE,
        &format!(
            "return document.querySelector('#rollouts-body tr[data-rollout=' + {} + ']') !== null \
             && document.getElementById('problem').hidden && window.__same_page === true;",
            js(&js(&id))
        ),
    )?;
    // Abort it from its view.
    browser.click(&format!("tr[data-rollout={}] a", js(&id)))?;
    wait_page_phase(&browser, &id, "rolling")?;
    act(&browser, "abort")?;
    let end = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(end.phase(), Phase::Aborted, "{end:?}");
    wait_page_phase(&browser, &id, "aborted")?;
    browser.no_console_errors()?;
    dash.still_running()
}

/// A viewer certificate (read only) from the fleet's CA.
fn viewer(fleet: &Fleet) -> anyhow::Result<TlsFiles> {
    let dir = fleet.pki.dir.display().to_string();
    let out = Command::new(bin("rollgate"))
        .args([
            "certs", "issue", "operator", "val", "--dir", &dir, "--role", "viewer",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(TlsFiles {
        ca: fleet.pki.ca(),
        cert: fleet.pki.dir.join("viewer-val.pem"),
        key: fleet.pki.dir.join("viewer-val.key"),
    })
}

#[test]
fn a_viewers_dashboard_shows_everything_and_its_buttons_are_refused() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id =
        fleet.start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"5s\"")?)?;
    let mut dash = Dashboard::start_as(&fleet, &viewer(&fleet)?)?;
    let mut browser = Browser::start(&fleet.dir.join("browser"))?;
    browser.goto(&dash.login)?;
    browser.eval(&format!(
        "location.hash = '#/rollout/' + {}; return true;",
        js(&id)
    ))?;
    wait_page_phase(&browser, &id, "rolling")?;
    act(&browser, "pause")?;
    let said = browser.wait_for(
        "the refusal on the page",
        PAGE,
        "const r = document.getElementById('action-result'); \
         return r && /refused/.test(r.textContent) && r.textContent;",
    )?;
    println!("the page said: {said}");
    assert!(said.to_string().contains("viewer"), "{said}");
    assert_eq!(cli_phase(&fleet, &id)?, "rolling", "a viewer paused it");
    // A refused action is no error of the page (the console stays clean but for the 403).
    let errors: Vec<String> = browser
        .console()?
        .into_iter()
        .filter(|(level, m)| level == "SEVERE" && !m.contains("403"))
        .map(|(_, m)| m)
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert!(browser.driver_alive(), "chromedriver exited on its own");
    dash.still_running()
}

/// An HTTP request to the dashboard; returns the status, the headers and the body.
fn http(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut req = client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.text().await?))
    })
}

#[test]
fn without_the_login_cookie_the_dashboard_answers_401_and_listens_on_loopback_only(
) -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    let mut dash = Dashboard::start(&fleet)?;
    let base = dash.base.clone();
    use reqwest::Method;
    for path in ["/", "/api/fleet", "/api/live", "/app.js", "/?token=wrong"] {
        let (status, _, body) = http(Method::GET, &format!("{base}{path}"), &[])?;
        assert_eq!(status, 401, "GET {path}: {body}");
        assert!(body.contains("not logged in"), "GET {path}: {body}");
    }
    let (status, headers, _) = http(Method::GET, &dash.login, &[])?;
    assert_eq!(status, 303, "the login link redirects");
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .context("the login link sets no cookie")?
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let (status, _, body) = http(
        Method::GET,
        &format!("{base}/api/fleet"),
        &[("cookie", &session)],
    )?;
    assert_eq!(status, 200, "{body}");
    let fleet_view: Value = serde_json::from_str(&body)?;
    assert_eq!(fleet_view["total"], 1, "{body}");

    // Actions: the cookie is not enough without the dashboard's own origin.
    let pause = format!("{base}/api/rollouts/r-none/pause");
    let (status, _, body) = http(Method::POST, &pause, &[("cookie", &session)])?;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(
        Method::POST,
        &pause,
        &[("cookie", &session), ("origin", "http://evil.example")],
    )?;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(
        Method::GET,
        &format!("{base}/api/fleet"),
        &[("cookie", &session), ("host", "evil.example")],
    )?;
    assert_eq!(status, 403, "another Host (DNS rebinding): {body}");

    // A non-loopback address is refused, with the reason and the way on.
    let out = Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinator_url())
        .args(fleet.operator.cli_args())
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address") && stderr.contains("ssh -L"),
        "{stderr}"
    );
    dash.still_running()
}
