//! The time range of `--since` / `--from` / `--to`, on the records' `start`.
//!
//! `--since 15m` keeps records that started in the last 15 minutes (units `s`, `m`,
//! `h`, `d`, `w`, combinable: `1h30m`). `--from T` and `--to T` take unix seconds or
//! RFC 3339 (`2024-07-12T09:10:00Z`, `2024-07-12T17:10:00+08:00`); `from` is
//! inclusive, `to` exclusive.

use chrono::DateTime;

use crate::error::QueryError;

/// A half-open range of unix seconds; `None` ends are open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    /// Everything.
    pub const ALL: TimeRange = TimeRange {
        from: None,
        to: None,
    };

    /// From the command-line flags; `now` is the current unix time.
    pub fn from_flags(
        since: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        now: i64,
    ) -> Result<TimeRange, QueryError> {
        if since.is_some() && (from.is_some() || to.is_some()) {
            return Err(QueryError::TimeRange(
                "--since cannot be combined with --from/--to".into(),
            ));
        }
        if let Some(since) = since {
            return Ok(TimeRange {
                from: Some(now - parse_duration(since)?),
                to: None,
            });
        }
        let range = TimeRange {
            from: from.map(parse_instant).transpose()?,
            to: to.map(parse_instant).transpose()?,
        };
        if let (Some(f), Some(t)) = (range.from, range.to) {
            if t <= f {
                return Err(QueryError::TimeRange(format!(
                    "--to ({t}) must be after --from ({f})"
                )));
            }
        }
        Ok(range)
    }

    /// Whether unix time `t` is in the range.
    pub fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }
}

/// `15m`, `90s`, `1h30m`, `2d`, `1w`: seconds.
pub fn parse_duration(s: &str) -> Result<i64, QueryError> {
    let bad = || {
        QueryError::TimeRange(format!(
            "{s:?} is not a duration such as 30s, 15m, 2h, 1d, 1h30m"
        ))
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: i64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

/// Unix seconds or RFC 3339.
pub fn parse_instant(s: &str) -> Result<i64, QueryError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| {
            QueryError::TimeRange(format!(
                "{s:?} is neither unix seconds nor RFC 3339 (2024-07-12T09:10:00Z): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("2d").unwrap(), 172_800);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        for bad in ["", "15", "m", "15x", "0m", "-5m", "99999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let r = TimeRange::from_flags(Some("15m"), None, None, 10_000).unwrap();
        assert_eq!(
            r,
            TimeRange {
                from: Some(9_100),
                to: None
            }
        );
        assert!(r.contains(9_100) && !r.contains(9_099));
        let r = TimeRange::from_flags(
            None,
            Some("2024-07-12T17:10:00+08:00"),
            Some("1720775500"),
            0,
        )
        .unwrap();
        assert_eq!(r.from, Some(1_720_775_400));
        assert!(r.contains(1_720_775_499) && !r.contains(1_720_775_500));
        assert!(TimeRange::from_flags(Some("1m"), Some("1"), None, 0).is_err());
        assert!(TimeRange::from_flags(None, Some("5"), Some("5"), 0).is_err());
        assert!(TimeRange::from_flags(None, Some("yesterday"), None, 0).is_err());
    }
}
