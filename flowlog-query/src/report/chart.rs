//! SVG charts, drawn in Rust: time lines, horizontal bars, and a matrix. Every
//! chart is one `<svg class="chart">` element with `<title>` tooltips, no script
//! and no external resource.

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::Measure;

/// Colours for series without a meaning of their own.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#59a14f", "#e15759",
];

/// A colour for series `name` (accepted green, rejected red, in blue, out
/// orange), else the palette's `i`th.
pub fn color(name: &str, i: usize) -> &'static str {
    let n = name.to_ascii_lowercase();
    if n.contains("reject") {
        "#e15759"
    } else if n.contains("accept") {
        "#59a14f"
    } else if n.starts_with("in_") {
        PALETTE[0]
    } else if n.starts_with("out_") {
        PALETTE[1]
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

/// Escape text for HTML/SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value with its unit: `1.5 MB`, `12 Mbit/s`, `3.4k`.
pub fn human(v: f64, m: Measure) -> String {
    let (units, suffix): (&[&str], &str) = match m {
        Measure::Bytes => (&["B", "kB", "MB", "GB", "TB", "PB"], ""),
        Measure::BitsPerSecond => (&["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"], ""),
        Measure::Count => (&["", "k", "M", "G", "T"], ""),
    };
    let mut x = v;
    let mut i = 0;
    while x.abs() >= 1000.0 && i + 1 < units.len() {
        x /= 1000.0;
        i += 1;
    }
    let num = if (i == 0 && x.fract() == 0.0) || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    let num = if num.contains('.') {
        num.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        num
    };
    let unit = units[i];
    if unit.is_empty() || matches!(m, Measure::Count) {
        format!("{num}{unit}{suffix}")
    } else {
        format!("{num} {unit}{suffix}")
    }
}

/// A "nice" axis maximum and step for values up to `max`.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn local_label(t: i64, tz: Tz, with_date: bool) -> String {
    let Some(dt) = DateTime::<Utc>::from_timestamp(t, 0) else {
        return t.to_string();
    };
    let dt = dt.with_timezone(&tz);
    if with_date {
        dt.format("%m-%d %H:%M").to_string()
    } else {
        dt.format("%H:%M").to_string()
    }
}

/// One named line: (x unix seconds, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 960.0;

/// Width of a legend entry, roughly.
fn legend_width(name: &str) -> f64 {
    16.0 + 7.5 * name.chars().count() as f64 + 22.0
}

