//! The solver against fake machines: policy order, constraints, explicit lists, devices.

use std::path::Path;

use super::*;
use crate::inventory::FakeMachine;

/// A machine with the given heap nodes, udmabuf (64 MiB limit) and 128 MiB of CMA, 100 free.
fn machine(heaps: &[&str]) -> FakeMachine {
    FakeMachine::new(heaps, &[])
        .with_udmabuf(64)
        .with_meminfo("CmaTotal: 131072 kB\nCmaFree: 102400 kB\n")
}

fn usage(name: &str) -> Usage {
    name.parse().unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn scanout_prefers_cma_and_falls_back_in_policy_order() {
    let m = machine(&["system", "reserved"]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(8 * MIB).usage(usage("scanout")),
        &m.inventory(),
    );
    let names: Vec<String> = c.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["heap reserved", "heap system", "udmabuf", "memfd"]);
}

#[test]
fn contiguous_requests_keep_only_contiguous_heaps() {
    let m = machine(&["system", "reserved"]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(8 * MIB)
            .usage(usage("scanout"))
            .contiguous(true),
        &m.inventory(),
    );
    assert_eq!(c.sources(), [Source::heap("reserved").unwrap()]);
    let text = c.to_string();
    assert!(
        text.contains("system: out, not physically contiguous"),
        "{text}"
    );
    assert!(text.contains("1. cma (heap reserved)"), "{text}");
}

#[test]
fn sizes_beyond_limits_rule_out_udmabuf_and_cma() {
    let m = machine(&["system", "reserved"]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(200 * MIB),
        &m.inventory(),
    );
    assert_eq!(
        c.sources(),
        [Source::heap("system").unwrap(), Source::Memfd]
    );
    let text = c.to_string();
    assert!(text.contains("larger than all CMA memory"), "{text}");
    assert!(text.contains("over udmabuf's limit of 64.0 MiB"), "{text}");
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(110 * MIB).usage(usage("scanout")),
        &m.inventory(),
    );
    assert!(
        c.to_string().contains("only 100.0 MiB of CMA free now"),
        "{c}"
    );
}

#[test]
fn dmabuf_consumers_never_get_memfd() {
    let m = machine(&[]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(MIB).require_dmabuf(true),
        &m.inventory(),
    );
    assert_eq!(c.sources(), [Source::Udmabuf]);
    assert!(c.to_string().contains("memfd: out, not a dma-buf"), "{c}");
}

#[test]
fn absent_heaps_are_out_and_aliases_are_not_listed_twice() {
    let m = machine(&["system", "reserved"]);
    let mut policy = Policy::builtin();
    policy
        .apply_str(
            "[usage.display]\nheaps = [\"cma-ecc\", \"linux,cma\", \"cma\", \"system\"]\n",
            Path::new("p.toml"),
        )
        .unwrap();
    let c = solve(
        &policy,
        &Constraints::new(MIB).usage(usage("display")),
        &m.inventory(),
    );
    assert_eq!(
        c.sources(),
        [
            Source::heap("reserved").unwrap(),
            Source::heap("system").unwrap()
        ]
    );
    let text = c.to_string();
    assert!(text.contains("cma-ecc: out, not on this machine"), "{text}");
    assert!(
        text.contains("cma (heap reserved): out, already listed"),
        "{text}"
    );
    assert!(text.contains("policy from p.toml:1"), "{text}");
}

#[test]
fn cpu_access_moves_cached_heaps_first() {
    let m = machine(&["system-uncached", "system"]);
    let mut policy = Policy::builtin();
    policy
        .apply_str(
            "[usage.ui]\nheaps = [\"system-uncached\", \"system\"]\n",
            Path::new("p.toml"),
        )
        .unwrap();
    let plain = solve(
        &policy,
        &Constraints::new(MIB).usage(usage("ui")),
        &m.inventory(),
    );
    assert_eq!(plain.sources()[0], Source::heap("system-uncached").unwrap());
    let cpu = solve(
        &policy,
        &Constraints::new(MIB)
            .usage(usage("ui"))
            .cpu_access(CpuAccess::Write),
        &m.inventory(),
    );
    assert_eq!(cpu.sources()[0], Source::heap("system").unwrap());
}

