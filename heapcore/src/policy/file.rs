//! Policy files, layered like fstab for mounts: the built-in defaults, overridden by
//! `/etc/dmaheap/policy.toml`, then by the user's `$XDG_CONFIG_HOME/dmaheap/policy.toml`;
//! `DMAHEAP_POLICY` names a file that replaces both (if it names none, that is reported and
//! both apply). A file that does not parse is reported with its line and left out; everything
//! else stays in force. An entry may leave out any field, `heaps` too, to keep what the layer
//! below says; a usage no layer below defines must list its heaps.
//!
//! ```toml
//! [usage.scanout]
//! heaps = ["cma", "system"]   # tried in this order; "udmabuf" and "memfd" name those sources
//! contiguous = true           # its buffers must be physically contiguous
//! qos = "realtime"            # pool class for this usage
//! prewarm = 4                 # buffers a realtime pool holds ready
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{DevicePolicy, EntryOrigin, Policy, Usage, UsagePolicy};
use crate::pool::QosClass;
use crate::source::Source;

/// A policy file or layer that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", .path.display())]
pub struct PolicyError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the problem (0: the file as a whole, e.g. unreadable).
    pub line: usize,
    /// 1-based column of the problem (0: the file as a whole).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The environment `Policy::load` follows, as values: tests pass their own instead of
/// setting variables, which would race with other tests.
#[derive(Debug, Clone)]
pub struct PolicyEnv {
    /// `DMAHEAP_POLICY`: a file that replaces the system and user files.
    pub dmaheap_policy: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`, where the user's file is (`dmaheap/policy.toml`).
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`, for `~/.config` when `XDG_CONFIG_HOME` is not set.
    pub home: Option<PathBuf>,
    /// The system-wide file, `/etc/dmaheap/policy.toml`.
    pub system_file: PathBuf,
}

impl PolicyEnv {
    /// This process's environment.
    pub fn from_process() -> Self {
        let var = |name| std::env::var_os(name).map(PathBuf::from);
        Self {
            dmaheap_policy: var("DMAHEAP_POLICY"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
            system_file: "/etc/dmaheap/policy.toml".into(),
        }
    }

    /// The system file, then the user's.
    fn layers(&self) -> Vec<PathBuf> {
        let mut files = vec![self.system_file.clone()];
        let config = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")));
        if let Some(dir) = config {
            files.push(dir.join("dmaheap/policy.toml"));
        }
        files
    }

    /// The files a policy is read from: `DMAHEAP_POLICY` alone if set, else the layers.
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.dmaheap_policy {
            Some(path) => vec![path.clone()],
            None => self.layers(),
        }
    }
}

/// The files `Policy::load` reads, in order.
pub fn policy_files() -> Vec<PathBuf> {
    PolicyEnv::from_process().files()
}

impl Policy {
    /// The defaults with every readable policy file applied. Files that do not exist are
    /// skipped; files that do not parse are logged and returned, and change nothing. A
    /// `DMAHEAP_POLICY` that names no usable file is logged and returned too, and the system
    /// and user files apply as if it were not set.
    pub fn load() -> (Self, Vec<PolicyError>) {
        Self::load_from(&PolicyEnv::from_process())
    }

    /// [`Policy::load`] with the environment given as values.
    pub fn load_from(env: &PolicyEnv) -> (Self, Vec<PolicyError>) {
        let mut policy = Self::builtin();
        let mut errors = Vec::new();
        let mut report = |e: PolicyError| {
            log::warn!("policy file ignored: {e}");
            errors.push(e);
        };
        if let Some(path) = &env.dmaheap_policy {
            match policy.apply_file(path) {
                Ok(()) => return (policy, errors),
                Err(e) => report(PolicyError {
                    message: format!(
                        "DMAHEAP_POLICY names it, but {}; using the system and user files",
                        e.message
                    ),
                    ..e
                }),
            }
        }
        for path in env.layers() {
            if !path.exists() {
                continue;
            }
            if let Err(e) = policy.apply_file(&path) {
                report(e);
            }
        }
        (policy, errors)
    }