/// Rows the legend of `names` takes.
fn legend_rows(names: &[(String, &'static str)]) -> usize {
    let mut rows = 1;
    let mut x = 70.0;
    for (name, _) in names {
        let w = legend_width(name);
        if x + w > W - 10.0 && x > 70.0 {
            rows += 1;
            x = 70.0;
        }
        x += w;
    }
    rows
}

/// Draw the legend from baseline `y`, wrapping at the chart's width.
fn legend(svg: &mut String, names: &[(String, &'static str)], mut y: f64) {
    let mut x = 70.0;
    for (name, col) in names {
        let w = legend_width(name);
        if x + w > W - 10.0 && x > 70.0 {
            y += 18.0;
            x = 70.0;
        }
        let _ = write!(
            svg,
            r#"<rect x="{x:.0}" y="{:.0}" width="12" height="12" fill="{col}"/><text x="{:.0}" y="{:.0}" class="legend">{}</text>"#,
            y - 10.0,
            x + 16.0,
            y,
            esc(name)
        );
        x += w;
    }
}

/// Lines over time; buckets without a point are drawn as zero.
pub fn lines(series: &[Series], bucket: i64, measure: Measure, tz: Tz, title: &str) -> String {
    let names: Vec<(String, &'static str)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), color(&s.name, i)))
        .collect();
    let extra = 18.0 * (legend_rows(&names) - 1) as f64;
    let h = 300.0 + extra;
    let (left, right, top, bottom) = (70.0, 20.0, 34.0 + extra, 36.0);
    let (pw, ph) = (W - left - right, h - top - bottom);
    let mut svg = format!(
        r#"<svg class="chart lines" viewBox="0 0 {W} {h}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
    let xs: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let (Some(&x0), Some(&x1)) = (xs.iter().min(), xs.iter().max()) else {
        svg.push_str(
            r#"<text x="480" y="150" class="empty" text-anchor="middle">no data</text></svg>"#,
        );
        return svg;
    };
    // Zero-filled values per bucket.
    let filled: Vec<Vec<(i64, f64)>> = series
        .iter()
        .map(|s| {
            let map: BTreeMap<i64, f64> = s.points.iter().copied().collect();
            let mut v = Vec::new();
            let mut t = x0;
            while t <= x1 {
                v.push((t, map.get(&t).copied().unwrap_or(0.0)));
                t += bucket.max(1);
            }
            v
        })
        .collect();
    let max = filled.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
    let (ymax, step) = nice_axis(max);
    let span = (x1 - x0).max(1) as f64;
    let px = |t: i64| {
        left + if x1 == x0 {
            pw / 2.0
        } else {
            (t - x0) as f64 / span * pw
        }
    };
    let py = |v: f64| top + ph - v / ymax * ph;
    // Grid and y labels.
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let y = py(v);
        let _ = write!(
            svg,
            r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="axis" text-anchor="end">{}</text>"#,
            left + pw,
            left - 6.0,
            y + 4.0,
            esc(&human(v, measure))
        );
        v += step;
    }
    // X ticks.
    let with_date = x1 - x0 >= 86_400;
    let tick = [
        60, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800,
    ]
    .iter()
    .copied()
    .find(|t| (x1 - x0) / t <= 8)
    .unwrap_or(604_800)
    .max(bucket);
    let mut t = x0 + (tick - x0.rem_euclid(tick)) % tick;
    while t <= x1 {
        let x = px(t);
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            top + ph,
            top + ph + 16.0,
            local_label(t, tz, with_date)
        );
        t += tick;
    }
    let _ = write!(
        svg,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" class="axisline"/>"#,
        top + ph,
        left + pw,
        top + ph
    );
    for (i, (s, pts)) in series.iter().zip(&filled).enumerate() {
        let col = color(&s.name, i);
        let path: Vec<String> = pts
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", px(*t), py(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{col}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            esc(&s.name)
        );
        if pts.len() <= 240 {
            for (t, v) in pts {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{col}"><title>{} {}: {}</title></circle>"#,
                    px(*t),
                    py(*v),
                    esc(&s.name),
                    local_label(*t, tz, true),
                    esc(&human(*v, measure))
                );
            }
        }
    }
    legend(&mut svg, &names, 18.0);
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars: one row per label, one segment (stacked) or thin bar
/// (grouped) per series.
pub fn bars(
    labels: &[String],
    series: &[String],
    values: &[Vec<f64>],
    stacked: bool,
    measure: Measure,
    title: &str,
) -> String {
    let names: Vec<(String, &'static str)> = series
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), color(n, i)))
        .collect();
    let groups = if stacked { 1 } else { series.len().max(1) };
    let row_h = if stacked {
        24.0
    } else {
        12.0 * groups as f64 + 10.0
    };
    let (top, left, right) = (34.0 + 18.0 * (legend_rows(&names) - 1) as f64, 330.0, 110.0);
    let h = top + row_h * labels.len().max(1) as f64 + 10.0;
    let pw = W - left - right;
    let mut svg = format!(
        r#"<svg class="chart bars" viewBox="0 0 {W} {h:.0}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
    if labels.is_empty() {
        svg.push_str(
            r#"<text x="480" y="60" class="empty" text-anchor="middle">no data</text></svg>"#,
        );
        return svg;
    }
    let totals: Vec<f64> = values
        .iter()
        .map(|row| {
            if stacked {
                row.iter().sum()
            } else {
                row.iter().copied().fold(0.0, f64::max)
            }
        })
        .collect();
    let max = totals.iter().copied().fold(0.0f64, f64::max);
    let scale = if max > 0.0 { pw / max } else { 0.0 };
    for (r, (label, row)) in labels.iter().zip(values).enumerate() {
        let y0 = top + r as f64 * row_h;
        let shown: String = if label.chars().count() > 48 {
            label.chars().take(47).collect::<String>() + "…"
        } else {
            label.clone()
        };
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.1}" class="label" text-anchor="end">{}<title>{}</title></text>"#,
            left - 8.0,
            y0 + row_h / 2.0 + 4.0,
            esc(&shown),
            esc(label)
        );
        let mut x = left;
        for (i, (name, v)) in series.iter().zip(row).enumerate() {
            let col = color(name, i);
            let w = (v * scale).max(if *v > 0.0 { 1.0 } else { 0.0 });
            let (bx, by, bh) = if stacked {
                (x, y0 + 4.0, row_h - 8.0)
            } else {
                (left, y0 + 5.0 + 12.0 * i as f64, 10.0)
            };
            let _ = write!(
                svg,
                r#"<rect class="bar" x="{bx:.1}" y="{by:.1}" width="{w:.1}" height="{bh:.1}" fill="{col}"><title>{} — {}: {}</title></rect>"#,
                esc(label),
                esc(name),
                esc(&human(*v, measure))
            );
            if stacked {
                x += w;
            } else {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" class="value">{}</text>"#,
                    bx + w + 4.0,
                    by + 9.0,
                    esc(&human(*v, measure))
                );
            }
        }
        if stacked {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" class="value">{}</text>"#,
                x + 4.0,
                y0 + row_h / 2.0 + 4.0,
                esc(&human(totals[r], measure))
            );
        }
    }
    legend(&mut svg, &names, 18.0);
    svg.push_str("</svg>");
    svg
}

