//! What the host tests and the real-heap tests run: a producer with a Rust consumer (here),
//! stock GStreamer elements on either side ([`gst`]: pipewiresrc, pipewiresink), and
//! consumers that come and go ([`sessions`]: a consumer that leaves, a render callback that
//! disconnects, a long run with reconnects and a resize).

mod gst;
mod sessions;

pub use gst::{GstRun, PipeWireMemFd, SrcCaps, pipewiresink, pipewiresrc, pipewiresrc_with_caps};
pub use sessions::{
    DisconnectInRender, Privacy, Resizes, Soak, disconnect_in_render, privacy, resizes, soak,
};

use std::rc::Rc;
use std::time::Duration;

use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::{Negotiated, Producer, ProducerConfig};

use super::consumer::{Accept, Consumer, Expect, Extras, Seen};
use super::{Daemons, Session, patience};

/// Daemons and a session connected to them. Field order is drop order: the session's
/// clients go before the daemons.
pub struct Rig {
    /// The consumer's own client connection.
    pub consumer_core: pw_dmaheap::pipewire::core::CoreRc,
    /// The session in this process.
    pub session: Session,
    /// The private daemons.
    pub daemons: Daemons,
}

impl Rig {
    /// Starts the daemons and connects a session to them.
    pub fn start() -> Result<Self, String> {
        let daemons = Daemons::start()?;
        let session = Session::connect(&daemons.remote())?;
        let consumer_core = session.connect_core()?;
        Ok(Self {
            session,
            consumer_core,
            daemons,
        })
    }

    /// Streams a few frames from a throwaway producer to a throwaway consumer and drops
    /// both, so that what a client allocates once and keeps for its context's life exists
    /// before a test counts fds: PipeWire 1.2+ gives each thread that invokes on a data loop
    /// an eventfd of its own on first use, which stays until the loop goes.
    pub fn warm_up(&self) -> Result<(), String> {
        let cfg = config("warm-up", 64, 48, VideoFormat::Bgrx);
        let name = cfg.node_name.clone();
        let producer = self.producer(cfg)?;
        let consumer = self.consumer(&name, VideoFormat::Bgrx, Accept::DmaBufOrMemFd)?;
        with_frames(self, &producer, Duration::from_millis(5), || {
            self.session.run_until("warm-up frames", patience(), || {
                let seen = consumer.seen();
                first_error(&seen)?;
                Ok(seen.checked >= 3)
            })
        })?;
        drop(consumer);
        producer.disconnect().map_err(|e| e.to_string())?;
        drop(producer);
        self.session.run_for(Duration::from_millis(200));
        Ok(())
    }

    /// A producer that draws the test pattern, connected, and a timer that asks it for a
    /// frame every `interval`.
    pub fn producer(&self, config: ProducerConfig) -> Result<Rc<Producer>, String> {
        let producer =
            Rc::new(Producer::new(&self.session.core, config).map_err(|e| e.to_string())?);
        producer.set_renderer(|frame| frame.draw_test_pattern());
        producer.connect().map_err(|e| e.to_string())?;
        Ok(producer)
    }

    /// A consumer of the node named `target` that checks the test pattern, connected once
    /// that node is in the registry (see [`Session::wait_for_node`]).
    pub fn consumer(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
    ) -> Result<Consumer<'_>, String> {
        self.consumer_expecting(target, format, accept, Expect::Pattern)
    }

    /// A consumer of the node named `target` that checks the test pattern, with [`Extras`]
    /// (explicit sync, device ids).
    pub fn consumer_with(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        extras: Extras,
    ) -> Result<Consumer<'_>, String> {
        self.connect_consumer(target, format, accept, Expect::Pattern, extras)
    }

    /// A consumer of the node named `target` whose frames hold `expect`.
    pub fn consumer_expecting(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        expect: Expect,
    ) -> Result<Consumer<'_>, String> {
        self.connect_consumer(target, format, accept, expect, Extras::default())
    }

    fn connect_consumer(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        expect: Expect,
        extras: Extras,
    ) -> Result<Consumer<'_>, String> {
        self.session.wait_for_node(target, patience(), || Ok(()))?;
        Consumer::connect_with(
            &self.consumer_core,
            self.session.mainloop.loop_(),
            target,
            format,
            accept,
            expect,
            extras,
        )
    }
}

/// A producer configuration for tests: a unique node name, the given size and format.
pub fn config(name: &str, width: u32, height: u32, format: VideoFormat) -> ProducerConfig {
    ProducerConfig::new(width, height)
        .with_node_name(format!("dmaheap-test-{name}-{}", std::process::id()))
        .with_formats([format])
        .with_framerate(60, 1)
}

/// Runs `f` with a timer that triggers a frame of `producer` every `interval`.
pub fn with_frames<T>(
    rig: &Rig,
    producer: &Rc<Producer>,
    interval: Duration,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let p = Rc::clone(producer);
    let timer = rig.session.mainloop.loop_().add_timer(move |_| {
        if let Err(e) = p.trigger_frame() {
            log::trace!("trigger: {e}");
        }
    });
    timer
        .update_timer(Some(interval), Some(interval))
        .into_sync_result()
        .map_err(|e| format!("arming the frame timer: {e}"))?;
    let result = f();
    drop(timer);
    result
}

pub(crate) fn first_error(seen: &Seen) -> Result<(), String> {
    match seen.errors.first() {
        Some(e) => Err(format!(
            "the consumer saw bad frames: {e} (all: {:?})",
            seen.errors
        )),
        None => Ok(()),
    }
}

/// Streams to a Rust consumer until it has checked `frames` frames.
pub fn rust_consumer(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<(Negotiated, Seen), String> {
    rust_consumer_with(rig, config, accept, Extras::default(), frames)
}

/// [`rust_consumer`] with [`Extras`] (explicit sync, device ids).
pub fn rust_consumer_with(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    extras: Extras,
    frames: u64,
) -> Result<(Negotiated, Seen), String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let producer = rig.producer(config)?;
    let consumer = rig.consumer_with(&name, format, accept, extras)?;
    with_frames(rig, &producer, Duration::from_millis(4), || {
        rig.session
            .run_until(&format!("{frames} checked frames"), patience(), || {
                let seen = consumer.seen();
                first_error(&seen)?;
                Ok(seen.checked >= frames)
            })
    })?;
    let negotiated = producer
        .negotiated()
        .ok_or("the producer reports no negotiation")?;
    Ok((negotiated, consumer.seen()))
}
