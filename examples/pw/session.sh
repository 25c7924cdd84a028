# Sourced by the PipeWire examples: a private PipeWire session for this shell (its own
# XDG_RUNTIME_DIR, session bus, pipewire and wireplumber), stopped by pid when the script ends,
# so the examples run the same on a desktop, a headless server, as root or in the test VM.
pw_session_start() {
    PW_SESSION_DIR=$(mktemp -d "${TMPDIR:-/tmp}/dmaheap-pw.XXXXXX")
    chmod 700 "$PW_SESSION_DIR"
    export XDG_RUNTIME_DIR=$PW_SESSION_DIR PIPEWIRE_RUNTIME_DIR=$PW_SESSION_DIR
    export XDG_CONFIG_HOME=$PW_SESSION_DIR/config XDG_STATE_HOME=$PW_SESSION_DIR/state
    export GST_REGISTRY=$PW_SESSION_DIR/gst-registry.bin
    export DBUS_SESSION_BUS_ADDRESS=unix:path=$PW_SESSION_DIR/bus
    PW_SESSION_PIDS=()
    trap pw_session_stop EXIT
    dbus-daemon --session --nofork --nopidfile --address="$DBUS_SESSION_BUS_ADDRESS" \
        >"$PW_SESSION_DIR/dbus.log" 2>&1 &
    PW_SESSION_PIDS+=($!)
    pipewire >"$PW_SESSION_DIR/pipewire.log" 2>&1 &
    PW_SESSION_PIDS+=($!)
    pw_session_wait "$PW_SESSION_DIR/pipewire-0" "the pipewire socket" pipewire
    wireplumber >"$PW_SESSION_DIR/wireplumber.log" 2>&1 &
    PW_SESSION_PIDS+=($!)
    # wireplumber is ready once it has registered its client.
    for _ in $(seq 100); do
        pw-cli ls Client 2>/dev/null | grep -qi wireplumber && return 0
        sleep 0.1
    done
    echo "wireplumber did not start: $(tail -n 5 "$PW_SESSION_DIR/wireplumber.log")" >&2
    return 1
}

pw_session_wait() { # PATH WHAT LOG
    for _ in $(seq 100); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "no $2 after 10 s: $(tail -n 5 "$PW_SESSION_DIR/$3.log")" >&2
    return 1
}

pw_session_stop() {
    [ -n "${PW_SESSION_DIR:-}" ] || return 0
    for pid in "${PW_SESSION_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$PW_SESSION_DIR"
    PW_SESSION_DIR=
}

# The screencast producer: installed, else a cargo build from this checkout.
pw_screencast_bin() {
    local repo dir
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    command -v dmaheap-screencast 2>/dev/null && return 0
    for dir in "${CARGO_TARGET_DIR:-}" "$repo/target" "$repo/target-pw"; do
        if [ -n "$dir" ] && [ -x "$dir/debug/dmaheap-screencast" ]; then
            echo "$dir/debug/dmaheap-screencast"
            return 0
        fi
    done
    echo "dmaheap-screencast is not built: cargo build -p dmaheap-examples" >&2
    return 1
}
