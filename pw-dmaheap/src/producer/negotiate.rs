//! Negotiation: which EnumFormat objects to announce, what to answer when PipeWire fixes (or
//! clears) a format, and which memory type the buffers get.
//!
//! The decisions are pure functions of what was offered and what the consumer chose
//! ([`enum_formats`], [`plan_buffers`], [`decide_kind`]), tested without a daemon below;
//! [`on_format`] applies them to the producer's state. Half of this file's length is those
//! tests, kept beside the decisions they pin down.

use heapcore::Origin;
use heapcore::format::VideoFormat;
use pipewire::spa::pod::Pod;

use super::report::Event;
use super::state::{Active, EINVAL, ENOMEM, Inner, Outcome, fail};
use crate::config::ProducerConfig;
use crate::constraints::FrameConstraints;
use crate::data_types::{DataKind, DataTypes};
use crate::error::{ConfigError, DmabufUnavailable, Error, NegotiationError, Result};
use crate::params::{
    self, BuffersOffer, DRM_FORMAT_MOD_LINEAR, FormatOffer, ModifierOffer, PodBytes, VideoParams,
};
use crate::raw::spa_abi;
use crate::video::MAX_BUFFERS;

/// The modifiers this producer allocates: heap buffers are linear.
const MODIFIERS: [u64; 1] = [DRM_FORMAT_MOD_LINEAR];

/// What the producer can offer, decided when it connects, resizes or withdraws DmaBuf.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    /// Dma-bufs can be had here (the probe allocation succeeded); else why not.
    pub(super) dmabuf: Result<(), DmabufUnavailable>,
    pub(super) memfd_fallback: bool,
    pub(super) dmabuf_without_modifier: bool,
    /// The format whose LINEAR modifier this producer fixated for a consumer that left the
    /// choice to it; announced first, fixed, so that the renegotiation fixes it.
    pub(super) fixated: Option<VideoFormat>,
    /// A DRM device with timeline syncobjs exists: explicit sync can be offered.
    pub(super) explicit_sync: bool,
}

impl Offer {
    /// What `inner` can offer now.
    pub(super) fn of(inner: &Inner) -> Self {
        Self {
            dmabuf: inner.dmabuf.as_ref().map(|_| ()).map_err(Clone::clone),
            memfd_fallback: inner.config.memfd_fallback,
            dmabuf_without_modifier: inner.config.dmabuf_without_modifier,
            fixated: inner.fixated,
            explicit_sync: inner.sync_device.is_some(),
        }
    }

    fn has_dmabuf(&self) -> bool {
        self.dmabuf.is_ok()
    }
}

/// The EnumFormat objects to announce, preferred first (PipeWire's dma-buf negotiation): when
/// a dma-buf can be had, the format this producer fixated (if any) with its one modifier, then
/// every format with the modifiers it can allocate, `MANDATORY | DONT_FIXATE`, so that only
/// consumers that handle dma-bufs with modifiers match and the producer fixates one; last
/// the formats without a modifier, for everybody else (when MemFd is allowed, or dma-bufs go to
/// consumers without modifiers too).
pub(super) fn enum_formats(
    offer: &Offer,
    config: &ProducerConfig,
    width: u32,
    height: u32,
) -> std::result::Result<Vec<FormatOffer>, ConfigError> {
    let format = |formats: Vec<VideoFormat>, modifier| FormatOffer {
        formats,
        width,
        height,
        max_framerate: config.framerate,
        modifier,
    };
    let mut offers = Vec::new();
    if offer.has_dmabuf() {
        if let Some(fixated) = offer.fixated {
            offers.push(format(
                vec![fixated],
                ModifierOffer::Fixed(DRM_FORMAT_MOD_LINEAR),
            ));
        }
        offers.push(format(
            config.formats.clone(),
            ModifierOffer::ToFixate(MODIFIERS.to_vec()),
        ));
    }
    if offer.memfd_fallback || (offer.has_dmabuf() && offer.dmabuf_without_modifier) {
        offers.push(format(config.formats.clone(), ModifierOffer::None));
    }
    match (&offer.dmabuf, offers.is_empty()) {
        (Err(why), true) => Err(ConfigError::NothingToOffer(why.clone())),
        _ => Ok(offers),
    }
}

