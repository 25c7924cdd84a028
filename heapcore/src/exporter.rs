//! What a dma-buf's exporter says of its memory, for buffers this process did not allocate
//! (a camera's or decoder's own buffers, another process's).
//!
//! The exporter's name (`exp_name` in the fd's fdinfo) is all the kernel says of where a
//! dma-buf's memory came from. [`ExporterMemory::recognise`] knows the names whose memory is
//! known: the heaps (by name, as the inventory and [`HeapKind`] know them), udmabuf and
//! videobuf2's three allocators. [`ExporterMemory::suits`] judges the memory against one
//! device's probe report as the solver judges heaps: a device that needs physically
//! contiguous memory (it refused scattered pages when probed, or it has no IOMMU and could
//! not be asked) gets only memory known to be contiguous; when that is not known, the
//! answer is no.

use std::fmt;

use crate::device::{Acceptance, Device, DeviceReport, Subsystem};
use crate::heap::HeapKind;
use crate::inventory::Inventory;

/// videobuf2's exporter names (`KBUILD_MODNAME` of each allocator).
const VB2_VMALLOC: &str = "videobuf2_vmalloc";
const VB2_DMA_SG: &str = "videobuf2_dma_sg";
const VB2_DMA_CONTIG: &str = "videobuf2_dma_contig";

/// What is known of the memory behind a foreign dma-buf, from its exporter's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterMemory {
    /// The exporter's name (`exp_name`).
    pub exporter: String,
    /// Physically contiguous, where the exporter's kind says.
    pub contiguous: Option<bool>,
    /// Memory the CPU may not map (a `protected,*` heap).
    pub protected: bool,
    /// What kind of memory that is, in words ("the CMA heap reserved", "videobuf2's vmalloc
    /// allocator").
    pub kind: String,
}

impl fmt::Display for ExporterMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let contiguity = match self.contiguous {
            Some(true) => "contiguous",
            Some(false) => "not contiguous",
            None => "contiguity unknown",
        };
        write!(f, "{} ({}, {contiguity})", self.exporter, self.kind)
    }
}

impl ExporterMemory {
    /// What the name `exporter` says of its memory. `exporting_device` is the device that
    /// exported the buffer where the caller knows it (the V4L2 element upstream): videobuf2's
    /// dma-contig memory is contiguous in that device's DMA address space, which is physical
    /// memory only when the device has no IOMMU.
    pub fn recognise(
        exporter: &str,
        inventory: &Inventory,
        exporting_device: Option<&Device>,
    ) -> Self {
        let known = |contiguous: Option<bool>, kind: String| Self {
            exporter: exporter.to_owned(),
            contiguous,
            protected: false,
            kind,
        };
        if let Some(heap) = inventory
            .heaps
            .iter()
            .find(|h| h.name.to_string() == exporter)
        {
            return Self {
                protected: heap.properties.protected == Some(true),
                ..known(
                    heap.properties.contiguous,
                    format!("the {} heap {exporter}", heap.kind),
                )
            };
        }
        let areas: Vec<String> = inventory.cma_areas.iter().map(|a| a.name.clone()).collect();
        let kind = HeapKind::recognise(exporter, &areas);
        if kind != HeapKind::Unknown {
            let props = kind.properties();
            return Self {
                protected: props.protected == Some(true),
                ..known(props.contiguous, format!("a {kind} heap"))
            };
        }
        match exporter {
            "udmabuf" => known(Some(false), "udmabuf (memfd pages)".into()),
            VB2_VMALLOC => known(Some(false), "videobuf2's vmalloc allocator".into()),
            VB2_DMA_SG => known(Some(false), "videobuf2's scatter-gather allocator".into()),
            VB2_DMA_CONTIG => match exporting_device {
                Some(d) if d.iommu == Some(false) => known(
                    Some(true),
                    format!("videobuf2's dma-contig allocator on {d}, which has no IOMMU"),
                ),
                Some(d) => known(
                    None,
                    format!(
                        "videobuf2's dma-contig allocator on {d}, contiguous only in its DMA \
                         address space (IOMMU {})",
                        if d.iommu == Some(true) {
                            "present"
                        } else {
                            "unknown"
                        }
                    ),
                ),
                None => known(
                    None,
                    "videobuf2's dma-contig allocator on an unknown device, contiguous only \
                     in that device's DMA address space"
                        .into(),
                ),
            },
            _ => known(None, "an exporter this library does not know".into()),
        }
    }

    /// Whether the device of `report` can import this memory: the probe's word where the
    /// exporter is a source the device was probed with; otherwise, if the device needs
    /// physically contiguous memory (it refused a scattered source when probed and took none,
    /// or it has no IOMMU and nothing could be asked), only memory known to be contiguous.
    /// `Err` says why not.
    pub fn suits(&self, report: &DeviceReport, inventory: &Inventory) -> Result<(), String> {
        let device = &report.device;
        match report.acceptance(&self.exporter) {
            Some(Acceptance::Accepted) => return Ok(()),
            Some(Acceptance::Refused(why)) => {
                return Err(format!(
                    "{device} refused {} buffers when probed ({why})",
                    self.exporter
                ));
            }
            Some(Acceptance::Unknown(_)) | None => {}
        }
        let scattered = |name: &str| source_contiguous(name, inventory) == Some(false);
        let took_scattered = report
            .sources
            .iter()
            .any(|(name, a)| *a == Acceptance::Accepted && scattered(name));
        if took_scattered {
            return Ok(());
        }
        let needs = report
            .sources
            .iter()
            .find(|(name, a)| matches!(a, Acceptance::Refused(_)) && scattered(name))
            .map(|(name, _)| format!("it refused {name} buffers when probed"))
            .or_else(|| {
                let user = matches!(device.subsystem, Subsystem::Video4Linux | Subsystem::Drm);
                (user && device.iommu == Some(false))
                    .then(|| "it has no IOMMU and took no scattered buffer when probed".into())
            });
        match (needs, self.contiguous) {
            (None, _) | (Some(_), Some(true)) => Ok(()),
            (Some(why), Some(false)) => Err(format!(
                "{device} needs physically contiguous memory ({why}), and {} memory ({}) is not",
                self.exporter, self.kind
            )),
            (Some(why), None) => Err(format!(
                "{device} needs physically contiguous memory ({why}), and whether {} memory \
                 ({}) is contiguous is not known",
                self.exporter, self.kind
            )),
        }
    }
}

