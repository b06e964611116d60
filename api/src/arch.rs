//! CPU architectures of boards, as Debian names them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A board's CPU architecture, by its Debian name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64 PCs.
    Amd64,
    /// 64-bit ARM (Raspberry Pi 3/4/5 on a 64-bit OS).
    Arm64,
    /// 32-bit ARM with hardware floating point (Raspberry Pi 2+, 32-bit OS).
    Armhf,
    /// 32-bit ARM without hardware floating point (SheevaPlug, Pi 1 on Debian).
    Armel,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 4] = [Arch::Amd64, Arch::Arm64, Arch::Armhf, Arch::Armel];

    /// The Debian name: `amd64`, `arm64`, `armhf`, `armel`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
            Arch::Armel => "armel",
        }
    }

    /// The architecture this program was built for, if Texu knows it.
    pub fn host() -> Option<Arch> {
        Arch::from_rust_arch(std::env::consts::ARCH, cfg!(target_abi = "eabihf"))
    }

    /// Maps Rust's `target_arch` (and, on 32-bit ARM, whether the ABI is hard-float).
    fn from_rust_arch(arch: &str, hard_float: bool) -> Option<Arch> {
        match arch {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            "arm" if hard_float => Some(Arch::Armhf),
            "arm" => Some(Arch::Armel),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!("unknown architecture {s:?}: expected amd64, arm64, armhf or armel")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.to_string().parse::<Arch>(), Ok(arch));
            let json = serde_json::to_string(&arch).unwrap_or_default();
            assert_eq!(json, format!("\"{arch}\""));
        }
        assert!("x86_64".parse::<Arch>().is_err());
    }

    #[test]
    fn host_arch() {
        assert_eq!(Arch::from_rust_arch("x86_64", false), Some(Arch::Amd64));
        assert_eq!(Arch::from_rust_arch("aarch64", false), Some(Arch::Arm64));
        assert_eq!(Arch::from_rust_arch("arm", true), Some(Arch::Armhf));
        assert_eq!(Arch::from_rust_arch("arm", false), Some(Arch::Armel));
        assert_eq!(Arch::from_rust_arch("riscv64", false), None);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host(), Some(Arch::Amd64));
        }
    }
}
