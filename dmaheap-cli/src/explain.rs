//! `dmaheap explain`: which heaps a request would get, in order, and why each is in or out.

use std::path::PathBuf;

use heapcore::device::DeviceReport;
use heapcore::size::{ByteSize, SizeSpec};
use heapcore::{Allocator, Constraints, CpuAccess, Policy, Usage, solve};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// What the buffer is for (scanout, video-decode, camera, animation, screencast, ...).
    #[arg(long, default_value = "generic")]
    usage: Usage,
    /// Bytes (`8MiB`) or a frame (`1920x1080:NV12`).
    #[arg(long)]
    size: SizeSpec,
    /// The consumer needs physically contiguous memory.
    #[arg(long)]
    contiguous: bool,
    /// How the CPU touches the buffer: none, read, write, read-write.
    #[arg(long, default_value = "none")]
    cpu_access: CpuAccess,
    /// Physical alignment in bytes, a power of two (`4096`, `1MiB`).
    #[arg(long, default_value = "1", value_parser = power_of_two)]
    alignment: u64,
    /// The consumer imports dma-bufs only (no memfd fallback).
    #[arg(long)]
    dmabuf_only: bool,
    /// A device the buffer passes through (`/dev/video0`, `/dev/dri/card0`); repeat for
    /// each. Sources a device refuses are out (its probe runs once and is cached).
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// Use this policy file on top of the defaults instead of the system and user files.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn power_of_two(s: &str) -> Result<u64, String> {
    let ByteSize(v) = s.parse()?;
    if !v.is_power_of_two() {
        return Err(format!("{s} is not a power of two (1, 4096, 1MiB, ...)"));
    }
    Ok(v)
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let policy = match &args.policy {
        Some(path) => {
            let mut policy = Policy::builtin();
            policy.apply_file(path)?;
            policy
        }
        None => {
            let (policy, errors) = Policy::load();
            for e in errors {
                eprintln!("dmaheap: policy file ignored: {e}");
            }
            policy
        }
    };
    let alloc = Allocator::new();
    let devices = args
        .devices
        .iter()
        .map(|node| DeviceReport::for_node(node, &alloc))
        .collect::<Result<Vec<_>, _>>()?;
    let constraints = Constraints::new(args.size.bytes())
        .usage(args.usage)
        .contiguous(args.contiguous)
        .cpu_access(args.cpu_access)
        .alignment(args.alignment)
        .require_dmabuf(args.dmabuf_only)
        .devices(devices);
    let candidates = solve(&policy, &constraints, alloc.inventory());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&candidates)?);
        return Ok(());
    }
    let files: Vec<String> = policy
        .files()
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    println!(
        "policy: built-in defaults{}",
        if files.is_empty() {
            String::new()
        } else {
            format!(" + {}", files.join(" + "))
        }
    );
    println!("request: {}", args.size);
    for report in &constraints.devices {
        print!("{report}");
    }
    print!("{candidates}");
    let (entry, _) = policy.entry(&candidates.usage);
    println!(
        "pool class: {}{}",
        entry.qos,
        if entry.prewarm > 0 {
            format!(", prewarm {}", entry.prewarm)
        } else {
            String::new()
        }
    );
    if candidates.sources().is_empty() {
        return Err("no candidate can serve this request".into());
    }
    Ok(())
}
