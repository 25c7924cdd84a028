//! The constraint solver: policy + constraints + this machine → ordered candidate sources,
//! each with the reason it is in or out.

use std::fmt;

use serde::Serialize;

use crate::access::Access;
use crate::constraints::{Constraints, CpuAccess};
use crate::heap::{HeapKind, HeapProperties};
use crate::inventory::Inventory;
use crate::policy::{EntryOrigin, Policy, Usage, log_once};
use crate::size::ByteSize;
use crate::source::Source;
use crate::sysinfo;

/// Whether a candidate can serve, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum Verdict {
    /// Usable; the notes say anything worth knowing (e.g. "only 3 MiB free now").
    In(Vec<String>),
    /// Not usable for this request.
    Out(String),
}

/// One policy entry judged against the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The name as the policy wrote it (`cma`, `linux,cma`, `udmabuf`).
    pub name: String,
    /// What it resolved to on this machine.
    pub source: Option<Source>,
    /// In or out, and why.
    pub verdict: Verdict,
}

/// The solver's answer: candidates in the order they will be tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidates {
    /// The usage asked for.
    pub usage: Usage,
    /// The usage was unknown and `generic` was used instead.
    pub usage_fell_back: bool,
    /// Where the policy entry that ordered them came from.
    pub policy_origin: EntryOrigin,
    /// The constraints judged against, with the policy's additions (its `contiguous`).
    pub constraints: Constraints,
    /// Every entry of the list, in the order tried, each in or out.
    pub entries: Vec<Candidate>,
}

impl Candidates {
    /// The sources to try, in order.
    pub fn sources(&self) -> Vec<Source> {
        self.entries
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::In(_)))
            .filter_map(|c| c.source.clone())
            .collect()
    }
}

impl fmt::Display for Candidates {
    /// The `dmaheap explain` text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.constraints;
        write!(f, "usage {}", self.usage)?;
        if self.usage_fell_back {
            f.write_str(" (not in the policy: using generic)")?;
        }
        writeln!(f, ", policy from {}", self.policy_origin)?;
        let mut needs = vec![ByteSize(c.size).to_string()];
        if c.contiguous {
            needs.push("physically contiguous".into());
        }
        if c.cpu_access != CpuAccess::None {
            needs.push(format!("CPU access {:?}", c.cpu_access).to_lowercase());
        }
        if c.alignment > 1 {
            needs.push(format!("aligned to {}", ByteSize(c.alignment)));
        }
        if c.require_dmabuf {
            needs.push("dma-buf only".into());
        }
        if !c.devices.is_empty() {
            let devices: Vec<String> = c.devices.iter().map(|d| d.device.to_string()).collect();
            needs.push(format!("used by {}", devices.join(", ")));
        }
        writeln!(f, "needs {}", needs.join(", "))?;
        let mut rank = 0;
        for entry in &self.entries {
            let resolved = match &entry.source {
                Some(Source::Heap(h)) if h.as_str() != entry.name => format!(" (heap {h})"),
                _ => String::new(),
            };
            match &entry.verdict {
                Verdict::In(notes) => {
                    rank += 1;
                    let notes = if notes.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", notes.join("; "))
                    };
                    writeln!(f, "  {rank}. {}{resolved}{notes}", entry.name)?;
                }
                Verdict::Out(why) => writeln!(f, "  -  {}{resolved}: out, {why}", entry.name)?,
            }
        }
        if rank == 0 {
            writeln!(f, "no candidate can serve this request")?;
        }
        Ok(())
    }
}

/// Properties the sources that are not heaps (udmabuf, memfd) have.
fn non_heap_properties(source: &Source) -> HeapProperties {
    match source {
        Source::Heap(_) => HeapProperties::default(),
        Source::Udmabuf | Source::Memfd => HeapProperties {
            contiguous: Some(false),
            cpu_cached: Some(true),
            protected: Some(false),
        },
    }
}

/// Turns policy + constraints into the ordered candidates for this machine.
pub fn solve(policy: &Policy, constraints: &Constraints, inventory: &Inventory) -> Candidates {
    let (entry, usage_fell_back) = policy.entry(&constraints.usage);
    let mut constraints = constraints.clone();
    constraints.contiguous |= entry.contiguous;
    let mut candidates = judge_all(&entry.heaps, constraints, inventory, Some(policy));
    candidates.usage_fell_back = usage_fell_back;
    candidates.policy_origin = entry.origin.clone();
    candidates
}

