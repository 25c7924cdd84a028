//! The PipeWire rig (feature `pipewire`): a private PipeWire daemon set, a PipeWire session
//! in this process, a Rust consumer that checks what it receives ([`consumer`]), and the
//! scenarios pw-dmaheap's host tests, its real-heap suite and the examples' tests run
//! ([`scenarios`]).
//!
//! The daemons live in a fresh directory under the temp dir (`XDG_RUNTIME_DIR`, config, state
//! and cache all inside it) with their own session bus. Clients in this process connect by
//! the absolute socket path, children get an environment pointing there: the user's own
//! PipeWire is never touched. Every daemon is stopped by pid when the set is dropped, also
//! when a test panics.

pub mod consumer;
pub mod scenarios;

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pw_dmaheap::pipewire as pw;

/// How long to wait for daemons and links; the VM emulates its CPU and is much slower.
pub fn patience() -> Duration {
    if std::env::var_os("DMAHEAP_VM").is_some() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

/// The GStreamer registry of every child the rig starts: one file in the project's cache
/// (`$XDG_CACHE_HOME/dmaheap`, never a shared directory such as /tmp), so that a plugin scan is
/// paid once (see [`Daemons::make_gst_registry`]), not by every test's first `gst-launch-1.0`.
/// GStreamer replaces it by rename, so processes may share it. Where this process was given a
/// registry (`GST_REGISTRY`: the test VMs keep one across boots) the children share that.
/// `None` without either or a home, and each daemon set then keeps a registry of its own.
fn gst_registry() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(given) = std::env::var_os("GST_REGISTRY") {
            return Some(PathBuf::from(given));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
            .join("dmaheap");
        std::fs::create_dir_all(&cache).ok()?;
        Some(cache.join("test-gst-registry.bin"))
    })
    .as_deref()
}

/// A private dbus-daemon, pipewire and wireplumber.
pub struct Daemons {
    dir: PathBuf,
    bus: String,
    children: Vec<(&'static str, Child)>,
}

impl Daemons {
    /// Starts the set and waits until WirePlumber has loaded its policy.
    pub fn start() -> Result<Self, String> {
        if std::env::var_os("PIPEWIRE_REMOTE").is_some() {
            return Err(
                "PIPEWIRE_REMOTE is set and would override the private daemon's \
                        socket in this process; unset it to run these tests"
                    .into(),
            );
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pw-dmaheap-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut set = Self {
            dir,
            bus: String::new(),
            children: Vec::new(),
        };
        set.start_bus()?;
        set.spawn("pipewire", &[])?;
        set.wait_for(&set.remote(), "the pipewire socket")?;
        set.spawn("wireplumber", &[])?;
        set.wait_for_session_manager()?;
        static REGISTRY: OnceLock<()> = OnceLock::new();
        REGISTRY.get_or_init(|| set.make_gst_registry());
        Ok(set)
    }

    /// Makes the GStreamer registry the children share ([`gst_registry`]) once per process,
    /// before any test waits on a child. A first scan reads every plugin: in the test VM (9p,
    /// TCG) the first `gst-launch-1.0 pipewiresrc` took 40 s of the 120 a test waits for it,
    /// and all 120 while another VM shared the machine, when each daemon set had a registry
    /// of its own. What goes wrong here is said, not fatal: the tests that need GStreamer
    /// say it again in their terms.
    fn make_gst_registry(&self) {
        const BOUND: Duration = Duration::from_secs(600);
        let Some(registry) = gst_registry() else {
            return;
        };
        let start = Instant::now();
        let child = self
            .command("gst-inspect-1.0")
            .arg("pipewiresrc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => ChildGuard(Some(child)),
            Err(e) => return eprintln!("no GStreamer registry made: gst-inspect-1.0: {e}"),
        };
        while start.elapsed() < BOUND {
            match child.child().try_wait() {
                Ok(Some(_)) => {
                    return eprintln!(
                        "GStreamer registry for the rig's children: {} ({:.1} s)",
                        registry.display(),
                        start.elapsed().as_secs_f64()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return eprintln!("no GStreamer registry made: {e}"),
            }
        }
        eprintln!("gst-inspect-1.0 did not finish in {BOUND:?}: no GStreamer registry made");
    }

    /// The daemon's socket: clients in this process connect to it by this absolute path.
    pub fn remote(&self) -> PathBuf {
        self.dir.join("pipewire-0")
    }

    /// A scratch directory that goes away with the daemons.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command whose environment points at these daemons and nothing of the user's.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.dir)
            .env("LANG", "C.UTF-8")
            .env("XDG_RUNTIME_DIR", &self.dir)
            .env("PIPEWIRE_RUNTIME_DIR", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env(
                "GST_REGISTRY",
                gst_registry().map_or_else(|| self.dir.join("gst-registry.bin"), Path::to_path_buf),
            )
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .current_dir(&self.dir);
        for pass in [
            "PIPEWIRE_DEBUG",
            "WIREPLUMBER_DEBUG",
            "GST_DEBUG",
            "GST_PLUGIN_PATH",
            "LD_LIBRARY_PATH",
            "DMAHEAP_VM",
        ] {
            if let Some(v) = std::env::var_os(pass) {
                cmd.env(pass, v);
            }
        }
        cmd
    }

    /// Daemons die with the thread that started them even if this process is killed
    /// (`setpriv --pdeathsig`, which execs the daemon under the same pid).
    fn daemon_command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = self.command("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--", program]);
            c
        } else {
            self.command(program)
        };
        cmd.args(args);
        cmd
    }

