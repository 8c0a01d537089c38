//! The pages' HTML: small shells that the scripts fill in from the API. Every
//! value written into them (a token's name, a run id, a message) goes through
//! [`html_escape`]; nothing a user wrote into a plan is rendered here at all
//! except the runbook, which the runbook code escapes itself.
//!
//! No inline script or style anywhere (the Content-Security-Policy forbids
//! them): data for the scripts travels in `data-` attributes and `<meta>`.

use std::fmt::Write;

use crate::config::Role;
use crate::runbook::document::html_escape;
use crate::web::assets;
use crate::web::session::Session;

/// Who is looking, as a page shows it.
pub struct Viewer<'a> {
    pub session: &'a Session,
}

impl Viewer<'_> {
    fn roles(&self) -> String {
        let token = &self.session.token;
        [Role::Read, Role::Submit, Role::Approve, Role::Admin]
            .into_iter()
            .filter(|r| token.roles.contains(r) || *r == Role::Read)
            .map(crate::daemon::api::auth::role_name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `data-` attributes the scripts read: who, and what the roles allow
    /// (only to hide what would be refused; the API decides).
    fn data(&self) -> String {
        let t = &self.session.token;
        format!(
            " data-user=\"{}\" data-can-approve=\"{}\" data-can-submit=\"{}\"",
            html_escape(&t.name),
            t.has(Role::Approve),
            t.has(Role::Submit),
        )
    }
}

/// A whole page.
struct Shell<'a> {
    title: &'a str,
    /// `data-page` of the body: which script builds it.
    page: &'a str,
    viewer: Option<Viewer<'a>>,
    /// Further `data-` attributes of the body (already escaped).
    data: String,
    main: String,
    scripts: &'a [&'a str],
}

impl Shell<'_> {
    fn render(self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"color-scheme\" content=\"light dark\">\n\
             <title>{} · pgshepherd</title>\n\
             <link rel=\"icon\" href=\"{}\" type=\"image/svg+xml\">\n\
             <link rel=\"stylesheet\" href=\"{}\">\n",
            html_escape(self.title),
            assets::url("icon.svg"),
            assets::url("app.css"),
        );
        if let Some(v) = &self.viewer {
            let _ = writeln!(
                out,
                "<meta name=\"csrf-token\" content=\"{}\">",
                html_escape(&v.session.csrf)
            );
        }
        for script in self.scripts {
            let _ = writeln!(
                out,
                "<script src=\"{}\" defer></script>",
                assets::url(script)
            );
        }
        let _ = write!(
            out,
            "</head>\n<body data-page=\"{}\"{}{}>\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n<header class=\"top\">\n<a class=\"brand\" href=\"/\">pgshepherd</a>\n",
            html_escape(self.page),
            self.viewer.as_ref().map(Viewer::data).unwrap_or_default(),
            self.data,
        );
        if let Some(v) = &self.viewer {
            let _ = write!(
                out,
                "<nav aria-label=\"Account\"><span class=\"who\">Signed in as <strong>{}</strong> <span class=\"roles\">({})</span></span>\n\
                 <form method=\"post\" action=\"/signout\" class=\"signout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form></nav>\n",
                html_escape(&v.session.token.name),
                html_escape(&v.roles()),
                html_escape(&v.session.csrf),
            );
        }
        let _ = write!(
            out,
            "</header>\n<main id=\"main\" tabindex=\"-1\">\n{}\n</main>\n</body>\n</html>\n",
            self.main
        );
        out
    }
}

const NEEDS_SCRIPT: &str = "<noscript><p class=\"notice\">This page needs JavaScript (served by this daemon, nothing from elsewhere). The same information is in <code>pgshepherd status</code> and the API.</p></noscript>";