/// A matrix of `rows` × `cols`, cells shaded by value (log scale).
pub fn matrix(
    rows: &[String],
    cols: &[String],
    cells: &BTreeMap<(usize, usize), f64>,
    measure: Measure,
    title: &str,
) -> String {
    let (left, top, cw, ch) = (170.0, 40.0, 130.0, 34.0);
    let w = left + cw * cols.len().max(1) as f64 + 20.0;
    let h = top + ch * rows.len().max(1) as f64 + 10.0;
    let mut svg = format!(
        r#"<svg class="chart matrix" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
    if rows.is_empty() || cols.is_empty() {
        svg.push_str(r#"<text x="100" y="60" class="empty">no data</text></svg>"#);
        return svg;
    }
    let max = cells.values().copied().fold(0.0f64, f64::max);
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">→ {}</text>"#,
            left + cw * j as f64 + cw / 2.0,
            top - 10.0,
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + ch * i as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="end">{} →</text>"#,
            left - 8.0,
            y + ch / 2.0 + 4.0,
            esc(r)
        );
        for (j, c) in cols.iter().enumerate() {
            let x = left + cw * j as f64;
            let v = cells.get(&(i, j)).copied().unwrap_or(0.0);
            let t = if v > 0.0 && max > 0.0 {
                0.15 + 0.85 * (v.ln_1p() / max.ln_1p())
            } else {
                0.0
            };
            let fill = format!("rgba(78,121,167,{t:.3})");
            let text_class = if t > 0.6 { "cell dark" } else { "cell" };
            let _ = write!(
                svg,
                r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}" stroke="#ccc"><title>{} → {}: {}</title></rect><text x="{:.1}" y="{:.1}" class="{text_class}" text-anchor="middle">{}</text>"##,
                x,
                y,
                cw,
                ch,
                esc(r),
                esc(c),
                esc(&human(v, measure)),
                x + cw / 2.0,
                y + ch / 2.0 + 4.0,
                if v > 0.0 {
                    esc(&human(v, measure))
                } else {
                    "·".to_string()
                }
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human(0.0, Measure::Bytes), "0 B");
        assert_eq!(human(999.0, Measure::Bytes), "999 B");
        assert_eq!(human(1500.0, Measure::Bytes), "1.5 kB");
        assert_eq!(human(12_345_678.0, Measure::Bytes), "12.3 MB");
        assert_eq!(human(2_000_000.0, Measure::BitsPerSecond), "2 Mbit/s");
        assert_eq!(human(3400.0, Measure::Count), "3.4k");
        assert_eq!(human(7.0, Measure::Count), "7");
    }

    #[test]
    fn axes() {
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
        assert_eq!(nice_axis(95.0), (100.0, 25.0));
        assert_eq!(nice_axis(1_234.0), (1_500.0, 500.0));
    }

    #[test]
    fn svg_is_escaped() {
        let s = bars(
            &["<a&b>".into()],
            &["x".into()],
            &[vec![1.0]],
            true,
            Measure::Count,
            "t\"",
        );
        assert!(s.contains("&lt;a&amp;b&gt;"));
        assert!(!s.contains("<a&b>"));
        assert!(s.contains("aria-label=\"t&quot;\""));
    }
}