/// Whether memory from the source a device was probed with (a heap's name, `udmabuf`) is
/// physically contiguous, where known.
fn source_contiguous(name: &str, inventory: &Inventory) -> Option<bool> {
    match name {
        "udmabuf" | "memfd" => Some(false),
        _ => inventory
            .heaps
            .iter()
            .find(|h| h.name.to_string() == name)
            .and_then(|h| h.properties.contiguous),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn inventory() -> Inventory {
        // One directory per call: tests run in parallel, and one's clean-up must not take
        // another's heaps away before it has read them.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("heapcore-exporter-{}-{call}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let heaps = dir.join("dma_heap");
        std::fs::create_dir_all(&heaps).unwrap();
        for name in ["system", "reserved"] {
            std::fs::write(heaps.join(name), "").unwrap();
        }
        let paths = crate::SysPaths {
            dma_heap_dir: heaps,
            udmabuf_dev: dir.join("udmabuf"),
            udmabuf_size_limit: dir.join("size_limit_mb"),
            cma_areas_dir: dir.join("cma"),
            meminfo: dir.join("meminfo"),
            dma_heap_params: dir.join("params"),
        };
        let inv = Inventory::discover_with(paths);
        let _ = std::fs::remove_dir_all(&dir);
        inv
    }

    fn device(iommu: Option<bool>) -> Device {
        Device {
            node: "/dev/video1".into(),
            devnum: (81, 1),
            subsystem: Subsystem::Video4Linux,
            driver: Some("vivid".into()),
            iommu,
            dma_mask_bits: None,
        }
    }

    fn report(iommu: Option<bool>, sources: &[(&str, Acceptance)]) -> DeviceReport {
        DeviceReport {
            device: device(iommu),
            kernel: "test".into(),
            sources: sources
                .iter()
                .map(|(n, a)| ((*n).to_owned(), a.clone()))
                .collect::<BTreeMap<_, _>>(),
            cached: false,
        }
    }

    #[test]
    fn exporters_are_recognised_with_their_contiguity() {
        let inv = inventory();
        let of = |name, dev: Option<&Device>| ExporterMemory::recognise(name, &inv, dev).contiguous;
        assert_eq!(of("system", None), Some(false));
        assert_eq!(of("reserved", None), Some(true), "a CMA heap");
        assert_eq!(of("linux,cma", None), Some(true), "a CMA heap's other name");
        assert_eq!(of("udmabuf", None), Some(false));
        assert_eq!(of("videobuf2_vmalloc", None), Some(false));
        assert_eq!(of("videobuf2_dma_sg", None), Some(false));
        assert_eq!(of("videobuf2_dma_contig", None), None);
        assert_eq!(
            of("videobuf2_dma_contig", Some(&device(Some(false)))),
            Some(true)
        );
        assert_eq!(of("videobuf2_dma_contig", Some(&device(Some(true)))), None);
        assert_eq!(of("i915", None), None);
        assert!(ExporterMemory::recognise("protected,secure", &inv, None).protected);
    }

    #[test]
    fn a_device_needing_contiguous_memory_gets_only_memory_known_to_be() {
        let inv = inventory();
        let refused = Acceptance::Refused("VIDIOC_QBUF: EFAULT".into());
        let contig_only = report(
            Some(false),
            &[
                ("system", refused.clone()),
                ("reserved", Acceptance::Accepted),
            ],
        );
        let mem = |name| ExporterMemory::recognise(name, &inv, None);
        let err = mem("videobuf2_vmalloc")
            .suits(&contig_only, &inv)
            .unwrap_err();
        assert!(
            err.contains("needs physically contiguous memory (it refused system buffers")
                && err.contains("is not"),
            "{err}"
        );
        let err = mem("i915").suits(&contig_only, &inv).unwrap_err();
        assert!(err.contains("is not known"), "{err}");
        assert!(mem("reserved").suits(&contig_only, &inv).is_ok());
        let err = mem("system").suits(&contig_only, &inv).unwrap_err();
        assert!(err.contains("refused system buffers when probed"), "{err}");
        let contig =
            ExporterMemory::recognise("videobuf2_dma_contig", &inv, Some(&device(Some(false))));
        assert!(contig.suits(&contig_only, &inv).is_ok());

        // A device that took scattered pages takes any exporter's.
        let any = report(Some(false), &[("system", Acceptance::Accepted)]);
        assert!(mem("videobuf2_vmalloc").suits(&any, &inv).is_ok());
        assert!(mem("i915").suits(&any, &inv).is_ok());
        // Nothing asked: without an IOMMU, contiguous only; behind one, anything.
        let unasked = |iommu| {
            report(
                iommu,
                &[("system", Acceptance::Unknown("no format".into()))],
            )
        };
        assert!(
            mem("videobuf2_vmalloc")
                .suits(&unasked(Some(false)), &inv)
                .is_err()
        );
        assert!(mem("reserved").suits(&unasked(Some(false)), &inv).is_ok());
        assert!(
            mem("videobuf2_vmalloc")
                .suits(&unasked(Some(true)), &inv)
                .is_ok()
        );
    }
}
