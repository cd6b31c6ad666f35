//! Printing a result: an aligned table (default), CSV, or JSON lines.
//!
//! * table: a header, a rule, one line per row; numbers right-aligned, NULL as
//!   `null`.
//! * csv: RFC 4180 (a header line; fields with `,`, `"` or line breaks quoted);
//!   NULL as an empty field.
//! * json: one object per row, keys in column order; numbers and booleans as JSON
//!   numbers and booleans, NULL (and NaN/infinity) as `null`, everything else as
//!   strings.
//!
//! Timestamps print as `YYYY-MM-DD HH:MM:SS` (with a fraction only when there is
//! one) in their own zone: `from_unixtime` and `now()` give the display zone
//! (`TZ`), `from_unixtime(x, 'Asia/Tokyo')` Tokyo's.

use std::io::{self, Write};

use datafusion::arrow::{
    array::Array,
    datatypes::DataType,
    error::ArrowError,
    util::display::{ArrayFormatter, FormatOptions},
};

use crate::engine::QueryResult;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Table,
    Csv,
    Json,
}

const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

fn format_options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null("null")
        .with_timestamp_format(Some(TIME_FORMAT))
        .with_timestamp_tz_format(Some(TIME_FORMAT))
        .with_date_format(Some("%Y-%m-%d"))
}

/// How a cell is written in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    Number,
    Float,
    Bool,
    Text,
}

fn json_kind(t: &DataType) -> JsonKind {
    match t {
        t if t.is_integer() => JsonKind::Number,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => JsonKind::Number,
        t if t.is_floating() => JsonKind::Float,
        DataType::Boolean => JsonKind::Bool,
        _ => JsonKind::Text,
    }
}

fn is_numeric(t: &DataType) -> bool {
    matches!(json_kind(t), JsonKind::Number | JsonKind::Float)
}

/// Every cell as text (`None` for NULL), row by row.
pub fn rows(result: &QueryResult) -> Result<Vec<Vec<Option<String>>>, ArrowError> {
    let options = format_options();
    let mut out = Vec::with_capacity(result.num_rows());
    for batch in &result.batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    Ok(out)
}

fn to_io(e: ArrowError) -> io::Error {
    io::Error::other(e)
}

/// Write `result` to `out` in `format`.
pub fn write(result: &QueryResult, format: OutputFormat, out: &mut dyn Write) -> io::Result<()> {
    let names: Vec<&str> = result
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let types: Vec<&DataType> = result
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type())
        .collect();
    let rows = rows(result).map_err(to_io)?;
    match format {
        OutputFormat::Table => write_table(&names, &types, &rows, out),
        OutputFormat::Csv => write_csv(&names, &rows, out),
        OutputFormat::Json => write_json(&names, &types, &rows, out),
    }
}

/// The aligned-table form of a result, as a string.
pub fn table_string(result: &QueryResult) -> io::Result<String> {
    let mut buf = Vec::new();
    write(result, OutputFormat::Table, &mut buf)?;
    String::from_utf8(buf).map_err(io::Error::other)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn write_table(
    names: &[&str],
    types: &[&DataType],
    rows: &[Vec<Option<String>>],
    out: &mut dyn Write,
) -> io::Result<()> {
    let cell = |c: &Option<String>| c.as_deref().unwrap_or("null").replace(['\n', '\r'], " ");
    let mut widths: Vec<usize> = names.iter().map(|n| width(n)).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(c));
        }
    }
    let line = |values: &[String], out: &mut dyn Write| -> io::Result<()> {
        let mut s = String::new();
        for (i, (v, w)) in values.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            let pad = " ".repeat(w - width(v));
            if is_numeric(types[i]) {
                s.push_str(&pad);
                s.push_str(v);
            } else {
                s.push_str(v);
                if i + 1 < values.len() {
                    s.push_str(&pad);
                }
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    let header: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    line(&header, out)?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for r in &cells {
        line(r, out)?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv(names: &[&str], rows: &[Vec<Option<String>>], out: &mut dyn Write) -> io::Result<()> {
    let header: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
    writeln!(out, "{}", header.join(","))?;
    for r in rows {
        let fields: Vec<String> = r
            .iter()
            .map(|c| c.as_deref().map(csv_field).unwrap_or_default())
            .collect();
        writeln!(out, "{}", fields.join(","))?;
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn write_json(
    names: &[&str],
    types: &[&DataType],
    rows: &[Vec<Option<String>>],
    out: &mut dyn Write,
) -> io::Result<()> {
    let kinds: Vec<JsonKind> = types.iter().map(|t| json_kind(t)).collect();
    let keys: Vec<String> = names.iter().map(|n| json_str(n)).collect();
    for r in rows {
        let mut s = String::from("{");
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&keys[i]);
            s.push(':');
            match (c, kinds[i]) {
                (None, _) => s.push_str("null"),
                (Some(v), JsonKind::Number | JsonKind::Bool) => s.push_str(v),
                (Some(v), JsonKind::Float) => {
                    if v.parse::<f64>().is_ok_and(f64::is_finite) {
                        s.push_str(v);
                    } else {
                        s.push_str("null");
                    }
                }
                (Some(v), JsonKind::Text) => s.push_str(&json_str(v)),
            }
        }
        s.push('}');
        writeln!(out, "{s}")?;
    }
    Ok(())
}
