//! Functions with the log service's meaning, where DataFusion's differ or are
//! missing. Each engine registers them with its display time zone (`TZ`).
//!
//! | function | meaning here |
//! |---|---|
//! | `from_unixtime(x [, zone])` | unix seconds (integer or float, fraction dropped) → `TIMESTAMP` in the display zone (DataFusion's: UTC, no zone) |
//! | `date_trunc(unit, x)` | on unix seconds (`__time__`): unix seconds (BIGINT) of the start of the unit, in the display zone, as the log service returns the type it is given; on a timestamp: a timestamp (DataFusion's own). Units: second, minute, hour, day, week (Monday), month, quarter, year |
//! | `date_format(x, format)` | MySQL-style format (`%Y-%m-%d %H:%i:%S`) of a timestamp, or of unix seconds shown in the display zone; returns text |
//! | `is_subnet_of(cidr, ip)` | whether `ip` is in the CIDR block (IPv4 or IPv6); NULL if either is NULL or not an address |
//!
//! Why `date_trunc` on `__time__` returns seconds rather than a timestamp: the
//! value groups and orders the same either way, and keeping the argument's type
//! (as the log service documents) means `date_trunc('minute', __time__)` can go
//! straight into arithmetic, comparisons with `__time__`, or `from_unixtime(...)`
//! / `date_format(...)` for display.

use std::{
    net::IpAddr,
    sync::{Arc, LazyLock},
};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use datafusion::{
    arrow::{
        array::{Array, ArrayRef, AsArray, BooleanBuilder, Int64Array, StringBuilder},
        datatypes::{DataType, Field, FieldRef, Int64Type, TimeUnit},
    },
    common::{exec_err, plan_err, Result, ScalarValue},
    logical_expr::{
        ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
        Volatility,
    },
};

/// Every function of this module, for the zone `tz`.
pub fn all(tz: Tz) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(FromUnixtime::new(tz)),
        ScalarUDF::new_from_impl(DateTrunc::new(tz)),
        ScalarUDF::new_from_impl(DateFormat::new(tz)),
        ScalarUDF::new_from_impl(IsSubnetOf::new()),
    ]
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Null)
}

fn scalar_str(v: &ColumnarValue) -> Option<Option<&str>> {
    match v {
        ColumnarValue::Scalar(s) => s.try_as_str(),
        ColumnarValue::Array(_) => None,
    }
}

// ---------------------------------------------------------------- from_unixtime

/// `from_unixtime(seconds [, zone])`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FromUnixtime {
    signature: Signature,
    tz: Tz,
}

impl FromUnixtime {
    fn new(tz: Tz) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            tz,
        }
    }
}

impl ScalarUDFImpl for FromUnixtime {
    fn name(&self) -> &str {
        "from_unixtime"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [x] if is_number(x) => Ok(vec![DataType::Int64]),
            [x, z] if is_number(x) && (is_string(z) || z.is_null()) => {
                Ok(vec![DataType::Int64, DataType::Utf8])
            }
            _ => plan_err!(
                "from_unixtime(seconds [, zone]) takes a number and an optional zone name, got {arg_types:?}"
            ),
        }
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            TimeUnit::Second,
            Some(self.tz.name().into()),
        ))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let zone: Arc<str> = match args.scalar_arguments.get(1) {
            None => self.tz.name().into(),
            Some(Some(v)) => match v.try_as_str().flatten() {
                Some(z) => {
                    if z.parse::<Tz>().is_err() {
                        return plan_err!("from_unixtime: unknown time zone {z:?}");
                    }
                    z.into()
                }
                None => return plan_err!("from_unixtime: the zone must be a constant string"),
            },
            Some(None) => return plan_err!("from_unixtime: the zone must be a constant string"),
        };
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Timestamp(TimeUnit::Second, Some(zone)),
            true,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        args.args[0].cast_to(args.return_field.data_type(), None)
    }
}

// ------------------------------------------------------------------- date_trunc

/// Truncation units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Unit {
    fn parse(s: &str) -> Result<Unit> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "second" | "millisecond" | "microsecond" | "nanosecond" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "quarter" => Unit::Quarter,
            "year" => Unit::Year,
            _ => {
                return exec_err!(
                    "date_trunc: unknown unit {s:?} (second, minute, hour, day, week, month, quarter, year)"
                )
            }
        })
    }
}

/// Local wall clock of unix seconds `x` in `tz`.
fn local(tz: Tz, x: i64) -> Option<NaiveDateTime> {
    Some(
        DateTime::<Utc>::from_timestamp(x, 0)?
            .with_timezone(&tz)
            .naive_local(),
    )
}

