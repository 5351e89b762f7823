//! Human output: tables, sizes, ages, colour.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};

/// Whether colour is on: stdout is a terminal and `NO_COLOR` is unset or empty.
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// An aligned table: a header and rows, columns three spaces apart, the last
/// column not padded. `paint` colours a cell after padding (never its width).
pub fn table(
    header: &[&str],
    rows: &[Vec<String>],
    paint: &dyn Fn(usize, &str) -> Option<&'static str>,
) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let colour = colour();
    let mut out = String::new();
    let line = |cells: Vec<(String, Option<&'static str>)>, out: &mut String| {
        let mut s = String::new();
        for (i, (c, col)) in cells.iter().enumerate() {
            let pad = if i + 1 == n {
                0
            } else {
                widths[i] - c.chars().count() + 3
            };
            match col {
                Some(code) if colour => s.push_str(&format!("\x1b[{code}m{c}\x1b[0m")),
                _ => s.push_str(c),
            }
            s.push_str(&" ".repeat(pad));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(
        header.iter().map(|h| (h.to_string(), None)).collect(),
        &mut out,
    );
    for r in rows {
        line(
            r.iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), paint(i, c)))
                .collect(),
            &mut out,
        );
    }
    out
}

/// The colour of a state or status word.
pub fn state_colour(s: &str) -> Option<&'static str> {
    match s {
        "running" | "healthy" | "succeeded" => Some("32"),
        "paused" | "restarting" | "pending" | "degraded" | "starting" => Some("33"),
        "error" | "unavailable" | "unhealthy" | "failed" => Some("31"),
        _ => None,
    }
}

/// `512M`, `2.0G`, `900B` (binary units).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{}{}", v.round() as u64, UNITS[u])
    }
}

/// A size as written on the command line: a number (fractions allowed) with an
/// optional binary unit `B`, `K`, `M`, `G`, `T` (`KB`/`KiB` alike, any case).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size '{s}': give a number with an optional unit B, K, M, G or T (512M, 2G)"
        )
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

/// `3 minutes ago`, as Docker writes it.
pub fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    if secs < 1 {
        return "Less than a second ago".into();
    }
    let plural = |n: i64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" });
    match secs {
        s if s < 60 => plural(s, "second"),
        s if s < 120 => "About a minute ago".into(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s < 7200 => "About an hour ago".into(),
        s if s < 2 * 86400 => plural(s / 3600, "hour"),
        s if s < 14 * 86400 => plural(s / 86400, "day"),
        s if s < 60 * 86400 => plural(s / (7 * 86400), "week"),
        s if s < 730 * 86400 => plural(s / (30 * 86400), "month"),
        s => plural(s / (365 * 86400), "year"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_both_ways() {
        assert_eq!(size(512 << 20), "512M");
        assert_eq!(size(2 << 30), "2.0G");
        assert_eq!(size(1536 << 20), "1.5G");
        assert_eq!(size(900), "900B");
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20g"), Ok(20 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(1536 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1G").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME", "STATE"],
            &[
                vec!["a".into(), "longname".into(), "running".into()],
                vec!["bb".into(), "x".into(), "stopped".into()],
            ],
            &|_, _| None,
        );
        assert_eq!(
            t,
            "ID   NAME       STATE\na    longname   running\nbb   x          stopped\n"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(
            ago(Utc::now() - chrono::Duration::seconds(200)),
            "3 minutes ago"
        );
        assert_eq!(
            ago(Utc::now() - chrono::Duration::seconds(90)),
            "About a minute ago"
        );
        assert_eq!(ago(Utc::now() - chrono::Duration::days(3)), "3 days ago");
    }
}