/// How the buffers of a fixed format are laid out and which memory types are offered.
#[derive(Debug)]
pub(super) struct BufferPlan {
    /// `spa_data` blocks per buffer (memory; explicit sync adds two syncobjs).
    pub(super) blocks: u32,
    /// The memory types offered in `SPA_PARAM_BUFFERS_dataType`.
    pub(super) types: DataTypes,
    /// A layout with `SPA_META_SyncTimeline` and two syncobj blocks is offered first.
    pub(super) explicit_sync: bool,
    /// Dma-bufs were wanted for a format without a modifier but could not be had (logged).
    pub(super) dmabuf_refused: Option<Error>,
}

/// The answer to a format PipeWire set.
#[derive(Debug)]
pub(super) enum FormatAnswer {
    /// Announce `SPA_PARAM_Buffers` for this plan.
    Buffers(BufferPlan),
    /// The consumer left the modifier to the producer: a test allocation with it succeeded,
    /// so announce the format with this modifier fixed first, and PipeWire renegotiates.
    Fixate(u64),
    /// The dma-buf for a modifier format could not be allocated: withdraw the DmaBuf formats
    /// (PipeWire's rule: never offer what cannot be had), so PipeWire renegotiates.
    Withdraw(Error),
    /// Nothing this producer can serve.
    Refuse(NegotiationError),
}

/// Decides the answer to a format of `planes` planes whose modifier is fixed, or left to
/// fixate (`to_fixate`: the modifiers both sides can use). `probe` allocates one dma-buf for
/// the format (kept for the first buffer) and is called only when dma-bufs are planned.
pub(super) fn plan_buffers(
    fixed: &VideoParams,
    to_fixate: Option<&[u64]>,
    planes: u32,
    offer: &Offer,
    probe: impl FnOnce() -> Result<()>,
) -> FormatAnswer {
    if let Some(modifiers) = to_fixate {
        let Some(&modifier) = MODIFIERS.iter().find(|m| modifiers.contains(m)) else {
            return FormatAnswer::Refuse(NegotiationError::ModifiersToFixate(modifiers.to_vec()));
        };
        return match probe() {
            Ok(()) => FormatAnswer::Fixate(modifier),
            Err(e) => FormatAnswer::Withdraw(e),
        };
    }
    if let Some(modifier) = fixed.modifier {
        if !MODIFIERS.contains(&modifier) {
            return FormatAnswer::Refuse(NegotiationError::Modifier(modifier));
        }
        return match probe() {
            Ok(()) => FormatAnswer::Buffers(BufferPlan {
                blocks: planes,
                types: DataTypes::DMA_BUF,
                explicit_sync: offer.explicit_sync,
                dmabuf_refused: None,
            }),
            Err(e) => FormatAnswer::Withdraw(e),
        };
    }
    let mut types = DataTypes::empty();
    if offer.memfd_fallback {
        types |= DataTypes::MEM_FD;
    }
    let mut dmabuf_refused = None;
    if offer.has_dmabuf() && offer.dmabuf_without_modifier {
        match probe() {
            Ok(()) => types |= DataTypes::DMA_BUF,
            Err(e) => dmabuf_refused = Some(e),
        }
    }
    if types.is_empty() {
        return FormatAnswer::Refuse(NegotiationError::NoModifierNoMemFd);
    }
    FormatAnswer::Buffers(BufferPlan {
        blocks: 1,
        types,
        explicit_sync: false,
        dmabuf_refused,
    })
}

/// Picks the memory type for a format's buffers from what both sides accepted (`allowed`,
/// the mask PipeWire leaves in `spa_data.type` before `add_buffer`) and what this producer
/// `offered`; the reason goes to the log.
pub(super) fn decide_kind(
    modifier: bool,
    offered: DataTypes,
    allowed: DataTypes,
) -> std::result::Result<(DataKind, String), NegotiationError> {
    let usable = allowed & offered;
    if modifier {
        return if usable.contains(DataTypes::DMA_BUF) {
            Ok((
                DataKind::DmaBuf,
                format!("a LINEAR modifier was negotiated and the buffer types allow {allowed}"),
            ))
        } else {
            Err(NegotiationError::ModifierWithoutDmaBuf(allowed))
        };
    }
    if usable.contains(DataTypes::DMA_BUF) {
        Ok((
            DataKind::DmaBuf,
            format!(
                "no modifier, but the consumer's buffer types are {allowed}: linear, \
                 mmap-able dma-bufs (PipeWire's V4L2 rule)"
            ),
        ))
    } else if usable.contains(DataTypes::MEM_FD) {
        Ok((
            DataKind::MemFd,
            format!("the negotiated buffer types are {allowed}"),
        ))
    } else {
        Err(NegotiationError::Types {
            accepted: allowed,
            offered,
        })
    }
}

