//! Result rows, targets, the printed table and `target/bench/summary.json`.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::json;

#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
            Target::Below(t) => v < t,
        }
    }

    fn show(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {}", num(t)),
            Target::AtLeast(t) => format!(">= {}", num(t)),
            Target::Below(t) => format!("< {}", num(t)),
        }
    }
}

/// How `ratio` relates to `value` and `baseline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatioKind {
    /// `value / baseline` (same unit).
    OverBaseline,
    /// The value is itself a ratio of two same-run figures; `baseline` is the
    /// denominator's absolute figure and `ratio` repeats the value.
    IsValue,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: f64,
    /// Unit and meaning of the baseline, for the table.
    pub baseline_desc: String,
    pub ratio_kind: RatioKind,
    pub target: Option<Target>,
    pub note: String,
    /// Relative spread of the run's baseline samples, when it is large enough to move
    /// the row across its target (see [`NOISY`]): the status says so.
    pub noise: Option<f64>,
}

/// Baseline spread (MAD/median) above which a targeted row's status is marked as from
/// a noisy run: the veth targets are a few percent wide, a quiet run spreads about 1 %.
pub const NOISY: f64 = 0.02;

impl Row {
    pub fn new(name: &str, value: f64, unit: &str, baseline: f64, baseline_desc: &str) -> Row {
        Row {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline,
            baseline_desc: baseline_desc.to_owned(),
            ratio_kind: RatioKind::OverBaseline,
            target: None,
            note: String::new(),
            noise: None,
        }
    }

    /// Records the spread of the baseline samples behind the row (marked when above
    /// [`NOISY`]).
    pub fn spread(mut self, spread: f64) -> Row {
        self.noise = (spread > NOISY).then_some(spread);
        self
    }

    pub fn ratio_is_value(mut self) -> Row {
        self.ratio_kind = RatioKind::IsValue;
        self
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }

    pub fn ratio(&self) -> f64 {
        match self.ratio_kind {
            RatioKind::IsValue => self.value,
            RatioKind::OverBaseline if self.baseline != 0.0 => self.value / self.baseline,
            RatioKind::OverBaseline => f64::NAN,
        }
    }

    fn status(&self) -> String {
        let s = match self.target {
            Some(t) if t.met(self.value) => "met",
            Some(_) => "MISSED",
            None => return String::new(),
        };
        match self.noise {
            Some(n) => format!("{s} (noisy run: baseline spread {:.1} %)", n * 100.0),
            None => s.to_owned(),
        }
    }
}

/// A number with a sensible number of digits.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 100_000.0 {
        let mut s = format!("{:.0}", v.abs());
        let mut i = s.len() as isize - 3;
        while i > 0 {
            s.insert(i as usize, ',');
            i -= 3;
        }
        if v < 0.0 {
            s.insert(0, '-');
        }
        s
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        // Round to 6 significant-ish decimals so the file stays readable.
        json!((v * 1e6).round() / 1e6)
    } else {
        serde_json::Value::Null
    }
}

/// The markdown table (also printed).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| metric | value | baseline (same run) | ratio | target | status |\n");
    s.push_str("|---|---:|---|---:|---|---|\n");
    for r in rows {
        let ratio = match r.ratio_kind {
            RatioKind::IsValue => "= value".to_owned(),
            RatioKind::OverBaseline => num(r.ratio()),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} {} | {} {} | {} | {} | {} |",
            r.name,
            num(r.value),
            r.unit,
            num(r.baseline),
            r.baseline_desc,
            ratio,
            r.target.map(Target::show).unwrap_or_default(),
            r.status(),
        );
    }
    s
}

pub fn notes(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(s, "- `{}`: {}", r.name, r.note);
    }
    s
}

pub fn write_summary(path: &Path, rows: &[Row]) -> Result<()> {
    let arr: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "value": json_num(r.value),
                "unit": r.unit,
                "baseline": json_num(r.baseline),
                "ratio": json_num(r.ratio()),
            })
        })
        .collect();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_string_pretty(&arr)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Median of a sample (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if !n.is_multiple_of(2) {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Mean after dropping the lowest and highest `trim` fraction (interrupts, cache
/// misses of the first run).
pub fn trimmed_mean(v: &[f64], trim: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((s.len() as f64) * trim) as usize;
    let kept = &s[k..s.len() - k];
    kept.iter().sum::<f64>() / kept.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formatting() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(trimmed_mean(&[100.0, 1.0, 2.0, 3.0, 0.0], 0.2), 2.0);
        assert_eq!(num(1_234_567.0), "1,234,567");
        assert_eq!(num(-250_000.0), "-250,000");
        assert_eq!(num(42.25), "42.2");
        let r = Row::new("x", 30.0, "ns", 60.0, "ns").target(Target::AtMost(60.0));
        assert_eq!(r.ratio(), 0.5);
        assert_eq!(r.status(), "met");
        let noisy = Row::new("y", 0.9, "x", 1.0, "x")
            .target(Target::AtLeast(0.95))
            .spread(0.047);
        assert_eq!(noisy.status(), "MISSED (noisy run: baseline spread 4.7 %)");
        assert_eq!(r.spread(0.009).status(), "met");
    }
}
