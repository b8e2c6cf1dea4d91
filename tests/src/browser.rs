//! A real headless Chromium driven through chromedriver (W3C WebDriver over HTTP on loopback):
//! open a page, run a script in it, click, take screenshots, read the browser's console log.
//! Debian's `chromium` and `chromium-driver`; the test fails (naming the packages) without them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};

use crate::{free_port, wait_for, Proc};

/// The browser the Debian package installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver from Debian's `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long chromedriver may take to answer `/status`.
const DRIVER_START: Duration = Duration::from_secs(20);
/// Deadline of one WebDriver command (starting a session starts the browser).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The window size: a laptop screen.
const WINDOW: &str = "--window-size=1366,900";
/// How long a click is retried on an element a redraw replaced.
const STALE_RETRY: Duration = Duration::from_secs(5);
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the session is deleted and chromedriver killed on drop.
#[derive(Debug)]
pub struct Browser {
    /// chromedriver (it starts and stops the browser).
    driver: Proc,
    /// Runs the HTTP calls to chromedriver, so the tests stay synchronous like the rest.
    rt: tokio::runtime::Runtime,
    /// The WebDriver client (plain HTTP on loopback).
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

/// Fails with the packages to install when the browser or its driver is missing.
pub fn require_chromium() -> anyhow::Result<()> {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(path).exists() {
            bail!(
                "{path} is missing: install the Debian packages chromium and chromium-driver \
                 (apt-get install -y chromium chromium-driver; deploy/ensure-deps.sh does) \
                 ({package} provides it)"
            );
        }
    }
    Ok(())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with its own profile under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        require_chromium()?;
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let driver = Proc::spawn(
            "chromedriver",
            &[
                CHROMEDRIVER.to_string(),
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_string(),
            ],
            &dir.join("chromedriver.log"),
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            rt,
            http,
            session: String::new(),
        };
        wait_for("chromedriver to answer", DRIVER_START, || {
            let v = b.call(reqwest::Method::GET, &format!("{base}/status"), None)?;
            Ok(v["ready"].as_bool().unwrap_or(false).then_some(()))
        })?;
        let profile = dir.join("profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            WINDOW,
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b
            .call(
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(caps),
            )
            .with_context(|| format!("cannot start Chromium; see {}", b.driver.log.display()))?;
        let id = v["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in {v}"))?;
        b.session = format!("{base}/session/{id}");
        Ok(b)
    }

    /// One WebDriver command; its `value`, or the driver's error.
    fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let req = self.http.request(method.clone(), url);
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => req,
        };
        let (status, text) = self.rt.block_on(async {
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.text().await?))
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: not JSON ({status}): {text}"))?;
        if !status.is_success() {
            bail!(
                "{method} {url}: {status}: {} {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/{path}", self.session);
        self.call(reqwest::Method::POST, &url, Some(body))
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("url", json!({ "url": url })).map(drop)
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Waits until `script` returns something other than null, false or "": returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> anyhow::Result<Value> {
        wait_for(what, timeout, || {
            let v = self.eval(script)?;
            let empty = v.is_null() || v == json!(false) || v == json!("");
            if empty {
                bail!("the page says {v}; {}", self.page_text()?);
            }
            Ok(Some(v))
        })
    }

    /// The visible text of the page's main part (for failure messages).
    pub fn page_text(&self) -> anyhow::Result<String> {
        let v = self.eval("return document.body ? document.body.innerText : ''")?;
        Ok(v.as_str().unwrap_or_default().chars().take(2000).collect())
    }

    /// Clicks the first element matching the CSS selector. A page that redraws may replace
    /// the element between finding and clicking it: then it is found again, for a while.
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + STALE_RETRY;
        loop {
            match self.click_once(css) {
                Err(e)
                    if format!("{e:#}").contains("stale element")
                        && std::time::Instant::now() < deadline => {}
                other => return other,
            }
        }
    }

    fn click_once(&self, css: &str) -> anyhow::Result<()> {
        let v = self.post("element", json!({ "using": "css selector", "value": css }))?;
        let id = v[ELEMENT_KEY]
            .as_str()
            .with_context(|| format!("no element {css}: {v}"))?;
        self.post(&format!("element/{id}/click"), json!({}))
            .with_context(|| format!("cannot click {css}"))
            .map(drop)
    }

    /// Sets the window's size in CSS pixels (1920x1080: a wall screen).
    pub fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("window/rect", json!({ "width": width, "height": height }))
            .map(drop)
    }

    /// Controls (inputs, selects, buttons, progress bars) a screen reader could not name: no
    /// enclosing label, no aria-label, no text. Each as its HTML.
    pub fn unlabelled_controls(&self) -> anyhow::Result<Vec<String>> {
        let v = self.eval(
            "return [...document.querySelectorAll('input, select, button, progress')]\
             .filter(e => !(e.closest('label') || e.getAttribute('aria-label') \
                            || e.textContent.trim()))\
             .map(e => e.outerHTML);",
        )?;
        Ok(serde_json::from_value(v)?)
    }

    /// Saves a PNG screenshot of the window to `path`; returns the path.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let url = format!("{}/screenshot", self.session);
        let v = self.call(reqwest::Method::GET, &url, None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot data")?)
            .context("screenshot is not base64")?;
        std::fs::write(path, png)?;
        Ok(path.to_path_buf())
    }

    /// The browser console's messages since the last call, as "LEVEL message".
    pub fn console(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.post("se/log", json!({ "type": "browser" }))?;
        Ok(v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_string(),
                            e["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Fails when the console has an error (level SEVERE) since the last read.
    pub fn no_console_errors(&self) -> anyhow::Result<()> {
        let errors: Vec<String> = self
            .console()?
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, m)| m)
            .collect();
        if !errors.is_empty() {
            bail!("the browser console has errors: {errors:#?}");
        }
        Ok(())
    }

    /// Whether chromedriver is still running (an exit the test did not cause is a crash).
    pub fn driver_alive(&mut self) -> bool {
        !self.driver.exited()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = self.session.clone();
            let _ = self.call(reqwest::Method::DELETE, &url, None);
        }
        // `Proc` kills chromedriver on drop; the browser goes with its session.
    }
}
