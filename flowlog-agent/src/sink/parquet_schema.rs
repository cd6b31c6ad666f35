//! The Parquet format of records (the destination, files in a partitioned tree, is
//! [`super::parquet`]): one column per field, named as in the contract.
//!
//! | columns | type | `-` / field absent |
//! |---|---|---|
//! | version, protocol, srcport, dstport, tcp-flags, traffic_path | INT32 | NULL |
//! | packets, bytes, start, end, skipped-streams, skipped-packets, skipped-bytes | INT64 | NULL |
//! | every other field (account-id, eni-id, srcaddr, action, log-status...) | UTF8 string | `-` kept as written / NULL |
//!
//! Integers are integers, so `sum(bytes)` needs no cast; the text fields keep the
//! contract's values exactly (a NODATA record's `srcaddr` is `-`, as in JSON). The
//! columns are the 21 base fields in the contract's order, the SKIPDATA counters,
//! then with `--record-format extended` `rule-id` and `record-id`, then with pod
//! metadata (Kubernetes) `node-name`, the pod name and namespace of each side and
//! one column per copied label. Every column is optional (nullable).
//!
//! The columns are built straight from the JSON lines and written with the
//! `parquet` crate's column writers (no Arrow in-memory layer: it would double the
//! agent's binary for nothing the agent needs).
use std::sync::Arc;

use parquet::{
    basic::{LogicalType, Repetition, Type as PhysicalType},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    errors::ParquetError,
    file::writer::SerializedFileWriter,
    schema::types::{Type, TypePtr},
};

use crate::record::BASE_FIELDS;

/// 32-bit integer fields.
const INT32: [&str; 6] = [
    "version",
    "protocol",
    "srcport",
    "dstport",
    "tcp-flags",
    "traffic_path",
];
/// 64-bit integer fields.
const INT64: [&str; 7] = [
    "packets",
    "bytes",
    "start",
    "end",
    "skipped-streams",
    "skipped-packets",
    "skipped-bytes",
];

/// Fields every record may carry beyond the base set.
const SKIP_FIELDS: [&str; 4] = [
    "skipped-streams",
    "skipped-packets",
    "skipped-bytes",
    "skipped-streams-lower-bound",
];

/// The extended format's fields.
pub const EXTENDED_FIELDS: [&str; 2] = ["rule-id", "record-id"];

/// The physical type of a field's column.
pub fn physical_type(field: &str) -> PhysicalType {
    if INT32.contains(&field) {
        PhysicalType::INT32
    } else if INT64.contains(&field) {
        PhysicalType::INT64
    } else {
        PhysicalType::BYTE_ARRAY
    }
}

/// The columns of a sink's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetColumns {
    pub fields: Vec<String>,
}

/// Values of one column for some rows, with definition levels (0: NULL).
#[derive(Debug)]
enum Values {
    I32(Vec<i32>),
    I64(Vec<i64>),
    Str(Vec<ByteArray>),
}

/// Rows of a window, column by column.
#[derive(Debug)]
pub struct Rows {
    columns: Vec<(Values, Vec<i16>)>,
    /// Rows held.
    pub len: usize,
    /// The smallest `start` among them (the window's partition).
    pub min_start: Option<i64>,
}

impl ParquetColumns {
    /// Base fields and SKIPDATA counters; `extended` adds `rule-id` and `record-id`;
    /// `pod_labels` (`Some` with pod metadata on) adds the pod fields.
    pub fn new(extended: bool, pod_labels: Option<&[String]>) -> Self {
        let mut fields: Vec<String> = BASE_FIELDS
            .iter()
            .chain(SKIP_FIELDS.iter())
            .map(|f| f.to_string())
            .collect();
        if extended {
            fields.extend(EXTENDED_FIELDS.iter().map(|f| f.to_string()));
        }
        if let Some(labels) = pod_labels {
            fields.push("node-name".into());
            for side in ["src", "dst"] {
                fields.push(format!("{side}-pod-name"));
                fields.push(format!("{side}-pod-namespace"));
                for l in labels {
                    fields.push(format!("{side}-pod-label-{l}"));
                }
            }
        }
        ParquetColumns { fields }
    }

