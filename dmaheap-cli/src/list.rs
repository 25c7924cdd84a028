//! `dmaheap list`: what this machine offers and whether the caller may use it.

use heapcore::size::ByteSize;
use heapcore::{Access, Allocator, CmaAlignment, CmaUsage, HeapInfo, Inventory, UdmabufInfo};
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
    cma_alignment: &'a CmaAlignment,
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
            cma_alignment: &inv.cma_alignment,
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
    for heap in &inv.heaps {
        heaps.row(vec![
            heap.name.to_string(),
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
    let udmabuf_notes = match (&inv.udmabuf.access, inv.udmabuf.size_limit) {
        (Access::Missing, _) => format!("{} missing (CONFIG_UDMABUF)", inv.udmabuf.path.display()),
        (_, Some(limit)) => format!("up to {} per buffer (size_limit_mb)", ByteSize(limit)),
        (_, None) => "size limit unknown".to_owned(),
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
    if heap.kind == heapcore::HeapKind::Cma {
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
