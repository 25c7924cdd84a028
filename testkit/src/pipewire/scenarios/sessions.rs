//! Consumers that come and go: one that leaves holding a frame while the next one streams,
//! a render callback that resizes and disconnects its own producer, a long run with
//! reconnects and a resize, and a producer that resizes again and again.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use pw_dmaheap::{Event, Negotiated, Producer, ProducerConfig, Stats};

use super::super::consumer::{Accept, Consumer, HeldFrame};
use super::super::patience;
use super::{Rig, first_error, with_frames};
use crate::{fd_targets, fds_closed_since, fds_opened_since, open_fds};

/// What a consumer that left kept, and what the next one got.
#[derive(Debug)]
pub struct Privacy {
    /// The frame the first consumer held, still read back intact at the end.
    pub held_seq: u64,
    /// What the first consumer's other buffers read at the end: frames drawn for it (its
    /// own later frames too), none drawn for the second.
    pub kept_seqs: Vec<u64>,
    /// The first frame the second consumer got.
    pub second_first_seq: u64,
    /// What the producer negotiated with the first consumer.
    pub first: Negotiated,
    /// ... and with the second.
    pub second: Negotiated,
    /// Inodes of the buffers the first consumer got.
    pub first_inodes: BTreeSet<u64>,
    /// Inodes of the buffers the second consumer got.
    pub second_inodes: BTreeSet<u64>,
    /// Frames the second consumer checked.
    pub second_checked: u64,
    /// Links the consumers had to make again (PipeWire's allocation race).
    pub relinked: u32,
}

/// Holds a frame of `consumer` (its `pw_buffer` stays dequeued), lets it check `more`
/// frames after that, and takes the frame's duplicates out.
fn hold_a_frame(rig: &Rig, consumer: &Consumer, more: u64) -> Result<HeldFrame, String> {
    consumer.hold_next_frame();
    rig.session
        .run_until("a held frame", patience(), || Ok(consumer.holds_a_frame()))?;
    let target = consumer.seen().checked + more;
    rig.session.run_until(
        &format!("{more} frames after the held one"),
        patience(),
        || {
            let seen = consumer.seen();
            first_error(&seen)?;
            Ok(seen.checked >= target)
        },
    )?;
    let held = consumer.take_held().ok_or("the held frame is gone")?;
    held.check()?;
    Ok(held)
}

/// Consumer A streams, holds a frame (its buffer dequeued, its fds duplicated), keeps
/// duplicates of all its buffers and leaves; consumer B links with the same format and checks
/// `frames` frames. A's held frame must still read as it did, A's other buffers must carry no
/// frame drawn for B, and B must get none of A's buffers (by inode): a buffer whose fds
/// reached one consumer is never drawn into for the next.
pub fn privacy(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<Privacy, String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let producer = rig.producer(config)?;
    with_frames(rig, &producer, Duration::from_millis(2), || {
        let a = rig.consumer(&name, format, accept)?;
        rig.session.run_until("10 frames for A", patience(), || {
            let seen = a.seen();
            first_error(&seen)?;
            Ok(seen.checked >= 10)
        })?;
        let held = hold_a_frame(rig, &a, 10)?;
        let first = producer.negotiated().ok_or("no negotiation with A")?;
        let first_inodes = a.seen().inodes;
        let a_relinked = a.seen().relinked;
        // A keeps (duplicates of) every buffer it had, as a consumer may, and leaves.
        let kept = a.keep_buffers();
        drop(a);
        let b = rig.consumer(&name, format, accept)?;
        rig.session
            .run_until(&format!("{frames} frames for B"), patience(), || {
                let seen = b.seen();
                first_error(&seen)?;
                Ok(seen.checked >= frames)
            })?;
        let second = producer.negotiated().ok_or("no negotiation with B")?;
        let seen = b.seen();
        if (first.params, first.data_kind) != (second.params, second.data_kind) {
            return Err(format!("B did not get A's format: A {first}, B {second}"));
        }
        let (held_seq, _) = held
            .check()
            .map_err(|e| format!("after B streamed {} frames: {e}", seen.checked))?;
        // The buffers A did not hold went back to the producer before A left, so they may
        // carry later frames of A's session; never one of B's.
        let second_first_seq = seen.first_seq.ok_or("B checked no frame")?;
        let kept_seqs = kept
            .iter()
            .map(HeldFrame::read)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("A's kept buffers after B streamed: {e}"))?;
        if let Some(seq) = kept_seqs.iter().find(|&&s| s >= second_first_seq) {
            return Err(format!(
                "A's kept buffers read frame {seq}, drawn for B (whose first was \
                 {second_first_seq}): {kept_seqs:?}"
            ));
        }
        let shared: Vec<_> = first_inodes.intersection(&seen.inodes).collect();
        if !shared.is_empty() {
            return Err(format!(
                "B got buffers A had (inodes {shared:?}; A {first_inodes:?}, B {:?})",
                seen.inodes
            ));
        }
        Ok(Privacy {
            held_seq,
            kept_seqs,
            second_first_seq,
            first,
            second,
            first_inodes,
            second_inodes: seen.inodes,
            second_checked: seen.checked,
            relinked: a_relinked + seen.relinked,
        })
    })
}

