//! The devices dmaheapupload's buffers pass through: named in the `devices` property, or
//! learned from the neighbours.
//!
//! A heap suits a buffer only if every device that reads or writes it can import it (a camera
//! or display without an IOMMU needs CMA). heapcore's device model probes each device once
//! and its solver rules out what a device refused; this module finds the devices:
//! - the `devices` property: device nodes separated by commas or spaces;
//! - upstream, through queues and capsfilters, a V4L2 element (v4l2src, a V4L2 decoder or
//!   converter writing into the pool with `dmabuf-import`): its `device` property;
//! - downstream, likewise, kmssink (its `fd`, else the DRM card of its `driver-name` or
//!   `bus-id`, else the one card with a display) or a V4L2 element importing the buffers.
//!
//! [`device_reports`] is where the nodes become heapcore's `DeviceReport`s; [`upstream_v4l2`]
//! names the device that exported a videobuf2 dma-buf arriving from upstream.

use std::fmt;
use std::path::{Path, PathBuf};

use gst::prelude::*;

/// Elements buffers pass through untouched, which the search walks across.
const PASSES_THROUGH: &[&str] = &["queue", "queue2", "capsfilter", "identity", "valve"];

/// How far the search walks from dmaheapupload in each direction.
const MAX_HOPS: usize = 8;

/// A device node and who named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundDevice {
    pub(crate) node: PathBuf,
    /// "the devices property", "upstream v4l2src0", "downstream kmssink0 (driver-name=vkms)".
    pub(crate) via: String,
}

impl fmt::Display for FoundDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.node.display(), self.via)
    }
}

/// The nodes of a `devices` property value: separated by commas or white space.
pub(crate) fn parse_list(value: &str) -> Vec<PathBuf> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The devices to choose heaps for: the property's, else those of the neighbours of
/// `element` (dmaheapupload), upstream first.
pub(crate) fn find(element: &gst::Element, property: &str) -> Vec<FoundDevice> {
    let named = parse_list(property);
    if !named.is_empty() {
        return named
            .into_iter()
            .map(|node| FoundDevice {
                node,
                via: "the devices property".into(),
            })
            .collect();
    }
    let cards = Card::all();
    [gst::PadDirection::Sink, gst::PadDirection::Src]
        .into_iter()
        .filter_map(|dir| neighbour_device(element, dir, &cards))
        .collect()
}

/// The V4L2 element upstream of `element` (through queues and capsfilters), whatever the
/// `devices` property says: the device that exported a videobuf2 dma-buf arriving from
/// upstream (a camera or decoder's own buffers).
pub(crate) fn upstream_v4l2(element: &gst::Element) -> Option<heapcore::device::Device> {
    let found = neighbour_device(element, gst::PadDirection::Sink, &[])?;
    let device = heapcore::device::Device::open(&found.node).ok()?;
    (device.subsystem == heapcore::device::Subsystem::Video4Linux).then_some(device)
}

/// The nodes as heapcore sees them, each with what it accepts (probed once, then cached),
/// and a message for each that could not be looked at.
pub(crate) fn device_reports(
    found: &[FoundDevice],
) -> (Vec<heapcore::device::DeviceReport>, Vec<String>) {
    let registry = crate::heapchoice::registry();
    let mut problems = Vec::new();
    let reports = found
        .iter()
        .filter_map(|d| {
            heapcore::device::DeviceReport::for_node(&d.node, registry.allocator())
                .map_err(|e| problems.push(format!("{d}: {e}")))
                .ok()
        })
        .collect();
    (reports, problems)
}

/// The element across `pad`'s link (through a ghost pad to the element inside a bin).
fn peer_element(pad: &gst::Pad) -> Option<gst::Element> {
    let peer = pad.peer()?;
    let peer = match peer.downcast_ref::<gst::GhostPad>() {
        Some(ghost) => ghost.target()?,
        None => peer,
    };
    peer.parent_element()
}