/// Unix seconds of the start of `unit` containing `x`, in `tz`.
fn trunc_seconds(tz: Tz, unit: Unit, x: i64) -> Option<i64> {
    if unit == Unit::Second {
        return Some(x);
    }
    let t = local(tz, x)?;
    let d = t.date();
    let start: NaiveDateTime = match unit {
        Unit::Second => unreachable!(),
        Unit::Minute => d.and_hms_opt(t.hour(), t.minute(), 0)?,
        Unit::Hour => d.and_hms_opt(t.hour(), 0, 0)?,
        Unit::Day => d.and_hms_opt(0, 0, 0)?,
        Unit::Week => (d - chrono::Days::new(d.weekday().num_days_from_monday().into()))
            .and_hms_opt(0, 0, 0)?,
        Unit::Month => NaiveDate::from_ymd_opt(d.year(), d.month(), 1)?.and_hms_opt(0, 0, 0)?,
        Unit::Quarter => NaiveDate::from_ymd_opt(d.year(), (d.month() - 1) / 3 * 3 + 1, 1)?
            .and_hms_opt(0, 0, 0)?,
        Unit::Year => NaiveDate::from_ymd_opt(d.year(), 1, 1)?.and_hms_opt(0, 0, 0)?,
    };
    match tz.from_local_datetime(&start).earliest() {
        Some(s) => Some(s.timestamp()),
        // The start falls in a DST gap: step back by the local difference.
        None => Some(x - (t - start).num_seconds()),
    }
}

/// `date_trunc(unit, x)`: DataFusion's for timestamps, the log service's for unix
/// seconds.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DateTrunc {
    signature: Signature,
    tz: Tz,
    inner: Arc<ScalarUDF>,
    aliases: Vec<String>,
}

