//! A real headless Chromium for page tests, driven over the W3C WebDriver
//! protocol through Debian's `chromedriver` (packages `chromium` and
//! `chromium-driver`; `.ci/run` installs them). The client is the few WebDriver
//! commands the tests use, spoken with the reqwest the project already builds, so
//! no WebDriver crate and its second HTTP stack join the tree.
//!
//! ```ignore
//! let browser = common::browser::Browser::start().await;
//! browser.goto(&format!("{}/signin", daemon.url())).await;
//! browser.find("input[name=token]").await.send_keys("s3cret").await;
//! browser.find("button[type=submit]").await.click().await;
//! let row = browser.find_text("tr.run", "demo plan").await;
//! browser.screenshot("runs-list").await;
//! ```
//!
//! Every `find*` waits until the element is there (tests wait for the page, not
//! for time); [`PATIENCE`] only turns a page that never shows it into a failure
//! that says what was awaited. A missing browser or driver fails the test with
//! what to install: a page test must never pass without a browser.
//!
//! Each [`Browser`] has its own chromedriver and profile directory; dropping it
//! kills the driver's whole process group (the browser included), so a failed
//! test leaves no Chromium behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

use super::free_port;

/// The key under which WebDriver names an element in its replies.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the tests write their screenshots (a test artefact).
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots")
}

/// One headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// An element of the current page. A page that re-renders (a live chart,
/// the timeline) replaces its elements: a command that meets a stale element
/// finds it again the way it was found, and retries.
pub struct Element<'b> {
    browser: &'b Browser,
    id: std::sync::Mutex<String>,
    locator: Locator,
}

/// How an element was found: the `nth` match of `css`, or the first match
/// whose text contains `text`.
#[derive(Clone)]
struct Locator {
    css: String,
    nth: usize,
    text: Option<String>,
}

fn tool(name: &str, package: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    if path.exists() {
        return path;
    }
    // On PATH elsewhere (another distribution's layout).
    if let Some(found) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.exists())
    }) {
        return found;
    }
    panic!(
        "`{name}` not found: page tests need a real headless browser. Install Debian's \
         `{package}` package (`apt-get install chromium chromium-driver`; `.ci/run` does this)"
    );
}

