//! Splitting a script into statements, for files that run outside a transaction.
//!
//! A multi-statement simple query runs as one implicit transaction in PostgreSQL,
//! which `CREATE INDEX CONCURRENTLY` refuses, so no-transaction files are sent one
//! statement at a time. The splitter understands quotes, dollar quoting, quoted
//! identifiers and both comment styles, so a `;` inside any of them never splits.

/// The statements of `sql`, each trimmed, without empty or comment-only ones.
pub fn statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    // Marks the first code character of the current statement; leading comments
    // and whitespace are not part of it.
    let mark = |has_code: &mut bool, start: &mut usize, at: usize| {
        if !*has_code {
            *has_code = true;
            *start = at;
        }
    };
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i);
                continue;
            }
            b'\'' => {
                // E'...' strings honour backslash escapes; standard strings do not.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                mark(&mut has_code, &mut start, if escapes { i - 1 } else { i });
                i = skip_quoted(b, i, b'\'', escapes);
                continue;
            }
            b'"' => {
                mark(&mut has_code, &mut start, i);
                i = skip_quoted(b, i, b'"', false);
                continue;
            }
            b'$' if i == 0 || !is_ident(b[i - 1]) => {
                if let Some(end) = dollar_tag_end(b, i) {
                    mark(&mut has_code, &mut start, i);
                    let tag = &sql[i..end];
                    i = sql[end..]
                        .find(tag)
                        .map_or(b.len(), |n| end + n + tag.len());
                    continue;
                }
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
            }
            c if !c.is_ascii_whitespace() => mark(&mut has_code, &mut start, i),
            _ => {}
        }
        i += 1;
    }
    if has_code {
        out.push(sql[start..].trim().to_string());
    }
    out
}

/// The bare words of `sql` (keywords and unquoted identifiers), upper-cased, in
/// order: what is outside quotes, quoted identifiers, dollar-quoted bodies and
/// comments, by the same quoting rules as [`statements`]. For rules that look
/// for keywords (`UPDATE`, `INTO`) without mistaking a string for code.
pub fn words(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'$' => match dollar_tag_end(b, i) {
                Some(end) => {
                    let tag = &sql[i..end];
                    i = sql[end..]
                        .find(tag)
                        .map_or(b.len(), |n| end + n + tag.len());
                }
                // `$1`: a parameter, not a word.
                None => {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            },
            c if is_ident(c) => {
                let start = i;
                while i < b.len() && (is_ident(b[i]) || b[i] == b'$') {
                    i += 1;
                }
                // Numbers (`10`, `1e5`) are not words, nor the prefix of a
                // string constant (`E'...'`, `B'0101'`, `X'1F'`).
                if !c.is_ascii_digit() && b.get(i) != Some(&b'\'') {
                    out.push(sql[start..i].to_ascii_uppercase());
                }
            }
            _ => i += 1,
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    // Block comments nest in PostgreSQL.
    let mut depth = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn skip_quoted(b: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if backslash_escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// End (exclusive) of a dollar-quote opening tag like `$$` or `$body$` at `i`.
fn dollar_tag_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && b[j] != b'$' {
        if !(is_ident(b[j]) && !(j == i + 1 && b[j].is_ascii_digit())) {
            return None;
        }
        j += 1;
    }
    (j < b.len()).then_some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql =
            "-- pgshepherd:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\n\nANALYZE t;\n";
        assert_eq!(
            statements(sql),
            vec!["CREATE INDEX CONCURRENTLY a ON t (x)", "ANALYZE t"]
        );
    }

    #[test]
    fn semicolons_inside_quotes_comments_and_dollar_bodies_do_not_split() {
        let sql = r#"SELECT 'a;b', "we;ird", E'it\'s;'; /* x; /* nested; */ y; */ SELECT 2;
CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;
SELECT $$;$$ -- trailing; comment
"#;
        let got = statements(sql);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[0].starts_with("SELECT 'a;b'"));
        assert!(got[1].ends_with("SELECT 2"));
        assert!(got[2].contains("RETURN 1; END;"));
        assert!(got[3].starts_with("SELECT $$;$$"));
    }

    #[test]
    fn comment_only_and_empty_statements_are_dropped() {
        assert!(statements("-- nothing\n;;  /* still nothing */ ;").is_empty());
        assert_eq!(statements("SELECT 1"), vec!["SELECT 1"]);
    }

    #[test]
    fn words_skip_strings_quoted_identifiers_comments_and_dollar_bodies() {
        let sql = "SELECT \"update\", 'delete' -- insert\n FROM t /* merge */ WHERE x = $$into$$ AND y = $1 AND z > 10";
        assert_eq!(
            super::words(sql),
            ["SELECT", "FROM", "T", "WHERE", "X", "AND", "Y", "AND", "Z"]
        );
        assert_eq!(
            super::words("select e'it\\'s' for update"),
            ["SELECT", "FOR", "UPDATE"]
        );
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        assert_eq!(statements("SELECT $1; SELECT 2").len(), 2);
    }
}