#[test]
fn protected_heaps_are_out_for_cpu_access_and_large_alignment_needs_contiguity() {
    let m = machine(&["protected,secure-video", "system", "reserved"]);
    let mut policy = Policy::builtin();
    policy
        .apply_str(
            "[usage.drm]\nheaps = [\"protected,secure-video\", \"system\", \"cma\"]\n",
            Path::new("p.toml"),
        )
        .unwrap();
    let c = solve(
        &policy,
        &Constraints::new(MIB)
            .usage(usage("drm"))
            .cpu_access(CpuAccess::Read),
        &m.inventory(),
    );
    assert!(
        c.to_string().contains("protected: the CPU may not map it"),
        "{c}"
    );
    let c = solve(
        &policy,
        &Constraints::new(MIB).usage(usage("drm")).alignment(1 << 20),
        &m.inventory(),
    );
    // Only CMA can promise physical alignment; the protected heap does not say.
    assert_eq!(c.sources(), [Source::heap("reserved").unwrap()]);
}

#[test]
fn cma_is_in_for_an_alignment_only_where_the_size_brings_it() {
    let m = machine(&["system", "reserved"]);
    let scanout = |size: u64| {
        solve(
            &Policy::builtin(),
            &Constraints::new(size)
                .usage(usage("scanout"))
                .alignment(MIB),
            &m.inventory(),
        )
    };
    // 64 KiB is 16 pages: CMA aligns it to 64 KiB, not 1 MiB.
    let small = scanout(64 * 1024);
    assert!(small.sources().is_empty(), "{small}");
    let text = small.to_string();
    assert!(
        text.contains(
            "cma (heap reserved): out, CMA aligns a 64.0 KiB buffer to 64.0 KiB at most \
             (CONFIG_CMA_ALIGNMENT=8 assumed: no readable kernel configuration), not 1.0 MiB"
        ),
        "{text}"
    );
    let big = scanout(4 * MIB);
    assert_eq!(big.sources(), [Source::heap("reserved").unwrap()], "{big}");
    assert!(
        big.to_string().contains("CMA aligns it to 1.0 MiB"),
        "{big}"
    );
    // A kernel built with a smaller CONFIG_CMA_ALIGNMENT caps it.
    let m = machine(&["reserved"]).with_kernel_config("CONFIG_CMA_ALIGNMENT=4\n", true);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(4 * MIB)
            .usage(usage("scanout"))
            .alignment(MIB),
        &m.inventory(),
    );
    assert!(c.sources().is_empty(), "{c}");
    assert!(
        c.to_string()
            .contains("to 64.0 KiB at most (CONFIG_CMA_ALIGNMENT=4 in"),
        "{c}"
    );
}

#[test]
fn unknown_usages_are_explained() {
    let m = machine(&["system"]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(MIB).usage(usage("hologram")),
        &m.inventory(),
    );
    assert!(c.usage_fell_back);
    assert!(
        c.to_string().contains("not in the policy: using generic"),
        "{c}"
    );
}

#[test]
fn explicit_lists_keep_their_order_and_get_the_same_judgement() {
    let m = machine(&["system", "reserved"]);
    let list = Source::parse_list("udmabuf missing-heap reserved memfd", &m.inventory()).unwrap();
    let c = solve_explicit(&list, &Constraints::new(200 * MIB), &m.inventory());
    let names: Vec<String> = c.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["memfd"], "{c}");
    let text = c.to_string();
    assert!(text.contains("over udmabuf's limit"), "{text}");
    assert!(
        text.contains("missing-heap: out, not on this machine"),
        "{text}"
    );
    assert!(text.contains("larger than all CMA memory"), "{text}");
    assert_eq!(c.policy_origin, EntryOrigin::Explicit);
    let small = solve_explicit(&list, &Constraints::new(MIB), &m.inventory());
    let names: Vec<String> = small.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["udmabuf", "heap reserved", "memfd"]);
}

