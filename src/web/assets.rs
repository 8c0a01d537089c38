//! The page's scripts, styles and icon, built into the binary (no CDN, no
//! Node toolchain: hand-written files under `src/web/assets/`).
//!
//! Each is served at `/assets/NAME`; the pages link `/assets/NAME?v=HASH`
//! (the first 16 hex digits of its sha256). A request naming the current hash
//! may be cached for a year (`immutable`): a new build changes the hash and so
//! the URL. Any other request revalidates with the `ETag` (the same hash).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One built-in file.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

/// Every built-in file.
pub const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("common.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("runs.js", "text/javascript; charset=utf-8"),
    asset!("run.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The built-in file `name`.
pub fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    let i = ASSETS.iter().position(|a| a.name == name)?;
    Some((&ASSETS[i], &hashes()[i]))
}

/// The content hash of each of [`ASSETS`], in order.
fn hashes() -> &'static [String] {
    static HASHES: OnceLock<Vec<String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| hex::encode(&Sha256::digest(a.body)[..8]))
            .collect()
    })
}

/// The URL a page links `name` by (panics on a name that is not built in: a
/// page linking a missing file is a bug that every page test finds).
pub fn url(name: &str) -> String {
    let (asset, hash) = find(name).unwrap_or_else(|| panic!("no built-in asset {name}"));
    format!("/assets/{}?v={hash}", asset.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_assets_have_stable_distinct_hashes() {
        let (css, hash) = find("app.css").unwrap();
        assert_eq!(css.content_type, "text/css; charset=utf-8");
        assert_eq!(hash.len(), 16);
        assert_eq!(url("app.css"), format!("/assets/app.css?v={hash}"));
        let mut all: Vec<&String> = hashes().iter().collect();
        all.dedup();
        assert_eq!(all.len(), ASSETS.len());
        assert!(find("../Cargo.toml").is_none());
    }

    /// The run page listens for events by name (EventSource hands a named
    /// event only to a listener of that name): it must know every kind.
    #[test]
    fn web_run_page_listens_to_every_event_kind() {
        let (run, _) = find("run.js").unwrap();
        let js = std::str::from_utf8(run.body).unwrap();
        let list = js
            .split("const EVENT_NAMES = [")
            .nth(1)
            .and_then(|rest| rest.split("];").next())
            .expect("run.js declares EVENT_NAMES");
        for name in crate::run::event::samples::all_names() {
            assert!(
                list.contains(&format!("\"{name}\"")),
                "run.js EVENT_NAMES lacks {name}"
            );
        }
    }

    /// The page's JS and CSS stay small: under 150 KB gzipped together (the
    /// budget of issue 13), measured with the system's `gzip -9`.
    #[test]
    fn web_assets_fit_the_budget() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut code = Vec::new();
        for a in ASSETS
            .iter()
            .filter(|a| a.name.ends_with(".js") || a.name.ends_with(".css"))
        {
            code.extend_from_slice(a.body);
        }
        let mut gzip = Command::new("gzip")
            .arg("-9c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the `gzip` command (package gzip) is needed to measure the assets");
        let mut stdin = gzip.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&code));
        let out = gzip.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        let size = out.stdout.len();
        assert!(
            size < 150 * 1024,
            "the page's JS and CSS gzip to {size} bytes"
        );
        assert!(size > 1000, "{size} bytes: are the assets empty?");
    }
}