    /// The Parquet schema (message `flowlog`, every column optional).
    pub fn schema(&self) -> Result<TypePtr, ParquetError> {
        let columns = self
            .fields
            .iter()
            .map(|f| {
                let t = physical_type(f);
                let mut b =
                    Type::primitive_type_builder(f, t).with_repetition(Repetition::OPTIONAL);
                if t == PhysicalType::BYTE_ARRAY {
                    b = b.with_logical_type(Some(LogicalType::String));
                }
                b.build().map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(
            Type::group_type_builder("flowlog")
                .with_fields(columns)
                .build()?,
        ))
    }

    /// No rows yet.
    pub fn empty(&self) -> Rows {
        Rows {
            columns: self
                .fields
                .iter()
                .map(|f| {
                    let v = match physical_type(f) {
                        PhysicalType::INT32 => Values::I32(Vec::new()),
                        PhysicalType::INT64 => Values::I64(Vec::new()),
                        _ => Values::Str(Vec::new()),
                    };
                    (v, Vec::new())
                })
                .collect(),
            len: 0,
            min_start: None,
        }
    }

    /// Appends the records of `json_lines` (whole lines; the agent renders every
    /// value as a string) to `rows`. A line that is not a JSON object is skipped
    /// (the agent never writes one); a value that is not a number in an integer
    /// column (`-`) is NULL.
    pub fn append(&self, rows: &mut Rows, json_lines: &[u8]) {
        for line in json_lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(line) else {
                continue;
            };
            for (f, (values, defs)) in self.fields.iter().zip(rows.columns.iter_mut()) {
                let text = match map.get(f) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.to_string()),
                };
                let defined = match values {
                    Values::I32(v) => text
                        .and_then(|s| s.parse::<i32>().ok())
                        .map(|n| v.push(n))
                        .is_some(),
                    Values::I64(v) => text
                        .and_then(|s| s.parse::<i64>().ok())
                        .map(|n| {
                            if f == "start" {
                                rows.min_start = Some(rows.min_start.map_or(n, |m| m.min(n)));
                            }
                            v.push(n)
                        })
                        .is_some(),
                    Values::Str(v) => text
                        .map(|s| v.push(ByteArray::from(s.into_bytes())))
                        .is_some(),
                };
                defs.push(i16::from(defined));
            }
            rows.len += 1;
        }
    }
}

/// Writes `rows` as one row group of `w`.
pub fn write_row_group<W: std::io::Write + Send>(
    w: &mut SerializedFileWriter<W>,
    rows: &Rows,
) -> Result<(), ParquetError> {
    let mut rg = w.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = rg.next_column()? {
        let (values, defs) = rows
            .columns
            .get(i)
            .ok_or_else(|| ParquetError::General("more columns than fields".into()))?;
        match values {
            Values::I32(v) => {
                col.typed::<Int32Type>().write_batch(v, Some(defs), None)?;
            }
            Values::I64(v) => {
                col.typed::<Int64Type>().write_batch(v, Some(defs), None)?;
            }
            Values::Str(v) => {
                col.typed::<ByteArrayType>()
                    .write_batch(v, Some(defs), None)?;
            }
        }
        col.close()?;
        i += 1;
    }
    rg.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field,
    };

    #[test]
    fn typed_columns_and_dash_as_null() {
        let cols = ParquetColumns::new(true, None);
        assert_eq!(cols.fields.len(), 21 + 4 + 2);
        let json = b"{\"version\":\"1\",\"srcaddr\":\"10.0.0.1\",\"srcport\":\"40000\",\"packets\":\"12\",\"bytes\":\"5936\",\"start\":\"1795305786\",\"tcp-flags\":\"-\",\"log-status\":\"OK\",\"rule-id\":\"100\",\"record-id\":\"00ff\"}\n{\"version\":\"1\",\"srcaddr\":\"-\",\"packets\":\"-\",\"start\":\"1795305780\",\"log-status\":\"NODATA\"}\nnot json\n";
        let mut rows = cols.empty();
        cols.append(&mut rows, json);
        assert_eq!(rows.len, 2);
        assert_eq!(rows.min_start, Some(1_795_305_780));

        let mut buf = Vec::new();
        let mut w = SerializedFileWriter::new(&mut buf, cols.schema().unwrap(), Default::default())
            .unwrap();
        write_row_group(&mut w, &rows).unwrap();
        w.close().unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(buf)).unwrap();
        let got: Vec<Vec<(String, Field)>> = r
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                row.unwrap()
                    .get_column_iter()
                    .map(|(n, f)| (n.clone(), f.clone()))
                    .collect()
            })
            .collect();
        let get = |row: usize, name: &str| {
            got[row]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(get(0, "packets"), Field::Long(12));
        assert_eq!(get(1, "packets"), Field::Null);
        assert_eq!(get(0, "srcport"), Field::Int(40000));
        assert_eq!(get(1, "srcport"), Field::Null);
        assert_eq!(get(0, "tcp-flags"), Field::Null);
        assert_eq!(get(0, "srcaddr"), Field::Str("10.0.0.1".into()));
        assert_eq!(get(1, "srcaddr"), Field::Str("-".into()));
        assert_eq!(get(0, "record-id"), Field::Str("00ff".into()));
        assert_eq!(get(1, "record-id"), Field::Null);

        let labels = ["app".to_string()];
        let k = ParquetColumns::new(false, Some(&labels));
        assert!(k.fields.ends_with(&[
            "dst-pod-name".to_string(),
            "dst-pod-namespace".into(),
            "dst-pod-label-app".into()
        ]));
        assert!(!k.fields.contains(&"record-id".to_string()));
    }
}