fn report(
    node: &str,
    driver: &str,
    iommu: Option<bool>,
    verdicts: &[(&str, crate::device::Acceptance)],
) -> crate::device::DeviceReport {
    crate::device::DeviceReport {
        device: crate::device::Device {
            node: node.into(),
            devnum: (81, 4),
            subsystem: crate::device::Subsystem::Video4Linux,
            driver: Some(driver.into()),
            iommu,
            dma_mask_bits: None,
        },
        kernel: "test".into(),
        sources: verdicts
            .iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect(),
        cached: false,
    }
}

/// vivid with its dma-contig allocator refuses the system heap's scattered pages and
/// takes CMA: the solver picks CMA without being told, and says which device ruled out
/// the rest.
#[test]
fn devices_rule_out_what_they_refused() {
    use crate::device::Acceptance::{Accepted, Refused};
    let m = machine(&["system", "reserved"]);
    let vivid = report(
        "/dev/video4",
        "vivid",
        Some(false),
        &[
            (
                "system",
                Refused("VIDIOC_PREPARE_BUF of 614400 bytes: Invalid argument".into()),
            ),
            ("reserved", Accepted),
            (
                "udmabuf",
                Refused("VIDIOC_PREPARE_BUF of 614400 bytes: Invalid argument".into()),
            ),
        ],
    );
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(8 * MIB).devices(vec![vivid]),
        &m.inventory(),
    );
    let names: Vec<String> = c.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["heap reserved"], "{c}");
    let text = c.to_string();
    assert!(text.contains("used by /dev/video4 (vivid)"), "{text}");
    assert!(
        text.contains("system: out, refused by /dev/video4 (vivid): VIDIOC_PREPARE_BUF"),
        "{text}"
    );
    assert!(
        text.contains("memfd: out, /dev/video4 (vivid) imports dma-bufs only"),
        "{text}"
    );
    assert!(text.contains("/dev/video4 (vivid) takes it"), "{text}");
}

#[test]
fn a_device_without_iommu_that_was_not_asked_needs_contiguous_memory() {
    let m = machine(&["system", "reserved"]);
    let display = report("/dev/dri/card0", "some-display", Some(false), &[]);
    let behind_iommu = report("/dev/video0", "some-codec", Some(true), &[]);
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(8 * MIB).devices(vec![display]),
        &m.inventory(),
    );
    let names: Vec<String> = c.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["heap reserved"], "{c}");
    assert!(
        c.to_string()
            .contains("has no IOMMU and could not be asked"),
        "{c}"
    );
    let c = solve(
        &Policy::builtin(),
        &Constraints::new(8 * MIB).devices(vec![behind_iommu]),
        &m.inventory(),
    );
    assert_eq!(
        c.sources().len(),
        3,
        "behind an IOMMU anything but memfd: {c}"
    );
}

/// The policy file has the last word over a device's probe (a device the probe judges
/// wrong, or cannot ask).
#[test]
fn a_policy_file_overrides_what_a_probe_found() {
    use crate::device::Acceptance::{Accepted, Refused};
    let m = machine(&["system", "reserved"]);
    let vivid = report(
        "/dev/video4",
        "vivid",
        Some(false),
        &[("system", Refused("EFAULT".into())), ("reserved", Accepted)],
    );
    let mut policy = Policy::builtin();
    policy
        .apply_str(
            "[device.vivid]\nheaps = [\"system\"]\n",
            Path::new("/etc/dmaheap/policy.toml"),
        )
        .unwrap();
    let c = solve(
        &policy,
        &Constraints::new(MIB).devices(vec![vivid]),
        &m.inventory(),
    );
    let names: Vec<String> = c.sources().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["heap system"], "{c}");
    let text = c.to_string();
    assert!(
        text.contains("/etc/dmaheap/policy.toml:1 says /dev/video4 (vivid) takes only system"),
        "{text}"
    );
    let err = Policy::builtin()
        .apply_str("[device.vivid]\nheaps = [\"../x\"]\n", Path::new("p.toml"))
        .unwrap_err();
    assert_eq!(err.line, 2, "{err}");
}
