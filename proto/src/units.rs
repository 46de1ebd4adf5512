//! Quantities as operators type and read them: sizes (`200GB`, `512MiB`, plain
//! bytes), durations (`30s`, `15m`, `24h`, `7d`) and dates (UTC, to the minute).
//! Parsers return a one-line error naming the text refused.

/// Size units: decimal ones are powers of 1000, binary ones powers of 1024, as
/// disks and `df -H` vs `df -h` count them.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Duration units, in seconds.
const DURATION_UNITS: &[(&str, u64)] = &[("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];

/// Parses a size in bytes: `200GB` (10^9), `512MiB` (2^20), `1024`; units are
/// case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let factor = if unit.is_empty() {
        1
    } else {
        lookup(SIZE_UNITS, unit, true).ok_or_else(|| {
            format!(
                "{text:?}: unknown size unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        })?
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// Parses a positive duration in seconds: `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    if unit.is_empty() {
        return Err(format!("{text:?}: missing unit (s, m, h or d)"));
    }
    // Case matters here: `M` could be minutes or months, so only `m` is accepted.
    let factor = lookup(DURATION_UNITS, unit, false)
        .ok_or_else(|| format!("{text:?}: unknown duration unit {unit:?} (use s, m, h or d)"))?;
    match number.checked_mul(factor) {
        Some(0) => Err(format!("{text:?}: must be longer than zero")),
        Some(secs) => Ok(secs),
        None => Err(format!("{text:?}: too long")),
    }
}

/// Splits `"512 MiB"` into `512` and `"MiB"`.
fn split_number(text: &str) -> Result<(u64, &str), String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(format!("{text:?}: expected a whole number, then a unit"));
    }
    let number = text[..digits]
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    Ok((number, text[digits..].trim_start()))
}

/// The factor of `unit`; `fold` makes the match case-insensitive.
fn lookup(units: &[(&str, u64)], unit: &str, fold: bool) -> Option<u64> {
    units
        .iter()
        .find(|(name, _)| *name == unit || (fold && name.eq_ignore_ascii_case(unit)))
        .map(|(_, factor)| *factor)
}

/// Bytes for a person: `512 B`, `120.2 KiB`, `3.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `YYYY-MM-DD HH:MM` in UTC, from Unix seconds (Howard Hinnant's civil-from-days).
pub fn utc_minute(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_decimal_and_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("200GB"), Ok(200_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2 gib"), Ok(2 << 30));
        assert_eq!(parse_size("3TB"), Ok(3_000_000_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_text() {
        for bad in [
            "",
            "GB",
            "-1",
            "1.5GB",
            "10 parsecs",
            "99999999999999999999",
            "20000000TiB",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_in_seconds_minutes_hours_days() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "24",
            "0h",
            "1w",
            "1M",
            "h",
            "-3h",
            "1.5h",
            "99999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_duration("24").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(123_084), "120.2 KiB");
    }
}
