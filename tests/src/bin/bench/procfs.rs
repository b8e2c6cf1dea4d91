//! A process's CPU time and memory, from /proc.

use super::*;

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// CPU use of a process over `window`, in percent of one core.
pub(crate) fn cpu_percent(pid: i32, window: Duration) -> anyhow::Result<f64> {
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = cpu_ticks(pid)?;
    Ok((cpu1 - cpu0) as f64 / clk_tck() / t0.elapsed().as_secs_f64() * 100.0)
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub(crate) fn rss_kib(pid: i32) -> anyhow::Result<(u64, u64)> {
    let m = memory(pid)?;
    Ok((m.rss, m.hwm))
}

/// A process's memory from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// VmRSS: resident now (= anon + file + shmem).
    pub(crate) rss: u64,
    /// VmHWM: the most it was ever resident.
    pub(crate) hwm: u64,
    /// RssAnon: heap, stacks, the allocator's arenas.
    pub(crate) anon: u64,
    /// RssFile: pages of the binary and the libraries it touched.
    pub(crate) file: u64,
}

pub(crate) fn memory(pid: i32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("odd status line")?
            .parse()?)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// Clock ticks per second of /proc's CPU times (USER_HZ).
pub(crate) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
