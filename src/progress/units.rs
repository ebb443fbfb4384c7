//! Human-readable sizes and durations shared by every renderer and the summary table.

/// Decimal units as BuildKit's progress output prints them: plain bytes below 1000 (`75B`),
/// otherwise two decimals and a kB/MB/GB… suffix (`2.34kB`, `12.30MB`).
pub fn format_bytes(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mag = n.unsigned_abs();
    if mag < 1000 {
        return format!("{n}B");
    }
    let mut base: u64 = 1;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && mag >= base.saturating_mul(1000) {
        base = base.saturating_mul(1000);
        unit += 1;
    }
    format!("{:.2}{}", n as f64 / base as f64, UNITS[unit])
}

/// `0.4s`, `12.3s`, `2m05s`, `1h02m03s`: seconds with one decimal while short, then minutes.
pub fn format_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bytes_use_decimal_units_like_buildkit() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(75), "75B");
        assert_eq!(format_bytes(999), "999B");
        assert_eq!(format_bytes(1000), "1.00kB");
        assert_eq!(format_bytes(2346), "2.35kB");
        assert_eq!(format_bytes(12_300_000), "12.30MB");
        assert_eq!(format_bytes(5_000_000_000), "5.00GB");
        assert_eq!(format_bytes(i64::MAX), "9.22EB");
    }

    #[test]
    fn durations_switch_to_minutes_after_a_minute() {
        assert_eq!(format_duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