    fn log_file(&self, name: &str) -> Result<File, String> {
        File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("creating the {name} log: {e}"))
    }

    fn start_bus(&mut self) -> Result<(), String> {
        let address = format!("--address=unix:path={}", self.dir.join("bus").display());
        let mut child = self
            .daemon_command(
                "dbus-daemon",
                &[
                    "--session",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                    &address,
                ],
            )
            .stdout(Stdio::piped())
            .stderr(self.log_file("dbus-daemon")?)
            .spawn()
            .map_err(|e| format!("starting dbus-daemon: {e}"))?;
        let stdout = child.stdout.take();
        self.children.push(("dbus-daemon", child));
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("reading the bus address: {e}"))?;
        }
        self.bus = line.trim().to_owned();
        if self.bus.is_empty() {
            return Err(format!(
                "dbus-daemon printed no address: {}",
                self.log_tail("dbus-daemon")
            ));
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> Result<(), String> {
        let log = self.log_file(name)?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = self
            .daemon_command(name, args)
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.children.push((name, child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let name = *name;
                return Err(format!("{name} exited ({status}): {}", self.log_tail(name)));
            }
        }
        Ok(())
    }

    fn wait_for(&mut self, path: &Path, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + patience();
        while !path.exists() {
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what} ({})", path.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// WirePlumber creates the `default` metadata once its policy is loaded.
    fn wait_for_session_manager(&mut self) -> Result<(), String> {
        let session = Session::connect(&self.remote())?;
        let waited = session.wait_for_global(
            "WirePlumber's default metadata",
            pw::types::ObjectType::Metadata,
            ("metadata.name", "default"),
            patience(),
            || self.check_alive(),
        );
        waited
            .map(|_| ())
            .map_err(|e| format!("{e}: {}", self.log_tail("wireplumber")))
    }

    /// A daemon's whole log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of a daemon's log.
    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The pids of the daemons (for the closing report).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children.iter().map(|(n, c)| (*n, c.id())).collect()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, _) in &self.children {
                eprintln!("--- {name} log (last lines)\n{}", self.log_tail(name));
            }
        }
        // Stop in reverse order, each by its own pid: SIGTERM, then SIGKILL after 5 s.
        while let Some((name, mut child)) = self.children.pop() {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        eprintln!("{name} (pid {}) ignored SIGTERM; killing it", child.id());
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PipeWire main loop and context in this thread, connected to the private daemon. The
/// loop stays entered on this thread (see `EnteredLoop`), so PipeWire never runs stream
/// callbacks on its data thread between iterations.
pub struct Session {
    /// The first connection (more with [`Session::connect_core`]).
    pub core: pw::core::CoreRc,
    /// A connection of its own for watching the registry: a registry on a producer's
    /// connection makes the daemon send it every global, which PipeWire 0.3.65's link code
    /// can mistake for the end of a buffer allocation (see `Consumer::connect_with`).
    observer: pw::core::CoreRc,
    /// The PipeWire context.
    pub context: pw::context::ContextRc,
    /// The main loop, iterated by the test.
    pub mainloop: pw::main_loop::MainLoopRc,
    remote: PathBuf,
    // Last: left after everything above is gone.
    _entered: pw_dmaheap::EnteredLoop<pw::main_loop::MainLoopRc>,
}

impl Session {
    /// Connects to the daemon listening at `remote`.
    pub fn connect(remote: &Path) -> Result<Self, String> {
        pw::init();
        let mainloop =
            pw::main_loop::MainLoopRc::new(None).map_err(|e| format!("main loop: {e}"))?;
        let entered = pw_dmaheap::EnteredLoop::new(&mainloop);
        let context =
            pw::context::ContextRc::new(&mainloop, None).map_err(|e| format!("context: {e}"))?;
        let core = connect_core(&context, remote)?;
        let observer = connect_core(&context, remote)?;
        Ok(Self {
            core,
            observer,
            context,
            mainloop,
            remote: remote.to_owned(),
            _entered: entered,
        })
    }

    /// Another client connection (a consumer is a different client than the producer).
    pub fn connect_core(&self) -> Result<pw::core::CoreRc, String> {
        connect_core(&self.context, &self.remote)
    }

    /// Runs the loop for up to `timeout`.
    pub fn iterate(&self, timeout: Duration) {
        self.mainloop
            .loop_()
            .iterate(pw::loop_::Timeout::Finite(timeout));
    }

    /// Runs the loop until `done` says so; fails after `timeout` with `what`.
    pub fn run_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !done()? {
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            self.iterate(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Runs the loop until a node named `name` is in the registry, and returns its id.
    /// `alive` is asked on every turn and may fail early (a child that exited).
    ///
    /// Connect a consumer that targets a node only after this: WirePlumber (0.4.13's
    /// policy-node.lua) gives a stream whose `target.object` it cannot find one rescan, then
    /// destroys it if it is `dont-reconnect`. Once our registry lists the node, its global is
    /// older than the consumer's, so WirePlumber has seen it first and holds the consumer
    /// back until the node's session item is active (`checkPending`).
    pub fn wait_for_node(
        &self,
        name: &str,
        timeout: Duration,
        alive: impl FnMut() -> Result<(), String>,
    ) -> Result<u32, String> {
        self.wait_for_global(
            &format!("node {name:?} in the registry"),
            pw::types::ObjectType::Node,
            ("node.name", name),
            timeout,
            alive,
        )
    }

    /// Runs the loop until the registry (on the session's own watching connection) lists a
    /// global of type `kind` whose property `prop.0` is `prop.1`, and returns its id. `alive`
    /// is asked on every turn and may fail early.
    pub fn wait_for_global(
        &self,
        what: &str,
        kind: pw::types::ObjectType,
        prop: (&str, &str),
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<u32, String> {
        let found = Rc::new(Cell::new(None));
        let registry = self
            .observer
            .get_registry_rc()
            .map_err(|e| format!("getting the registry: {e}"))?;
        let _listener = registry
            .add_listener_local()
            .global({
                let found = Rc::clone(&found);
                let (key, value) = (prop.0.to_owned(), prop.1.to_owned());
                move |global| {
                    let matches = global.type_ == kind
                        && global.props.as_ref().and_then(|p| p.get(&key)) == Some(value.as_str());
                    if matches {
                        found.set(Some(global.id));
                    }
                }
            })
            .register();
        self.run_until(what, timeout, || {
            alive()?;
            Ok(found.get().is_some())
        })?;
        found.get().ok_or_else(|| format!("{what}: not found"))
    }

    /// Runs the loop for `time` whatever happens.
    pub fn run_for(&self, time: Duration) {
        let deadline = Instant::now() + time;
        while Instant::now() < deadline {
            self.iterate(Duration::from_millis(5));
        }
    }
}

fn connect_core(
    context: &pw::context::ContextRc,
    remote: &Path,
) -> Result<pw::core::CoreRc, String> {
    let remote = remote.to_str().ok_or("the socket path is not UTF-8")?;
    let props = pw::properties::properties! {
        *pw::keys::REMOTE_NAME => remote,
    };
    context
        .connect_rc(Some(props))
        .map_err(|e| format!("connecting to {remote}: {e}"))
}

/// A child process (gst-launch, the example) that is killed by its pid if the test ends
/// before it does.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// The child, while the guard owns it.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still owned")
    }

    /// Takes the child out (to wait for its output); the guard no longer kills it.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("the child is still owned")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// GStreamer's default layout of a `width`×`height` `format` frame, from GStreamer's own
/// `GstVideoInfo`: what pipewiresrc assumes for the planes of a one-block buffer after the
/// first, and how filesink writes frames that carry no other layout.
pub fn gstreamer_layout(
    format: pw_dmaheap::heapcore::format::VideoFormat,
    width: u32,
    height: u32,
) -> Result<pw_dmaheap::heapcore::format::FrameLayout, String> {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| gst::init().expect("initializing GStreamer"));
    let gst_format = gst_video::VideoFormat::from_string(format.name());
    let info = gst_video::VideoInfo::builder(gst_format, width, height)
        .build()
        .map_err(|e| format!("GStreamer has no layout for {width}x{height} {format}: {e}"))?;
    let n = info.n_planes() as usize;
    let mut layout = pw_dmaheap::heapcore::format::FrameLayout {
        format,
        width,
        height,
        n_planes: n,
        strides: [0; pw_dmaheap::heapcore::format::MAX_PLANES],
        offsets: [0; pw_dmaheap::heapcore::format::MAX_PLANES],
        size: info.size() as u64,
    };
    for p in 0..n {
        layout.strides[p] = info.stride()[p] as u32;
        layout.offsets[p] = info.offset()[p] as u64;
    }
    Ok(layout)
}
