//! The page-test harness itself (tests/common/browser.rs) against a tiny page
//! served on loopback: a real Chromium loads it, clicks, types, reads a dialog,
//! sees an HttpOnly cookie and takes a screenshot. If this fails, every page test
//! would, so it says first whether the browser is there at all.

mod common;

use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;

use common::browser::Browser;

const PAGE: &str = r#"<!doctype html>
<title>harness</title>
<input name="who">
<button id="go" type="button">Greet</button>
<ul id="out"></ul>
<script>
document.getElementById('go').addEventListener('click', () => {
  const li = document.createElement('li');
  li.textContent = 'hello ' + document.querySelector('input[name=who]').value;
  document.getElementById('out').appendChild(li);
});
</script>"#;

async fn page() -> impl IntoResponse {
    (
        [(
            "set-cookie",
            "session=abc; HttpOnly; SameSite=Strict; Path=/",
        )],
        Html(PAGE),
    )
}

#[tokio::test]
async fn a_real_chromium_loads_clicks_types_and_takes_a_screenshot() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/", get(page)))
            .await
            .unwrap()
    });

    let browser = Browser::start().await;
    browser.goto(&url).await;
    assert_eq!(browser.title().await, "harness");

    browser
        .find("input[name=who]")
        .await
        .send_keys("<b>operator</b>")
        .await;
    browser.find("#go").await.click().await;
    let greeting = browser.find_text("#out li", "hello").await;
    // Typed markup stays text.
    assert_eq!(greeting.text().await, "hello <b>operator</b>");
    assert!(browser.find_all("#out b").await.is_empty());

    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], json!(true));
    assert_eq!(session["sameSite"], json!("Strict"));
    // HttpOnly: the page's scripts cannot read it.
    assert_eq!(
        browser.execute("return document.cookie", json!([])).await,
        json!("")
    );

    assert_eq!(browser.dialog_text().await, None);
    browser
        .execute("setTimeout(() => alert('boo'), 0); return 1", json!([]))
        .await;
    let text = common::eventually("the alert to open", || async {
        browser.dialog_text().await
    })
    .await;
    assert_eq!(text, "boo");
    browser.accept_dialog().await;
    assert_eq!(browser.dialog_text().await, None);

    let shot = browser.screenshot("harness").await;
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        shot.display()
    );
}
