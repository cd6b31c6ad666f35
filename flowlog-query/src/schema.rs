//! The columns of the `log` table: the contract's fields (in its order), the
//! extension fields some records carry, and `__time__`.
//!
//! In the JSON files every value is a string (the agent's Parquet files hold
//! numbers as integers; they are read as the same text first). In `log`:
//!
//! | kind | fields | `-` becomes |
//! |---|---|---|
//! | [`FieldKind::Number`] (BIGINT) | version, protocol, srcport, dstport, packets, bytes, start, end, tcp-flags, traffic_path, skipped-streams, skipped-packets, skipped-bytes | NULL |
//! | [`FieldKind::Traffic`] (text) | type, srcaddr, dstaddr, direction, action, rule-id | NULL |
//! | [`FieldKind::Text`] (text, as written) | account-id, eni-id, vm-id, vswitch-id, vpc-id, log-status, skipped-streams-lower-bound | stays `-` |
//!
//! so that a NODATA or SKIPDATA record has NULL in every traffic field, and
//! `count(srcaddr)`, `GROUP BY srcaddr` or `sum(bytes)` see only streams. A field a
//! record does not carry (an extension field) is NULL. `__time__` is `start` as
//! unix seconds (BIGINT), as in the log service.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// How a field is typed in the `log` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A number: BIGINT, `-` (and anything not a number) is NULL.
    Number,
    /// A traffic field held as text: `-` is NULL.
    Traffic,
    /// Text kept as written (metadata, status).
    Text,
}

/// One field of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogField {
    pub name: &'static str,
    pub kind: FieldKind,
}

const fn f(name: &'static str, kind: FieldKind) -> LogField {
    LogField { name, kind }
}

use FieldKind::{Number, Text, Traffic};

/// Every field the table knows, in column order: the contract's 21 base fields,
/// then the SKIPDATA counters and the extended format's `rule-id`.
pub const FIELDS: [LogField; 26] = [
    f("version", Number),
    f("account-id", Text),
    f("eni-id", Text),
    f("vm-id", Text),
    f("vswitch-id", Text),
    f("vpc-id", Text),
    f("type", Traffic),
    f("protocol", Number),
    f("srcaddr", Traffic),
    f("srcport", Number),
    f("dstaddr", Traffic),
    f("dstport", Number),
    f("direction", Traffic),
    f("action", Traffic),
    f("packets", Number),
    f("bytes", Number),
    f("start", Number),
    f("end", Number),
    f("tcp-flags", Number),
    f("log-status", Text),
    f("traffic_path", Number),
    f("skipped-streams", Number),
    f("skipped-packets", Number),
    f("skipped-bytes", Number),
    f("skipped-streams-lower-bound", Text),
    f("rule-id", Traffic),
];

/// The log service's time column: `start` as unix seconds.
pub const TIME_COLUMN: &str = "__time__";

/// The table the queries read.
pub const TABLE: &str = "log";

/// The table over the files, every field a nullable string (not for queries).
pub(crate) const RAW_TABLE: &str = "flowlog_raw";
/// With Parquet files: the JSON files' part of [`RAW_TABLE`].
pub(crate) const RAW_JSON_TABLE: &str = "flowlog_raw_json";
/// With Parquet files: the Parquet files, typed as the agent writes them.
pub(crate) const RAW_PARQUET_TABLE: &str = "flowlog_raw_parquet";

/// A field by name (exact, then ASCII case-insensitive), or `__time__`.
pub fn field(name: &str) -> Option<LogField> {
    if name.eq_ignore_ascii_case(TIME_COLUMN) {
        return Some(LogField {
            name: TIME_COLUMN,
            kind: Number,
        });
    }
    FIELDS
        .iter()
        .find(|f| f.name == name)
        .or_else(|| FIELDS.iter().find(|f| f.name.eq_ignore_ascii_case(name)))
        .copied()
}

/// Schema of the files as read: every field a nullable string.
pub(crate) fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(
        FIELDS
            .iter()
            .map(|f| Field::new(f.name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// Schema of the agent's Parquet files as read: numbers BIGINT (the files' INT32
/// columns widen), text as text; a column a file lacks (`rule-id` of the base
/// format) is NULL. Columns the table does not know (`record-id`) are not read.
pub(crate) fn parquet_schema() -> SchemaRef {
    Arc::new(Schema::new(
        FIELDS
            .iter()
            .map(|f| {
                let t = match f.kind {
                    Number => DataType::Int64,
                    Traffic | Text => DataType::Utf8,
                };
                Field::new(f.name, t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Fields every JSON record carries (`-` where they do not apply): the contract's
/// base set, the first [`BASE_COUNT`] of [`FIELDS`].
const BASE_COUNT: usize = 21;

/// The SELECT list that gives the Parquet table the raw (text) shape of the JSON
/// files: a number as its decimal text, and NULL as `-` in the base fields (which
/// JSON records always carry) or NULL in the others (absent from the JSON record);
/// text is stored as written.
pub(crate) fn parquet_as_text() -> String {
    FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let q = quote_ident(f.name);
            match f.kind {
                Number if i < BASE_COUNT => {
                    format!("COALESCE(CAST({q} AS VARCHAR), '-') AS {q}")
                }
                Number => format!("CAST({q} AS VARCHAR) AS {q}"),
                Traffic | Text => q,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A SQL identifier for `name`, double-quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal for `value`.
pub(crate) fn quote_str(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The SELECT list that turns raw strings into the typed `log` columns.
pub(crate) fn typed_projection() -> String {
    let mut cols: Vec<String> = FIELDS
        .iter()
        .map(|f| {
            let q = quote_ident(f.name);
            match f.kind {
                // `-` (or anything not a number) does not parse: NULL.
                Number => format!("TRY_CAST({q} AS BIGINT) AS {q}"),
                Traffic => format!("NULLIF({q}, '-') AS {q}"),
                Text => q,
            }
        })
        .collect();
    cols.push(format!("TRY_CAST(\"start\" AS BIGINT) AS {TIME_COLUMN}"));
    cols.join(", ")
}