/// Judges a list the user gave instead of the policy's (`heap=`, `--heap`, a PipeWire
/// producer's heaps) against the same constraints, in the user's order: the one filter every
/// front end applies to explicit lists.
pub fn solve_explicit(
    sources: &[Source],
    constraints: &Constraints,
    inventory: &Inventory,
) -> Candidates {
    let names: Vec<String> = sources.iter().map(Source::name).collect();
    judge_all(&names, constraints.clone(), inventory, None)
}

fn judge_all(
    names: &[String],
    constraints: Constraints,
    inventory: &Inventory,
    policy: Option<&Policy>,
) -> Candidates {
    let mut entries: Vec<Candidate> = Vec::with_capacity(names.len());
    for name in names {
        let (source, verdict) = judge(name, &constraints, inventory, policy);
        let duplicate = source
            .as_ref()
            .is_some_and(|s| entries.iter().any(|e| e.source.as_ref() == Some(s)));
        let verdict = if duplicate {
            Verdict::Out("already listed under another name".into())
        } else {
            verdict
        };
        entries.push(Candidate {
            name: name.clone(),
            source,
            verdict,
        });
    }
    if constraints.cpu_access != CpuAccess::None {
        prefer_cached(&mut entries, inventory);
    }
    Candidates {
        usage: constraints.usage.clone(),
        usage_fell_back: false,
        policy_origin: EntryOrigin::Explicit,
        constraints,
        entries,
    }
}

fn judge(
    name: &str,
    c: &Constraints,
    inv: &Inventory,
    policy: Option<&Policy>,
) -> (Option<Source>, Verdict) {
    let out = |why: String| Verdict::Out(why);
    let (source, props, access, kind) = match name.parse::<Source>() {
        Err(e) => return (None, out(e.to_string())),
        Ok(Source::Udmabuf) => (
            Source::Udmabuf,
            non_heap_properties(&Source::Udmabuf),
            inv.udmabuf.access.clone(),
            None,
        ),
        Ok(Source::Memfd) => (
            Source::Memfd,
            non_heap_properties(&Source::Memfd),
            Access::Allowed,
            None,
        ),
        Ok(Source::Heap(_)) => match inv.find(name) {
            Ok(heap) => (
                Source::Heap(heap.name.clone()),
                heap.properties,
                heap.access.clone(),
                Some(heap.kind),
            ),
            Err(_) => {
                log_once(format!(
                    "policy names heap {name:?}, which this machine does not have; skipped"
                ));
                return (None, out("not on this machine".into()));
            }
        },
    };
    let verdict = match access {
        Access::Missing => out("not on this machine".into()),
        Access::Denied { fix } => out(format!("no permission ({fix})")),
        Access::Allowed => judge_properties(&source, props, kind, c, inv, policy),
    };
    (Some(source), verdict)
}

