//! Heaps chosen from the devices the buffers pass through: a camera whose driver needs
//! contiguous memory (vivid with its dma-contig allocator, `vivid.allocators=0,1` in the VM)
//! gets CMA buffers without `heap=`, learned from the neighbours or named in `devices`.

use std::os::fd::AsRawFd;
use std::time::Duration;

use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;

use super::common::{run_pipeline_with, stat};
use super::display::{Exporters, KmsProof};

/// The vivid instance the VM boots with its dma-contig allocator.
const CONTIG_VIVID: Need = Need::V4l2("vivid-001-vid-cap");

pub(super) fn add(suite: &mut Suite) {
    suite
        .test(
            "real_heap_gst_dma_contig_camera_to_kmssink_gets_cma_without_heap",
            &[Need::SystemHeap, Need::CmaHeap, Need::Kms, CONTIG_VIVID],
            camera_to_kmssink_gets_cma,
        )
        .test(
            "real_heap_gst_devices_property_and_kmssink_fd_choose_the_heap",
            &[Need::SystemHeap, Need::CmaHeap, Need::Kms, CONTIG_VIVID],
            devices_property_and_kmssink_fd,
        );
}

/// The vkms card node, however this kernel hangs vkms off a bus.
fn vkms_card() -> Result<std::path::PathBuf, Failed> {
    heapcore::device::Device::all()
        .into_iter()
        .find(|d| {
            d.subsystem == heapcore::device::Subsystem::Drm
                && d.driver.as_deref() == Some("vkms")
                && d.node.to_string_lossy().contains("card")
        })
        .map(|d| d.node)
        .ok_or_else(|| "no vkms card".into())
}

/// issue 12's goal: `v4l2src device=<dma-contig vivid> io-mode=dmabuf-import ! dmaheapupload
/// ! kmssink` streams with CMA buffers, no `heap=`: dmaheapupload learns vivid from v4l2src
/// and vkms from kmssink, heapcore's probe says vivid refuses system-heap buffers, and the
/// solver picks CMA (the generic policy would start with the system heap, and vivid would
/// fail "Buffer pool activation failed").
fn camera_to_kmssink_gets_cma() -> Result<(), Failed> {
    let cma = dmaheap_testkit::cma_heap().expect("need checked");
    let vivid = dmaheap_testkit::v4l2_device("vivid-001-vid-cap").expect("need checked");
    let frames = 30;
    let proof = KmsProof::start();
    let at_sink = Exporters::default();
    let run = run_pipeline_with(
        &format!(
            "v4l2src device={vivid} io-mode=dmabuf-import num-buffers={frames} \
             ! video/x-raw,width=640,height=480 ! dmaheapupload name=up \
             ! kmssink name=kms driver-name=vkms"
        ),
        Duration::from_secs(180),
        |p| at_sink.watch(p, "kms"),
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    let devices = stats.get::<String>("devices")?;
    ensure!(
        devices.contains(&format!("{vivid} (upstream v4l2src"))
            && devices.contains("(downstream kms ("),
        "the neighbours were not found: {stats}"
    );
    ensure!(
        stat(&stats, "copies") == 0 && stat(&stats, "passthrough") == frames,
        "vivid did not capture into the pool: {stats}"
    );
    let (reached, others) = at_sink.other_than(&cma);
    ensure!(
        reached as u64 == frames && others.is_empty(),
        "{reached} buffers at kmssink; exported by something other than {cma}: {others:?}"
    );
    let said = proof.check(&stats, 1)?;
    println!(
        "{vivid} (dma-contig) -> kmssink, no heap=: every buffer exported by {cma}\n{stats}\n{said}"
    );
    Ok(())
}

/// The `devices` property names the camera for a pipeline that does not show it
/// (videotestsrc here): its buffers come from CMA. And kmssink given an fd of the vkms card
/// is recognised by that fd.
fn devices_property_and_kmssink_fd() -> Result<(), Failed> {
    let cma = dmaheap_testkit::cma_heap().expect("need checked");
    let vivid = dmaheap_testkit::v4l2_device("vivid-001-vid-cap").expect("need checked");
    let at_sink = Exporters::default();
    let run = run_pipeline_with(
        &format!(
            "videotestsrc num-buffers=5 ! video/x-raw,width=640,height=480 \
             ! dmaheapupload name=up devices={vivid} ! fakesink name=sink"
        ),
        Duration::from_secs(120),
        |p| at_sink.watch(p, "sink"),
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    ensure!(
        stats
            .get::<String>("devices")?
            .contains(&format!("{vivid} (the devices property)")),
        "{stats}"
    );
    let (reached, others) = at_sink.other_than(&cma);
    ensure!(
        reached == 5 && others.is_empty(),
        "devices={vivid}: {reached} buffers, exported by something other than {cma}: {others:?}"
    );
    println!("devices={vivid}: 5 buffers exported by {cma}\n{stats}");

    let card = vkms_card()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&card)?;
    let fd = file.as_raw_fd();
    let run = run_pipeline_with(
        "videotestsrc num-buffers=5 ! video/x-raw,width=640,height=480 \
         ! dmaheapupload name=up ! kmssink name=kms",
        Duration::from_secs(120),
        |p| p.by_name("kms").unwrap().set_property("fd", fd),
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    let devices = stats.get::<String>("devices")?;
    ensure!(
        devices.contains(&format!("{} (downstream kms (fd=", card.display())),
        "kmssink's card {} was not learned from its fd: {stats}",
        card.display()
    );
    println!("kmssink fd={fd}: {devices}");
    drop(file);
    Ok(())
}