    /// Applies one file on top of this policy. On error this policy is left as it was.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read it: {e}"),
        })?;
        self.apply_str(&text, path)
    }

    /// Applies policy text (as if read from `path`). On error this policy is left as it was.
    pub fn apply_str(&mut self, text: &str, path: &Path) -> Result<(), PolicyError> {
        let Layer {
            usages: layer,
            devices,
        } = parse_layer(text, path)?;
        // A usage the layers below do not know has no heaps to keep.
        if let Some((usage, entry)) = layer
            .iter()
            .find(|(usage, entry)| entry.heaps.is_none() && !self.usages.contains_key(usage))
        {
            return Err(PolicyError {
                path: path.to_owned(),
                line: entry.line,
                column: 1,
                message: format!(
                    "usage {usage} is new here, so it needs heaps = [...] (only a usage the \
                     built-in defaults or an earlier file define may leave them out)"
                ),
            });
        }
        for (usage, entry) in layer {
            // Fields a file leaves out keep what the layer below said.
            let base = self.usages.get(&usage);
            let heaps = match (entry.heaps, base) {
                (Some(heaps), _) => heaps,
                (None, Some(base)) => base.heaps.clone(),
                (None, None) => unreachable!("checked above"),
            };
            let contiguous = entry
                .contiguous
                .or(base.map(|b| b.contiguous))
                .unwrap_or(false);
            let qos = entry
                .qos
                .or(base.map(|b| b.qos))
                .unwrap_or(QosClass::Normal);
            let prewarm = entry.prewarm.or(base.map(|b| b.prewarm)).unwrap_or(0);
            self.usages.insert(
                usage,
                UsagePolicy {
                    heaps,
                    contiguous,
                    qos,
                    prewarm,
                    origin: EntryOrigin::File {
                        path: path.to_owned(),
                        line: entry.line,
                    },
                },
            );
        }
        for (driver, entry) in devices {
            self.devices.insert(
                driver,
                DevicePolicy {
                    heaps: entry.heaps,
                    origin: EntryOrigin::File {
                        path: path.to_owned(),
                        line: entry.line,
                    },
                },
            );
        }
        self.files.push(path.to_owned());
        Ok(())
    }
}

/// What one file says about one usage.
struct LayerEntry {
    /// `None`: the file keeps the heaps of the layer below.
    heaps: Option<Vec<String>>,
    contiguous: Option<bool>,
    qos: Option<QosClass>,
    prewarm: Option<usize>,
    line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    usage: BTreeMap<toml::Spanned<String>, toml::Spanned<UsageFormat>>,
    #[serde(default)]
    device: BTreeMap<toml::Spanned<String>, toml::Spanned<DeviceFormat>>,
}

/// `[device.<driver>]`: the sources a device's driver takes, whatever its probe found.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFormat {
    heaps: Vec<toml::Spanned<String>>,
}

/// What one file says about one device driver.
struct DeviceEntry {
    heaps: Vec<String>,
    line: usize,
}

