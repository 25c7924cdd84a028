//! `dmaheap list`: what this machine offers and whether the caller may use it.

use heapcore::size::ByteSize;
use heapcore::{
    Access, Allocator, CmaAlignment, CmaArea, CmaUsage, HeapInfo, Inventory, UdmabufInfo,
};
use serde::Serialize;

use crate::table::Table;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints: the two tables (heaps, other sources), CMA totals and the default
/// order.
#[derive(Serialize)]
struct Report<'a> {
    heaps: &'a [HeapInfo],
    other_sources: OtherSources<'a>,
    cma: Option<CmaUsage>,
    cma_areas: &'a [CmaArea],
    cma_alignment: &'a CmaAlignment,
    /// Whether heap allocations are charged to the caller's memory cgroup (Linux 7.0+).
    mem_accounting: Option<bool>,
    /// Whether the kernel exports dma-buf fences (DMA_BUF_IOCTL_EXPORT_SYNC_FILE, Linux 6.0),
    /// asked of a one-page buffer (`None`: no dma-buf source to ask).
    fences: Option<bool>,
    /// Sources in the order `dmaheap alloc` tries them when no heap is named.
    default_order: Vec<String>,
}

/// The sources that are not heaps, as the OTHER SOURCES table lists them.
#[derive(Serialize)]
struct OtherSources<'a> {
    udmabuf: &'a UdmabufInfo,
    memfd: MemfdReport,
}

