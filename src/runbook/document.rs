//! A small document model (headings, paragraphs, lists, code blocks) and its two
//! renderings, Markdown and HTML, so that both say exactly the same thing.
//!
//! Everything in a document is text: plan names, check names, SQL and paths are
//! written by users and are never interpreted as Markdown or HTML. Markdown text
//! is backslash-escaped, code spans and fences are made longer than any run of
//! backticks inside them, and HTML is entity-escaped.

use std::fmt::Write;

/// A piece of a line of text.
#[derive(Debug, Clone, PartialEq)]
pub enum Inline {
    Text(String),
    /// Shown as code (a name, a path, a short command).
    Code(String),
    Strong(String),
}

/// Build a line from pieces: `line![t("Run "), c(cmd)]`.
pub type Line = Vec<Inline>;

pub fn t(s: impl Into<String>) -> Inline {
    Inline::Text(s.into())
}

pub fn c(s: impl Into<String>) -> Inline {
    Inline::Code(s.into())
}

pub fn b(s: impl Into<String>) -> Inline {
    Inline::Strong(s.into())
}

#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Level 2 or 3 (the title is level 1).
    Heading(u8, Line),
    Para(Line),
    /// A bulleted list, one line per item.
    Items(Vec<Line>),
    /// A code block; `lang` is `sql` or `sh`.
    Code {
        lang: &'static str,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Document {
    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n", md_text(&self.title));
        for block in &self.blocks {
            out.push('\n');
            match block {
                Block::Heading(level, line) => {
                    let hashes = "#".repeat(usize::from((*level).clamp(2, 6)));
                    let _ = writeln!(out, "{hashes} {}", md_line(line));
                }
                Block::Para(line) => {
                    let _ = writeln!(out, "{}", md_line(line));
                }
                Block::Items(items) => {
                    for item in items {
                        let _ = writeln!(out, "- {}", md_line(item));
                    }
                }
                Block::Code { lang, text } => {
                    let fence = "`".repeat(longest_backtick_run(text).max(2) + 1);
                    let _ = writeln!(out, "{fence}{lang}\n{}\n{fence}", text.trim_end());
                }
            }
        }
        out
    }

    /// A complete HTML page (no scripts, no external resources).
    pub fn html(&self) -> String {
        let title = html_escape(&self.title);
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n<body>\n{}</body>\n</html>\n",
            self.html_body()
        )
    }

    /// The title (`<h1>`) and the blocks as HTML, for a page of someone else's
    /// making (the web page's `/runs/{id}/runbook`).
    pub fn html_body(&self) -> String {
        let mut out = format!("<h1>{}</h1>\n", html_escape(&self.title));
        for block in &self.blocks {
            match block {
                Block::Heading(level, line) => {
                    let level = (*level).clamp(2, 6);
                    let _ = writeln!(out, "<h{level}>{}</h{level}>", html_line(line));
                }
                Block::Para(line) => {
                    let _ = writeln!(out, "<p>{}</p>", html_line(line));
                }
                Block::Items(items) => {
                    out.push_str("<ul>\n");
                    for item in items {
                        let _ = writeln!(out, "<li>{}</li>", html_line(item));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Code { lang, text } => {
                    let _ = writeln!(
                        out,
                        "<pre><code class=\"language-{lang}\">{}</code></pre>",
                        html_escape(text.trim_end())
                    );
                }
            }
        }
        out
    }
}

fn md_line(line: &Line) -> String {
    line.iter()
        .map(|piece| match piece {
            Inline::Text(s) => md_text(s),
            Inline::Code(s) => md_code(s),
            Inline::Strong(s) => format!("**{}**", md_text(s)),
        })
        .collect()
}

/// Text with every character Markdown could read as markup escaped, and line
/// breaks folded (a user's newline must not start a heading or a list).
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '!' | '&' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// A code span that no backtick inside `s` can close early.
fn md_code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let ticks = "`".repeat(longest_backtick_run(&s) + 1);
    // A span that starts or ends with a backtick needs a space to be read as code.
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{s}{pad}{ticks}")
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|ch| ch != '`').map(str::len).max().unwrap_or(0)
}

fn html_line(line: &Line) -> String {
    line.iter()
        .map(|piece| match piece {
            Inline::Text(s) => html_escape(s),
            Inline::Code(s) => format!("<code>{}</code>", html_escape(s)),
            Inline::Strong(s) => format!("<strong>{}</strong>", html_escape(s)),
        })
        .collect()
}

/// `s` as HTML text: every character that could start markup or end an
/// attribute value written as an entity. (Also used by the web page.)
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(blocks: Vec<Block>) -> Document {
        Document {
            title: "t".into(),
            blocks,
        }
    }

    #[test]
    fn user_text_is_never_markup() {
        let d = doc(vec![Block::Para(vec![
            t("# not a heading <script>alert(1)</script> *x* [a](b)"),
            c("a`b"),
        ])]);
        let md = d.markdown();
        assert!(
            md.contains(r"\# not a heading \<script\>alert(1)\</script\> \*x\* \[a\](b)"),
            "{md}"
        );
        assert!(md.contains("``a`b``"), "{md}");
        let html = d.html();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_in_the_code() {
        let d = doc(vec![Block::Code {
            lang: "sql",
            text: "SELECT 1; -- ```\n````".into(),
        }]);
        let md = d.markdown();
        assert!(
            md.contains("`````sql\nSELECT 1; -- ```\n````\n`````"),
            "{md}"
        );
    }

    #[test]
    fn a_newline_in_text_cannot_start_a_block() {
        let md = doc(vec![Block::Para(vec![t("a\n# b\n- c")])]).markdown();
        assert!(md.contains("a \\# b - c"), "{md}");
    }
}