/// PipeWire set a format (or cleared it, `None`): answers with the Buffers and Meta params,
/// fixates the modifier, withdraws DmaBuf, or fails the stream.
pub(super) fn on_format(inner: &mut Inner, param: Option<&Pod>) -> Outcome {
    // pw_stream removes every buffer before it reports a new (or no) format.
    if !inner.slots.is_empty() {
        log::warn!(
            "{}: {} buffers outlived their format; freeing them",
            inner.config.node_name,
            inner.slots.len()
        );
        let stale: Vec<_> = inner.slots.drain().map(|(_, slot)| slot).collect();
        for slot in stale {
            inner.retire(slot.buf);
        }
    }
    inner.drop_spare();
    inner.generation += 1;
    inner.active = None;
    inner.held_back = None;
    let Some(param) = param else {
        // No link left to renegotiate with: PipeWire removed the buffers with the format.
        inner.resizing = false;
        log::debug!("{}: format cleared", inner.config.node_name);
        return Outcome::Done;
    };
    let fixed = match VideoParams::parse(param) {
        Ok(p) => p,
        Err(e) => return fail(EINVAL, e),
    };
    if !inner.config.formats.contains(&fixed.format) {
        return fail(EINVAL, NegotiationError::FormatNotOffered(fixed.format));
    }
    if (fixed.width, fixed.height) != (inner.width, inner.height) {
        log::warn!(
            "{}: format fixed at {}x{} while {}x{} is offered",
            inner.config.node_name,
            fixed.width,
            fixed.height,
            inner.width,
            inner.height
        );
    }
    let constraints = match constraints_for(&fixed, &inner.config) {
        Ok(c) => c,
        Err(e) => return fail(EINVAL, e),
    };
    let node = inner.config.node_name.clone();
    let offer = Offer::of(inner);
    let to_fixate = params::modifiers_to_fixate(param);
    let planes = constraints.layout.n_planes as u32;
    let (pools, spare) = (&mut inner.pools, &mut inner.spare);
    let answer = plan_buffers(&fixed, to_fixate.as_deref(), planes, &offer, || {
        *spare = Some(pools.allocate(DataKind::DmaBuf, &constraints)?);
        Ok(())
    });
    let plan = match answer {
        FormatAnswer::Buffers(plan) => plan,
        FormatAnswer::Refuse(e) => return fail(EINVAL, e),
        FormatAnswer::Fixate(modifier) => {
            log::info!(
                "{node}: the consumer left the modifier to this producer ({} possible); a \
                 test allocation of {} with {modifier:#x} succeeded: announcing it fixed",
                to_fixate.map_or(0, |m| m.len()),
                fixed.format
            );
            inner.fixated = Some(fixed.format);
            return match inner.enum_formats() {
                Ok(pods) => Outcome::Announce {
                    what: "fixating the modifier",
                    pods,
                },
                Err(e) => fail(EINVAL, e),
            };
        }
        FormatAnswer::Withdraw(e) => {
            log::warn!("{node}: no dma-buf for {fixed} ({e}); withdrawing the DmaBuf formats");
            inner.dmabuf = Err(DmabufUnavailable::Withdrawn(std::sync::Arc::new(e)));
            inner.fixated = None;
            return match inner.enum_formats() {
                Ok(pods) => Outcome::Announce {
                    what: "withdrawing the DmaBuf formats",
                    pods,
                },
                Err(e) => fail(ENOMEM, e),
            };
        }
    };
    inner.stats.negotiations += 1;
    if let Some(e) = &plan.dmabuf_refused {
        log::warn!("{node}: no dma-buf for {fixed} ({e}); offering MemFd only");
    }
    let pods = match buffer_params(&plan, &constraints, &inner.config) {
        Ok(p) => p,
        Err(e) => return fail(EINVAL, e),
    };
    log::info!(
        "{node}: format fixed: {fixed}; offering {} buffers, {} block(s), stride {}, data types \
         {}{}",
        inner.config.buffers,
        plan.blocks,
        constraints.layout.strides[0],
        plan.types,
        if plan.explicit_sync {
            "; explicit sync (SPA_META_SyncTimeline, two syncobj blocks) if the consumer asks"
        } else {
            ""
        }
    );
    inner.active = Some(Active {
        params: fixed,
        constraints,
        blocks: plan.blocks,
        offered_types: plan.types,
        explicit_sync_offered: plan.explicit_sync,
        explicit_sync: None,
        kind: None,
        origin: None::<Origin>,
        ready_reported: false,
        sealed: false,
    });
    inner.events.push(Event::FormatFixed(fixed));
    Outcome::Announce {
        what: "announcing buffers",
        pods,
    }
}

