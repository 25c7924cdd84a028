//! `dmaheap probe`: which dma-buf sources each device takes, asked by importing a buffer.

use std::path::PathBuf;

use heapcore::Allocator;
use heapcore::device::{Device, DeviceReport};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A device to probe (`/dev/video0`, `/dev/dri/card0`, `/dev/dri/renderD128`); repeat for
    /// each. Default: every V4L2, DRM and media node.
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// Probe again even where a current probe is cached.
    #[arg(long)]
    fresh: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let alloc = Allocator::new();
    let devices = if args.devices.is_empty() {
        Device::all()
    } else {
        args.devices
            .iter()
            .map(|node| Device::open(node))
            .collect::<Result<_, _>>()?
    };
    if devices.is_empty() {
        return Err("no V4L2, DRM or media device node here".into());
    }
    let reports: Vec<DeviceReport> = devices
        .iter()
        .map(|device| {
            if args.fresh {
                Ok(DeviceReport::probe_now(device, &alloc))
            } else {
                DeviceReport::for_device(device, &alloc)
            }
        })
        .collect::<Result<_, heapcore::Error>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for report in &reports {
        print!("{report}");
    }
    if let Some(dir) = heapcore::device::cache_dir() {
        println!("(cached in {}; --fresh probes again)", dir.display());
    }
    Ok(())
}
