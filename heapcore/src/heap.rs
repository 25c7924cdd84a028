//! Heap names, kinds and properties: what `/dev/dma_heap` holds and what each heap gives.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};

/// The longest name a heap device can have (a file name in `/dev/dma_heap`).
const NAME_MAX: usize = 255;

/// A validated heap name: a plain file name inside `/dev/dma_heap`, never a path.
///
/// Kernel heap names are plain (`system`, `linux,cma`, `reserved`, `protected,secure-video`,
/// `framebuffer@80000000`), so anything that could leave the directory (`..`, `/`), hide
/// (control characters) or truncate (NUL) is refused before a file is opened.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HeapName(String);

impl HeapName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name == "." || name == ".." {
            Some("it names a directory")
        } else if name.contains('/') {
            Some("heap names are plain names in /dev/dma_heap, not paths")
        } else if name.contains('\0') {
            Some("it contains a NUL byte")
        } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("it contains white space or control characters")
        } else if name.len() > NAME_MAX {
            Some("it is longer than 255 bytes")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidHeapName {
                name: name.to_owned(),
                reason,
            }),
            None => Ok(Self(name.to_owned())),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HeapName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for HeapName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Names the kernel has given the default CMA area's heap, newest first: `default_cma_region`
/// since 6.17, `reserved` when the area comes from `cma=` or a `reserved-memory` node without
/// a name, `linux,cma` from device trees, `default-pool` on some vendor trees.
pub const DEFAULT_CMA_NAMES: [&str; 4] = [
    "default_cma_region",
    "reserved",
    "linux,cma",
    "default-pool",
];

/// The generic alias that always means "the default CMA heap, whatever this kernel calls it".
pub const CMA_ALIAS: &str = "cma";

/// What kind of memory a heap gives, as far as it can be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeapKind {
    /// Pages from the page allocator, mapped cached (mainline `system`).
    System,
    /// Like `system` but mapped write-combined (Android's `system-uncached`).
    SystemUncached,
    /// Physically contiguous memory from a CMA area.
    Cma,
    /// Memory the CPU may not read (TEE-protected, `protected,*`).
    Protected,
    /// A heap this library does not know; usable by name only.
    Unknown,
}

impl HeapKind {
    /// Recognises a heap from its kernel name; `cma_areas` are the CMA area names the kernel
    /// lists in `/sys/kernel/mm/cma` (each CMA heap is named after its area).
    pub fn recognise(name: &str, cma_areas: &[String]) -> Self {
        if name == "system" {
            Self::System
        } else if name == "system-uncached" {
            Self::SystemUncached
        } else if name.starts_with("protected,") {
            Self::Protected
        } else if DEFAULT_CMA_NAMES.contains(&name) || cma_areas.iter().any(|a| a == name) {
            Self::Cma
        } else {
            Self::Unknown
        }
    }

    /// What is known of this kind's memory.
    pub fn properties(self) -> HeapProperties {
        let known = |contiguous, cpu_cached, protected| HeapProperties {
            contiguous: Some(contiguous),
            cpu_cached: Some(cpu_cached),
            protected: Some(protected),
        };
        match self {
            Self::System => known(false, true, false),
            Self::SystemUncached => known(false, false, false),
            Self::Cma => known(true, true, false),
            Self::Protected => HeapProperties {
                contiguous: None,
                cpu_cached: None,
                protected: Some(true),
            },
            Self::Unknown => HeapProperties::default(),
        }
    }
}

impl fmt::Display for HeapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::System => "system",
            Self::SystemUncached => "system-uncached",
            Self::Cma => "cma",
            Self::Protected => "protected",
            Self::Unknown => "unknown",
        })
    }
}

/// What is known of a heap's memory; `None` where the heap does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HeapProperties {
    /// Physically contiguous (devices without an IOMMU need it).
    pub contiguous: Option<bool>,
    /// CPU mappings are cached (fast CPU reads, needs cache maintenance).
    pub cpu_cached: Option<bool>,
    /// The CPU may not map it.
    pub protected: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_kernel_names_are_accepted() {
        for name in [
            "system",
            "linux,cma",
            "reserved",
            "default_cma_region",
            "protected,secure-video",
            "framebuffer@80000000",
            "vidbuf_cached",
        ] {
            assert_eq!(HeapName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn names_that_are_paths_or_garbage_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "../x",
            "/dev/mem",
            "a/b",
            "sys\0tem",
            "sys tem",
            "line\nfeed",
        ] {
            let err = HeapName::new(name).unwrap_err();
            assert!(
                matches!(err, Error::InvalidHeapName { .. }),
                "{name:?}: {err}"
            );
        }
        assert!(HeapName::new(&"x".repeat(256)).is_err());
    }

    #[test]
    fn every_default_cma_name_is_cma() {
        for name in DEFAULT_CMA_NAMES {
            assert_eq!(HeapKind::recognise(name, &[]), HeapKind::Cma);
        }
        let areas = vec!["framebuffer@80000000".to_owned()];
        assert_eq!(
            HeapKind::recognise("framebuffer@80000000", &areas),
            HeapKind::Cma
        );
        assert_eq!(
            HeapKind::recognise("framebuffer@80000000", &[]),
            HeapKind::Unknown
        );
    }

    #[test]
    fn kinds_say_what_they_give() {
        assert_eq!(
            HeapKind::recognise("system", &[]).properties().contiguous,
            Some(false)
        );
        assert_eq!(HeapKind::Cma.properties().contiguous, Some(true));
        assert_eq!(
            HeapKind::SystemUncached.properties().cpu_cached,
            Some(false)
        );
        assert_eq!(
            HeapKind::recognise("protected,secure-video", &[])
                .properties()
                .protected,
            Some(true)
        );
        assert_eq!(HeapKind::Unknown.properties(), HeapProperties::default());
    }
}
