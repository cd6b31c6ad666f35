//! The Parquet format of records (the destination, files in a partitioned tree, is
//! [`super::parquet`]): one column per field, named as in the contract.
//!
//! | columns | type | `-` / field absent |
//! |---|---|---|
//! | version, protocol, srcport, dstport, tcp-flags, traffic_path | INT32 | NULL |
//! | packets, bytes, start, end, skipped-streams, skipped-packets, skipped-bytes | INT64 | NULL |
//! | every other field (account-id, eni-id, srcaddr, action, log-status...) | UTF8 | `-` kept as written / NULL |
//!
//! Integers are integers, so `sum(bytes)` needs no cast; the text fields keep the
//! contract's values exactly (a NODATA record's `srcaddr` is `-`, as in JSON). The
//! columns are the 21 base fields in the contract's order, the SKIPDATA counters,
//! then with `--record-format extended` `rule-id` and `record-id`, then with pod
//! metadata (Kubernetes) `node-name`, the pod name and namespace of each side and
//! one column per copied label. Every column is nullable.
use std::sync::Arc;

use arrow_array::{
    builder::{Int32Builder, Int64Builder, StringBuilder},
    ArrayRef, RecordBatch,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

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

/// The type of a field's column.
pub fn data_type(field: &str) -> DataType {
    if INT32.contains(&field) {
        DataType::Int32
    } else if INT64.contains(&field) {
        DataType::Int64
    } else {
        DataType::Utf8
    }
}

/// The columns of a sink's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetColumns {
    pub fields: Vec<String>,
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

    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| Field::new(f, data_type(f), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// One record batch of JSON lines (whole lines; the agent renders every value as
    /// a string). Returns it with the smallest `start` (the window's partition).
    /// A line that is not a JSON object is skipped (the agent never writes one).
    pub fn batch(
        &self,
        schema: &SchemaRef,
        json_lines: &[u8],
    ) -> Result<(RecordBatch, Option<i64>), ArrowError> {
        enum Col {
            I32(Int32Builder),
            I64(Int64Builder),
            Str(StringBuilder),
        }
        let mut cols: Vec<Col> = self
            .fields
            .iter()
            .map(|f| match data_type(f) {
                DataType::Int32 => Col::I32(Int32Builder::new()),
                DataType::Int64 => Col::I64(Int64Builder::new()),
                _ => Col::Str(StringBuilder::new()),
            })
            .collect();
        let mut min_start: Option<i64> = None;
        for line in json_lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(line) else {
                continue;
            };
            let text = |f: &str| -> Option<String> {
                match map.get(f)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    v => Some(v.to_string()),
                }
            };
            for (f, col) in self.fields.iter().zip(cols.iter_mut()) {
                let v = text(f);
                match col {
                    Col::I32(b) => b.append_option(v.and_then(|s| s.parse().ok())),
                    Col::I64(b) => {
                        let n = v.and_then(|s| s.parse().ok());
                        if f == "start" {
                            if let Some(n) = n {
                                min_start = Some(min_start.map_or(n, |m: i64| m.min(n)));
                            }
                        }
                        b.append_option(n)
                    }
                    Col::Str(b) => b.append_option(v),
                }
            }
        }
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| match c {
                Col::I32(mut b) => Arc::new(b.finish()) as ArrayRef,
                Col::I64(mut b) => Arc::new(b.finish()) as ArrayRef,
                Col::Str(mut b) => Arc::new(b.finish()) as ArrayRef,
            })
            .collect();
        Ok((RecordBatch::try_new(Arc::clone(schema), arrays)?, min_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int32Array, Int64Array, StringArray};

    #[test]
    fn typed_columns_and_dash_as_null() {
        let cols = ParquetColumns::new(true, None);
        assert_eq!(cols.fields.len(), 21 + 4 + 2);
        let schema = cols.schema();
        let json = b"{\"version\":\"1\",\"srcaddr\":\"10.0.0.1\",\"srcport\":\"40000\",\"packets\":\"12\",\"bytes\":\"5936\",\"start\":\"1795305786\",\"tcp-flags\":\"-\",\"log-status\":\"OK\",\"rule-id\":\"100\",\"record-id\":\"00ff\"}\n{\"version\":\"1\",\"srcaddr\":\"-\",\"packets\":\"-\",\"start\":\"1795305780\",\"log-status\":\"NODATA\"}\nnot json\n";
        let (b, min) = cols.batch(&schema, json).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(min, Some(1_795_305_780));
        let col = |n: &str| b.column(schema.index_of(n).unwrap()).clone();
        let packets = col("packets");
        let packets = packets.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((packets.value(0), packets.is_null(1)), (12, true));
        let port = col("srcport");
        let port = port.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((port.value(0), port.is_null(1)), (40000, true));
        let flags = col("tcp-flags");
        assert!(flags.is_null(0));
        let src = col("srcaddr");
        let src = src.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((src.value(0), src.value(1)), ("10.0.0.1", "-"));
        let rid = col("record-id");
        assert!(rid.is_null(1));
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