/// The sign-in form. `plain_http_warning`: served over plain HTTP on an
/// address others can reach. `error`: why the last attempt was refused.
pub fn signin(next: &str, plain_http_warning: bool, error: Option<&str>) -> String {
    let mut main = String::from("<section class=\"signin\">\n<h1>Sign in</h1>\n");
    if plain_http_warning {
        main.push_str(
            "<p class=\"notice warn\" role=\"alert\"><strong>Not encrypted.</strong> This page is served over plain HTTP on an address other machines can reach: the token you type and the session cookie cross the network in clear. Ask the operator to configure <code>tls</code> or a reverse proxy with HTTPS (docs/web.md).</p>\n",
        );
    }
    if let Some(error) = error {
        let _ = writeln!(
            main,
            "<p class=\"notice error\" role=\"alert\" id=\"signin-error\">{}</p>",
            html_escape(error)
        );
    }
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/signin\" class=\"card\">\n\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\n\
         <label for=\"token\">API token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus spellcheck=\"false\">\n\
         <p class=\"hint\">A token from the daemon's <code>tokens</code>: you get its roles. The session lasts {} hours or until you sign out.</p>\n\
         <button type=\"submit\" class=\"primary\">Sign in</button>\n</form>\n</section>",
        html_escape(next),
        crate::web::session::SESSION_TTL.as_secs() / 3600,
    );
    Shell {
        title: "Sign in",
        page: "signin",
        viewer: None,
        data: String::new(),
        main,
        scripts: &[],
    }
    .render()
}

/// The runs list.
pub fn runs(viewer: Viewer<'_>) -> String {
    Shell {
        title: "Runs",
        page: "runs",
        viewer: Some(viewer),
        data: String::new(),
        main: format!(
            "<h1>Runs</h1>\n<div id=\"runs\" aria-live=\"polite\"></div>\n{NEEDS_SCRIPT}"
        ),
        scripts: &["common.js", "runs.js"],
    }
    .render()
}

/// One run (`id` is a valid run id).
pub fn run(viewer: Viewer<'_>, id: &str) -> String {
    let title = format!("Run {id}");
    let id = html_escape(id);
    Shell {
        title: &title,
        page: "run",
        viewer: Some(viewer),
        data: format!(" data-run=\"{id}\""),
        main: format!(
            "<p class=\"crumbs\"><a href=\"/\">Runs</a> › run <code>{id}</code></p>\n<div id=\"run\"></div>\n{NEEDS_SCRIPT}"
        ),
        scripts: &["common.js", "chart.js", "run.js"],
    }
    .render()
}

/// A run's runbook: `body` is the runbook's own HTML (escaped by it).
pub fn runbook(viewer: Viewer<'_>, id: &str, body: &str) -> String {
    let title = format!("Runbook of run {id}");
    let id = html_escape(id);
    Shell {
        title: &title,
        page: "runbook",
        viewer: Some(viewer),
        data: String::new(),
        main: format!(
            "<p class=\"crumbs\"><a href=\"/\">Runs</a> › <a href=\"/runs/{id}\">run <code>{id}</code></a> › runbook</p>\n<article class=\"runbook\">\n{body}</article>"
        ),
        scripts: &[],
    }
    .render()
}

/// An error page: `status` and a message for a person.
pub fn error(viewer: Option<Viewer<'_>>, status: u16, message: &str) -> String {
    Shell {
        title: &format!("Error {status}"),
        page: "error",
        viewer,
        data: String::new(),
        main: format!(
            "<h1>{status}</h1>\n<p class=\"notice error\">{}</p>\n<p><a href=\"/\">Back to the runs</a></p>",
            html_escape(message)
        ),
        scripts: &[],
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_signin_escapes_what_it_echoes() {
        let page = signin("/runs/<x>\"", true, Some("<b>no</b>"));
        assert!(page.contains("value=\"/runs/&lt;x&gt;&quot;\""));
        assert!(page.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(page.contains("Not encrypted"));
        assert!(!signin("/", false, None).contains("Not encrypted"));
        // Nothing inline: the CSP would refuse it.
        assert!(!page.contains("<script>") && !page.contains("style="));
    }
}