/// What happened when the render callback resized, then disconnected, its own producer.
#[derive(Debug)]
pub struct DisconnectInRender {
    /// What was negotiated after the resize.
    pub resized: Negotiated,
    /// The frame whose render callback disconnected the producer.
    pub disconnected_in_frame: u64,
    /// Frames the first consumer checked.
    pub first_checked: u64,
    /// This process's fds before the producer connected.
    pub fds_before: usize,
    /// ... and after it disconnected and the consumer left.
    pub fds_after: usize,
    /// The fds opened since `fds_before` that were still open then: leaks.
    pub fds_leaked: Vec<String>,
    /// The fds open at `fds_before` that had closed by then (set-up finishing late).
    pub fds_closed: Vec<String>,
    /// Frames the consumer after the reconnect checked.
    pub second_checked: u64,
    /// The producer's counters at the end.
    pub stats: Stats,
}

/// A consumer checks frames; the render callback resizes the producer it draws for (the
/// renegotiation follows later) and, once frames of the new size arrive, disconnects it
/// (PipeWire removes every buffer, the one being drawn too, while the callback runs). The
/// producer must end unconnected without errors, with every fd its buffers had closed, and
/// connect again to stream checked frames to a new consumer.
pub fn disconnect_in_render(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
) -> Result<DisconnectInRender, String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let (w2, h2) = (config.width + 16, config.height + 8);
    // Warm up the session and the process's pool registry (see `soak`).
    let _ = pw_dmaheap::heapcore::PoolRegistry::process();
    rig.warm_up()?;
    let producer = Rc::new(Producer::new(&rig.session.core, config).map_err(|e| e.to_string())?);
    let errors = Rc::new(std::cell::RefCell::new(Vec::new()));
    producer.set_event_handler({
        let errors = Rc::clone(&errors);
        move |event| {
            if let Event::Error(e) = event {
                errors.borrow_mut().push(e.clone());
            }
        }
    });
    // What the next render callback does to its producer: 1 resize, 2 disconnect.
    let armed = Rc::new(std::cell::Cell::new(0));
    let done = Rc::new(std::cell::Cell::new(None));
    producer.set_renderer({
        let (armed, done) = (Rc::clone(&armed), Rc::clone(&done));
        let weak = Rc::downgrade(&producer);
        move |frame| {
            frame.draw_test_pattern();
            let action = armed.replace(0);
            if let Some(p) = weak.upgrade().filter(|_| action != 0) {
                let result = if action == 1 {
                    p.resize(w2, h2)
                } else {
                    p.disconnect()
                };
                done.set(Some((frame.sequence(), result.map_err(|e| e.to_string()))));
            }
        }
    });
    let no_errors = |what: &str| -> Result<(), String> {
        match errors.borrow().first() {
            Some(e) => Err(format!("{what}: the producer reported an error: {e}")),
            None => Ok(()),
        }
    };
    with_frames(rig, &producer, Duration::from_millis(2), || {
        let fds_before = open_fds();
        let fd_list_before = fd_targets();
        producer.connect().map_err(|e| e.to_string())?;
        let first = rig.consumer(&name, format, accept)?;
        rig.session.run_until("20 checked frames", patience(), || {
            let seen = first.seen();
            first_error(&seen)?;
            Ok(seen.checked >= 20)
        })?;
        let act = |action, what: &str| -> Result<u64, String> {
            armed.set(action);
            rig.session.run_until(
                &format!("a render callback that {what}"),
                patience(),
                || Ok(done.take().map(|d| done.set(Some(d))).is_some()),
            )?;
            let (frame, result) = done.take().expect("set above");
            result.map_err(|e| format!("{what} from the render callback: {e}"))?;
            Ok(frame)
        };
        act(1, "resizes")?;
        rig.session
            .run_until("frames of the new size", patience(), || {
                let seen = first.seen();
                first_error(&seen)?;
                let resized = seen
                    .formats
                    .last()
                    .is_some_and(|f| (f.width, f.height) == (w2, h2));
                Ok(resized && producer.negotiated().is_some() && seen.checked >= 30)
            })?;
        let resized = producer
            .negotiated()
            .ok_or("no negotiation after the resize")?;
        if (resized.params.width, resized.params.height) != (w2, h2) {
            return Err(format!("negotiated {resized} after resizing to {w2}x{h2}"));
        }
        let disconnected_in_frame = act(2, "disconnects")?;
        rig.session
            .run_until("the producer to be unconnected", patience(), || {
                Ok(matches!(
                    producer.state(),
                    pw_dmaheap::pipewire::stream::StreamState::Unconnected
                ))
            })?;
        no_errors("after the disconnect")?;
        let seen = first.seen();
        first_error(&seen)?;
        drop(first);
        // Every fd of the producer's buffers (and the consumer's copies) closes.
        let (fds_after, fds_leaked, fds_closed) = settled_fds(rig, &fd_list_before);
        let stats = producer.stats();
        if stats.live != 0 || stats.allocated != stats.freed {
            return Err(format!("buffers left after the disconnect: {stats:?}"));
        }
        producer.connect().map_err(|e| e.to_string())?;
        let second = rig.consumer(&name, format, accept)?;
        rig.session.run_until(
            "60 checked frames after connecting again",
            patience(),
            || {
                let seen = second.seen();
                first_error(&seen)?;
                Ok(seen.checked >= 60)
            },
        )?;
        no_errors("after connecting again")?;
        Ok(DisconnectInRender {
            resized,
            disconnected_in_frame,
            first_checked: seen.checked,
            fds_before,
            fds_after,
            fds_leaked,
            fds_closed,
            second_checked: second.seen().checked,
            stats: producer.stats(),
        })
    })
}

