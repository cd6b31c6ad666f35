//! Errors of the query engine, the reports and their command-line front ends.
//!
//! Two kinds matter to the caller: errors in what the user typed (a bad query, a
//! bad time range, a bad `--cidr`, a log path that does not exist), reported with
//! exit code 2, and failures while running (unreadable or malformed log files,
//! output that cannot be written), exit code 1. See [`QueryError::exit_code`].
//!
//! A bad query carries its [`Position`] in the text the user typed (the whole
//! `<search> | <SQL>` string, not just the SQL part), and its message renders the
//! offending line with a caret under that position.

use std::{fmt, io, path::PathBuf};

use datafusion::error::DataFusionError;

/// A place in the query text: 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text` (clamped to the text's end).
    pub fn of_offset(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The line of `text` that holds `pos`, and a caret line under the column.
pub(crate) fn snippet(text: &str, pos: Position) -> String {
    let line = text.lines().nth(pos.line - 1).unwrap_or("");
    let shown: String = line
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let caret = " ".repeat(pos.column.saturating_sub(1));
    format!("  | {shown}\n  | {caret}^")
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text is wrong: search syntax, SQL syntax, an unknown column or
    /// function, a type error. `message` is the engine's own message.
    #[error("bad query: {message}{}", render_position(.position, .snippet))]
    BadQuery {
        message: String,
        position: Option<Position>,
        /// The offending line with a caret (empty without a position).
        snippet: String,
    },
    /// A `--logs` path that does not exist or cannot be listed.
    #[error("--logs {}: {source}", .path.display())]
    LogPath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--since`, `--from` or `--to` could not be parsed.
    #[error("bad time range: {0}")]
    TimeRange(String),
    /// A `--cidr NAME=CIDR` that does not parse.
    #[error("bad --cidr {value:?}: {reason}")]
    Cidr { value: String, reason: String },
    /// The engine failed while reading the logs or running the query.
    #[error("running the query: {0}")]
    Execution(#[source] DataFusionError),
    /// Setting up the engine (runtime, table registration) failed.
    #[error("setting up the query engine: {0}")]
    Setup(String),
    /// The output (stdout, the report file) could not be written.
    #[error("writing {what}: {source}")]
    Output {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn render_position(position: &Option<Position>, snippet: &str) -> String {
    match position {
        Some(pos) => format!("\n  at {pos} of the query:\n{snippet}"),
        None => String::new(),
    }
}

impl QueryError {
    /// Process exit code: 2 for bad input (query, flags, paths), 1 for failures
    /// while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            QueryError::BadQuery { .. }
            | QueryError::LogPath { .. }
            | QueryError::TimeRange(_)
            | QueryError::Cidr { .. } => 2,
            QueryError::Execution(_) | QueryError::Setup(_) | QueryError::Output { .. } => 1,
        }
    }

    /// A bad query at byte `offset` of `text` (`None`: no position known).
    pub(crate) fn bad_query(message: impl Into<String>, text: &str, offset: Option<usize>) -> Self {
        let position = offset.map(|o| Position::of_offset(text, o));
        Self::bad_query_at(message, text, position)
    }

    pub(crate) fn bad_query_at(
        message: impl Into<String>,
        text: &str,
        position: Option<Position>,
    ) -> Self {
        QueryError::BadQuery {
            message: message.into(),
            snippet: position.map(|p| snippet(text, p)).unwrap_or_default(),
            position,
        }
    }

    /// The position of a bad query, if known.
    pub fn position(&self) -> Option<Position> {
        match self {
            QueryError::BadQuery { position, .. } => *position,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "ab\ncdé f\n";
        assert_eq!(
            Position::of_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::of_offset(text, 3),
            Position { line: 2, column: 1 }
        );
        // 'f' is after a 2-byte character: byte 8, character column 5.
        assert_eq!(
            Position::of_offset(text, 8),
            Position { line: 2, column: 5 }
        );
        let s = snippet(text, Position { line: 2, column: 5 });
        assert_eq!(s, "  | cdé f\n  |     ^");
    }
}