/// The first device-using element from `element` in direction `dir` (Sink: upstream).
fn neighbour_device(
    element: &gst::Element,
    dir: gst::PadDirection,
    cards: &[Card],
) -> Option<FoundDevice> {
    let side = if dir == gst::PadDirection::Sink {
        "upstream"
    } else {
        "downstream"
    };
    let pad_name = if dir == gst::PadDirection::Sink {
        "sink"
    } else {
        "src"
    };
    let mut next = peer_element(&element.static_pad(pad_name)?);
    for _ in 0..MAX_HOPS {
        let current = next?;
        if let Some(node) = v4l2_node(&current) {
            return Some(FoundDevice {
                node,
                via: format!("{side} {}", current.name()),
            });
        }
        if let Some((node, how)) = drm_node(&current, cards) {
            return Some(FoundDevice {
                node,
                via: format!("{side} {} ({how})", current.name()),
            });
        }
        let factory = current.factory().map(|f| f.name().to_string());
        if !factory.is_some_and(|f| PASSES_THROUGH.contains(&f.as_str())) {
            return None;
        }
        next = current.static_pad(pad_name).and_then(|p| peer_element(&p));
    }
    None
}

/// The `device` of a V4L2 element (they all have `device` and `device-fd`).
fn v4l2_node(element: &gst::Element) -> Option<PathBuf> {
    if !(element.has_property("device") && element.has_property("device-fd")) {
        return None;
    }
    let device = element.property::<Option<String>>("device")?;
    (!device.is_empty()).then(|| PathBuf::from(device))
}

/// The DRM card kmssink (any element with kmssink's `driver-name`, `bus-id` and `fd`)
/// shows on, and how that was found.
fn drm_node(element: &gst::Element, cards: &[Card]) -> Option<(PathBuf, String)> {
    if !["driver-name", "bus-id", "fd"]
        .iter()
        .all(|p| element.has_property(p))
    {
        return None;
    }
    let fd = element.property::<i32>("fd");
    if fd >= 0 {
        let node = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        return Some((node, format!("fd={fd}")));
    }
    let driver = element.property::<Option<String>>("driver-name");
    let bus_id = element.property::<Option<String>>("bus-id");
    let node = choose_card(cards, driver.as_deref(), bus_id.as_deref())?;
    let how = match (driver, bus_id) {
        (Some(d), _) => format!("driver-name={d}"),
        (None, Some(b)) => format!("bus-id={b}"),
        (None, None) => "the only display".into(),
    };
    Some((node, how))
}

/// A DRM card node and what sysfs says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Card {
    node: PathBuf,
    /// Its driver (the device's own name for vkms on 6.12, which binds none).
    driver: Option<String>,
    /// The sysfs name of its device (a PCI address, `vkms`): what `bus-id` names.
    bus: Option<String>,
    /// Whether it has connectors (a display, not a render-only device such as vgem).
    display: bool,
}

impl Card {
    /// Every `/dev/dri/cardN`.
    fn all() -> Vec<Self> {
        heapcore::device::Device::all()
            .into_iter()
            .filter(|d| d.subsystem == heapcore::device::Subsystem::Drm)
            .filter_map(|d| {
                let name = d.node.file_name()?.to_str()?.to_owned();
                if !name.starts_with("card") {
                    return None;
                }
                let class = Path::new("/sys/class/drm").join(&name);
                let display = std::fs::read_dir("/sys/class/drm").ok()?.any(|e| {
                    e.is_ok_and(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.starts_with(&format!("{name}-")))
                    })
                });
                let bus = std::fs::canonicalize(class.join("device"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
                Some(Self {
                    node: d.node,
                    driver: d.driver,
                    bus,
                    display,
                })
            })
            .collect()
    }
}