impl DateTrunc {
    fn new(tz: Tz) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            tz,
            inner: datafusion::functions::datetime::date_trunc(),
            aliases: vec!["datetrunc".into()],
        }
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn name(&self) -> &str {
        "date_trunc"
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [unit, x] = arg_types else {
            return plan_err!(
                "date_trunc(unit, x) takes two arguments, got {}",
                arg_types.len()
            );
        };
        if !is_string(unit) {
            return plan_err!("date_trunc: the unit must be a string such as 'minute', got {unit}");
        }
        let x = match x {
            t if is_number(t) => DataType::Int64,
            DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) => x.clone(),
            DataType::Date32 | DataType::Date64 => DataType::Timestamp(TimeUnit::Nanosecond, None),
            t if is_string(t) => DataType::Timestamp(TimeUnit::Nanosecond, None),
            _ => return plan_err!("date_trunc: x must be unix seconds or a timestamp, got {x}"),
        };
        Ok(vec![DataType::Utf8, x])
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(1) {
            Some(DataType::Int64) => Ok(DataType::Int64),
            Some(other) => Ok(other.clone()),
            None => plan_err!("date_trunc takes two arguments"),
        }
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if args.arg_fields[1].data_type() == &DataType::Int64 {
            Ok(Arc::new(Field::new(self.name(), DataType::Int64, true)))
        } else {
            self.inner.return_field_from_args(args)
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args[1].data_type() != DataType::Int64 {
            return self.inner.invoke_with_args(args);
        }
        let Some(Some(unit)) = scalar_str(&args.args[0]) else {
            return exec_err!("date_trunc: the unit must be a constant string");
        };
        let unit = Unit::parse(unit)?;
        let tz = self.tz;
        let f = move |x: i64| -> Option<i64> {
            match unit {
                Unit::Second => Some(x),
                // Every zone in use today has whole-minute offsets.
                Unit::Minute => Some(x - x.rem_euclid(60)),
                _ => trunc_seconds(tz, unit, x),
            }
        };
        match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(v)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Int64(v.and_then(f))))
            }
            ColumnarValue::Array(a) => {
                let a = a.as_primitive::<Int64Type>();
                let out: Int64Array = a.iter().map(|v| v.and_then(f)).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            other => exec_err!("date_trunc: unexpected argument {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ date_format

/// `date_format(x, format)` with MySQL-style specifiers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DateFormat {
    signature: Signature,
    tz: Tz,
}

impl DateFormat {
    fn new(tz: Tz) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            tz,
        }
    }
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [x, fmt] = arg_types else {
            return plan_err!(
                "date_format(x, format) takes two arguments, got {}",
                arg_types.len()
            );
        };
        if !is_string(fmt) && !fmt.is_null() {
            return plan_err!("date_format: the format must be a string, got {fmt}");
        }
        let x = match x {
            t if is_number(t) => DataType::Int64,
            DataType::Timestamp(..) => x.clone(),
            DataType::Date32 | DataType::Date64 => DataType::Timestamp(TimeUnit::Nanosecond, None),
            t if is_string(t) => DataType::Timestamp(TimeUnit::Nanosecond, None),
            _ => return plan_err!("date_format: x must be a timestamp or unix seconds, got {x}"),
        };
        Ok(vec![x, DataType::Utf8])
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let x = args.args[0].to_array(n)?;
        // Wall-clock times, per row.
        let times: Vec<Option<NaiveDateTime>> = match x.data_type() {
            DataType::Int64 => x
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.and_then(|s| local(self.tz, s)))
                .collect(),
            DataType::Timestamp(_, zone) => {
                let zone: Option<Tz> = match zone {
                    Some(z) => Some(
                        z.parse::<Tz>()
                            .or_else(|_| exec_err!("date_format: unknown time zone {z:?}"))?,
                    ),
                    None => None,
                };
                let nanos = datafusion::arrow::compute::cast(
                    &x,
                    &DataType::Timestamp(TimeUnit::Nanosecond, None),
                )?;
                nanos
                    .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
                    .iter()
                    .map(|v| {
                        v.map(|ns| {
                            let utc = DateTime::<Utc>::from_timestamp_nanos(ns);
                            match zone {
                                Some(z) => utc.with_timezone(&z).naive_local(),
                                None => utc.naive_utc(),
                            }
                        })
                    })
                    .collect()
            }
            other => return exec_err!("date_format: unexpected type {other}"),
        };
        let mut out = StringBuilder::with_capacity(n, n * 8);
        let mut buf = String::new();
        match scalar_str(&args.args[1]) {
            Some(None) => {
                for _ in 0..n {
                    out.append_null();
                }
            }
            Some(Some(fmt)) => {
                for t in &times {
                    match t {
                        Some(t) => {
                            buf.clear();
                            mysql_format(t, fmt, &mut buf);
                            out.append_value(&buf);
                        }
                        None => out.append_null(),
                    }
                }
            }
            None => {
                let fmts = args.args[1].to_array(n)?;
                let fmts = fmts.as_string::<i32>();
                for (t, fmt) in times.iter().zip(fmts.iter()) {
                    match (t, fmt) {
                        (Some(t), Some(fmt)) => {
                            buf.clear();
                            mysql_format(t, fmt, &mut buf);
                            out.append_value(&buf);
                        }
                        _ => out.append_null(),
                    }
                }
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Week of the year with Sunday as the first day, 0..=53 (MySQL `%U`).
fn week_sunday(d: NaiveDate) -> u32 {
    (d.ordinal0() + 7 - d.weekday().num_days_from_sunday()) / 7
}

/// Week of the year with Monday as the first day, 0..=53 (MySQL `%u`).
fn week_monday(d: NaiveDate) -> u32 {
    (d.ordinal0() + 7 - d.weekday().num_days_from_monday()) / 7
}

/// MySQL `%V`/`%X`: Sunday-first weeks 1..=53, days before the first Sunday in
/// the previous year's last week.
fn week_sunday_1(d: NaiveDate) -> (i32, u32) {
    let w = week_sunday(d);
    if w > 0 {
        (d.year(), w)
    } else {
        let last = NaiveDate::from_ymd_opt(d.year() - 1, 12, 31).expect("valid date");
        (last.year(), week_sunday(last))
    }
}

/// Append `t` formatted with MySQL's `DATE_FORMAT` specifiers to `out`:
/// `%Y %y %m %c %d %e %H %k %h %I %l %i %S %s %f %p %r %T %M %b %W %a %D %j %w %U
/// %u %V %v %X %x %%`; `%` before any other character gives that character.
pub fn mysql_format(t: &NaiveDateTime, fmt: &str, out: &mut String) {
    use std::fmt::Write as _;
    let d = t.date();
    let h12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let ampm = if t.hour() < 12 { "AM" } else { "PM" };
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(s) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match s {
            'Y' => write!(out, "{:04}", d.year()),
            'y' => write!(out, "{:02}", d.year().rem_euclid(100)),
            'm' => write!(out, "{:02}", d.month()),
            'c' => write!(out, "{}", d.month()),
            'd' => write!(out, "{:02}", d.day()),
            'e' => write!(out, "{}", d.day()),
            'H' => write!(out, "{:02}", t.hour()),
            'k' => write!(out, "{}", t.hour()),
            'h' | 'I' => write!(out, "{h12:02}"),
            'l' => write!(out, "{h12}"),
            'i' => write!(out, "{:02}", t.minute()),
            'S' | 's' => write!(out, "{:02}", t.second()),
            'f' => write!(out, "{:06}", t.nanosecond() / 1000 % 1_000_000),
            'p' => write!(out, "{ampm}"),
            'r' => write!(out, "{h12:02}:{:02}:{:02} {ampm}", t.minute(), t.second()),
            'T' => write!(out, "{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
            'M' => write!(out, "{}", MONTH_NAMES[d.month0() as usize]),
            'b' => write!(out, "{}", &MONTH_NAMES[d.month0() as usize][..3]),
            'W' => write!(
                out,
                "{}",
                DAY_NAMES[d.weekday().num_days_from_monday() as usize]
            ),
            'a' => write!(
                out,
                "{}",
                &DAY_NAMES[d.weekday().num_days_from_monday() as usize][..3]
            ),
            'D' => {
                let day = d.day();
                let suffix = match (day % 10, day % 100) {
                    (_, 11..=13) => "th",
                    (1, _) => "st",
                    (2, _) => "nd",
                    (3, _) => "rd",
                    _ => "th",
                };
                write!(out, "{day}{suffix}")
            }
            'j' => write!(out, "{:03}", d.ordinal()),
            'w' => write!(out, "{}", d.weekday().num_days_from_sunday()),
            'U' => write!(out, "{:02}", week_sunday(d)),
            'u' => write!(out, "{:02}", week_monday(d)),
            'V' => write!(out, "{:02}", week_sunday_1(d).1),
            'X' => write!(out, "{:04}", week_sunday_1(d).0),
            'v' => write!(out, "{:02}", d.iso_week().week()),
            'x' => write!(out, "{:04}", d.iso_week().year()),
            other => {
                out.push(other);
                Ok(())
            }
        };
    }
}

// ----------------------------------------------------------------- is_subnet_of

/// A parsed CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length {p:?} is not 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4 address is never in an IPv6 block).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `is_subnet_of(cidr, ip)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IsSubnetOf {
    signature: Signature,
}

impl IsSubnetOf {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for IsSubnetOf {
    fn name(&self) -> &str {
        "is_subnet_of"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [a, b] if (is_string(a) || a.is_null()) && (is_string(b) || b.is_null()) => {
                Ok(vec![DataType::Utf8, DataType::Utf8])
            }
            _ => plan_err!("is_subnet_of(cidr, ip) takes two strings, got {arg_types:?}"),
        }
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let fixed = match scalar_str(&args.args[0]) {
            Some(Some(c)) => Some(Some(
                Cidr::parse(c).or_else(|e| exec_err!("is_subnet_of: {e}"))?,
            )),
            Some(None) => Some(None),
            None => None,
        };
        let cidrs = args.args[0].to_array(n)?;
        let cidrs = cidrs.as_string::<i32>();
        let ips = args.args[1].to_array(n)?;
        let ips = ips.as_string::<i32>();
        let mut out = BooleanBuilder::with_capacity(n);
        for i in 0..n {
            let cidr = match fixed {
                Some(c) => c,
                None => (!cidrs.is_null(i))
                    .then(|| Cidr::parse(cidrs.value(i)).ok())
                    .flatten(),
            };
            let ip = (!ips.is_null(i))
                .then(|| ips.value(i).parse::<IpAddr>().ok())
                .flatten();
            match (cidr, ip) {
                (Some(c), Some(ip)) => out.append_value(c.contains(ip)),
                _ => out.append_null(),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

/// The display zone: `TZ` (an IANA name, optionally with a leading `:` or as a
/// path under a `zoneinfo` directory), else `/etc/localtime`'s link target, else
/// `/etc/timezone`, else UTC. A `TZ` that names no known zone is an error (the
/// caller warns and uses UTC).
pub fn local_time_zone(tz_env: Option<&str>) -> Result<Tz, String> {
    fn from_path(p: &str) -> Option<Tz> {
        let i = p.find("zoneinfo/")?;
        p[i + "zoneinfo/".len()..].parse().ok()
    }
    if let Some(v) = tz_env {
        let v = v.strip_prefix(':').unwrap_or(v).trim();
        if v.is_empty() {
            return Ok(Tz::UTC);
        }
        return v
            .parse::<Tz>()
            .ok()
            .or_else(|| from_path(v))
            .ok_or_else(|| {
                format!("TZ={v:?} is not a known time zone name (such as Europe/Berlin)")
            });
    }
    if let Ok(target) = std::fs::read_link("/etc/localtime") {
        if let Some(tz) = from_path(&target.to_string_lossy()) {
            return Ok(tz);
        }
    }
    if let Ok(name) = std::fs::read_to_string("/etc/timezone") {
        if let Ok(tz) = name.trim().parse() {
            return Ok(tz);
        }
    }
    Ok(Tz::UTC)
}

/// The engine's display zone for the `TZ` variable of this process.
pub static PROCESS_TZ: LazyLock<Result<Tz, String>> =
    LazyLock::new(|| local_time_zone(std::env::var("TZ").ok().as_deref()));

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(t: NaiveDateTime, f: &str) -> String {
        let mut s = String::new();
        mysql_format(&t, f, &mut s);
        s
    }

    #[test]
    fn mysql_specifiers() {
        let t = NaiveDate::from_ymd_opt(2024, 7, 2)
            .unwrap()
            .and_hms_micro_opt(9, 5, 7, 42)
            .unwrap();
        assert_eq!(fmt(t, "%H:%i:%S"), "09:05:07");
        assert_eq!(fmt(t, "%Y-%m-%d %H:%i:%s"), "2024-07-02 09:05:07");
        assert_eq!(fmt(t, "%y %c %e %k %l %h %p"), "24 7 2 9 9 09 AM");
        assert_eq!(fmt(t, "%r|%T|%f"), "09:05:07 AM|09:05:07|000042");
        assert_eq!(
            fmt(t, "%W %a %M %b %D %j %w"),
            "Tuesday Tue July Jul 2nd 184 2"
        );
        assert_eq!(fmt(t, "100%% %q"), "100% q");
        let pm = NaiveDate::from_ymd_opt(2024, 1, 11)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        assert_eq!(fmt(pm, "%h %p %D"), "12 PM 11th");
        let midnight = NaiveDate::from_ymd_opt(2023, 1, 1)
            .unwrap()
            .and_hms_opt(0, 30, 0)
            .unwrap();
        // 2023-01-01 is a Sunday.
        assert_eq!(
            fmt(midnight, "%l %p %U %u %V %X %v %x"),
            "12 AM 01 00 01 2023 52 2022"
        );
        let sat = NaiveDate::from_ymd_opt(2022, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        // 2022-01-01 is a Saturday: week 0 (%U), and week 52 of 2021 (%V/%X).
        assert_eq!(fmt(sat, "%U %V %X"), "00 52 2021");
    }

    #[test]
    fn truncation_in_zones() {
        // 2024-03-10 01:30:00 America/New_York (EST, -05:00) = 06:30 UTC; DST
        // starts at 02:00 that day.
        let ny: Tz = "America/New_York".parse().unwrap();
        let x = 1_710_052_200;
        assert_eq!(trunc_seconds(ny, Unit::Hour, x), Some(1_710_050_400));
        // Midnight New York = 05:00 UTC.
        assert_eq!(trunc_seconds(ny, Unit::Day, x), Some(1_710_046_800));
        assert_eq!(trunc_seconds(Tz::UTC, Unit::Day, x), Some(1_710_028_800));
        // Week starts on Monday 2024-03-04.
        assert_eq!(trunc_seconds(Tz::UTC, Unit::Week, x), Some(1_709_510_400));
        assert_eq!(trunc_seconds(Tz::UTC, Unit::Month, x), Some(1_709_251_200));
        assert_eq!(
            trunc_seconds(Tz::UTC, Unit::Quarter, x),
            Some(1_704_067_200)
        );
        assert_eq!(trunc_seconds(Tz::UTC, Unit::Year, x), Some(1_704_067_200));
        // Half-hour zone: hour starts at :30 UTC.
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            trunc_seconds(kolkata, Unit::Hour, 1_710_052_200),
            Some(1_710_052_200)
        );
        assert_eq!(
            trunc_seconds(kolkata, Unit::Hour, 1_710_052_200 + 1799),
            Some(1_710_052_200)
        );
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
    }

    #[test]
    fn zones_from_env() {
        assert_eq!(local_time_zone(Some("UTC")), Ok(Tz::UTC));
        assert_eq!(local_time_zone(Some("")), Ok(Tz::UTC));
        assert_eq!(
            local_time_zone(Some(":Asia/Shanghai")),
            Ok(Tz::Asia__Shanghai)
        );
        assert_eq!(
            local_time_zone(Some("/usr/share/zoneinfo/Europe/Berlin")),
            Ok(Tz::Europe__Berlin)
        );
        assert!(local_time_zone(Some("Mars/Olympus")).is_err());
    }
}
