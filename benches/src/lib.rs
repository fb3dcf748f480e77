//! wasmraft's benchmarks (in `benches/`) and, as it grows, the load generator.

/// CPU seconds (user and system) process `pid` has used, `"self"` for this
/// one, from `/proc/PID/stat`; `None` where it cannot be read.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses (and may
    // hold spaces).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here;
    // Linux reports them in 100ths of a second.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
