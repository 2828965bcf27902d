//! The process's peak resident memory, for the hostile-server tests (issue 16, 3).

/// Runs `work` and returns how much this process's peak resident memory rose above its resident
/// memory at the start, in KiB. The kernel's high-water mark is reset first (5 into
/// /proc/self/clear_refs), so the peak is this run's; nextest gives each test its own process.
pub async fn peak_growth_kib<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = status_kib("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident memory");
    let output = work.await;
    (output, status_kib("VmHWM").saturating_sub(before))
}

/// A `… kB` line of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
