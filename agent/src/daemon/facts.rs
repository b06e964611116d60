//! What a board is: architecture, CPUs and memory, read from the board itself.

use texu_api::Arch;

/// The board's architecture as Texu names it, from the compile target and, on 32-bit ARM,
/// from whether the C library uses hardware floating point.
pub fn arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::Arm64,
        "arm" if cfg!(target_abi = "eabihf") => Arch::Armhf,
        "arm" => Arch::Armel,
        _ => Arch::Amd64,
    }
}

/// CPUs available to this process.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Total memory in bytes, from /proc/meminfo (0 when unreadable).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total(&text))
        .unwrap_or(0)
}

/// Parses `MemTotal:  16384 kB` into bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memtotal() {
        assert_eq!(
            parse_meminfo_total("MemTotal:        2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn this_board_has_cpus_and_memory() {
        assert!(cpus() >= 1);
        assert!(memory_bytes() > 0);
    }
}
