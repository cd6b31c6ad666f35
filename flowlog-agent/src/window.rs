//! Capture-window arithmetic.
//!
//! A capture window is a whole number of seconds (the contract's instances use 1, 5
//! or 10 minutes). Windows are aligned to wall-clock multiples of their length since
//! the unix epoch, so two agents with the same window cut their records at the same
//! instants: with a 1-minute window every window starts at `hh:mm:00`.
//!
//! All instants here are unix-epoch nanoseconds (`CLOCK_REALTIME`) as `u64`, which
//! covers the years 1970 to 2554.

use std::time::Duration;

/// What is accepted, repeated in every [`WindowError`].
pub const WINDOW_SYNTAX: &str =
    "window must be a positive whole number of seconds or minutes, e.g. 10s, 1m, 5m, 10m";

/// Why a window string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowProblem {
    Empty,
    Zero,
    Negative,
    Fractional,
    /// No leading digits (`abc`, `m`, `+5`).
    NotANumber,
    /// Digits followed by something other than `s` or `m`.
    UnknownUnit {
        unit: String,
    },
    /// Longer than can be represented in `u64` nanoseconds (about 584 years).
    TooLarge,
}

impl std::fmt::Display for WindowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowProblem::Empty => f.write_str("it is empty"),
            WindowProblem::Zero => f.write_str("it is zero"),
            WindowProblem::Negative => f.write_str("it is negative"),
            WindowProblem::Fractional => f.write_str("fractions are not supported"),
            WindowProblem::NotANumber => f.write_str("it does not start with a number"),
            WindowProblem::UnknownUnit { unit } => {
                write!(f, "unknown unit {unit:?} (use s or m)")
            }
            WindowProblem::TooLarge => f.write_str("it is too large"),
        }
    }
}

/// A window string that [`parse_window`] rejected: what was given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid window {given:?}: {problem}; {WINDOW_SYNTAX}")]
pub struct WindowError {
    pub given: String,
    pub problem: WindowProblem,
}

/// Parses a capture window: `Ns` (seconds), `Nm` (minutes) or a bare `N` (seconds),
/// `N` a positive whole number. Surrounding whitespace is not accepted.
pub fn parse_window(s: &str) -> Result<Duration, WindowError> {
    let err = |problem| WindowError {
        given: s.to_owned(),
        problem,
    };
    if s.is_empty() {
        return Err(err(WindowProblem::Empty));
    }
    if s.starts_with('-') {
        return Err(err(WindowProblem::Negative));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err(WindowProblem::NotANumber));
    }
    if unit.starts_with(['.', ',']) {
        return Err(err(WindowProblem::Fractional));
    }
    let multiplier: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        other => {
            return Err(err(WindowProblem::UnknownUnit {
                unit: other.to_owned(),
            }))
        }
    };
    // Only ASCII digits remain, so the one possible parse failure is overflow.
    let value: u64 = digits.parse().map_err(|_| err(WindowProblem::TooLarge))?;
    if value == 0 {
        return Err(err(WindowProblem::Zero));
    }
    let secs = value
        .checked_mul(multiplier)
        .filter(|secs| secs.checked_mul(1_000_000_000).is_some())
        .ok_or_else(|| err(WindowProblem::TooLarge))?;
    Ok(Duration::from_secs(secs))
}

