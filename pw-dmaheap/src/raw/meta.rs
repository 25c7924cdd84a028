//! Buffer metadata and SPA values newer than the headers this crate may be built against.
//!
//! The default build uses PipeWire 0.3.65's headers, which know neither explicit sync
//! (`SPA_META_SyncTimeline`, `SPA_DATA_SyncObj`, PipeWire 1.2) nor capabilities
//! (`SPA_PARAM_PeerCapability`, 1.6). They are stable ABI, so they are written here and the
//! behaviour is decided at run time by what the daemon and the consumer negotiate: a 0.3.65
//! daemon never negotiates them, a 1.6 one does, whichever headers the crate was built with.
//! Under the `v1_6` feature a test checks them against the headers.

use pipewire::spa::sys as spa_sys;

use super::Dequeued;

/// SPA enum and struct values from PipeWire 1.2–1.6 (`spa/buffer/*.h`, `spa/param/*.h`,
/// `spa/utils/type.h`).
pub(crate) mod spa_abi {
    /// `SPA_DATA_SyncObj`: a DRM syncobj fd (1.2).
    pub(crate) const DATA_SYNC_OBJ: u32 = 5;
    /// `SPA_META_SyncTimeline` (1.2).
    pub(crate) const META_SYNC_TIMELINE: u32 = 9;
    /// `SPA_META_FEATURE_SYNC_TIMELINE_RELEASE` (1.4): the consumer says whether it will signal
    /// the release point.
    pub(crate) const META_FEATURE_SYNC_TIMELINE_RELEASE: u32 = 1 << 0;
    /// `SPA_META_SYNC_TIMELINE_UNSCHEDULED_RELEASE`: set by the producer, cleared by a consumer
    /// that promises to signal the release point.
    pub(crate) const SYNC_TIMELINE_UNSCHEDULED_RELEASE: u32 = 1 << 0;
    /// `SPA_META_TYPE_FEATURES(type, features)`: the meta type under which features show.
    pub(crate) const fn meta_type_features(meta_type: u32, features: u32) -> u32 {
        (meta_type << 16) | features
    }
    /// `SPA_PARAM_BUFFERS_metaType` (1.2): the metadata a Buffers layout requires.
    pub(crate) const PARAM_BUFFERS_META_TYPE: u32 = 7;
    /// `SPA_PARAM_META_features` (1.4).
    pub(crate) const PARAM_META_FEATURES: u32 = 3;
    /// `SPA_POD_PROP_FLAG_DROP` (1.4): drop the property if the other side lacks it.
    pub(crate) const POD_PROP_FLAG_DROP: u32 = 1 << 5;
    /// `SPA_PARAM_Capability` (1.6): a node's capabilities, a `ParamDict`.
    pub(crate) const PARAM_CAPABILITY: u32 = 19;
    /// `SPA_PARAM_PeerCapability` (1.6): the capabilities of the linked peers, a `PeerParam`.
    pub(crate) const PARAM_PEER_CAPABILITY: u32 = 20;
    /// `SPA_TYPE_OBJECT_PeerParam` (1.6).
    pub(crate) const TYPE_OBJECT_PEER_PARAM: u32 = 0x4_000e;
    /// `SPA_TYPE_OBJECT_ParamDict` (1.6).
    pub(crate) const TYPE_OBJECT_PARAM_DICT: u32 = 0x4_000f;
    /// `SPA_PARAM_DICT_info`: a struct of `n_items` then key and value strings.
    pub(crate) const PARAM_DICT_INFO: u32 = 1;
}

/// `struct spa_meta_sync_timeline`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MetaSyncTimeline {
    flags: u32,
    padding: u32,
    acquire_point: u64,
    release_point: u64,
}

/// A buffer's `SPA_META_SyncTimeline`: the points on its acquire and release timelines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SyncPoints {
    /// `SPA_META_SYNC_TIMELINE_UNSCHEDULED_RELEASE` and whatever else is set.
    pub flags: u32,
    pub acquire: u64,
    pub release: u64,
}

impl SyncPoints {
    /// The consumer cleared the unscheduled flag: it promised to signal `release`.
    pub(crate) fn release_scheduled(&self) -> bool {
        self.flags & spa_abi::SYNC_TIMELINE_UNSCHEDULED_RELEASE == 0
    }
}

