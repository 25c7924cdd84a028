//! `dmaheap list` calls udmabuf and memfd what heapcore calls them, sources, in its table and
//! in its JSON. Runs on any machine: both are listed whether or not they are usable here.

use std::process::Command;

const DMAHEAP: &str = env!("CARGO_BIN_EXE_dmaheap");

fn list(args: &[&str]) -> String {
    let out = Command::new(DMAHEAP)
        .arg("list")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dmaheap list {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_table_of_udmabuf_and_memfd_is_other_sources() {
    let text = list(&[]);
    let header = text
        .lines()
        .find(|l| l.starts_with("OTHER SOURCES"))
        .unwrap_or_else(|| panic!("no OTHER SOURCES table in:\n{text}"));
    assert!(header.contains("DMA-BUF"), "{header}");
    for source in ["udmabuf", "memfd"] {
        assert!(
            text.lines().any(|l| l.starts_with(source)),
            "{source} missing from:\n{text}"
        );
    }
    assert!(!text.contains("BACKEND"), "{text}");
}

#[test]
fn the_json_lists_them_under_other_sources() {
    let json: serde_json::Value = serde_json::from_str(&list(&["--json"])).unwrap();
    let others = &json["other_sources"];
    assert!(others["udmabuf"]["path"].is_string(), "{json:#}");
    assert_eq!(others["memfd"]["dmabuf"], false, "{json:#}");
    assert!(
        json["heaps"].is_array() && json["default_order"].is_array(),
        "{json:#}"
    );
}
