//! Whether this process may open a device node, and what fixes it when it may not.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Access as Mode, AtFlags};
use serde::Serialize;

/// Whether a device node can be opened by this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Access {
    /// It can be opened.
    Allowed,
    /// It exists but may not be opened.
    Denied {
        /// What grants access (see [`permission_fix`]).
        fix: String,
    },
    /// There is no such node.
    Missing,
}

impl Access {
    /// Checks `path` for read access with the effective ids, as `open()` would. Heap and
    /// udmabuf devices need only read access: their ioctls do not look at the open mode.
    pub fn check(path: &Path) -> Self {
        match rustix::fs::accessat(rustix::fs::CWD, path, Mode::READ_OK, AtFlags::EACCESS) {
            Ok(()) => Self::Allowed,
            Err(rustix::io::Errno::NOENT) => Self::Missing,
            Err(_) => Self::Denied {
                fix: permission_fix(path),
            },
        }
    }

    /// Whether the node can be opened.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// Says how to get access to a device node: join its group when the group may already read
/// it, else install a udev rule that gives it to a group.
pub fn permission_fix(path: &Path) -> String {
    let user = current_user_name();
    let Ok(meta) = std::fs::metadata(path) else {
        return format!("check that {} exists and is readable", path.display());
    };
    let group_readable = meta.mode() & 0o040 != 0;
    if group_readable && meta.gid() != 0 {
        let group = group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string());
        return format!(
            "it belongs to group {group}: add the user to it (sudo usermod -aG {group} {user}) \
             and log in again"
        );
    }
    let (subsystem, kernel) = match path.parent().and_then(Path::file_name) {
        Some(dir) if dir == "dma_heap" => ("dma_heap", path.file_name()),
        _ => ("misc", path.file_name()),
    };
    let kernel = kernel.map(|k| k.to_string_lossy()).unwrap_or_default();
    format!(
        "it is readable by root only: install a udev rule such as \
         'SUBSYSTEM==\"{subsystem}\", KERNEL==\"{kernel}\", GROUP=\"video\", MODE=\"0660\"' \
         (dmaheap ships data/60-dmaheap.rules for /etc/udev/rules.d), run \
         'sudo udevadm trigger', and add the user to group video \
         (sudo usermod -aG video {user})"
    )
}

fn current_user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "$USER".to_owned())
}

/// Looks a group id up in `/etc/group` (the only database that matters for device groups).
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == gid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_nodes_are_missing() {
        assert_eq!(
            Access::check(Path::new("/dev/dma_heap/no-such-heap")),
            Access::Missing
        );
    }

    #[test]
    fn readable_files_are_allowed() {
        assert!(Access::check(Path::new("/proc/self/status")).is_allowed());
    }

    #[test]
    fn the_fix_for_a_root_only_heap_is_a_udev_rule() {
        let dir = std::env::temp_dir().join(format!("dmaheap-access-{}", std::process::id()));
        let heap_dir = dir.join("dma_heap");
        std::fs::create_dir_all(&heap_dir).unwrap();
        let node = heap_dir.join("system");
        std::fs::write(&node, b"").unwrap();
        std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let fix = permission_fix(&node);
        assert!(
            fix.contains("SUBSYSTEM==\"dma_heap\", KERNEL==\"system\""),
            "{fix}"
        );
        assert!(fix.contains("usermod -aG video"), "{fix}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_group_is_found() {
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