/// Window length in nanoseconds, at least 1 (a zero window is never produced by
/// [`parse_window`]; clamping keeps the arithmetic below free of division by zero).
fn window_ns(window: Duration) -> u64 {
    u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// The smallest window boundary (a multiple of `window` since the epoch, in unix ns)
/// strictly greater than `now_unix_ns`: the end of the window `now` falls in. When
/// `now` is exactly on a boundary, that boundary starts the current window, so the
/// result is the next one.
pub fn next_boundary(now_unix_ns: u64, window: Duration) -> u64 {
    let w = window_ns(window);
    (now_unix_ns / w).saturating_add(1).saturating_mul(w)
}

/// Start (unix ns) of the window that ends at the boundary `end_ns`.
pub fn window_start(end_ns: u64, window: Duration) -> u64 {
    end_ns.saturating_sub(window_ns(window))
}

/// Short form of a window for logs: `1m`, `10m`, `90s` (minutes when whole).
pub fn format_window(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        format!("{d:?}")
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn parses_seconds_minutes_and_bare_numbers() {
        for (s, secs) in [
            ("10s", 10),
            ("90s", 90),
            ("1m", 60),
            ("5m", 300),
            ("10m", 600),
            ("45", 45),
            ("007s", 7),
        ] {
            assert_eq!(parse_window(s), Ok(Duration::from_secs(secs)), "{s}");
        }
    }

    #[test]
    fn rejects_bad_windows_with_the_reason() {
        let cases = [
            ("", WindowProblem::Empty),
            ("0", WindowProblem::Zero),
            ("0s", WindowProblem::Zero),
            ("0m", WindowProblem::Zero),
            ("-1m", WindowProblem::Negative),
            ("1.5m", WindowProblem::Fractional),
            ("0.5s", WindowProblem::Fractional),
            ("abc", WindowProblem::NotANumber),
            ("m", WindowProblem::NotANumber),
            ("+5s", WindowProblem::NotANumber),
            (" 1m", WindowProblem::NotANumber),
            ("1h", WindowProblem::UnknownUnit { unit: "h".into() }),
            ("1ms", WindowProblem::UnknownUnit { unit: "ms".into() }),
            ("1M", WindowProblem::UnknownUnit { unit: "M".into() }),
            ("1m ", WindowProblem::UnknownUnit { unit: "m ".into() }),
            ("99999999999999999999999s", WindowProblem::TooLarge),
            ("18446744073709551615m", WindowProblem::TooLarge),
            ("18446744074s", WindowProblem::TooLarge),
        ];
        for (s, problem) in cases {
            let e = parse_window(s).unwrap_err();
            assert_eq!(e.problem, problem, "{s:?}");
            assert_eq!(e.given, s);
        }
        // The largest representable window is accepted.
        assert_eq!(
            parse_window("18446744073s"),
            Ok(Duration::from_secs(18_446_744_073))
        );
    }

    #[test]
    fn error_message_says_what_was_given_and_what_is_accepted() {
        let msg = parse_window("abc").unwrap_err().to_string();
        assert!(msg.contains("\"abc\""), "{msg}");
        assert!(
            msg.contains(
                "window must be a positive whole number of seconds or minutes, e.g. 10s, 1m, 5m, 10m"
            ),
            "{msg}"
        );
        let msg = parse_window("1h").unwrap_err().to_string();
        assert!(msg.contains("unknown unit \"h\""), "{msg}");
    }

    #[test]
    fn next_boundary_is_strictly_after_now() {
        let m = Duration::from_secs(60);
        assert_eq!(next_boundary(125 * S, m), 180 * S);
        assert_eq!(next_boundary(120 * S, m), 180 * S);
        assert_eq!(next_boundary(120 * S - 1, m), 120 * S);
        assert_eq!(next_boundary(0, m), 60 * S);
        assert_eq!(next_boundary(1_720_775_437 * S + 123, m), 1_720_775_460 * S);
        let ten = Duration::from_secs(600);
        assert_eq!(next_boundary(1_721_011_941 * S, ten), 1_721_012_400 * S);
        let odd = Duration::from_secs(90);
        assert_eq!(next_boundary(100 * S, odd), 180 * S);
        // Saturates instead of overflowing at the end of u64 time.
        assert_eq!(next_boundary(u64::MAX, m), u64::MAX);
    }

    #[test]
    fn window_start_is_one_window_before_the_end() {
        let m = Duration::from_secs(60);
        assert_eq!(window_start(180 * S, m), 120 * S);
        let end = next_boundary(125 * S, m);
        assert_eq!(window_start(end, m), 120 * S);
        assert_eq!(window_start(10 * S, m), 0);
    }

    #[test]
    fn formats_windows_for_logs() {
        assert_eq!(format_window(Duration::from_secs(60)), "1m");
        assert_eq!(format_window(Duration::from_secs(600)), "10m");
        assert_eq!(format_window(Duration::from_secs(10)), "10s");
        assert_eq!(format_window(Duration::from_secs(90)), "90s");
        assert_eq!(format_window(Duration::from_millis(1500)), "1.5s");
        for s in ["10s", "1m", "5m", "10m", "90s"] {
            assert_eq!(format_window(parse_window(s).unwrap()), s);
        }
    }
}