/// What one file says.
struct Layer {
    usages: Vec<(Usage, LayerEntry)>,
    devices: Vec<(String, DeviceEntry)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFormat {
    heaps: Option<Vec<toml::Spanned<String>>>,
    contiguous: Option<bool>,
    qos: Option<QosClass>,
    prewarm: Option<usize>,
}

fn parse_layer(text: &str, path: &Path) -> Result<Layer, PolicyError> {
    let error_at = |offset: usize, message: String| {
        let (line, column) = line_column(text, offset);
        PolicyError {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let file: FileFormat = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        error_at(offset, e.message().trim().to_owned())
    })?;
    let mut layer = Vec::new();
    for (name, entry) in file.usage {
        let usage =
            Usage::new(name.get_ref()).map_err(|e| error_at(name.span().start, e.to_string()))?;
        let entry_span = entry.span();
        let entry = entry.into_inner();
        if entry.heaps.as_ref().is_some_and(Vec::is_empty) {
            return Err(error_at(
                entry_span.start,
                format!("usage {usage} lists no heaps"),
            ));
        }
        if entry.prewarm.is_some_and(|n| n > 1024) {
            return Err(error_at(
                entry_span.start,
                format!("usage {usage}: prewarm is at most 1024 buffers"),
            ));
        }
        let heaps = match entry.heaps {
            None => None,
            Some(listed) => {
                let mut heaps = Vec::with_capacity(listed.len());
                for heap in listed {
                    Source::from_str(heap.get_ref())
                        .map_err(|e| error_at(heap.span().start, e.to_string()))?;
                    heaps.push(heap.into_inner());
                }
                Some(heaps)
            }
        };
        layer.push((
            usage,
            LayerEntry {
                heaps,
                contiguous: entry.contiguous,
                qos: entry.qos,
                prewarm: entry.prewarm,
                line: line_column(text, entry_span.start).0,
            },
        ));
    }
    let mut devices = Vec::new();
    for (driver, entry) in file.device {
        let entry_span = entry.span();
        let listed = entry.into_inner().heaps;
        if listed.is_empty() {
            return Err(error_at(
                entry_span.start,
                format!("device {} lists no heaps", driver.get_ref()),
            ));
        }
        let mut heaps = Vec::with_capacity(listed.len());
        for heap in listed {
            Source::from_str(heap.get_ref())
                .map_err(|e| error_at(heap.span().start, e.to_string()))?;
            heaps.push(heap.into_inner());
        }
        devices.push((
            driver.into_inner(),
            DeviceEntry {
                heaps,
                line: line_column(text, entry_span.start).0,
            },
        ));
    }
    Ok(Layer {
        usages: layer,
        devices,
    })
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<Policy, PolicyError> {
        let mut p = Policy::builtin();
        p.apply_str(text, Path::new("/etc/dmaheap/policy.toml"))?;
        Ok(p)
    }

    #[test]
    fn a_file_overrides_one_usage_and_keeps_the_rest() {
        let p = apply(
            "# the kernel thread's example\n[usage.display]\nheaps = [\"cma-ecc\", \"cma\"]\n\n\
             [usage.scanout]\nheaps = [\"reserved\"]\ncontiguous = true\nqos = \"realtime\"\nprewarm = 3\n",
        )
        .unwrap();
        let (display, _) = p.entry(&"display".parse().unwrap());
        assert_eq!(display.heaps, ["cma-ecc", "cma"]);
        assert_eq!(
            display.origin,
            EntryOrigin::File {
                path: "/etc/dmaheap/policy.toml".into(),
                line: 2
            }
        );
        let (scanout, _) = p.entry(&"scanout".parse().unwrap());
        assert!(scanout.contiguous);
        assert_eq!((scanout.qos, scanout.prewarm), (QosClass::Realtime, 3));
        assert_eq!(
            p.entry(&"camera".parse().unwrap()).0.origin,
            EntryOrigin::BuiltIn
        );
    }

    #[test]
    fn malformed_files_say_where_and_change_nothing() {
        let cases = [
            ("[usage.scanout]\nheaps = [\"cma\"\n", 2, "unclosed array"),
            (
                "[usage.scanout]\nheaps = [\"cma\", \"../../dev/mem\"]\n",
                2,
                "not a valid heap name",
            ),
            (
                "[usage.scanout]\nheaps = [\"cma\"]\nqos = \"urgent\"\n",
                3,
                "unknown variant",
            ),
            ("[usage.scanout]\nheap = [\"cma\"]\n", 2, "unknown field"),
            (
                "[usage.Scan_Out]\nheaps = [\"cma\"]\n",
                1,
                "not a usage name",
            ),
            ("[usage.scanout]\nheaps = []\n", 1, "lists no heaps"),
            (
                "[usage.scanout]\nheaps = [\"cma\"]\nprewarm = -1\n",
                3,
                "invalid value",
            ),
            ("[usages.scanout]\nheaps = [\"cma\"]\n", 1, "unknown field"),
        ];
        for (text, line, message) in cases {
            let mut p = Policy::builtin();
            let before = p.clone();
            let err = p
                .apply_str(text, Path::new("/etc/dmaheap/policy.toml"))
                .unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.to_string().contains(message), "{text:?}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("/etc/dmaheap/policy.toml:{line}:")),
                "{err}"
            );
            assert_eq!(p, before, "a bad file changed the policy");
        }
    }