/// One block per plane, each with its offset and stride, with a modifier; one block laid out
/// as GStreamer's consumers assume without.
fn constraints_for(fixed: &VideoParams, config: &ProducerConfig) -> Result<FrameConstraints> {
    let for_layout = if fixed.modifier.is_some() {
        FrameConstraints::for_frame
    } else {
        FrameConstraints::for_single_block
    };
    for_layout(
        fixed.format,
        fixed.width,
        fixed.height,
        config.frame_rules(),
    )
}

/// The Buffers params for a plan (with explicit sync: first a layout that requires
/// `SPA_META_SyncTimeline` and has two more blocks for the syncobjs, then the one without),
/// and the Meta params (header; sync timeline).
fn buffer_params(
    plan: &BufferPlan,
    constraints: &FrameConstraints,
    config: &ProducerConfig,
) -> Result<Vec<PodBytes>> {
    let offer = BuffersOffer {
        buffers: config.buffers,
        max_buffers: MAX_BUFFERS.max(config.buffers),
        blocks: plan.blocks,
        // Each block covers the whole buffer; chunks say where each plane is.
        size: constraints.size as u32,
        stride: constraints.layout.strides[0],
        data_types: plan.types,
        required_meta: None,
    };
    let mut pods = Vec::new();
    if plan.explicit_sync {
        let synced = BuffersOffer {
            blocks: plan.blocks + 2,
            required_meta: Some(spa_abi::META_SYNC_TIMELINE),
            ..offer
        };
        pods.push(PodBytes::new("Buffers", synced.object())?);
    }
    pods.push(PodBytes::new("Buffers", offer.object())?);
    pods.push(PodBytes::new("Meta", params::header_meta())?);
    if plan.explicit_sync {
        pods.push(PodBytes::new("Meta", params::sync_timeline_meta())?);
    }
    Ok(pods)
}

