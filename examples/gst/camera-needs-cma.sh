#!/usr/bin/env bash
# A camera whose driver needs physically contiguous buffers (vivid with its dma-contig
# allocator: the VM boots vivid.n_devs=2 vivid.allocators=0,1, so vivid-001 is one) captures
# into CMA heap buffers with no heap= given: dmaheapupload learns the device from v4l2src,
# heapcore's probe says it refuses system-heap buffers, and the solver picks CMA.
# tests/vm/run --kernel full -- examples/gst/camera-needs-cma.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
device=$(v4l2_node vivid-001-vid-cap) || { echo "no dma-contig vivid (boot with vivid.n_devs=2 vivid.allocators=0,1)" >&2; exit 2; }
launch v4l2src device="$device" io-mode=dmabuf-import num-buffers=${FRAMES:-30} \
    ! video/x-raw,width=640,height=480 ! dmaheapupload \
    ! kmssink driver-name=${KMS_DRIVER:-vkms} -- copies 0
# Which heap served, and which devices the choice followed.
grep -q 'heap-origins=(string)"heap\\ \(reserved\|linux,cma\|default_cma_region\|default-pool\)' <<<"$stats" ||
    { echo "FAILED: the buffers are not CMA heap memory" >&2; exit 1; }
grep -o 'devices=(string)"[^"]*"' <<<"$stats"
