//! The spool's configuration.

use std::num::NonZeroU64;
use std::path::PathBuf;

use serde::Deserialize;

/// Default [`SpoolConfig::max_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BYTES: NonZeroU64 = NonZeroU64::new(1 << 30).unwrap();

/// Default [`SpoolConfig::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: NonZeroU64 = NonZeroU64::new(64 << 20).unwrap();

/// Where and how large the spool is (the `[spool]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool's directory, created if missing. It must belong to one connector process
    /// (it is locked while open). A relative path is resolved by the caller (against the
    /// configuration file's directory) before it gets here.
    pub dir: PathBuf,
    /// Back-pressure threshold in bytes on disk, un-committed and committed-but-not-yet-deleted
    /// segments included: at or above it [`Spool::is_full`](super::Spool::is_full) says so and the source stops
    /// reading (nothing is dropped). Default 1 GiB. Several segments' worth, so that a commit
    /// can free space by deleting whole segments.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: NonZeroU64,
    /// Size at which a segment file is closed and a new one started; the unit in which
    /// committed space is given back. Default 64 MiB.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: NonZeroU64,
}

fn default_max_bytes() -> NonZeroU64 {
    DEFAULT_MAX_BYTES
}

fn default_segment_bytes() -> NonZeroU64 {
    DEFAULT_SEGMENT_BYTES
}

impl SpoolConfig {
    /// A configuration for `dir` with the default sizes.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_documented_defaults_and_is_strict() {
        let config: SpoolConfig = toml::from_str(r#"dir = "spool""#).expect("parses");
        assert_eq!(config, SpoolConfig::new("spool"));
        assert_eq!(config.max_bytes.get(), 1 << 30);
        assert_eq!(config.segment_bytes.get(), 64 << 20);

        let sized: SpoolConfig =
            toml::from_str("dir = \"/var/spool/iomt\"\nmax_bytes = 4096\nsegment_bytes = 1024")
                .expect("parses");
        assert_eq!(
            (sized.max_bytes.get(), sized.segment_bytes.get()),
            (4096, 1024)
        );

        for bad in [
            "max_bytes = 10",
            "dir = \"x\"\nmax_byte = 10",
            "dir = \"x\"\nsegment_bytes = 0",
        ] {
            assert!(toml::from_str::<SpoolConfig>(bad).is_err(), "{bad}");
        }
    }
}
