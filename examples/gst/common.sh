# Sourced by the example scripts: finds the plugin and says what runs.
repo=$(cd "$(dirname "$0")/../.." && pwd)
if ! gst-inspect-1.0 dmaheap >/dev/null 2>&1; then
    # Not installed: use a cargo build from this checkout (newest first).
    for dir in "${CARGO_TARGET_DIR:-}" "$repo/target-gst" "$repo/target" "$repo/builddir/cargo-target"; do
        for profile in release debug; do
            if [ -n "$dir" ] && [ -f "$dir/$profile/libgstdmaheap.so" ]; then
                export GST_PLUGIN_PATH="$dir/$profile${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
                break 2
            fi
        done
    done
fi
gst-inspect-1.0 dmaheap >/dev/null 2>&1 || {
    echo "the dmaheap plugin is neither installed nor built: cargo build -p gst-dmaheap" >&2
    exit 2
}

# launch PIPELINE... [-- FIELD VALUE...]: runs gst-launch-1.0 -m, prints each dmaheapupload's
# stats message (posted at EOS) and checks that every one has FIELD=VALUE.
launch() {
    pipeline=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do pipeline+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    echo "+ gst-launch-1.0 -m ${pipeline[*]}" >&2
    out=$(gst-launch-1.0 -m "${pipeline[@]}" 2>>"${LOG:-/dev/stderr}") || {
        echo "$out" | tail -n 20
        echo "FAILED: gst-launch-1.0 exited with an error" >&2
        return 1
    }
    # One line per dmaheapupload: every one must meet every expectation.
    stats=$(echo "$out" | grep -o 'from element "[^"]*" (element): dmaheapupload-stats.*')
    [ -n "$stats" ] || { echo "FAILED: no dmaheapupload-stats message" >&2; return 1; }
    echo "$stats"
    while [ $# -ge 2 ]; do
        while read -r line; do
            echo "$line" | grep -q "$1=(guint64)$2[,;]" ||
                { echo "FAILED: expected $1=$2 in: $line" >&2; return 1; }
        done <<<"$stats"
        shift 2
    done
}

# v4l2_node NAME: the /dev/videoN of the V4L2 device called NAME (DEVICE= wins), or fails.
v4l2_node() {
    if [ -n "${DEVICE:-}" ]; then echo "$DEVICE"; return; fi
    for d in /sys/class/video4linux/video*; do
        [ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && { echo "/dev/$(basename "$d")"; return; }
    done
    return 1
}
