//! Log lines: timestamps, fields, and distributions of samples.

use super::*;

// ------------------------------------------------------------------------------------------
// Log lines
// ------------------------------------------------------------------------------------------

/// One log line: its timestamp (microseconds since the epoch) and text.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) at_us: i64,
    pub(crate) text: String,
}

impl Line {
    /// The value of `key=` (in a span `{key=v}` or a field ` key=v`), up to whitespace.
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        let pat = format!("{key}=");
        let mut from = 0;
        while let Some(i) = self.text[from..].find(&pat) {
            let at = from + i;
            let before = self.text[..at].chars().last();
            if matches!(before, Some(' ' | '{' | ',')) {
                let v = &self.text[at + pat.len()..];
                let end = v
                    .find(|c: char| c.is_whitespace() || c == '}' || c == ',')
                    .unwrap_or(v.len());
                return Some(&v[..end]);
            }
            from = at + pat.len();
        }
        None
    }

    pub(crate) fn has(&self, text: &str) -> bool {
        self.text.contains(text)
    }
}

/// Every timestamped line of a log.
pub(crate) fn read_log(path: &Path) -> anyhow::Result<Vec<Line>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            Some(Line {
                at_us: parse_rfc3339_us(ts)?,
                text: l.to_string(),
            })
        })
        .collect())
}

/// `2025-01-02T03:04:05.123456Z` (or with an offset `+01:00`) as microseconds since the epoch.
pub(crate) fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (clock, offset_s) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    let mut us = 0i64;
    for (k, c) in frac.chars().take(6).enumerate() {
        us += c.to_digit(10)? as i64 * 10i64.pow(5 - k as u32);
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + hh) * 60 + mm) * 60 + ss - offset_s) * 1_000_000 + us)
}

/// p50, p99 and max of a set of samples (nearest rank).
pub(crate) fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.50), rank(0.99), s[s.len() - 1])
}

pub(crate) fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

pub(crate) fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

pub(crate) fn add_distribution(
    report: &mut Report,
    name: &str,
    samples: &[f64],
    (p50_bound, p99_bound): (f64, f64),
    note: &str,
) -> anyhow::Result<()> {
    if samples.is_empty() {
        bail!("no samples for {name}");
    }
    let (p50, p99, max) = percentiles(samples);
    let n = samples.len();
    let figures = [
        ("p50", p50, p50_bound),
        ("p99", p99, p99_bound),
        ("max", max, p99_bound),
    ];
    for (what, v, bound) in figures {
        let mut f = Figure::new(format!("{name} {what}"), v, bound, "ms");
        if what == "p50" {
            f = f.note(format!("{n} samples; {note}"));
        }
        report.add(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse_to_microseconds() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_us("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002)
        );
        // 2025-01-02T03:04:05.123456Z = 1735787045 s.
        assert_eq!(
            parse_rfc3339_us("2025-01-02T03:04:05.123456Z"),
            Some(1_735_787_045_123_456)
        );
        assert_eq!(
            parse_rfc3339_us("2025-01-02T04:04:05.123456+01:00"),
            Some(1_735_787_045_123_456)
        );
        assert_eq!(parse_rfc3339_us("INFO"), None);
    }

    #[test]
    fn fields_come_from_spans_and_events() {
        let l = Line {
            at_us: 0,
            text: "2025-01-02T03:04:05.123456Z  INFO session{host=host-2}: host updated and healthy rollout=r-1 token=7 version=2.0.0".into(),
        };
        assert_eq!(l.field("host"), Some("host-2"));
        assert_eq!(l.field("rollout"), Some("r-1"));
        assert_eq!(l.field("token"), Some("7"));
        assert_eq!(l.field("id"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&s), (50.0, 99.0, 100.0));
        assert_eq!(percentiles(&[3.0]), (3.0, 3.0, 3.0));
    }
}
