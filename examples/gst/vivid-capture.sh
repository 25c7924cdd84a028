#!/usr/bin/env bash
# A V4L2 capture device (vivid here) writing into heap buffers (io-mode=dmabuf-import takes
# the buffers from dmaheapupload's pool), then shown by kmssink without a copy.
# tests/vm/run --kernel full -- examples/gst/vivid-capture.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
device=$(v4l2_node vivid-000-vid-cap) || { echo "no vivid capture device (modprobe vivid)" >&2; exit 2; }
launch v4l2src device="$device" io-mode=dmabuf-import num-buffers=${FRAMES:-60} \
    ! video/x-raw,width=640,height=480 ! dmaheapupload \
    ! kmssink driver-name=${KMS_DRIVER:-vkms} -- copies 0
