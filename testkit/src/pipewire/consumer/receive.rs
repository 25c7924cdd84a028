//! Checking what arrives: each block imported once (through heapcore, mapped with
//! `DMA_BUF_IOCTL_SYNC` for dma-bufs), the frame checked against the test pattern or a solid
//! colour, and frames held or kept as a consumer that still shows them would.

use pw_dmaheap::heapcore::Origin;
use pw_dmaheap::heapcore::format::FrameLayout;
use pw_dmaheap::pattern::{self, Plane};
use pw_dmaheap::pipewire as pw;
use pw_dmaheap::{DataKind, VideoParams};

use pw::spa::sys;

use super::{Block, BlockKey, Expect, HeldFrame, LastFrom, Received, State};

/// Checks that every pixel of a single-plane 4-byte format starts with `color`.
fn check_solid(planes: &[Plane<'_>], params: &VideoParams, color: [u8; 3]) -> Result<(), String> {
    let [plane] = planes else {
        return Err(format!("{} planes, expected one", planes.len()));
    };
    let (w, h) = (params.width as usize, params.height as usize);
    for y in 0..h {
        let row = plane
            .bytes
            .get(y * plane.stride..y * plane.stride + 4 * w)
            .ok_or_else(|| format!("row {y} lies beyond {} bytes", plane.bytes.len()))?;
        if let Some(x) = (0..w).find(|x| row[4 * x..4 * x + 3] != color) {
            return Err(format!(
                "pixel {x},{y} is {:02x?}, expected {color:02x?}",
                &row[4 * x..4 * x + 4]
            ));
        }
    }
    Ok(())
}

impl State {
    /// Checks a frame; true if it is to be held (its buffer kept dequeued).
    pub(super) fn receive(
        &mut self,
        datas: &mut [pw::spa::buffer::Data],
        header_seq: Option<u64>,
    ) -> bool {
        let Some(params) = self.format else {
            return false;
        };
        if !datas.is_empty()
            && datas
                .iter()
                .all(|d| d.as_raw().type_ == sys::SPA_DATA_MemPtr && !d.as_raw().data.is_null())
        {
            self.receive_memptr(datas, params);
            return false;
        }
        if datas
            .iter()
            .any(|d| DataKind::from_spa(d.as_raw().type_).is_none())
        {
            // A link whose buffers came without memory (see `Consumer::connect_with`): link again.
            for d in datas.iter() {
                self.seen.unusable.insert((d.as_raw().type_, d.as_raw().fd));
            }
            if !self.relink {
                self.seen.relinked += 1;
                self.relink = true;
            }
            return false;
        }
        if !datas.is_empty() && datas.iter().all(|d| d.chunk().size() == 0) {
            // No frame in it: PipeWire can hand an input the id of a buffer the producer
            // never queued, right after a renegotiation (the link's io area still names a
            // buffer of the old set until the producer's port writes it). Every chunk is
            // empty, as pipewiresrc sees too ("Chunk size is 0, skipping"): nothing to check,
            // nothing to count as a frame, but counted, as the producer should prevent it.
            self.seen.empty += 1;
            if self.seen.first_empty.is_none() {
                self.seen.first_empty = Some(format!(
                    "after frame {:?} (format {}); the consumer's last events:{}",
                    self.seen.last_seq,
                    self.seen.formats.len(),
                    self.trail
                ));
            }
            return false;
        }
        self.seen.frames += 1;
        self.seen.blocks.insert(datas.len());
        // Import (once per buffer) and describe each block.
        let mut blocks = Vec::with_capacity(datas.len());
        for data in datas.iter() {
            let raw = data.as_raw();
            let kind = DataKind::from_spa(raw.type_)
                .map_or_else(|| format!("type {}", raw.type_), |k| k.to_string());
            self.seen.data_types.insert(kind);
            let key = (raw.fd, raw.mapoffset, raw.maxsize);
            if !self.imported.contains_key(&key) {
                match pw_dmaheap::import_data(data) {
                    Ok(imported) => {
                        let buf = imported.dmabuf();
                        if let Origin::Imported {
                            exporter: Some(exporter),
                        } = buf.origin()
                        {
                            self.seen.exporters.insert(exporter.clone());
                        }
                        if let Some(name) = buf.name() {
                            self.seen.names.insert(name.to_owned());
                        }
                        self.seen.regions.insert((raw.mapoffset, raw.maxsize));
                        if let Ok(st) = rustix::fs::fstat(buf) {
                            self.seen.inodes.insert(st.st_ino);
                        }
                        if self.seen.fdinfo_sample.is_none() {
                            let fd = std::os::fd::AsRawFd::as_raw_fd(buf);
                            self.seen.fdinfo_sample = crate::fdinfo(fd);
                        }
                        self.imported.insert(key, imported);
                    }
                    Err(e) => {
                        self.seen.error(format!("import: {e}"));
                        return false;
                    }
                }
            }
            let chunk = data.chunk();
            blocks.push((
                key,
                chunk.offset() as usize,
                chunk.size() as usize,
                chunk.stride().max(0) as usize,
            ));
        }
        let n_planes = params.format.plane_count();
        // One block per plane (dma-bufs with a modifier), or one block with the first stride
        // given and the other planes where GStreamer's default layout puts them (what
        // pipewiresrc assumes): the layout comes from GStreamer's own VideoInfo.
        let layout = if blocks.len() == 1 && n_planes > 1 {
            let (_, _, len, stride) = blocks[0];
            let l = match super::super::gstreamer_layout(params.format, params.width, params.height)
            {
                Ok(l) => l,
                Err(e) => {
                    self.seen.error(e);
                    return false;
                }
            };
            if l.strides[0] as usize != stride || (len as u64) < l.size {
                self.seen.error(format!(
                    "single-block {} with stride {stride} and {len} bytes; GStreamer's layout \
                     has stride {} and {} bytes",
                    params.format, l.strides[0], l.size
                ));
                return false;
            }
            Some(l)
        } else if blocks.len() != n_planes {
            self.seen.error(format!(
                "{} blocks for {} planes of {}",
                blocks.len(),
                n_planes,
                params.format
            ));
            return false;
        } else {
            None
        };
        let expect = self.expect;
        let result = (|| {
            let guards = blocks
                .iter()
                .map(|(key, ..)| self.imported[key].read())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("map: {e}"))?;
            let planes: Vec<Plane<'_>> = match layout {
                Some(l) => {
                    let (_, offset, len, _) = blocks[0];
                    let frame = guards[0].get(offset..offset + len).unwrap_or(&[]);
                    pattern::planes_in(frame, &l).map_err(|e| e.to_string())?
                }
                None => guards
                    .iter()
                    .zip(&blocks)
                    .map(|(g, &(_, offset, len, stride))| Plane {
                        bytes: g.get(offset..offset + len).unwrap_or(&[]),
                        stride,
                    })
                    .collect(),
            };
            match expect {
                Expect::Pattern => {
                    pattern::check(&planes, params.format, params.width, params.height)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
                Expect::Solid(color) => check_solid(&planes, &params, color).map(|()| None),
            }
        })();
        match result {
            Ok(None) => {
                self.seen.checked += 1;
                false
            }
            Ok(Some(seq)) => {
                self.seen.checked += 1;
                self.trail.drawn(seq);
                if let Some(h) = header_seq {
                    if h != seq {
                        self.seen
                            .error(format!("frame {seq} came with header seq {h}"));
                    }
                }
                if let Some(last) = self.seen.last_seq {
                    if seq <= last {
                        let detail = self.describe(&blocks, header_seq);
                        self.seen.error(format!(
                            "frame {seq} after frame {last} (format {} of {}, {} empty buffers \
                             so far) [{detail}; frame {last} came {}]; the consumer's last \
                             events:{}",
                            self.seen.formats.len(),
                            params,
                            self.seen.empty,
                            self.last_from.map_or_else(String::new, |l| l.to_string()),
                            self.trail
                        ));
                    }
                }
                self.seen.last_seq = Some(seq);
                self.last_from = Some(LastFrom {
                    block: blocks[0].0,
                    format: self.seen.formats.len(),
                    params,
                    received: self.seen.frames,
                    empty: self.seen.empty,
                });
                self.seen.first_seq.get_or_insert(seq);
                self.last_frames.insert(
                    blocks[0].0,
                    Received {
                        blocks: blocks.clone(),
                        layout,
                        params,
                        seq,
                    },
                );
                if std::mem::take(&mut self.hold_next) {
                    self.hold(&blocks, layout, params, seq);
                    return true;
                }
                false
            }
            Err(e) => {
                let detail = self.describe(&blocks, header_seq);
                self.seen.error(format!("{e} [{detail}]"));
                false
            }
        }
    }

    /// A frame in memory PipeWire allocated itself: PipeWire 0.3.65 hands it to clients as
    /// `SPA_DATA_MemPtr` blocks inside its shared memfd, with no fd to import, so the frame is
    /// read through the data pointers. Only checks, with one block per plane.
    fn receive_memptr(&mut self, datas: &mut [pw::spa::buffer::Data], params: VideoParams) {
        self.seen.frames += 1;
        self.seen.blocks.insert(datas.len());
        self.seen.data_types.insert("MemPtr".into());
        if datas.len() != params.format.plane_count() {
            self.seen.error(format!(
                "{} MemPtr blocks for {} planes of {}",
                datas.len(),
                params.format.plane_count(),
                params.format
            ));
            return;
        }
        let mut frame = Vec::with_capacity(datas.len());
        for data in datas.iter_mut() {
            let raw = data.as_raw();
            self.seen.regions.insert((raw.mapoffset, raw.maxsize));
            let (offset, size, stride) = {
                let c = data.chunk();
                (
                    c.offset() as usize,
                    c.size() as usize,
                    c.stride().max(0) as usize,
                )
            };
            let bytes = data.data().unwrap_or_default();
            let Some(plane) = bytes.get(offset..offset + size) else {
                self.seen.error(format!(
                    "chunk {offset}+{size} lies beyond a {}-byte MemPtr block",
                    bytes.len()
                ));
                return;
            };
            frame.push((plane.to_vec(), stride));
        }
        let planes: Vec<Plane<'_>> = frame
            .iter()
            .map(|(bytes, stride)| Plane {
                bytes,
                stride: *stride,
            })
            .collect();
        let result = match self.expect {
            Expect::Pattern => pattern::check(&planes, params.format, params.width, params.height)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Expect::Solid(color) => check_solid(&planes, &params, color),
        };
        match result {
            Ok(()) => self.seen.checked += 1,
            Err(e) => self.seen.error(format!("MemPtr frame: {e}")),
        }
    }

    /// Where a bad frame came from: each block's fd, offsets and first bytes, and what the
    /// kernel says of the fd.
    fn describe(&self, blocks: &[Block], header_seq: Option<u64>) -> String {
        let mut out = format!(
            "header seq {header_seq:?}, last good {:?}",
            self.seen.last_seq
        );
        for (key, offset, len, stride) in blocks {
            let Some(imported) = self.imported.get(key) else {
                continue;
            };
            let head = imported
                .read()
                .map(|b| {
                    b.get(*offset..*offset + 16)
                        .map(|h| h.iter().map(|x| format!("{x:02x}")).collect::<String>())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            let buf = imported.dmabuf();
            let info = buf.fdinfo().ok();
            out += &format!(
                "; fd {} (dup {}) region {}+{} offset {offset} len {len} stride {stride} size {} ino {:?} name {:?}: {head}",
                key.0,
                std::os::fd::AsRawFd::as_raw_fd(buf),
                key.1,
                key.2,
                buf.len(),
                info.as_ref().and_then(|i| i.get("ino").map(str::to_owned)),
                info.as_ref().and_then(|i| i.name().map(str::to_owned)),
            );
        }
        out
    }

    fn hold(
        &mut self,
        blocks: &[Block],
        layout: Option<FrameLayout>,
        params: VideoParams,
        seq: u64,
    ) {
        self.held = Some(self.duplicate(&Received {
            blocks: blocks.to_vec(),
            layout,
            params,
            seq,
        }));
    }

    /// Duplicates the fds of a received frame's buffer.
    pub(super) fn duplicate(&self, r: &Received) -> HeldFrame {
        let dup = |key: &BlockKey| self.imported.get(key)?.try_clone().ok();
        let planes = match r.layout {
            Some(l) => {
                let (key, offset, _, _) = r.blocks[0];
                (0..l.n_planes)
                    .filter_map(|p| {
                        let end = if p + 1 < l.n_planes {
                            l.offsets[p + 1]
                        } else {
                            l.size
                        };
                        Some((
                            dup(&key)?,
                            offset + l.offsets[p] as usize,
                            (end - l.offsets[p]) as usize,
                            l.strides[p] as usize,
                        ))
                    })
                    .collect()
            }
            None => r
                .blocks
                .iter()
                .filter_map(|(key, offset, len, stride)| Some((dup(key)?, *offset, *len, *stride)))
                .collect(),
        };
        HeldFrame {
            planes,
            params: r.params,
            seq: r.seq,
        }
    }
}