/// The card kmssink opens for `driver` or `bus_id`; with neither, the only card with a
/// display (kmssink then tries drivers it knows until one opens; where several displays
/// exist nothing is assumed).
fn choose_card(cards: &[Card], driver: Option<&str>, bus_id: Option<&str>) -> Option<PathBuf> {
    let bus_matches = |card: &Card| {
        bus_id.is_none_or(|want| {
            let want = want
                .strip_prefix("PCI:")
                .or_else(|| want.strip_prefix("pci:"))
                .unwrap_or(want);
            card.bus
                .as_deref()
                .is_some_and(|bus| bus.eq_ignore_ascii_case(want))
        })
    };
    let driver_matches = |card: &Card| driver.is_none_or(|d| card.driver.as_deref() == Some(d));
    let mut matching = cards.iter().filter(|c| bus_matches(c) && driver_matches(c));
    if driver.is_some() || bus_id.is_some() {
        return matching.next().map(|c| c.node.clone());
    }
    let displays: Vec<&Card> = cards.iter().filter(|c| c.display).collect();
    match displays.as_slice() {
        [only] => Some(only.node.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(node: &str, driver: &str, bus: &str, display: bool) -> Card {
        Card {
            node: node.into(),
            driver: Some(driver.into()),
            bus: Some(bus.into()),
            display,
        }
    }

    #[test]
    fn the_property_takes_commas_and_spaces() {
        assert_eq!(
            parse_list(" /dev/video4, /dev/dri/card1  /dev/media0,,"),
            [
                PathBuf::from("/dev/video4"),
                "/dev/dri/card1".into(),
                "/dev/media0".into()
            ]
        );
        assert!(parse_list(" , ").is_empty());
    }

    #[test]
    fn kmssink_cards_by_driver_bus_or_the_only_display() {
        let cards = [
            card("/dev/dri/card0", "vgem", "vgem", false),
            card("/dev/dri/card1", "vkms", "vkms", true),
            card("/dev/dri/card2", "i915", "0000:00:02.0", true),
        ];
        let by = |d, b| choose_card(&cards, d, b).map(|p| p.display().to_string());
        assert_eq!(by(Some("vkms"), None).as_deref(), Some("/dev/dri/card1"));
        assert_eq!(
            by(None, Some("PCI:0000:00:02.0")).as_deref(),
            Some("/dev/dri/card2")
        );
        assert_eq!(by(Some("nouveau"), None), None);
        // Two displays and no hint: kmssink's own pick is not guessed.
        assert_eq!(by(None, None), None);
        assert_eq!(
            choose_card(&cards[..2], None, None),
            Some("/dev/dri/card1".into()),
            "the only card with a display"
        );
    }

    #[test]
    fn neighbours_are_found_across_queues_and_capsfilters() {
        crate::test_support::init();
        let pipeline = gst::parse::launch(
            "v4l2src device=/dev/video42 ! queue ! capsfilter ! dmaheapupload name=up \
             ! queue ! kmssink name=kms",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let up = pipeline.by_name("up").unwrap();
        // kmssink names a driver no card here has: nothing is assumed about its device (the
        // VM tests find vkms's card by driver-name and by fd).
        pipeline
            .by_name("kms")
            .unwrap()
            .set_property("driver-name", "no-such-driver");
        let found = find(&up, "");
        assert_eq!(
            found,
            [FoundDevice {
                node: "/dev/video42".into(),
                via: "upstream v4l2src0".into()
            }]
        );
        // The property wins over the neighbours.
        let named = find(&up, "/dev/video7");
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].node, PathBuf::from("/dev/video7"));
        // An element that converts (videoconvert) ends the search.
        let pipeline = gst::parse::launch(
            "v4l2src device=/dev/video42 ! videoconvert ! dmaheapupload name=up ! fakesink",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        assert!(find(&pipeline.by_name("up").unwrap(), "").is_empty());
    }
}

/// The devices found at start and their heapcore reports.
#[derive(Debug, Default)]
pub(super) struct Devices {
    pub(super) found: Vec<FoundDevice>,
    pub(super) reports: Vec<heapcore::device::DeviceReport>,
    /// The V4L2 device upstream (whatever `devices` says): the exporter of videobuf2
    /// dma-bufs arriving from upstream.
    pub(super) upstream_v4l2: Option<heapcore::device::Device>,
}
