//! The search part of a `<search> | <SQL>` query, as in the log service, and its
//! translation to a SQL filter.
//!
//! ```text
//! *                                          every record
//! action: ACCEPT                             field equals a value
//! srcaddr: 10.0.0.* and dstaddr: 120.26.1.1  `*` any run of characters, `?` one
//! direction: 'in'                            quoted: taken literally ('it''s', "a b")
//! dstaddr:10.0.0.1 AND dstport:80            AND / OR / NOT, any case
//! not (action: REJECT or bytes > 1000)       parentheses; > >= < <= = on numbers
//! eni-a REJECT                               bare terms: any field equals; adjacent
//!                                            terms are ANDed
//! ```
//!
//! Precedence: `NOT` binds tightest, then `AND` (also implicit between adjacent
//! terms), then `OR`. Matching is ASCII case-insensitive (the log service's default
//! for its indexes) and on the field's text as written in the record, so
//! `dstport: 8*` works, and `srcport: -` finds records without ports. Field names
//! are the contract's (`eni-id`, `log-status`, ...), the extension fields, or
//! `__time__` (`start`). An IPv6 value after a field is fine (`srcaddr: fe80::1`);
//! a bare IPv6 term whose first group looks like a name must be quoted.
//!
//! `--` starts a comment running to the end of the line.
//!
//! The filter is rendered as SQL text ([`Search::to_sql`]) over the raw string
//! columns, with every value escaped as a string literal and, for `ILIKE`, its `%`,
//! `_` and `\` escaped with a backslash.

use std::fmt;

use crate::schema::{self, FieldKind, LogField, FIELDS, TIME_COLUMN};

/// A parsed search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Search {
    /// `*`: every record.
    All,
    /// `field: value`, or a bare value (`field` None: any field).
    Match {
        field: Option<&'static str>,
        pattern: Pattern,
    },
    /// `field > 100` and friends, on a number field.
    Compare {
        field: &'static str,
        op: CmpOp,
        value: i64,
    },
    Not(Box<Search>),
    And(Vec<Search>),
    Or(Vec<Search>),
}

/// What a value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// The whole text, literally (quoted values, or no `*`/`?`).
    Exact(String),
    /// With `*` (any run) and `?` (one character) wildcards.
    Wildcard(String),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "=",
        }
    }
}

/// A search syntax error at a byte offset of the search text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchError {
    pub message: String,
    pub offset: usize,
}

impl fmt::Display for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SearchError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Op(CmpOp),
    /// A run of characters other than space, parentheses, quotes and `<>=`.
    Word(String),
    Quoted(String),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    offset: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, SearchError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if text[i..].starts_with("--") {
            // Comment to the end of the line.
            while let Some(&(_, c)) = chars.peek() {
                if c == '\n' {
                    break;
                }
                chars.next();
            }
            continue;
        }
        match c {
            '(' => {
                chars.next();
                out.push(Token {
                    tok: Tok::LParen,
                    offset: i,
                });
            }
            ')' => {
                chars.next();
                out.push(Token {
                    tok: Tok::RParen,
                    offset: i,
                });
            }
            '<' | '>' | '=' => {
                chars.next();
                let eq = matches!(chars.peek(), Some(&(_, '='))) && c != '=';
                if eq {
                    chars.next();
                }
                let op = match (c, eq) {
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    ('>', false) => CmpOp::Gt,
                    ('>', true) => CmpOp::Ge,
                    _ => CmpOp::Eq,
                };
                out.push(Token {
                    tok: Tok::Op(op),
                    offset: i,
                });
            }
            '\'' | '"' => {
                chars.next();
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, d)) = chars.next() {
                    if d == '\\' {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    } else if d == c {
                        if matches!(chars.peek(), Some(&(_, e)) if e == c) {
                            chars.next();
                            value.push(c);
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        value.push(d);
                    }
                }
                if !closed {
                    return Err(SearchError {
                        message: format!("unterminated {c}-quoted value"),
                        offset: i,
                    });
                }
                out.push(Token {
                    tok: Tok::Quoted(value),
                    offset: i,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_whitespace() || matches!(d, '(' | ')' | '\'' | '"' | '<' | '>' | '=') {
                        break;
                    }
                    word.push(d);
                    chars.next();
                }
                out.push(Token {
                    tok: Tok::Word(word),
                    offset: i,
                });
            }
        }
    }
    Ok(out)
}