/// The fds once those opened since `before` (from [`fd_targets`]) have closed, or patience ran
/// out: the count, the ones still open (leaks: the caller fails on any) and those of `before`
/// that closed (set-up finishing late). PipeWire closes what a destroyed stream held as its
/// loops get to it, which a loaded TCG guest can take longer than any fixed pause.
fn settled_fds(rig: &Rig, before: &BTreeMap<i32, String>) -> (usize, Vec<String>, Vec<String>) {
    let _ = rig
        .session
        .run_until("the fds opened since to close", patience(), || {
            Ok(fds_opened_since(before).is_empty())
        });
    (
        open_fds(),
        fds_opened_since(before),
        fds_closed_since(before),
    )
}

/// What the long run saw.
#[derive(Debug)]
pub struct Soak {
    /// Frames the consumers checked in all.
    pub frames_checked: u64,
    /// Consumers that connected.
    pub consumers: u32,
    /// This process's fds before the producer connected.
    pub fds_before: usize,
    /// ... after each phase.
    pub fds_per_phase: Vec<usize>,
    /// ... and at the end.
    pub fds_after: usize,
    /// The fds opened since `fds_before` that were still open at the end: leaks.
    pub fds_leaked: Vec<String>,
    /// The fds open at `fds_before` that had closed by the end (set-up finishing late).
    pub fds_closed: Vec<String>,
    /// The producer's counters at the end.
    pub stats: Stats,
    /// Every negotiation, as the producer described it.
    pub negotiated: Vec<String>,
    /// The held frame, read back after a same-format reconnect.
    pub held_frame_after_reconnect: u64,
    /// The held frame, read back after the resize.
    pub held_frame_after_resize: u64,
    /// Links the consumers had to make again (PipeWire's allocation race).
    pub relinked: u32,
    /// How long the run took.
    pub elapsed: Duration,
}

