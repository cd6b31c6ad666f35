//! The `text` format of a sink: AWS-style space-separated records, one per line, with
//! a header line naming the fields (at the top of every file a `file` sink starts, and
//! once on stdout).
//!
//! ```text
//! version account-id eni-id srcaddr dstaddr srcport dstport protocol packets bytes ...
//! 1 - eth0 10.0.0.1 10.0.0.2 40000 5001 17 12 5936 ...
//! ```
//!
//! The agent renders each window once, as the contract's JSON lines; a text sink turns
//! those lines into the chosen fields (default: the contract's base fields in order).
//! A field a record lacks is `-`; a value can hold no space (the contract's values do
//! not), and one that would is written with `_` instead, never splitting a column.
use crate::record::BASE_FIELDS;

/// Field list and conversion of the `text` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFormat {
    pub fields: Vec<String>,
}

impl Default for TextFormat {
    fn default() -> Self {
        TextFormat {
            fields: BASE_FIELDS.iter().map(|f| f.to_string()).collect(),
        }
    }
}

impl TextFormat {
    /// The header line.
    pub fn header(&self) -> Vec<u8> {
        let mut h = self.fields.join(" ").into_bytes();
        h.push(b'\n');
        h
    }

    /// Converts JSON lines (whole lines) to text lines. A line that is not a JSON
    /// object is passed through unchanged (it cannot come from the agent).
    pub fn convert(&self, json_lines: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(json_lines.len() / 2);
        for line in json_lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(line) else {
                out.extend_from_slice(line);
                out.push(b'\n');
                continue;
            };
            for (i, f) in self.fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                match map.get(f) {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => {
                        out.extend(
                            s.bytes()
                                .map(|b| if b.is_ascii_whitespace() { b'_' } else { b }),
                        );
                    }
                    Some(v) if !v.is_string() && !v.is_null() => {
                        out.extend_from_slice(v.to_string().as_bytes())
                    }
                    _ => out.push(b'-'),
                }
            }
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_records_to_the_chosen_columns() {
        let f = TextFormat {
            fields: vec![
                "srcaddr".into(),
                "dstaddr".into(),
                "packets".into(),
                "rule-id".into(),
                "src-pod-name".into(),
            ],
        };
        assert_eq!(
            f.header(),
            b"srcaddr dstaddr packets rule-id src-pod-name\n"
        );
        let json = b"{\"srcaddr\":\"10.0.0.1\",\"dstaddr\":\"10.0.0.2\",\"packets\":\"12\",\"src-pod-name\":\"a b\"}\n{\"srcaddr\":\"-\",\"packets\":\"-\"}\n";
        assert_eq!(f.convert(json), b"10.0.0.1 10.0.0.2 12 - a_b\n- - - - -\n");
        let d = TextFormat::default();
        assert_eq!(d.fields.len(), 21);
        assert!(d.header().starts_with(b"version account-id eni-id"));
    }
}
