//! What a pool is asked to be: its QoS class and its configuration.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pressure::PressureLevel;
use crate::source::Source;

/// How a pool is treated when memory is short and how hard it works to stay ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QosClass {
    /// Prewarmed to `min_buffers` and refilled in the background (paused only under critical
    /// pressure): acquire never allocates while buffers remain. Never trimmed; capped by its
    /// budget.
    Realtime,
    /// Recycles on demand; trimmed to `min_buffers` (at least one) under critical pressure.
    Normal,
    /// Recycles on demand; the first trimmed, already under elevated pressure.
    Background,
}

impl QosClass {
    /// How many free buffers a pool of this class may keep at a pressure level (`None`: as
    /// many as its caps allow).
    #[inline]
    pub(super) fn keep_free(self, level: PressureLevel, min_buffers: usize) -> Option<usize> {
        match (self, level) {
            (_, PressureLevel::Normal) | (Self::Realtime, _) => None,
            (Self::Background, _) => Some(min_buffers),
            // One free buffer is the one a stream takes for its next frame: freeing it would
            // only make the pool allocate again at once, churning the memory it means to save.
            (Self::Normal, PressureLevel::Critical) => Some(min_buffers.max(1)),
            (Self::Normal, PressureLevel::Elevated) => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Realtime => "realtime",
            Self::Normal => "normal",
            Self::Background => "background",
        })
    }
}

impl FromStr for QosClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "realtime" => Ok(Self::Realtime),
            "normal" => Ok(Self::Normal),
            "background" => Ok(Self::Background),
            _ => Err(format!(
                "{s:?} is not a QoS class (realtime, normal, background)"
            )),
        }
    }
}

/// The most buffers a pool may be configured to hold (`min_buffers`, `max_buffers`): far
/// beyond any real stream's needs, and small enough that bookkeeping sized by it cannot fail.
pub const MAX_POOL_BUFFERS: usize = 65_536;

/// What a pool holds and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Shown in statistics and in buffer names (`name#serial`, visible in fdinfo).
    pub name: String,
    /// Where buffers come from, tried in order (usually `Candidates::sources()`).
    pub sources: Vec<Source>,
    /// Bytes per buffer (rounded up to pages).
    pub buffer_size: u64,
    /// How the pool is treated under memory pressure and how hard it stays ready.
    pub qos: QosClass,
    /// Buffers allocated before the pool is used (prewarm), kept ready by a realtime pool's
    /// refill, and kept when trimming.
    pub min_buffers: usize,
    /// At most this many buffers exist at once (0: no count limit).
    pub max_buffers: usize,
    /// At most this many bytes are held, free and in use together.
    pub budget: Option<u64>,
}

impl PoolConfig {
    /// A `normal` pool of `buffer_size` byte buffers from `sources`, without prewarm, count
    /// limit or budget of its own.
    pub fn new(name: impl Into<String>, sources: Vec<Source>, buffer_size: u64) -> Self {
        Self {
            name: name.into(),
            sources,
            buffer_size,
            qos: QosClass::Normal,
            min_buffers: 0,
            max_buffers: 0,
            budget: None,
        }
    }

    /// The QoS class.
    pub fn qos(mut self, qos: QosClass) -> Self {
        self.qos = qos;
        self
    }

    /// Buffers allocated before the pool is used, kept when trimming (and refilled if realtime).
    pub fn min_buffers(mut self, n: usize) -> Self {
        self.min_buffers = n;
        self
    }

    /// The most buffers that may exist at once (0: no count limit).
    pub fn max_buffers(mut self, n: usize) -> Self {
        self.max_buffers = n;
        self
    }

    /// The most bytes the pool may hold.
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }

    /// Checks what can be checked before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                pool: self.name.clone(),
                reason,
            })
        };
        if self.sources.is_empty() {
            return invalid("it has no source to allocate from".into());
        }
        for (what, n) in [
            ("min-buffers", self.min_buffers),
            ("max-buffers", self.max_buffers),
        ] {
            if n > MAX_POOL_BUFFERS {
                return invalid(format!(
                    "{what} {n} is above the limit of {MAX_POOL_BUFFERS} buffers"
                ));
            }
        }
        if self.max_buffers != 0 && self.min_buffers > self.max_buffers {
            return invalid(format!(
                "min-buffers {} is above max-buffers {}",
                self.min_buffers, self.max_buffers
            ));
        }
        Ok(())
    }
}
