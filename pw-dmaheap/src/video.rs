//! The video terms the producer's parts share: a frame rate, and the bounds of what a
//! producer offers (frame size, buffer count).

use std::fmt;

/// The largest width or height offered (the limit of most display engines and GPUs).
pub const MAX_DIMENSION: u32 = 16384;

/// The most buffers a producer asks PipeWire for (`pw_stream` handles up to 64).
pub const MAX_BUFFERS: u32 = 32;

/// A frame rate as a fraction (`30/1`, `30000/1001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framerate {
    /// Frames (the numerator).
    pub num: u32,
    /// Seconds they take (the denominator).
    pub denom: u32,
}

impl Framerate {
    /// `num/denom` frames per second.
    pub const fn new(num: u32, denom: u32) -> Self {
        Self { num, denom }
    }

    /// The time between frames, if the rate is not zero.
    pub fn interval(self) -> Option<std::time::Duration> {
        (self.num > 0 && self.denom > 0).then(|| {
            std::time::Duration::from_nanos(
                (u64::from(self.denom) * 1_000_000_000) / u64::from(self.num),
            )
        })
    }
}

impl fmt::Display for Framerate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.denom)
    }
}
