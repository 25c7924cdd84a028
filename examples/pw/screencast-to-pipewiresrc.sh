#!/usr/bin/env bash
# dmaheap-screencast streams a test pattern from DMA-BUF heaps as a PipeWire video source, and
# GStreamer's stock pipewiresrc receives it. On a machine without heaps the buffers are MemFd;
# in the test VM (tests/vm/run --kernel full -- examples/pw/screencast-to-pipewiresrc.sh) a
# consumer that announces the LINEAR modifier gets DmaBuf, and pipewiresrc 0.3.65 (which
# announces none) gets DmaBuf too with SCREENCAST_ARGS=--dmabuf-without-modifier. Runs its own
# PipeWire session.
set -euo pipefail
source "$(dirname "$0")/session.sh"
screencast=$(pw_screencast_bin)
frames=${FRAMES:-120}
pw_session_start
"$screencast" --node-name dmaheap-demo --size 1280x720 --format BGRx --rate 60 \
    --frames $((frames * 4)) ${SCREENCAST_ARGS:-} &
producer=$!
PW_SESSION_PIDS+=("$producer")
for _ in $(seq 100); do
    pw-cli ls Node 2>/dev/null | grep -q '"dmaheap-demo"' && break
    sleep 0.1
done
echo "+ gst-launch-1.0 pipewiresrc target-object=dmaheap-demo num-buffers=$frames ! video/x-raw,format=BGRx ! fakesink" >&2
gst-launch-1.0 pipewiresrc target-object=dmaheap-demo num-buffers="$frames" \
    ! video/x-raw,format=BGRx ! fakesink
kill -TERM "$producer" 2>/dev/null || true
status=0; wait "$producer" || status=$?
[ "$status" = 0 ] || echo "dmaheap-screencast exited with status $status" >&2
