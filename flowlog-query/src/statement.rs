//! The log service's query shape, `<search> | <SQL>`: splitting it, and the SQL
//! rewrites the log service implies.
//!
//! * The first `|` outside quotes and `--` comments ends the search part. A query
//!   that starts with `SELECT` or `WITH` (after comments) is all SQL (search `*`);
//!   one without `|` is a search alone and lists the matching records
//!   (`SELECT * FROM log ORDER BY __time__`).
//! * Every `SELECT` without a `FROM` clause reads `log`, at any depth (CTEs,
//!   subqueries, set operations), as the log service allows `* | SELECT count(*)`.
//! * In the outermost `SELECT`, an expression without an alias is named `_colN`
//!   (N its 0-based position), as the log service names them, instead of
//!   DataFusion's spelled-out expression (`concat(log.srcaddr,Utf8("->"),...)`).
//!   Plain columns keep their names; a projection with `*` is left alone.
//!
//! Positions in SQL errors are relative to the SQL part; [`Split::sql_position`]
//! maps them back to the whole query text.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Query, SelectItem, SetExpr, Statement, TableWithJoins, VisitMut, VisitorMut,
};

use crate::error::Position;

/// A query split into its search and SQL parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<'a> {
    /// The search text (may be empty: everything).
    pub search: &'a str,
    /// The SQL text, `None` for a search alone.
    pub sql: Option<&'a str>,
    /// Byte offset of the SQL part in the whole text.
    pub sql_offset: usize,
}

/// Skip whitespace and `--` comments from byte `i`.
fn skip_blank(text: &str, mut i: usize) -> usize {
    let b = text.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if text[i..].starts_with("--") {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n);
        } else {
            return i;
        }
    }
}

fn starts_with_keyword(text: &str, kw: &str) -> bool {
    text.len() >= kw.len()
        && text[..kw.len()].eq_ignore_ascii_case(kw)
        && !text[kw.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split `text` into search and SQL.
pub fn split(text: &str) -> Split<'_> {
    let start = skip_blank(text, 0);
    let head = &text[start..];
    if starts_with_keyword(head, "select") || starts_with_keyword(head, "with") {
        return Split {
            search: "",
            sql: Some(text),
            sql_offset: 0,
        };
    }
    let b = text.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                    continue;
                }
                b'|' => {
                    return Split {
                        search: &text[..i],
                        sql: Some(&text[i + 1..]),
                        sql_offset: i + 1,
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    Split {
        search: text,
        sql: None,
        sql_offset: text.len(),
    }
}

impl Split<'_> {
    /// Map a 1-based (line, column) in the SQL part to the whole text.
    pub fn sql_position(&self, whole: &str, line: usize, column: usize) -> Position {
        let base = Position::of_offset(whole, self.sql_offset);
        if line <= 1 {
            Position {
                line: base.line,
                column: base.column + column.saturating_sub(1),
            }
        } else {
            Position {
                line: base.line + line - 1,
                column,
            }
        }
    }
}

/// Adds `FROM log` to every `SELECT` that has none.
struct AddFrom {
    from: Vec<TableWithJoins>,
}

impl AddFrom {
    fn set_expr(&self, body: &mut SetExpr) {
        match body {
            SetExpr::Select(select) if select.from.is_empty() => {
                select.from = self.from.clone();
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            // Nested queries are visited on their own.
            _ => {}
        }
    }
}

impl VisitorMut for AddFrom {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        self.set_expr(&mut query.body);
        ControlFlow::Continue(())
    }
}

/// Apply the log service's rewrites to a parsed statement. `from_log` is the
/// `FROM` clause of a parsed `SELECT 1 FROM log`.
pub fn rewrite(statement: &mut Statement, from_log: Vec<TableWithJoins>) {
    let _ = statement.visit(&mut AddFrom { from: from_log });
    if let Statement::Query(query) = statement {
        if let SetExpr::Select(select) = query.body.as_mut() {
            let has_wildcard = select.projection.iter().any(|item| {
                matches!(
                    item,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            });
            if !has_wildcard {
                for (i, item) in select.projection.iter_mut().enumerate() {
                    if let SelectItem::UnnamedExpr(expr) = item {
                        if !matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                            *item = SelectItem::ExprWithAlias {
                                expr: expr.clone(),
                                alias: Ident::new(format!("_col{i}")),
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Find "Line: L, Column: C" in a parser message.
pub fn parser_location(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_unquoted_pipe() {
        let q = "direction: 'in|out' | select a || b";
        let s = split(q);
        assert_eq!(s.search, "direction: 'in|out' ");
        assert_eq!(s.sql, Some(" select a || b"));
        assert_eq!(&q[s.sql_offset..], " select a || b");

        let s = split("-- a | comment\n* | select 1");
        assert_eq!(s.search, "-- a | comment\n* ");

        let s = split("  -- hi\n SELECT a || b FROM log");
        assert_eq!(s.search, "");
        assert_eq!(s.sql_offset, 0);

        let s = split("action: REJECT");
        assert_eq!(s.sql, None);
        assert_eq!(s.search, "action: REJECT");

        // "selection" is not the keyword.
        assert_eq!(split("selection | select 1").search, "selection ");
    }

    #[test]
    fn maps_sql_positions() {
        let q = "a: b\nand c: d | select\n  x";
        let s = split(q);
        assert_eq!(
            s.sql_position(q, 1, 2),
            Position {
                line: 2,
                column: 12
            }
        );
        assert_eq!(s.sql_position(q, 2, 3), Position { line: 3, column: 3 });
    }

    #[test]
    fn finds_parser_locations() {
        assert_eq!(
            parser_location(
                "sql parser error: Expected: end of statement, found: x at Line: 3, Column: 12"
            ),
            Some((3, 12))
        );
        assert_eq!(parser_location("no position"), None);
    }
}