/// `frames` checked frames in four phases: a consumer holds a frame (its buffer dequeued, its
/// fds duplicated) and disconnects, and a new one connects with the same format; the
/// producer resizes while the consumer holds a frame of the old size; another reconnect.
/// Both held frames still read as they did, no consumer gets a buffer an earlier one had,
/// and afterwards every buffer is freed and the fd count is back where it started.
pub fn soak(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<Soak, String> {
    let start = Instant::now();
    let name = config.node_name.clone();
    let format = config.formats[0];
    let (w2, h2) = (config.width + 32, config.height + 16);
    let per_phase = frames.div_ceil(4);
    // Warm up the session (first connections open sockets, timers, eventfds: see
    // `Rig::warm_up`), and the process's pool registry, which a producer makes on first use
    // and which keeps its pressure watch (fds on /proc/pressure/memory) for the life of the
    // process.
    let _ = pw_dmaheap::heapcore::PoolRegistry::process();
    rig.warm_up()?;
    let fds_before = open_fds();
    let fd_list_before = fd_targets();
    let mut fds_per_phase = Vec::new();
    let mut negotiated = Vec::new();
    let mut total = 0;
    let mut consumers = 1;
    let mut held_frame_after_reconnect = 0;
    let mut held_frame_after_resize = 0;
    let mut held_over_reconnect: Option<HeldFrame> = None;
    let mut earlier_inodes = BTreeSet::new();
    let mut relinked = 0;
    let producer = rig.producer(config)?;
    let stats = with_frames(rig, &producer, Duration::from_millis(1), || {
        let mut consumer = Some(rig.consumer(&name, format, accept)?);
        for phase in 0..4 {
            let c = consumer.as_ref().expect("a consumer");
            let target = c.seen().checked + per_phase.min(frames.saturating_sub(total));
            rig.session.run_until(
                &format!("phase {phase}: {target} frames"),
                patience() * 4,
                || {
                    let seen = c.seen();
                    first_error(&seen)?;
                    Ok(seen.checked >= target)
                },
            )?;
            if let Some(n) = producer.negotiated() {
                let line = n.to_string();
                if negotiated.last() != Some(&line) {
                    negotiated.push(line);
                }
            }
            fds_per_phase.push(open_fds());
            let seen = c.seen();
            let shared: Vec<_> = earlier_inodes.intersection(&seen.inodes).collect();
            if !shared.is_empty() {
                return Err(format!(
                    "phase {phase}: the consumer got buffers an earlier one had: inodes {shared:?}"
                ));
            }
            if let Some(held) = held_over_reconnect.take() {
                // A consumer of the same format streamed a whole phase since.
                let (seq, _) = held
                    .check()
                    .map_err(|e| format!("after a same-format reconnect: {e}"))?;
                held_frame_after_reconnect = seq;
            }
            match phase {
                0 | 2 => {
                    if phase == 0 {
                        // Leave while holding a frame, as a consumer that still shows it.
                        held_over_reconnect = Some(hold_a_frame(rig, c, 2)?);
                    }
                    total += c.seen().checked;
                    relinked += c.seen().relinked;
                    earlier_inodes.extend(c.seen().inodes);
                    drop(consumer.take());
                    rig.session.run_for(Duration::from_millis(200));
                    consumer = Some(rig.consumer(&name, format, accept)?);
                    consumers += 1;
                }
                1 => {
                    // Hold a frame (its buffer stays dequeued, so the producer cannot draw
                    // into it) across the renegotiation a resize causes.
                    c.hold_next_frame();
                    rig.session
                        .run_until("a held frame", patience(), || Ok(c.holds_a_frame()))?;
                    producer.resize(w2, h2).map_err(|e| e.to_string())?;
                    rig.session
                        .run_until("frames of the new size", patience(), || {
                            let seen = c.seen();
                            first_error(&seen)?;
                            Ok(seen
                                .formats
                                .last()
                                .is_some_and(|f| (f.width, f.height) == (w2, h2))
                                && seen.last_seq.is_some())
                        })?;
                    // The producer freed its buffers of the old size (PipeWire removed the
                    // held one from the consumer too); the duplicate still reads the frame.
                    if c.holds_its_buffer() {
                        return Err("the held buffer survived the renegotiation".into());
                    }
                    let (seq, p) = c.check_held()?;
                    if (p.width, p.height) == (w2, h2) {
                        return Err("the held frame is not of the old size".into());
                    }
                    held_frame_after_resize = seq;
                }
                _ => {
                    total += c.seen().checked;
                    relinked += c.seen().relinked;
                }
            }
        }
        drop(consumer);
        rig.session.run_for(Duration::from_millis(200));
        producer.disconnect().map_err(|e| e.to_string())?;
        rig.session.run_for(Duration::from_millis(200));
        Ok(producer.stats())
    })?;
    drop(producer);
    let (fds_after, fds_leaked, fds_closed) = settled_fds(rig, &fd_list_before);
    if stats.live != 0 || stats.allocated != stats.freed {
        return Err(format!("buffers left after disconnecting: {stats:?}"));
    }
    Ok(Soak {
        frames_checked: total,
        consumers,
        fds_before,
        fds_per_phase,
        fds_after,
        fds_leaked,
        fds_closed,
        stats,
        negotiated,
        held_frame_after_reconnect,
        held_frame_after_resize,
        relinked,
        elapsed: start.elapsed(),
    })
}

/// What a consumer saw while its producer changed size again and again.
#[derive(Debug)]
pub struct Resizes {
    /// Renegotiations the consumer streamed through.
    pub resizes: u32,
    /// Frames it checked in all.
    pub frames_checked: u64,
    /// Buffers it was handed that held no frame: ones the producer never sent (a stale id in
    /// the link's io, see `receive`).
    pub empty: u64,
    /// Where the first of them came (see `Seen::first_empty`).
    pub first_empty: Option<String>,
    /// The producer's counters at the end (`duplicates`: second free-queue entries dropped).
    pub stats: Stats,
}

/// Streams frames as fast as a 1 ms timer asks while the producer resizes `resizes` times,
/// each new size streaming `frames_each` checked frames. Every renegotiation is a chance for
/// PipeWire to leave a stale buffer id in the link's io area; the consumer fails the run on a
/// frame that repeats, goes back or is torn.
pub fn resizes(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    resizes: u32,
    frames_each: u64,
) -> Result<Resizes, String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let (w0, h0) = (config.width, config.height);
    let producer = rig.producer(config)?;
    let (checked, empty, first_empty) =
        with_frames(rig, &producer, Duration::from_millis(1), || {
            let consumer = rig.consumer(&name, format, accept)?;
            for i in 0..=resizes {
                let (w, h) = (w0 + 16 * i, h0 + 8 * i);
                if i > 0 {
                    producer.resize(w, h).map_err(|e| e.to_string())?;
                }
                let target = consumer.seen().checked + frames_each;
                rig.session.run_until(
                    &format!("resize {i}: {frames_each} frames of {w}x{h}"),
                    patience(),
                    || {
                        let seen = consumer.seen();
                        first_error(&seen)?;
                        let sized = seen
                            .formats
                            .last()
                            .is_some_and(|f| (f.width, f.height) == (w, h));
                        Ok(sized && seen.checked >= target)
                    },
                )?;
            }
            let seen = consumer.seen();
            Ok((seen.checked, seen.empty, seen.first_empty))
        })?;
    Ok(Resizes {
        resizes,
        frames_checked: checked,
        empty,
        first_empty,
        stats: producer.stats(),
    })
}
