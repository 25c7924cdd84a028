#!/usr/bin/env bash
# A V4L2 stateful decoder (vicodec) writing straight into CMA heap buffers, shown by kmssink
# from CMA heap buffers too. tests/vm/run --kernel full -- examples/gst/vicodec-decode-cma.sh
#
# Why it looks like this with GStreamer 1.22 and Linux 6.12 (see gst-dmaheap/README.md):
# - 1280x720: v4l2fwhtenc sets its capture format before its output format, and vicodec
#   derives the compressed buffer size from the output format, so other sizes fail.
# - I420 out of the decoder: vicodec's decoder must keep the stream's 4:2:0 subsampling; other
#   formats raise a source-change event GStreamer 1.22 never answers (the pipeline hangs).
# - vkms scans out RGB only: videoconvert writes BGRx into a second dmaheapupload's CMA pool.
#   On hardware with YUV planes, drop "videoconvert ! dmaheapupload".
set -euo pipefail
source "$(dirname "$0")/common.sh"
heap=${HEAP:-reserved}
launch videotestsrc num-buffers=${FRAMES:-30} ! video/x-raw,width=1280,height=720,format=I420 \
    ! v4l2fwhtenc ! v4l2fwhtdec capture-io-mode=dmabuf-import ! video/x-raw,format=I420 \
    ! dmaheapupload name=dec heap="$heap" ! videoconvert ! dmaheapupload name=disp heap="$heap" \
    ! kmssink driver-name=${KMS_DRIVER:-vkms} sync=false -- copies 0
