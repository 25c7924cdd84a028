//! `dmaheap alloc`: allocate, touch, name and free, saying where each buffer came from.

use std::time::{Duration, Instant};

use heapcore::size::{ByteSize, SizeSpec};
use heapcore::{Allocator, DmaBuf, Source};

/// More buffers than any test of a heap needs; each holds an fd, and fds are limited anyway.
const MAX_COUNT: i64 = 65_536;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to allocate: a heap name (`system`, `cma`, `reserved`, ...), `udmabuf` or `memfd`;
    /// a list (commas or spaces; `linux,cma` stays one name) is tried in order. Default: the
    /// best this machine has.
    #[arg(long, default_value = "")]
    heap: String,
    /// Bytes per buffer (`8MiB`, `4096`) or a frame (`3840x2160:NV12`).
    #[arg(long, default_value = "8MiB")]
    size: SizeSpec,
    /// How many buffers to hold at once (1 to 65536).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
    count: u32,
    /// Name shown in /proc/<pid>/fdinfo (a `#N` suffix numbers the buffers).
    #[arg(long, default_value = "dmaheap-cli")]
    name: String,
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let alloc = Allocator::new();
    let listed = Source::parse_list(&args.heap, alloc.inventory())?;
    let sources = if listed.is_empty() {
        alloc.default_sources()
    } else {
        listed
    };
    let size = args.size.bytes();
    println!(
        "Allocating {} x {} from {}",
        args.count,
        args.size,
        sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", then ")
    );
    let mut held: Vec<DmaBuf> = Vec::new();
    for i in 0..args.count {
        let name = format!("{}#{i}", args.name);
        let start = Instant::now();
        let mut buf = alloc.allocate_first(&sources, size, &name)?;
        let allocated = start.elapsed();
        let start = Instant::now();
        buf.map()?;
        let mapped = start.elapsed();
        let start = Instant::now();
        touch(&mut buf)?;
        let touched = start.elapsed();
        let info = buf.fdinfo()?;
        println!(
            "#{i}: {} from {}{} (fd {}, exporter {}, name {}): allocated in {}, mapped in {}, \
             touched in {}",
            ByteSize(buf.len()),
            buf.origin(),
            if buf.is_dmabuf() {
                ""
            } else {
                " (not a dma-buf)"
            },
            std::os::fd::AsRawFd::as_raw_fd(&buf),
            info.exp_name().unwrap_or("-"),
            buf.name().unwrap_or("-"),
            ms(allocated),
            ms(mapped),
            ms(touched),
        );
        held.push(buf);
    }
    let start = Instant::now();
    drop(held);
    println!("Freed {} buffer(s) in {}", args.count, ms(start.elapsed()));
    Ok(())
}

/// Writes every page so the memory is really there, then checks a byte came back.
fn touch(buf: &mut DmaBuf) -> Result<(), Box<dyn std::error::Error>> {
    let page = heapcore::sysinfo::page_size() as usize;
    let mut cpu = buf.write()?;
    for (i, chunk) in cpu.chunks_mut(page).enumerate() {
        chunk[0] = i as u8;
    }
    let last = cpu.len().div_ceil(page).saturating_sub(1);
    if cpu.get(last * page) != Some(&(last as u8)) {
        return Err(format!("a write to page {last} did not read back").into());
    }
    Ok(cpu.finish()?)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}
