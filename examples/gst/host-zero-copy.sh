#!/usr/bin/env bash
# Any machine, heaps or not (without them the memory is the memfd fallback): videotestsrc
# writes straight into dmaheapupload's pool, so all 300 frames pass through, none is copied.
set -euo pipefail
source "$(dirname "$0")/common.sh"
launch videotestsrc num-buffers=300 ! video/x-raw,format=NV12,width=1920,height=1080 \
    ! dmaheapupload ! fakesink -- copies 0 passthrough 300