    /// A scratch directory with policy files, removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("dmaheap-policy-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn env(&self) -> PolicyEnv {
            PolicyEnv {
                dmaheap_policy: None,
                xdg_config_home: Some(self.0.join("xdg")),
                home: Some(self.0.join("home")),
                system_file: self.0.join("etc/policy.toml"),
            }
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SYSTEM: &str = "[usage.display]\nheaps = [\"cma\"]\n";
    const USER: &str = "[usage.overlay]\nheaps = [\"system\"]\n";

    #[test]
    fn the_system_then_the_user_file_apply() {
        let f = Files::new("layers");
        let system = f.write("etc/policy.toml", SYSTEM);
        let user = f.write("xdg/dmaheap/policy.toml", USER);
        let (p, errors) = Policy::load_from(&f.env());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(p.files(), [system, user]);
        // Without XDG_CONFIG_HOME the user's file is under HOME/.config.
        let home_file = f.write("home/.config/dmaheap/policy.toml", USER);
        let env = PolicyEnv {
            xdg_config_home: None,
            ..f.env()
        };
        assert_eq!(env.files()[1], home_file);
    }

    #[test]
    fn dmaheap_policy_replaces_both_files() {
        let f = Files::new("replace");
        f.write("etc/policy.toml", SYSTEM);
        let only = f.write("only.toml", USER);
        let env = PolicyEnv {
            dmaheap_policy: Some(only.clone()),
            ..f.env()
        };
        let (p, errors) = Policy::load_from(&env);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(p.files(), [only]);
        assert!(p.usages().all(|(u, _)| u.as_str() != "display"));
    }

    #[test]
    fn a_dmaheap_policy_naming_no_file_is_reported_and_the_layers_apply() {
        let f = Files::new("typo");
        let system = f.write("etc/policy.toml", SYSTEM);
        let env = PolicyEnv {
            dmaheap_policy: Some("/typo/path".into()),
            ..f.env()
        };
        let (p, errors) = Policy::load_from(&env);
        assert_eq!(p.files(), [system]);
        assert!(p.usages().any(|(u, _)| u.as_str() == "display"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, Path::new("/typo/path"));
        let message = errors[0].to_string();
        assert!(
            message.contains("DMAHEAP_POLICY names it") && message.contains("cannot read it"),
            "{message}"
        );
    }

    #[test]
    fn a_file_may_tune_a_usage_without_repeating_its_heaps() {
        let p = apply("[usage.scanout]\nqos = \"realtime\"\nprewarm = 2\n").unwrap();
        let (scanout, _) = p.entry(&"scanout".parse().unwrap());
        assert_eq!(
            scanout.heaps,
            Policy::builtin().entry(&"scanout".parse().unwrap()).0.heaps
        );
        assert_eq!((scanout.qos, scanout.prewarm), (QosClass::Realtime, 2));

        let mut p = Policy::builtin();
        let before = p.clone();
        let err = p
            .apply_str(
                "[usage.scanout]\nprewarm = 1\n\n[usage.display]\nqos = \"normal\"\n",
                Path::new("/etc/dmaheap/policy.toml"),
            )
            .unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(
            err.to_string().contains("usage display is new here"),
            "{err}"
        );
        assert_eq!(p, before, "a bad file changed the policy");
    }
}