impl Inner {
    /// The EnumFormat objects to announce now (at connect, resize or renegotiation).
    pub(super) fn enum_formats(&self) -> Result<Vec<PodBytes>> {
        let offer = Offer::of(self);
        enum_formats(&offer, &self.config, self.width, self.height)?
            .into_iter()
            .map(|o| PodBytes::new("EnumFormat", o.object()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use heapcore::format::VideoFormat;
    use pipewire::spa::pod::deserialize::PodDeserializer;
    use pipewire::spa::pod::{ChoiceValue, Object, Value};
    use pipewire::spa::sys;
    use pipewire::spa::utils::{Choice, ChoiceEnum};

    use super::*;
    use crate::video::Framerate;

    /// The formats and modifier of each offer.
    fn formats_of(offers: &[FormatOffer]) -> Vec<(Vec<VideoFormat>, ModifierOffer)> {
        offers
            .iter()
            .map(|o| (o.formats.clone(), o.modifier.clone()))
            .collect()
    }

    fn offer(dmabuf: bool, memfd: bool, without_modifier: bool) -> Offer {
        Offer {
            dmabuf: if dmabuf {
                Ok(())
            } else {
                Err(DmabufUnavailable::NoSource)
            },
            memfd_fallback: memfd,
            dmabuf_without_modifier: without_modifier,
            fixated: None,
            explicit_sync: false,
        }
    }

    fn fixed(modifier: Option<u64>) -> VideoParams {
        VideoParams {
            format: VideoFormat::Nv12,
            width: 64,
            height: 48,
            framerate: Framerate::new(30, 1),
            modifier,
        }
    }

    fn probe_fails() -> Result<()> {
        Err(Error::Heap(heapcore::Error::Unsupported("no heap".into())))
    }

    fn object(pod: &PodBytes) -> Object {
        let (_, value) = PodDeserializer::deserialize_any_from(pod.pod().as_bytes()).unwrap();
        let Value::Object(object) = value else {
            panic!("{value:?}")
        };
        object
    }

    fn prop(object: &Object, key: u32) -> Option<Value> {
        object
            .properties
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
    }

    const BGRX: VideoFormat = VideoFormat::Bgrx;
    const TO_FIXATE: fn() -> ModifierOffer = || ModifierOffer::ToFixate(vec![0]);

    #[test]
    fn dmabuf_formats_come_first_and_only_when_a_dmabuf_can_be_had() {
        let config = ProducerConfig::default();
        let all = enum_formats(&offer(true, true, false), &config, 64, 48).unwrap();
        assert_eq!(
            formats_of(&all),
            [(vec![BGRX], TO_FIXATE()), (vec![BGRX], ModifierOffer::None)]
        );
        let memfd = enum_formats(&offer(false, true, false), &config, 64, 48).unwrap();
        assert_eq!(formats_of(&memfd), [(vec![BGRX], ModifierOffer::None)]);
        let dmabuf_only = enum_formats(&offer(true, false, false), &config, 64, 48).unwrap();
        assert_eq!(formats_of(&dmabuf_only), [(vec![BGRX], TO_FIXATE())]);
        // Without MemFd, the no-modifier object is there for dmabuf_without_modifier only.
        let v4l2_rule = enum_formats(&offer(true, false, true), &config, 64, 48).unwrap();
        assert_eq!(formats_of(&v4l2_rule).len(), 2);
        let err = enum_formats(&offer(false, false, true), &config, 64, 48).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nothing to offer: no dma-buf can be allocated here (no DMA-BUF heap or \
             /dev/udmabuf here) and memfd_fallback is off"
        );
    }

    #[test]
    fn a_fixated_format_is_announced_first_with_its_one_modifier() {
        let config = ProducerConfig::default().with_formats([VideoFormat::Nv12, BGRX]);
        let fixated = Offer {
            fixated: Some(BGRX),
            ..offer(true, true, false)
        };
        let offers = enum_formats(&fixated, &config, 64, 48).unwrap();
        assert_eq!(
            formats_of(&offers),
            [
                (vec![BGRX], ModifierOffer::Fixed(DRM_FORMAT_MOD_LINEAR)),
                (vec![VideoFormat::Nv12, BGRX], TO_FIXATE()),
                (vec![VideoFormat::Nv12, BGRX], ModifierOffer::None),
            ]
        );
        // The pods say so: MANDATORY | DONT_FIXATE on the list, MANDATORY on the fixed one.
        let pod = PodBytes::new("EnumFormat", offers[1].object()).unwrap();
        assert_eq!(params::modifiers_to_fixate(pod.pod()), Some(vec![0]));
        let pod = PodBytes::new("EnumFormat", offers[0].object()).unwrap();
        assert_eq!(params::modifiers_to_fixate(pod.pod()), None);
        assert_eq!(
            VideoParams::parse(pod.pod()).unwrap().modifier,
            Some(DRM_FORMAT_MOD_LINEAR)
        );
    }

    #[test]
    fn a_modifier_left_to_the_producer_is_test_allocated_then_fixated() {
        let mut probed = false;
        let answer = plan_buffers(
            &fixed(Some(0)),
            Some(&[0]),
            2,
            &offer(true, true, false),
            || {
                probed = true;
                Ok(())
            },
        );
        assert!(probed, "fixating needs a test allocation");
        assert!(matches!(answer, FormatAnswer::Fixate(0)), "{answer:?}");
        // A consumer that also takes implicit modifiers (pipewiresrc's LINEAR and INVALID):
        // LINEAR is what heaps give.
        let both = [crate::DRM_FORMAT_MOD_INVALID, 0];
        let answer = plan_buffers(
            &fixed(Some(0)),
            Some(&both),
            2,
            &offer(true, true, false),
            || Ok(()),
        );
        assert!(matches!(answer, FormatAnswer::Fixate(0)), "{answer:?}");
        let answer = plan_buffers(
            &fixed(Some(0)),
            Some(&[0]),
            2,
            &offer(true, true, false),
            probe_fails,
        );
        assert!(matches!(answer, FormatAnswer::Withdraw(_)), "{answer:?}");
        let answer = plan_buffers(
            &fixed(Some(7)),
            Some(&[7]),
            2,
            &offer(true, true, false),
            || Ok(()),
        );
        let FormatAnswer::Refuse(e) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(
            e.to_string(),
            "the consumer left modifiers [0x7] to fixate; only LINEAR can be allocated here"
        );
    }

    #[test]
    fn a_modifier_format_gets_one_dmabuf_block_per_plane() {
        let mut probed = false;
        let answer = plan_buffers(&fixed(Some(0)), None, 2, &offer(true, true, false), || {
            probed = true;
            Ok(())
        });
        assert!(probed);
        let FormatAnswer::Buffers(plan) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((plan.blocks, plan.types), (2, DataTypes::DMA_BUF));
        assert!(!plan.explicit_sync);
        let synced = Offer {
            explicit_sync: true,
            ..offer(true, true, false)
        };
        let FormatAnswer::Buffers(plan) =
            plan_buffers(&fixed(Some(0)), None, 2, &synced, || Ok(()))
        else {
            panic!("no buffers")
        };
        assert!(plan.explicit_sync);
    }

    #[test]
    fn a_modifier_format_whose_dmabuf_fails_withdraws_dmabuf() {
        let answer = plan_buffers(
            &fixed(Some(0)),
            None,
            2,
            &offer(true, true, false),
            probe_fails,
        );
        assert!(matches!(answer, FormatAnswer::Withdraw(_)), "{answer:?}");
        let answer = plan_buffers(&fixed(Some(5)), None, 2, &offer(true, true, false), || {
            Ok(())
        });
        assert!(
            matches!(answer, FormatAnswer::Refuse(NegotiationError::Modifier(5))),
            "{answer:?}"
        );
    }

    #[test]
    fn no_modifier_means_one_memfd_block_unless_told_otherwise() {
        let mut probed = false;
        let answer = plan_buffers(&fixed(None), None, 2, &offer(true, true, false), || {
            probed = true;
            Ok(())
        });
        assert!(!probed, "no dma-buf is allocated for a MemFd format");
        let FormatAnswer::Buffers(plan) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((plan.blocks, plan.types), (1, DataTypes::MEM_FD));
        // PipeWire's V4L2 rule: DmaBuf too when the probe succeeds, MemFd only when not.
        let answer = plan_buffers(&fixed(None), None, 2, &offer(true, true, true), || Ok(()));
        let FormatAnswer::Buffers(plan) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(plan.types, DataTypes::MEM_FD | DataTypes::DMA_BUF);
        let answer = plan_buffers(&fixed(None), None, 2, &offer(true, true, true), probe_fails);
        let FormatAnswer::Buffers(plan) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(plan.types, DataTypes::MEM_FD);
        assert!(plan.dmabuf_refused.is_some());
        let answer = plan_buffers(&fixed(None), None, 2, &offer(true, false, false), || Ok(()));
        assert!(
            matches!(
                answer,
                FormatAnswer::Refuse(NegotiationError::NoModifierNoMemFd)
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn the_kind_follows_the_intersected_mask() {
        let both = DataTypes::MEM_FD | DataTypes::DMA_BUF;
        let (kind, why) = decide_kind(true, DataTypes::DMA_BUF, both).unwrap();
        assert_eq!(kind, DataKind::DmaBuf);
        assert!(why.contains("MEM_FD | DMA_BUF"), "{why}");
        let err = decide_kind(true, DataTypes::DMA_BUF, DataTypes::MEM_FD).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a modifier was negotiated but the consumer's buffer types are MEM_FD"
        );
        assert_eq!(
            decide_kind(false, both, both).unwrap().0,
            DataKind::DmaBuf,
            "the V4L2 rule"
        );
        assert_eq!(
            decide_kind(false, DataTypes::MEM_FD, both).unwrap().0,
            DataKind::MemFd
        );
        let err = decide_kind(false, DataTypes::MEM_FD, DataTypes::MEM_PTR).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the consumer accepts MEM_PTR; this producer offered MEM_FD"
        );
    }

    fn plan(blocks: u32, explicit_sync: bool) -> BufferPlan {
        BufferPlan {
            blocks,
            types: DataTypes::DMA_BUF,
            explicit_sync,
            dmabuf_refused: None,
        }
    }

    #[test]
    fn the_buffers_param_carries_the_plan() {
        let config = ProducerConfig::new(64, 48).with_buffers(6);
        let constraints =
            FrameConstraints::for_frame(VideoFormat::Nv12, 64, 48, config.frame_rules()).unwrap();
        let pods = buffer_params(&plan(2, false), &constraints, &config).unwrap();
        assert_eq!(pods.len(), 2);
        let buffers = object(&pods[0]);
        assert_eq!(
            prop(&buffers, sys::SPA_PARAM_BUFFERS_blocks),
            Some(Value::Int(2))
        );
        assert_eq!(
            prop(&buffers, sys::SPA_PARAM_BUFFERS_size),
            Some(Value::Int(constraints.size as i32))
        );
        assert!(
            matches!(
                prop(&buffers, sys::SPA_PARAM_BUFFERS_buffers),
                Some(Value::Choice(ChoiceValue::Int(Choice(
                    _,
                    ChoiceEnum::Range {
                        default: 6,
                        min: 2,
                        max: 32
                    }
                ))))
            ),
            "{buffers:?}"
        );
        assert!(
            matches!(
                prop(&buffers, sys::SPA_PARAM_BUFFERS_dataType),
                Some(Value::Choice(ChoiceValue::Int(Choice(
                    _,
                    ChoiceEnum::Flags { default: 8, .. }
                ))))
            ),
            "{buffers:?}"
        );
        assert_eq!(prop(&buffers, spa_abi::PARAM_BUFFERS_META_TYPE), None);
        let meta = object(&pods[1]);
        assert_eq!(
            prop(&meta, sys::SPA_PARAM_META_type),
            Some(Value::Id(pipewire::spa::utils::Id(sys::SPA_META_Header)))
        );
    }

    #[test]
    fn explicit_sync_adds_a_layout_with_two_syncobj_blocks_that_requires_the_meta() {
        let config = ProducerConfig::new(64, 48);
        let constraints = FrameConstraints::for_frame(BGRX, 64, 48, config.frame_rules()).unwrap();
        let pods = buffer_params(&plan(1, true), &constraints, &config).unwrap();
        assert_eq!(
            pods.len(),
            4,
            "synced and plain Buffers, header and sync Meta"
        );
        let synced = object(&pods[0]);
        assert_eq!(
            prop(&synced, sys::SPA_PARAM_BUFFERS_blocks),
            Some(Value::Int(3))
        );
        assert_eq!(
            prop(&synced, spa_abi::PARAM_BUFFERS_META_TYPE),
            Some(Value::Int(1 << spa_abi::META_SYNC_TIMELINE))
        );
        let mandatory = synced
            .properties
            .iter()
            .find(|p| p.key == spa_abi::PARAM_BUFFERS_META_TYPE)
            .unwrap()
            .flags;
        assert!(mandatory.contains(pipewire::spa::pod::PropertyFlags::MANDATORY));
        let plain = object(&pods[1]);
        assert_eq!(
            prop(&plain, sys::SPA_PARAM_BUFFERS_blocks),
            Some(Value::Int(1))
        );
        assert_eq!(prop(&plain, spa_abi::PARAM_BUFFERS_META_TYPE), None);
        let sync_meta = object(&pods[3]);
        assert_eq!(
            prop(&sync_meta, sys::SPA_PARAM_META_type),
            Some(Value::Id(pipewire::spa::utils::Id(
                spa_abi::META_SYNC_TIMELINE
            )))
        );
        assert_eq!(
            prop(&sync_meta, sys::SPA_PARAM_META_size),
            Some(Value::Int(24))
        );
        assert_eq!(
            prop(&sync_meta, spa_abi::PARAM_META_FEATURES),
            Some(Value::Int(1))
        );
    }
}
