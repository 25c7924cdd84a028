#!/usr/bin/env bash
# Runs every example in the VM with real heaps, vkms, vivid and vicodec (tests/vm/run), one
# boot for all of them. Each example's output is kept in target/vm/gst-examples/ (the VM can
# write there) and printed here.
#   cargo build -p gst-dmaheap && examples/gst/run-in-vm.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
logs=target/vm/gst-examples
examples="host-zero-copy kmssink-system-heap vivid-capture camera-needs-cma vicodec-decode-cma"

if [ "${1:-}" = --inside ]; then
    # In the VM: run each example, keep its output and exit status.
    for e in $examples; do
        status=0
        "examples/gst/$e.sh" >"$logs/$e.log" 2>&1 || status=$?
        echo "exit status $status" >>"$logs/$e.log"
    done
    exit 0
fi

mkdir -p "$logs"
rm -f "$logs"/*.log
tests/vm/run --kernel full -- examples/gst/run-in-vm.sh --inside >/dev/null 2>&1 || true
failed=0
for e in $examples; do
    echo "=== $e"
    if [ -f "$logs/$e.log" ]; then cat "$logs/$e.log"; else echo "(no output: the VM did not run it)"; fi
    tail -n1 "$logs/$e.log" 2>/dev/null | grep -qx "exit status 0" || failed=1
done
exit "$failed"
