#!/usr/bin/env bash
# System-heap dma-bufs shown by kmssink (vkms), imported with PRIME rather than copied.
# Needs /dev/dma_heap/system and a KMS device: tests/vm/run --kernel full -- examples/gst/kmssink-system-heap.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
export GST_DEBUG=kmssink:6,GST_PERFORMANCE:4 GST_DEBUG_NO_COLOR=1
launch videotestsrc num-buffers=${FRAMES:-60} ! dmaheapupload heap=system \
    ! kmssink driver-name=${KMS_DRIVER:-vkms} -- copies 0
imports=$(grep -c "setting KMS mem" "$LOG" || true)
copies=$(grep -c "frame copy" "$LOG" || true)
echo "kmssink: $imports PRIME imports of heap dma-bufs, $copies frame copies"
[ "$imports" -gt 0 ] && [ "$copies" -eq 0 ]