fn judge_properties(
    source: &Source,
    props: HeapProperties,
    kind: Option<HeapKind>,
    c: &Constraints,
    inv: &Inventory,
    policy: Option<&Policy>,
) -> Verdict {
    let mut notes = Vec::new();
    if props.protected == Some(true) && c.cpu_access != CpuAccess::None {
        return Verdict::Out("protected: the CPU may not map it".into());
    }
    if c.require_dmabuf && *source == Source::Memfd {
        return Verdict::Out("not a dma-buf, and the consumer needs one".into());
    }
    if let Some(out) = judge_devices(source, props, c, inv, policy, &mut notes) {
        return out;
    }
    match (c.contiguous, props.contiguous) {
        (true, Some(false)) => return Verdict::Out("not physically contiguous".into()),
        (true, None) => {
            notes.push("contiguity unknown: trusted because the policy lists it".into())
        }
        _ => {}
    }
    let page = sysinfo::page_size();
    if c.alignment > page && props.contiguous != Some(true) {
        return Verdict::Out(format!(
            "cannot align physical memory to {} (only contiguous heaps can)",
            ByteSize(c.alignment)
        ));
    }
    if c.alignment > page && kind == Some(HeapKind::Cma) {
        // The allocation ioctl takes no alignment: CMA gives what the size implies.
        let cma = &inv.cma_alignment;
        let max = cma.max_alignment(c.size, page);
        let config = match &cma.from {
            Some(path) => format!("CONFIG_CMA_ALIGNMENT={} in {}", cma.order, path.display()),
            None => format!(
                "CONFIG_CMA_ALIGNMENT={} assumed: no readable kernel configuration",
                cma.order
            ),
        };
        if c.alignment > max {
            return Verdict::Out(format!(
                "CMA aligns a {} buffer to {} at most ({config}), not {}",
                ByteSize(c.size),
                ByteSize(max),
                ByteSize(c.alignment)
            ));
        }
        notes.push(format!("CMA aligns it to {} ({config})", ByteSize(max)));
    }
    if *source == Source::Udmabuf {
        if let Some(limit) = inv.udmabuf.size_limit.filter(|&l| c.size > l) {
            return Verdict::Out(format!(
                "{} is over udmabuf's limit of {} (udmabuf.size_limit_mb)",
                ByteSize(c.size),
                ByteSize(limit)
            ));
        }
    }
    if kind == Some(HeapKind::Cma) {
        if let Some(cma) = inv.cma {
            if c.size > cma.total {
                return Verdict::Out(format!(
                    "{} is larger than all CMA memory ({})",
                    ByteSize(c.size),
                    ByteSize(cma.total)
                ));
            }
            if c.size > cma.free {
                notes.push(format!(
                    "only {} of CMA free now: may fall back",
                    ByteSize(cma.free)
                ));
            }
        }
    }
    if c.cpu_access != CpuAccess::None {
        match props.cpu_cached {
            Some(true) => notes.push("CPU-cached".into()),
            Some(false) => notes.push("uncached: slow CPU reads".into()),
            None => {}
        }
    }
    if *source == Source::Memfd {
        notes.push("last resort: not a dma-buf".into());
    }
    Verdict::In(notes)
}

/// What the devices the buffer passes through say of `source`: what the policy file says of
/// the device's driver, else its probe (refused), else, for a device that could not be asked
/// and has no IOMMU, not contiguous.
fn judge_devices(
    source: &Source,
    props: HeapProperties,
    c: &Constraints,
    inv: &Inventory,
    policy: Option<&Policy>,
    notes: &mut Vec<String>,
) -> Option<Verdict> {
    use crate::device::{Acceptance, Subsystem};
    for report in &c.devices {
        let device = &report.device;
        if *source == Source::Memfd {
            return Some(Verdict::Out(format!(
                "{device} imports dma-bufs only, and a memfd is not one"
            )));
        }
        let stated = device
            .driver
            .as_deref()
            .and_then(|driver| policy?.device(driver));
        if let Some(stated) = stated {
            let listed = stated
                .heaps
                .iter()
                .any(|name| match name.parse::<Source>() {
                    Ok(Source::Heap(_)) => inv
                        .find(name)
                        .is_ok_and(|h| Source::Heap(h.name.clone()) == *source),
                    Ok(other) => other == *source,
                    Err(_) => false,
                });
            if listed {
                notes.push(format!("{device} takes it ({} says)", stated.origin));
                continue;
            }
            return Some(Verdict::Out(format!(
                "{} says {device} takes only {}",
                stated.origin,
                stated.heaps.join(", ")
            )));
        }
        match report.acceptance(&source.name()) {
            Some(Acceptance::Refused(why)) => {
                return Some(Verdict::Out(format!("refused by {device}: {why}")));
            }
            Some(Acceptance::Accepted) => notes.push(format!("{device} takes it")),
            Some(Acceptance::Unknown(_)) | None => {
                let user = matches!(device.subsystem, Subsystem::Video4Linux | Subsystem::Drm);
                if user && device.iommu == Some(false) && props.contiguous != Some(true) {
                    return Some(Verdict::Out(format!(
                        "{device} has no IOMMU and could not be asked: it needs physically \
                         contiguous memory"
                    )));
                }
            }
        }
    }
    None
}

/// Moves CPU-cached candidates ahead of uncached ones, keeping the policy order otherwise.
fn prefer_cached(entries: &mut [Candidate], inv: &Inventory) {
    let rank = |c: &Candidate| {
        let cached = match &c.source {
            Some(Source::Heap(h)) => inv
                .find(h.as_str())
                .ok()
                .and_then(|h| h.properties.cpu_cached),
            Some(other) => non_heap_properties(other).cpu_cached,
            None => None,
        };
        match cached {
            Some(true) => 0,
            None => 1,
            Some(false) => 2,
        }
    };
    entries.sort_by_key(rank);
}

#[cfg(test)]
mod tests;