impl Browser {
    /// Start chromedriver and open a headless Chromium session with an empty
    /// profile and a 1280×900 window.
    pub async fn start() -> Browser {
        let chromium = tool("chromium", "chromium");
        let chromedriver = tool("chromedriver", "chromium-driver");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        pgshepherd::tls::install_crypto_provider();
        let http = reqwest::Client::new();
        let port = free_port();
        let mut command = Command::new(&chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that Drop can end the browser with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        // Owned by the Browser at once: whatever fails below, Drop ends it.
        let mut browser = Browser {
            http,
            session: String::new(),
            driver,
            _profile: profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        super::eventually("chromedriver to answer /status", || async {
            let reply = browser
                .http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()?;
            let status: Value = reply.json().await.ok()?;
            status["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await;
        // The flags a root session on a closed network needs: no sandbox (root),
        // no background connections (each is refused here and retried), no GPU.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let reply = browser
            .http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("asking chromedriver for a session");
        let value = Self::value_of("new session", reply).await;
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {value}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// The `value` of a WebDriver reply; panics with the driver's error.
    async fn value_of(what: &str, reply: reqwest::Response) -> Value {
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: unreadable WebDriver reply: {e}"));
        assert!(
            status.is_success(),
            "{what}: WebDriver said {status}: {body}"
        );
        body["value"].clone()
    }

    /// A command; `Err` carries the WebDriver error code (e.g. "no such element").
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let ok = reply.status().is_success();
        let body: Value = reply
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: unreadable reply: {e}"));
        if ok {
            Ok(body["value"].clone())
        } else {
            let error = body["value"]["error"].as_str().unwrap_or("unknown error");
            let message = body["value"]["message"].as_str().unwrap_or("");
            Err(format!("{error}: {message}"))
        }
    }

    async fn must(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.command(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    /// Load `url` and wait until the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.must(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The address of the page shown now.
    pub async fn url(&self) -> String {
        let v = self.must(reqwest::Method::GET, "/url", Value::Null).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        let v = self.must(reqwest::Method::GET, "/title", Value::Null).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The page's HTML as the browser holds it now (after scripts ran).
    pub async fn source(&self) -> String {
        let v = self
            .must(reqwest::Method::GET, "/source", Value::Null)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The elements matching a CSS selector now (possibly none).
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        match found {
            Ok(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(nth, e)| {
                    self.element(
                        e,
                        Locator {
                            css: css.to_string(),
                            nth,
                            text: None,
                        },
                    )
                })
                .collect(),
            Ok(other) => panic!("find_all {css}: unexpected reply {other}"),
            // A page that is being replaced answers this way for a moment.
            Err(e) if e.starts_with("stale element") => Vec::new(),
            Err(e) => panic!("find_all {css}: {e}"),
        }
    }

    /// The first element matching `css`, waiting until there is one.
    pub async fn find(&self, css: &str) -> Element<'_> {
        super::eventually(&format!("an element matching `{css}`"), || async {
            self.find_all(css).await.into_iter().next()
        })
        .await
    }

    /// The first element matching `css` whose text contains `text`, waiting
    /// until there is one.
    pub async fn find_text(&self, css: &str, text: &str) -> Element<'_> {
        super::eventually(
            &format!("an element matching `{css}` with text {text:?}"),
            || async {
                for mut e in self.find_all(css).await {
                    if e.try_text().await.is_some_and(|t| t.contains(text)) {
                        e.locator.text = Some(text.to_string());
                        return Some(e);
                    }
                }
                None
            },
        )
        .await
    }

    /// Wait until `script` (a function body) returns a truthy value; returns it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        super::eventually(what, || async {
            let v = self.execute(script, json!([])).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            truthy.then_some(v)
        })
        .await
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page and
    /// return its value. A returned Promise is awaited.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.must(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The text of an open alert/confirm/prompt dialog, if one is open.
    pub async fn dialog_text(&self) -> Option<String> {
        match self
            .command(reqwest::Method::GET, "/alert/text", Value::Null)
            .await
        {
            Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
            Err(e) if e.starts_with("no such alert") => None,
            Err(e) => panic!("reading a dialog: {e}"),
        }
    }

    /// Accept (OK) the open dialog.
    pub async fn accept_dialog(&self) {
        self.must(reqwest::Method::POST, "/alert/accept", json!({}))
            .await;
    }

    /// Dismiss (Cancel) the open dialog.
    pub async fn dismiss_dialog(&self) {
        self.must(reqwest::Method::POST, "/alert/dismiss", json!({}))
            .await;
    }

    /// The browser's cookies for the current page, as WebDriver lists them
    /// (`name`, `value`, `httpOnly`, `secure`, `sameSite`, `expiry`…).
    pub async fn cookies(&self) -> Vec<Value> {
        match self
            .must(reqwest::Method::GET, "/cookie", Value::Null)
            .await
        {
            Value::Array(list) => list,
            other => panic!("cookies: unexpected reply {other}"),
        }
    }

    /// Write a PNG of the viewport to `target/web-screenshots/NAME.png` and
    /// return its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self
            .must(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .expect("a base64 screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }

    /// pgshepherd's page: sign in through the form at `base` as `token`;
    /// waits for the runs list.
    pub async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/signin")).await;
        self.find("#token").await.send_keys(token).await;
        self.find("form.card button[type=submit]")
            .await
            .click()
            .await;
        self.find("body[data-page=runs] #runs-table").await;
    }

    /// pgshepherd's page: sign out; waits for the sign-in form.
    pub async fn sign_out(&self) {
        self.find(".signout button").await.click().await;
        self.find("body[data-page=signin]").await;
    }

    /// pgshepherd's page: open run `id` and wait until it has loaded its data.
    pub async fn open_run(&self, base: &str, id: &str) {
        self.goto(&format!("{base}/runs/{id}")).await;
        self.find("#run[data-loaded=true]").await;
    }

    fn element(&self, reply: &Value, locator: Locator) -> Element<'_> {
        let id = reply[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element: {reply}"));
        Element {
            browser: self,
            id: std::sync::Mutex::new(id.to_string()),
            locator,
        }
    }
}

impl Element<'_> {
    fn id(&self) -> String {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `method` on `/element/ID{what}`; a stale element is found again by its
    /// locator and the command retried.
    async fn call(&self, method: reqwest::Method, what: &str, body: Value) -> Value {
        loop {
            let path = format!("/element/{}{what}", self.id());
            match self
                .browser
                .command(method.clone(), &path, body.clone())
                .await
            {
                Ok(v) => return v,
                Err(e) if e.starts_with("stale element") => self.find_again().await,
                Err(e) => panic!("WebDriver {path}: {e}"),
            }
        }
    }

    async fn find_again(&self) {
        let Locator { css, nth, text } = &self.locator;
        let fresh = match text {
            Some(text) => self.browser.find_text(css, text).await.id(),
            None => {
                super::eventually(&format!("match {nth} of `{css}` again"), || async {
                    self.browser.find_all(css).await.get(*nth).map(|e| e.id())
                })
                .await
            }
        };
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The rendered text (as a user sees it).
    pub async fn text(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/text", Value::Null).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The text, or `None` if the element is gone (no retry: for filters).
    async fn try_text(&self) -> Option<String> {
        let path = format!("/element/{}/text", self.id());
        let v = self
            .browser
            .command(reqwest::Method::GET, &path, Value::Null)
            .await
            .ok()?;
        Some(v.as_str().unwrap_or_default().to_string())
    }

    /// An attribute's value (`None` when absent).
    pub async fn attribute(&self, name: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/attribute/{name}"),
                Value::Null,
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Click it as a user would (scrolled into view; fails if covered).
    pub async fn click(&self) {
        self.call(reqwest::Method::POST, "/click", json!({})).await;
    }

    /// Type `text` into it.
    pub async fn send_keys(&self, text: &str) {
        self.call(reqwest::Method::POST, "/value", json!({ "text": text }))
            .await;
    }

    /// Empty an input.
    pub async fn clear(&self) {
        self.call(reqwest::Method::POST, "/clear", json!({})).await;
    }

    /// Whether it is displayed.
    pub async fn is_displayed(&self) -> bool {
        let v = self
            .call(reqwest::Method::GET, "/displayed", Value::Null)
            .await;
        v.as_bool().unwrap_or(false)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's group holds the browser and its helpers: end them all.
        // SAFETY: kill has no memory preconditions; a stale pid group is harmless.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