#[derive(Serialize)]
struct MemfdReport {
    access: Access,
    dmabuf: bool,
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let alloc = Allocator::new();
    let inv = alloc.inventory();
    let order: Vec<String> = alloc
        .default_sources()
        .iter()
        .map(ToString::to_string)
        .collect();
    let fences = fence_support(&alloc);
    if args.json {
        let report = Report {
            heaps: &inv.heaps,
            other_sources: OtherSources {
                udmabuf: &inv.udmabuf,
                memfd: MemfdReport {
                    access: Access::Allowed,
                    dmabuf: false,
                },
            },
            cma: inv.cma,
            cma_areas: &inv.cma_areas,
            cma_alignment: &inv.cma_alignment,
            mem_accounting: inv.mem_accounting,
            fences,
            default_order: order,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }

    let mut heaps = Table::new(&[
        "HEAP",
        "KIND",
        "CONTIGUOUS",
        "CPU-CACHED",
        "PROTECTED",
        "USABLE",
        "NOTES",
    ]);
    // One row per memory: a heap that another name stands for (one CMA area under two names)
    // is shown as that name's alias.
    for heap in inv.heaps.iter().filter(|h| is_listed(h, inv)) {
        let aliases = inv.aliases_of(heap);
        let name = if aliases.is_empty() {
            heap.name.to_string()
        } else {
            let aliases: Vec<String> = aliases.iter().map(ToString::to_string).collect();
            format!("{} (also {})", heap.name, aliases.join(", "))
        };
        heaps.row(vec![
            name,
            heap.kind.to_string(),
            yes_no(heap.properties.contiguous),
            yes_no(heap.properties.cpu_cached),
            yes_no(heap.properties.protected),
            usable(&heap.access),
            heap_notes(heap, inv),
        ]);
    }
    if inv.heaps.is_empty() {
        println!(
            "No DMA-BUF heaps: {} is missing or empty (the kernel needs CONFIG_DMABUF_HEAPS).",
            inv.paths().dma_heap_dir.display()
        );
    } else {
        heaps.print();
    }
    println!();

    let mut others = Table::new(&["OTHER SOURCES", "DMA-BUF", "USABLE", "NOTES"]);
    let udmabuf = &inv.udmabuf;
    let udmabuf_notes = match (&udmabuf.access, udmabuf.size_limit, udmabuf.size_limit_mb) {
        (Access::Missing, ..) => format!("{} missing (CONFIG_UDMABUF)", udmabuf.path.display()),
        (_, Some(limit), _) => format!("up to {} per buffer (size_limit_mb)", ByteSize(limit)),
        (_, None, Some(_)) => "no per-buffer limit but memory (size_limit_mb is INT_MAX)".into(),
        (_, None, None) => "size limit unknown".to_owned(),
    };
    others.row(vec![
        "udmabuf".into(),
        "yes".into(),
        usable(&inv.udmabuf.access),
        udmabuf_notes,
    ]);
    others.row(vec![
        "memfd".into(),
        "no".into(),
        "yes".into(),
        "last resort: shareable memory that devices cannot import".into(),
    ]);
    others.print();
    println!();
    println!("Default order: {}", order.join(" → "));
    match fences {
        Some(true) => println!(
            "Fences: supported (DMA_BUF_IOCTL_EXPORT_SYNC_FILE): pools keep a buffer a device \
             still uses until it is done"
        ),
        Some(false) => println!(
            "Fences: not supported by this kernel (DMA_BUF_IOCTL_EXPORT_SYNC_FILE needs Linux \
             6.0): pools cannot tell a buffer a device still uses"
        ),
        None => {}
    }
    match inv.mem_accounting {
        _ if inv.heaps.is_empty() => {}
        Some(true) => println!(
            "Heap allocations are charged to the caller's memory cgroup \
             (dma_heap.mem_accounting=Y)"
        ),
        Some(false) => println!(
            "Heap allocations are not charged to the caller's memory cgroup \
             (dma_heap.mem_accounting=N; boot with dma_heap.mem_accounting=1 to charge them)"
        ),
        None => println!(
            "Heap allocations are not charged to memory cgroups (this kernel has no \
             dma_heap.mem_accounting: Linux 7.0 added it)"
        ),
    }
    for (what, access) in inv
        .heaps
        .iter()
        .map(|h| (h.path.display().to_string(), &h.access))
        .chain([(inv.udmabuf.path.display().to_string(), &inv.udmabuf.access)])
    {
        if let Access::Denied { fix } = access {
            println!("{what}: no permission: {fix}");
        }
    }
    Ok(())
}

/// Asks a one-page buffer from the first dma-buf source whether the kernel exports fences.
fn fence_support(alloc: &Allocator) -> Option<bool> {
    let source = alloc
        .default_sources()
        .into_iter()
        .find(|s| *s != heapcore::Source::Memfd)?;
    let buf = alloc.allocate(&source, 4096, "").ok()?;
    buf.busy().ok()?;
    heapcore::fences_supported()
}

/// Whether a heap gets a row of its own: not when it is another name of a listed heap's CMA
/// area (the row of the area-named heap says "also ...").
fn is_listed(heap: &HeapInfo, inv: &Inventory) -> bool {
    match inv.find(heap.name.as_str()) {
        Ok(stands_for) => stands_for.name == heap.name,
        Err(_) => true,
    }
}

fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
    .into()
}

fn usable(access: &Access) -> String {
    match access {
        Access::Allowed => "yes",
        Access::Denied { .. } => "no (permission)",
        Access::Missing => "no (absent)",
    }
    .into()
}

fn heap_notes(heap: &HeapInfo, inv: &Inventory) -> String {
    let mut notes = Vec::new();
    if let Some(target) = &heap.alias_of {
        notes.push(format!("alias of {target}"));
    }
    if heap.default_cma {
        notes.push("default CMA area".to_owned());
    }
    if let Some(area) = inv.cma_area_of(heap) {
        match (area.available, area.total) {
            (Some(free), Some(total)) => notes.push(format!(
                "CMA area {}: {} free of {}",
                area.name,
                ByteSize(free),
                ByteSize(total)
            )),
            _ => notes.push(format!("CMA area {}", area.name)),
        }
    }
    let area_sized = inv
        .cma_area_of(heap)
        .is_some_and(|a| a.total.is_some() && a.available.is_some());
    if heap.kind == heapcore::HeapKind::Cma && !area_sized {
        if let Some(cma) = inv.cma {
            notes.push(format!(
                "CMA {} free of {}",
                ByteSize(cma.free),
                ByteSize(cma.total)
            ));
        }
    }
    notes.join("; ")
}
