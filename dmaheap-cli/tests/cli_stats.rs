//! `dmaheap stats` shows only processes that still run: files left by a dead process, or by
//! one whose pid now belongs to another, are removed; a directory others could write is
//! refused. Runs the built binary against a scratch XDG_RUNTIME_DIR.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use heapcore::pool::{RegistryStats, process_start_time};

const DMAHEAP: &str = env!("CARGO_BIN_EXE_dmaheap");

struct Runtime(PathBuf);

impl Runtime {
    fn new(tag: &str, mode: u32) -> Self {
        let root = std::env::temp_dir().join(format!("dmaheap-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("dmaheap");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(root)
    }

    fn plant(&self, file: &str, pid: u32, start_time: Option<u64>) -> PathBuf {
        let stats = serde_json::json!({
            "pid": pid,
            "start_time": start_time,
            "program": format!("planted-{file}"),
            "pressure": "normal",
            "pressure_source": "not watched",
            "global_budget": null,
            "global_used": 0,
            "pools": [],
        });
        let path = self.0.join("dmaheap").join(file);
        std::fs::write(&path, stats.to_string()).unwrap();
        path
    }

    fn stats(&self) -> (std::process::Output, String, String) {
        let out = Command::new(DMAHEAP)
            .args(["stats", "--json"])
            .env("XDG_RUNTIME_DIR", &self.0)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, stdout, stderr)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reaped_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn files_of_dead_or_reused_pids_are_not_shown_and_are_removed() {
    let rt = Runtime::new("stale", 0o700);
    let me = std::process::id();
    let started = process_start_time(me).unwrap();
    let dead = rt.plant("stats-dead.json", reaped_pid(), Some(1));
    let reused = rt.plant("stats-reused.json", me, Some(started + 1));
    let legacy = rt.plant("stats-legacy.json", me, None);
    let live = rt.plant("stats-live.json", me, Some(started));
    let (out, stdout, stderr) = rt.stats();
    assert!(out.status.success(), "{stderr}");
    let shown: Vec<RegistryStats> = serde_json::from_str(&stdout).unwrap();
    let programs: Vec<&str> = shown.iter().map(|s| s.program.as_str()).collect();
    assert_eq!(programs, ["planted-stats-live.json"], "{stdout}");
    for stale in [&dead, &reused, &legacy] {
        assert!(!stale.exists(), "{} was left", stale.display());
    }
    assert!(live.exists());
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let rt = Runtime::new("open", 0o777);
    rt.plant(
        "stats-fake.json",
        std::process::id(),
        process_start_time(std::process::id()),
    );
    let (out, stdout, stderr) = rt.stats();
    assert!(!out.status.success(), "{stdout}");
    let dir = Path::new(&rt.0).join("dmaheap");
    assert!(
        stderr.contains(&format!("refusing {}", dir.display()))
            && stderr.contains("mode 0777 lets other users write in it"),
        "{stderr}"
    );
    assert!(!stdout.contains("planted"), "{stdout}");
}