fn is_keyword(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Deepest nesting of parentheses and `NOT`s: the parser, [`Search::to_sql`] and
/// dropping a [`Search`] recurse once per level, so a long run of `(` or `NOT` must be
/// an error, not a stack overflow.
pub const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    text: &'a str,
    /// Open parentheses and `NOT`s around the current term.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn end_offset(&self) -> usize {
        self.text.trim_end().len()
    }

    fn err<T>(&self, message: impl Into<String>, offset: usize) -> Result<T, SearchError> {
        Err(SearchError {
            message: message.into(),
            offset,
        })
    }

    /// One level deeper (a `(` or `NOT` at `offset`), or the error if that is too deep.
    fn enter(&mut self, offset: usize) -> Result<(), SearchError> {
        if self.depth >= MAX_DEPTH {
            return self.err(
                format!("nested too deeply: at most {MAX_DEPTH} levels of parentheses and NOT"),
                offset,
            );
        }
        self.depth += 1;
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Search, SearchError> {
        let mut items = vec![self.and_expr()?];
        while let Some(t) = self.peek() {
            if !is_keyword(&t.tok, "or") {
                break;
            }
            self.pos += 1;
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Search::Or(items)
        })
    }

    fn and_expr(&mut self) -> Result<Search, SearchError> {
        let mut items = vec![self.not_expr()?];
        loop {
            match self.peek() {
                Some(t) if is_keyword(&t.tok, "and") => {
                    self.pos += 1;
                    items.push(self.not_expr()?);
                }
                // Adjacent terms: implicit AND.
                Some(t) if !is_keyword(&t.tok, "or") && t.tok != Tok::RParen => {
                    items.push(self.not_expr()?);
                }
                _ => break,
            }
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Search::And(items)
        })
    }

    fn not_expr(&mut self) -> Result<Search, SearchError> {
        match self.peek() {
            Some(t) if is_keyword(&t.tok, "not") => {
                let offset = t.offset;
                self.enter(offset)?;
                self.pos += 1;
                let inner = self.not_expr()?;
                self.depth -= 1;
                Ok(Search::Not(Box::new(inner)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Search, SearchError> {
        let Some(token) = self.peek().cloned() else {
            return self.err("expected a search term", self.end_offset());
        };
        self.pos += 1;
        match token.tok {
            Tok::LParen => {
                self.enter(token.offset)?;
                let inner = self.or_expr()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(t) => self.err("expected `)`", t.offset),
                    None => self.err(
                        format!("missing `)` for the `(` at offset {}", token.offset),
                        self.end_offset(),
                    ),
                }
            }
            Tok::RParen => self.err("unexpected `)`", token.offset),
            Tok::Op(_) => self.err("expected a field name before the operator", token.offset),
            Tok::Quoted(value) => Ok(Search::Match {
                field: None,
                pattern: Pattern::Exact(value),
            }),
            Tok::Word(word) => {
                if ["and", "or", "not"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    return self.err(
                        format!("expected a search term, found `{word}` (quote it to search for the word)"),
                        token.offset,
                    );
                }
                // `field > 10`
                if let Some(Token {
                    tok: Tok::Op(op), ..
                }) = self.peek().cloned()
                {
                    self.pos += 1;
                    let field = self.field(&word, token.offset)?;
                    return self.compare(field, op, token.offset);
                }
                // `field:value` / `field: value`
                if let Some(colon) = word.find(':') {
                    let (name, rest) = (&word[..colon], &word[colon + 1..]);
                    if is_name(name) && !rest.starts_with(':') {
                        let field = self.field(name, token.offset)?;
                        if !rest.is_empty() {
                            return Ok(Search::Match {
                                field: Some(field.name),
                                pattern: word_pattern(rest),
                            });
                        }
                        return match self.peek().cloned() {
                            Some(Token {
                                tok: Tok::Word(v), ..
                            }) if !["and", "or", "not"]
                                .iter()
                                .any(|k| v.eq_ignore_ascii_case(k)) =>
                            {
                                self.pos += 1;
                                Ok(Search::Match {
                                    field: Some(field.name),
                                    pattern: word_pattern(&v),
                                })
                            }
                            Some(Token {
                                tok: Tok::Quoted(v),
                                ..
                            }) => {
                                self.pos += 1;
                                Ok(Search::Match {
                                    field: Some(field.name),
                                    pattern: Pattern::Exact(v),
                                })
                            }
                            Some(t) => {
                                self.err(format!("expected a value after `{name}:`"), t.offset)
                            }
                            None => self.err(
                                format!("expected a value after `{name}:`"),
                                self.end_offset(),
                            ),
                        };
                    }
                }
                if word == "*" {
                    return Ok(Search::All);
                }
                Ok(Search::Match {
                    field: None,
                    pattern: word_pattern(&word),
                })
            }
        }
    }

    fn field(&self, name: &str, offset: usize) -> Result<LogField, SearchError> {
        schema::field(name).ok_or_else(|| {
            let known: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
            SearchError {
                message: format!(
                    "unknown field `{name}`; fields are {}, {TIME_COLUMN} (quote IPv6 values: 'fe80:0:0::1')",
                    known.join(", ")
                ),
                offset,
            }
        })
    }

    fn compare(&mut self, field: LogField, op: CmpOp, at: usize) -> Result<Search, SearchError> {
        if field.kind != FieldKind::Number {
            return self.err(
                format!(
                    "`{}` is not a number field: use `{}: value`",
                    field.name, field.name
                ),
                at,
            );
        }
        let Some(token) = self.peek().cloned() else {
            return self.err("expected a number", self.end_offset());
        };
        let text = match &token.tok {
            Tok::Word(w) | Tok::Quoted(w) => w.clone(),
            _ => return self.err("expected a number", token.offset),
        };
        let value = text
            .parse::<i64>()
            .or_else(|_| self.err(format!("expected a number, found `{text}`"), token.offset))?;
        self.pos += 1;
        Ok(Search::Compare {
            field: field.name,
            op,
            value,
        })
    }
}

fn word_pattern(word: &str) -> Pattern {
    if word.contains(['*', '?']) {
        Pattern::Wildcard(word.to_string())
    } else {
        Pattern::Exact(word.to_string())
    }
}

/// Parse a search. Empty text (or only comments) means `*`.
pub fn parse(text: &str) -> Result<Search, SearchError> {
    let tokens = lex(text)?;
    if tokens.is_empty() {
        return Ok(Search::All);
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        text,
        depth: 0,
    };
    let s = p.or_expr()?;
    if let Some(t) = p.peek() {
        return p.err("unexpected `)`", t.offset);
    }
    Ok(s)
}

/// The `ILIKE` pattern for a value: SQL wildcards for `*`/`?`, and `%`, `_`, `\`
/// of the value escaped with a backslash (DataFusion's LIKE escape).
fn like_pattern(p: &Pattern) -> String {
    let (text, wild) = match p {
        Pattern::Exact(t) => (t, false),
        Pattern::Wildcard(t) => (t, true),
    };
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        match c {
            '*' if wild => out.push('%'),
            '?' if wild => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The raw column a search field reads (`__time__` is `start`).
fn raw_column(field: &str) -> String {
    schema::quote_ident(if field == TIME_COLUMN { "start" } else { field })
}

impl Search {
    /// Whether this search lets every record through.
    pub fn is_all(&self) -> bool {
        matches!(self, Search::All)
    }

    /// The filter as a SQL boolean expression over the raw (string) columns.
    pub fn to_sql(&self) -> String {
        match self {
            Search::All => "TRUE".into(),
            Search::Match {
                field: Some(field),
                pattern,
            } => format!(
                "{} ILIKE {}",
                raw_column(field),
                schema::quote_str(&like_pattern(pattern))
            ),
            Search::Match {
                field: None,
                pattern,
            } => {
                let lit = schema::quote_str(&like_pattern(pattern));
                let any: Vec<String> = FIELDS
                    .iter()
                    .map(|f| format!("{} ILIKE {lit}", schema::quote_ident(f.name)))
                    .collect();
                format!("({})", any.join(" OR "))
            }
            Search::Compare { field, op, value } => format!(
                "TRY_CAST({} AS BIGINT) {} {value}",
                raw_column(field),
                op.sql()
            ),
            // A field a record lacks is NULL: NOT of "no match" must be true.
            Search::Not(inner) => format!("(NOT COALESCE({}, FALSE))", inner.to_sql()),
            Search::And(items) => format!(
                "({})",
                items
                    .iter()
                    .map(Search::to_sql)
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            Search::Or(items) => format!(
                "({})",
                items
                    .iter()
                    .map(Search::to_sql)
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found with the `search` fuzz target's review (recursion without a bound): a query
    /// of 50,000 `(` aborted with a stack overflow instead of returning an error.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let e = parse(&"(".repeat(50_000)).unwrap_err();
        assert!(e.message.starts_with("nested too deeply"), "{e}");
        assert_eq!(e.offset, MAX_DEPTH);
        let nots = "not ".repeat(50_000) + "a";
        let e = parse(&nots).unwrap_err();
        assert!(e.message.starts_with("nested too deeply"), "{e}");
        assert_eq!(e.offset, 4 * MAX_DEPTH);
        // The limit itself is fine, and renders.
        let ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(
            parse(&ok).unwrap(),
            Search::Match {
                field: None,
                pattern: Pattern::Exact("a".into())
            }
        );
        let ok = format!("{}a", "NOT ".repeat(MAX_DEPTH));
        assert!(parse(&ok).unwrap().to_sql().starts_with("(NOT COALESCE("));
        let too_deep = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(parse(&too_deep).is_err());
    }

    fn m(field: &'static str, p: Pattern) -> Search {
        Search::Match {
            field: Some(field),
            pattern: p,
        }
    }
    fn ex(s: &str) -> Pattern {
        Pattern::Exact(s.into())
    }
    fn wc(s: &str) -> Pattern {
        Pattern::Wildcard(s.into())
    }

    #[test]
    fn issue_examples() {
        assert_eq!(parse("*").unwrap(), Search::All);
        assert_eq!(parse("").unwrap(), Search::All);
        assert_eq!(parse("  -- nothing\n").unwrap(), Search::All);
        assert_eq!(
            parse("srcaddr: 10.0.0.* and dstaddr: 120.26.1.1").unwrap(),
            Search::And(vec![
                m("srcaddr", wc("10.0.0.*")),
                m("dstaddr", ex("120.26.1.1"))
            ])
        );
        assert_eq!(parse("action: ACCEPT").unwrap(), m("action", ex("ACCEPT")));
        assert_eq!(parse("direction: 'in'").unwrap(), m("direction", ex("in")));
        assert_eq!(
            parse("dstaddr:10.0.0.1 AND dstport:80").unwrap(),
            Search::And(vec![m("dstaddr", ex("10.0.0.1")), m("dstport", ex("80"))])
        );
        assert_eq!(
            parse("direction: 'in' and srcaddr: 10.0.0.* ").unwrap(),
            Search::And(vec![m("direction", ex("in")), m("srcaddr", wc("10.0.0.*"))])
        );
    }

    #[test]
    fn precedence_not_and_or_parentheses() {
        // a OR b AND NOT c  ==  a OR (b AND (NOT c))
        let s = parse("action:REJECT or eni-id:eth0 and not direction:in").unwrap();
        assert_eq!(
            s,
            Search::Or(vec![
                m("action", ex("REJECT")),
                Search::And(vec![
                    m("eni-id", ex("eth0")),
                    Search::Not(Box::new(m("direction", ex("in"))))
                ])
            ])
        );
        let s = parse("(action:REJECT OR eni-id:eth0) AND NOT (direction:in)").unwrap();
        assert_eq!(
            s,
            Search::And(vec![
                Search::Or(vec![m("action", ex("REJECT")), m("eni-id", ex("eth0"))]),
                Search::Not(Box::new(m("direction", ex("in"))))
            ])
        );
        // Implicit AND between adjacent terms, keywords in any case.
        assert_eq!(
            parse("action:ACCEPT direction:out").unwrap(),
            parse("action:ACCEPT AnD direction:out").unwrap()
        );
        assert_eq!(
            parse("NOT NOT action:ACCEPT").unwrap(),
            Search::Not(Box::new(Search::Not(Box::new(m("action", ex("ACCEPT"))))))
        );
    }

    #[test]
    fn values_quotes_ipv6_comparisons_bare_terms() {
        assert_eq!(
            parse("srcaddr: fe80::1").unwrap(),
            m("srcaddr", ex("fe80::1"))
        );
        assert_eq!(
            parse("srcaddr:fe80::1").unwrap(),
            m("srcaddr", ex("fe80::1"))
        );
        assert_eq!(
            parse("fe80::1").unwrap(),
            Search::Match {
                field: None,
                pattern: ex("fe80::1")
            }
        );
        assert_eq!(parse("vm-id: \"it's\"").unwrap(), m("vm-id", ex("it's")));
        assert_eq!(parse("vm-id: 'it''s'").unwrap(), m("vm-id", ex("it's")));
        assert_eq!(parse("vm-id: '10.*'").unwrap(), m("vm-id", ex("10.*")));
        assert_eq!(
            parse("bytes >= 1000 and dstport<1024").unwrap(),
            Search::And(vec![
                Search::Compare {
                    field: "bytes",
                    op: CmpOp::Ge,
                    value: 1000
                },
                Search::Compare {
                    field: "dstport",
                    op: CmpOp::Lt,
                    value: 1024
                }
            ])
        );
        assert_eq!(parse("__time__: 17*").unwrap(), m("__time__", wc("17*")));
        assert_eq!(parse("EnI-Id: a").unwrap(), m("eni-id", ex("a")));
        assert_eq!(
            parse("REJECT").unwrap(),
            Search::Match {
                field: None,
                pattern: ex("REJECT")
            }
        );
    }

    #[test]
    fn errors_have_offsets() {
        let e = parse("srcadr: 10.0.0.1").unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("unknown field `srcadr`"), "{e}");
        let e = parse("action: ACCEPT and (direction: in").unwrap_err();
        assert_eq!(e.offset, "action: ACCEPT and (direction: in".len());
        assert!(e.message.contains("missing `)`"), "{e}");
        let e = parse("action: ACCEPT )").unwrap_err();
        assert_eq!(e.offset, 15);
        let e = parse("action:").unwrap_err();
        assert!(e.message.contains("expected a value after `action:`"));
        let e = parse("action: 'ACCEPT").unwrap_err();
        assert_eq!(e.offset, 8);
        let e = parse("srcaddr > 5").unwrap_err();
        assert!(e.message.contains("not a number field"), "{e}");
        let e = parse("bytes > lots").unwrap_err();
        assert_eq!(e.offset, 8);
        let e = parse("action: ACCEPT and").unwrap_err();
        assert_eq!(e.offset, 18);
        let e = parse("and action: ACCEPT").unwrap_err();
        assert_eq!(e.offset, 0);
    }

    #[test]
    fn sql_is_escaped() {
        assert_eq!(
            parse("srcaddr: 10.0.0.*").unwrap().to_sql(),
            r#""srcaddr" ILIKE '10.0.0.%'"#
        );
        // Quotes doubled; %, _ and \ escaped; ? is one character.
        assert_eq!(
            parse(r#"vm-id: "a'b%c_d\\e""#).unwrap().to_sql(),
            r#""vm-id" ILIKE 'a''b\%c\_d\\e'"#
        );
        assert_eq!(
            parse("vm-id: i-?_*").unwrap().to_sql(),
            r#""vm-id" ILIKE 'i-_\_%'"#
        );
        assert_eq!(
            parse("not bytes > 5 or __time__: 1").unwrap().to_sql(),
            r#"((NOT COALESCE(TRY_CAST("bytes" AS BIGINT) > 5, FALSE)) OR "start" ILIKE '1')"#
        );
        assert_eq!(parse("*").unwrap().to_sql(), "TRUE");
        let any = parse("x").unwrap().to_sql();
        assert!(any.starts_with(r#"("version" ILIKE 'x' OR "account-id" ILIKE 'x'"#));
    }
}
