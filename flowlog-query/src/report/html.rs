//! The report as one self-contained HTML page: inline CSS and SVG, no script, no
//! fonts, images or anything else fetched, so it opens anywhere offline.

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};

use super::{
    bucket_name,
    chart::{self, esc, Series},
    float_column, int_column, text_column, truncated, Chart, Panel, Report, MAX_TABLE_ROWS,
};
use crate::output;

const CSS: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2d3d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 6px; font-size: 22px; }
header .meta { color: #c9d3de; font-size: 13px; }
nav { padding: 8px 32px; background: #e9edf2; position: sticky; top: 0; }
nav a { margin-right: 18px; color: #1f4e79; text-decoration: none; font-weight: 600; }
main { padding: 8px 32px 40px; max-width: 1100px; }
section > h2 { border-bottom: 2px solid #1f2d3d; padding-bottom: 4px; margin-top: 32px; }
.panel { background: #fff; border: 1px solid #dde2e8; border-radius: 6px; padding: 12px 16px; margin: 16px 0; }
.panel h3 { margin: 0 0 4px; font-size: 16px; }
.panel p.note { margin: 0 0 8px; color: #555; }
svg.chart { display: block; margin: 6px 0; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg text.axis { fill: #666; font-size: 11px; }
svg text.legend { font-size: 12px; }
svg text.value { font-size: 11px; fill: #444; }
svg text.cell.dark { fill: #fff; }
svg line.grid { stroke: #e6e6e6; }
svg line.axisline { stroke: #999; }
table { border-collapse: collapse; font-size: 12px; margin-top: 6px; }
th, td { border: 1px solid #e1e4e8; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f0f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.null { color: #999; }
details summary { cursor: pointer; color: #1f4e79; margin-top: 6px; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
.more { color: #777; font-size: 12px; }
"#;

fn time_text(t: i64, tz: chrono_tz::Tz) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

/// `10.0.0.1:80`, `[fd00::1]:80`, or the address alone without a port (`-`).
fn addr_port(addr: &str, port: &str) -> String {
    if port == "-" {
        addr.to_string()
    } else if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The SVG of a panel's chart (empty for [`Chart::None`]).
pub fn chart_svg(panel: &Panel, bucket: i64, tz: chrono_tz::Tz) -> String {
    let r = &panel.result;
    let title = &panel.spec.title;
    match &panel.spec.chart {
        Chart::None => String::new(),
        Chart::Lines {
            x,
            series,
            y,
            measure,
        } => {
            let xs = int_column(r, x);
            let keys = series.map(|s| text_column(r, s));
            let mut by_name: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            for col in y {
                let ys = float_column(r, col);
                for (i, (t, v)) in xs.iter().zip(&ys).enumerate() {
                    let (Some(t), Some(v)) = (t, v) else { continue };
                    let name = match &keys {
                        Some(k) => {
                            let key = k[i].clone().unwrap_or_else(|| "null".into());
                            if y.len() > 1 {
                                format!("{key} {col}")
                            } else {
                                key
                            }
                        }
                        None => col.to_string(),
                    };
                    if !by_name.contains_key(&name) {
                        order.push(name.clone());
                    }
                    by_name.entry(name).or_default().push((*t, *v));
                }
            }
            if keys.is_some() {
                order.sort();
            }
            let series: Vec<Series> = order
                .into_iter()
                .map(|name| Series {
                    points: by_name.remove(&name).unwrap_or_default(),
                    name,
                })
                .collect();
            chart::lines(&series, bucket, *measure, tz, title)
        }
        Chart::Bars {
            labels,
            values,
            stacked,
            measure,
        } => {
            let label_cols: Vec<Vec<Option<String>>> =
                labels.iter().map(|l| text_column(r, l)).collect();
            let n = r.num_rows();
            let names: Vec<String> = (0..n)
                .map(|i| {
                    let parts: Vec<String> = label_cols
                        .iter()
                        .map(|c| c[i].clone().unwrap_or_else(|| "null".into()))
                        .collect();
                    if parts.len() == 5 {
                        // proto src sport dst dport
                        format!(
                            "{} {} → {}",
                            parts[0],
                            addr_port(&parts[1], &parts[2]),
                            addr_port(&parts[3], &parts[4])
                        )
                    } else if parts.len() == 2 && labels[0].starts_with("src") {
                        format!("{} → {}", parts[0], parts[1])
                    } else if parts.len() == 2 && labels[1] == "dport" {
                        addr_port(&parts[0], &parts[1])
                    } else {
                        parts.join(" ")
                    }
                })
                .collect();
            let cols: Vec<Vec<Option<f64>>> = values.iter().map(|v| float_column(r, v)).collect();
            let rows: Vec<Vec<f64>> = (0..n)
                .map(|i| cols.iter().map(|c| c[i].unwrap_or(0.0)).collect())
                .collect();
            let series: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            chart::bars(&names, &series, &rows, *stacked, *measure, title)
        }
        Chart::Matrix {
            row,
            col,
            value,
            measure,
        } => {
            let rs = text_column(r, row);
            let cs = text_column(r, col);
            let vs = float_column(r, value);
            let mut rows: Vec<String> = Vec::new();
            let mut cols: Vec<String> = Vec::new();
            let mut cells = BTreeMap::new();
            for ((a, b), v) in rs.iter().zip(&cs).zip(&vs) {
                let a = a.clone().unwrap_or_else(|| "null".into());
                let b = b.clone().unwrap_or_else(|| "null".into());
                let i = rows.iter().position(|x| *x == a).unwrap_or_else(|| {
                    rows.push(a.clone());
                    rows.len() - 1
                });
                let j = cols.iter().position(|x| *x == b).unwrap_or_else(|| {
                    cols.push(b.clone());
                    cols.len() - 1
                });
                *cells.entry((i, j)).or_insert(0.0) += v.unwrap_or(0.0);
            }
            chart::matrix(&rows, &cols, &cells, *measure, title)
        }
    }
}

fn table_html(panel: &Panel) -> String {
    let r = &panel.result;
    let shown = truncated(r, MAX_TABLE_ROWS);
    let mut s = String::from("<table><thead><tr>");
    let numeric: Vec<bool> = r
        .schema
        .fields()
        .iter()
        .map(|f| {
            let t = f.data_type();
            t.is_integer()
                || t.is_floating()
                || matches!(t, datafusion::arrow::datatypes::DataType::Decimal128(..))
        })
        .collect();
    for f in r.schema.fields() {
        let _ = write!(s, "<th>{}</th>", esc(f.name()));
    }
    s.push_str("</tr></thead><tbody>");
    for row in output::rows(&shown).unwrap_or_default() {
        s.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            match c {
                Some(v) if numeric[i] => {
                    let _ = write!(s, r#"<td class="num">{}</td>"#, esc(v));
                }
                Some(v) => {
                    let _ = write!(s, "<td>{}</td>", esc(v));
                }
                None => s.push_str(r#"<td class="null">null</td>"#),
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    let n = r.num_rows();
    if n > MAX_TABLE_ROWS {
        let _ = write!(
            s,
            r#"<p class="more">first {MAX_TABLE_ROWS} of {n} rows</p>"#
        );
    } else if n == 0 {
        s.push_str(r#"<p class="more">no rows</p>"#);
    }
    s
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let tz = report.tz;
    let mut s = String::with_capacity(256 * 1024);
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    s.push_str("<title>flowlog report</title><style>");
    s.push_str(CSS);
    s.push_str("</style></head><body><header><h1>flowlog report</h1><div class=\"meta\">");
    let span = match report.span {
        Some((a, b)) => format!(
            "records starting {} to {}",
            esc(&time_text(a, tz)),
            esc(&time_text(b, tz))
        ),
        None => "no records".to_string(),
    };
    let _ = write!(
        s,
        "{span} · {} file{} · times in {} · charts per {} · generated {}",
        report.files.len(),
        if report.files.len() == 1 { "" } else { "s" },
        esc(tz.name()),
        esc(&bucket_name(report.bucket)),
        esc(&time_text(report.generated, tz))
    );
    if report.range.from.is_some() || report.range.to.is_some() {
        let f = report.range.from.map_or("…".into(), |t| time_text(t, tz));
        let t = report.range.to.map_or("…".into(), |t| time_text(t, tz));
        let _ = write!(s, " · range {} – {}", esc(&f), esc(&t));
    }
    s.push_str("</div></header><nav>");
    for sec in &report.sections {
        let _ = write!(s, "<a href=\"#{}\">{}</a>", sec.id, esc(sec.title));
    }
    s.push_str("</nav><main>");
    for sec in &report.sections {
        let _ = write!(s, "<section id=\"{}\"><h2>{}</h2>", sec.id, esc(sec.title));
        for p in &sec.panels {
            let _ = write!(
                s,
                "<div class=\"panel\" id=\"panel-{}\"><h3>{}</h3><p class=\"note\">{}</p>",
                p.spec.id,
                esc(&p.spec.title),
                esc(&p.spec.note)
            );
            s.push_str(&chart_svg(p, report.bucket, tz));
            // Time series tables are long: folded under their chart.
            let n = p.result.num_rows();
            let open = if matches!(p.spec.chart, Chart::Lines { .. }) {
                ""
            } else {
                " open"
            };
            let _ = write!(
                s,
                "<details class=\"table\"{open}><summary>Table ({n} row{})</summary>{}</details>",
                if n == 1 { "" } else { "s" },
                table_html(p)
            );
            let _ = write!(
                s,
                "<details><summary>Query</summary><pre>{}</pre></details></div>",
                esc(&p.spec.query)
            );
        }
        s.push_str("</section>");
    }
    s.push_str("<details><summary>Files</summary><pre>");
    for f in &report.files {
        s.push_str(&esc(f));
        s.push('\n');
    }
    s.push_str("</pre></details></main></body></html>\n");
    s
}