impl Dequeued<'_> {
    fn sync_timeline_meta(&mut self) -> Option<&mut MetaSyncTimeline> {
        let b = self.spa_buffer()?;
        let size = std::mem::size_of::<MetaSyncTimeline>();
        // SAFETY: `b` is a valid spa_buffer; the lookup only reads its metas array.
        let meta =
            unsafe { spa_sys::spa_buffer_find_meta_data(b, spa_abi::META_SYNC_TIMELINE, size) };
        // SAFETY: a non-null result points to at least `size` bytes of this buffer's meta
        // memory, aligned for the struct (metas are 8-byte aligned), which the producer owns
        // while the buffer is dequeued.
        unsafe { meta.cast::<MetaSyncTimeline>().as_mut() }
    }

    /// The buffer's sync timeline points, if it carries the meta.
    pub(crate) fn sync_points(&mut self) -> Option<SyncPoints> {
        self.sync_timeline_meta().map(|m| SyncPoints {
            flags: m.flags,
            acquire: m.acquire_point,
            release: m.release_point,
        })
    }

    /// Writes the acquire and release points and marks the release unscheduled until the
    /// consumer promises it.
    pub(crate) fn set_sync_points(&mut self, acquire: u64, release: u64) {
        if let Some(m) = self.sync_timeline_meta() {
            m.flags |= spa_abi::SYNC_TIMELINE_UNSCHEDULED_RELEASE;
            m.acquire_point = acquire;
            m.release_point = release;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_timeline_meta_has_the_c_layout() {
        assert_eq!(std::mem::size_of::<MetaSyncTimeline>(), 24);
        assert_eq!(std::mem::offset_of!(MetaSyncTimeline, acquire_point), 8);
        assert_eq!(
            spa_abi::meta_type_features(
                spa_abi::META_SYNC_TIMELINE,
                spa_abi::META_FEATURE_SYNC_TIMELINE_RELEASE
            ),
            0x9_0001
        );
    }

    /// Where the headers know them (PipeWire 1.6), the values written here are theirs.
    #[cfg(feature = "v1_6")]
    #[test]
    fn the_values_match_the_pipewire_headers() {
        assert_eq!(spa_abi::DATA_SYNC_OBJ, spa_sys::SPA_DATA_SyncObj);
        assert_eq!(spa_abi::META_SYNC_TIMELINE, spa_sys::SPA_META_SyncTimeline);
        assert_eq!(
            spa_abi::META_FEATURE_SYNC_TIMELINE_RELEASE,
            spa_sys::SPA_META_FEATURE_SYNC_TIMELINE_RELEASE
        );
        assert_eq!(
            spa_abi::SYNC_TIMELINE_UNSCHEDULED_RELEASE,
            spa_sys::SPA_META_SYNC_TIMELINE_UNSCHEDULED_RELEASE
        );
        assert_eq!(
            spa_abi::PARAM_BUFFERS_META_TYPE,
            spa_sys::SPA_PARAM_BUFFERS_metaType
        );
        assert_eq!(
            spa_abi::PARAM_META_FEATURES,
            spa_sys::SPA_PARAM_META_features
        );
        assert_eq!(spa_abi::POD_PROP_FLAG_DROP, spa_sys::SPA_POD_PROP_FLAG_DROP);
        assert_eq!(spa_abi::PARAM_CAPABILITY, spa_sys::SPA_PARAM_Capability);
        assert_eq!(
            spa_abi::PARAM_PEER_CAPABILITY,
            spa_sys::SPA_PARAM_PeerCapability
        );
        assert_eq!(
            spa_abi::TYPE_OBJECT_PEER_PARAM,
            spa_sys::SPA_TYPE_OBJECT_PeerParam
        );
        assert_eq!(
            spa_abi::TYPE_OBJECT_PARAM_DICT,
            spa_sys::SPA_TYPE_OBJECT_ParamDict
        );
        assert_eq!(spa_abi::PARAM_DICT_INFO, spa_sys::SPA_PARAM_DICT_info);
        assert_eq!(
            std::mem::size_of::<MetaSyncTimeline>(),
            std::mem::size_of::<spa_sys::spa_meta_sync_timeline>()
        );
    }
}
