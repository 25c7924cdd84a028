#!/usr/bin/env bash
# dmaheap-screencast streams a test pattern from DMA-BUF heaps as a PipeWire video source, and
# GStreamer's stock pipewiresrc receives it with the caps in CAPS after it (default
# video/x-raw,format=BGRx: system memory, so MemFd). Runs its own PipeWire session.
#
# With PipeWire 1.2+ and GStreamer 1.24+ (the forky VM: tests/vm/run --kernel next --userspace
# forky -- examples/pw/screencast-to-pipewiresrc.sh), DMA_DRM caps make pipewiresrc announce
# the LINEAR modifier and it gets the heap's dma-bufs, no opt-in flag:
#   CAPS='video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=XR24' examples/pw/screencast-to-pipewiresrc.sh
# pipewiresrc 0.3.65 announces no modifier; it takes dma-bufs only with
# SCREENCAST_ARGS=--dmabuf-without-modifier (see pw-dmaheap's README for the caveat).
# The producer says what it negotiated ("negotiated DmaBuf buffers from heap system: ...").
set -euo pipefail
source "$(dirname "$0")/session.sh"
screencast=$(pw_screencast_bin)
frames=${FRAMES:-120}
caps=${CAPS:-video/x-raw,format=BGRx}
pw_session_start
"$screencast" --node-name dmaheap-demo --size 1280x720 --format BGRx --rate 60 \
    --frames $((frames * 4)) ${SCREENCAST_ARGS:-} &
producer=$!
PW_SESSION_PIDS+=("$producer")
for _ in $(seq 100); do
    pw-cli ls Node 2>/dev/null | grep -q '"dmaheap-demo"' && break
    sleep 0.1
done
echo "+ gst-launch-1.0 pipewiresrc target-object=dmaheap-demo num-buffers=$frames ! $caps ! fakesink" >&2
gst-launch-1.0 pipewiresrc target-object=dmaheap-demo num-buffers="$frames" ! "$caps" ! fakesink
kill -TERM "$producer" 2>/dev/null || true
status=0; wait "$producer" || status=$?
[ "$status" = 0 ] || echo "dmaheap-screencast exited with status $status" >&2
