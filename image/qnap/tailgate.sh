#!/bin/sh
# tailgate's QTS service script: start | stop | restart | status. QTS runs it as root at boot
# (/etc/rcS.d), at shutdown (/etc/rcK.d) and from App Center; start honours the Enable flag in
# /etc/config/qpkg.conf as QTS's own packages do.
QPKG_NAME="tailgate"
. "$(dirname "$(readlink -f "$0")")/qpkg-functions"
QPKG_ROOT="$(qpkg_getcfg "$QPKG_NAME" Install_Path "")"
if [ -z "$QPKG_ROOT" ] || [ ! -d "$QPKG_ROOT" ]; then
    QPKG_ROOT="$(dirname "$(readlink -f "$0")")"
fi
BIN="$QPKG_ROOT/bin/tailgate"
VAR="$QPKG_ROOT/var"
CONFIG="$VAR/tailgate.toml"
PIDFILE="$VAR/tailgate.pid"
LOG="$VAR/tailgate.log"
AUTHKEY="$VAR/authkey"
export TAILGATE_SOCKET="$VAR/tailgate.sock"
export QNAP_QPKG="$QPKG_NAME"

log() {
    printf '%s %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$1" >>"$LOG"
}

nap() {
    sleep 0.2 2>/dev/null || sleep 1
}

running() {
    [ -r "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
    enabled="$(qpkg_getcfg "$QPKG_NAME" Enable FALSE)"
    if [ "$enabled" != "TRUE" ]; then
        echo "$QPKG_NAME is disabled (Enable = $enabled in $QPKG_CONF)."
        return 1
    fi
    running && return 0
    if [ -f "$LOG" ] && [ "$(wc -c <"$LOG")" -gt 1048576 ]; then
        mv -f "$LOG" "$LOG.1"
    fi
    mode=""
    if "$BIN" configure-host --check >>"$LOG" 2>&1; then
        log "kernel TUN mode"
    else
        mode="--tun=userspace-networking"
        log "userspace networking: /dev/net/tun is not usable (load the tun module); subnet routes and exit node need it"
    fi
    rm -f "$TAILGATE_SOCKET"
    # shellcheck disable=SC2086 # $mode is one flag or nothing
    "$BIN" daemon --config "$CONFIG" --accept-dns=false $mode >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    tries=0
    while [ ! -S "$TAILGATE_SOCKET" ]; do
        if ! running; then
            log "the daemon exited at start-up; see the lines above"
            rm -f "$PIDFILE"
            return 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 150 ]; then
            log "the daemon did not open $TAILGATE_SOCKET within 30 s"
            stop
            return 1
        fi
        nap
    done
    log "daemon running (pid $(cat "$PIDFILE"))"
    if [ -s "$AUTHKEY" ]; then
        if TAILGATE_AUTH_KEY="$(cat "$AUTHKEY")" "$BIN" up >>"$LOG" 2>&1; then
            rm -f "$AUTHKEY"
            log "registered with the auth key from $AUTHKEY (key deleted)"
        else
            log "registering with $AUTHKEY failed (see above); trying again at the next start"
        fi
    fi
}

stop() {
    if ! running; then
        rm -f "$PIDFILE"
        return 0
    fi
    pid="$(cat "$PIDFILE")"
    log "stopping the daemon (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    tries=0
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ]; then
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        nap
    done
    rm -f "$PIDFILE"
}

case "$1" in
    start) start; exit $? ;;
    stop) stop; exit 0 ;;
    restart) stop; start; exit $? ;;
    status)
        if running; then
            echo "$QPKG_NAME is running"
            exit 0
        fi
        echo "$QPKG_NAME is not running"
        exit 3
        ;;
    *)
        echo "usage: $0 start|stop|restart|status" >&2
        exit 1
        ;;
esac
