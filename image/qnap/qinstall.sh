#!/bin/sh
# tailgate's QPKG installer, run by the QPKG header from the unpacked control archive (the
# current directory) with QPKG_INSTALL_PATH set: unpacks data.tar.gz into
# $QPKG_INSTALL_PATH/tailgate (keeping var/ across upgrades), writes the default configuration
# once, registers the package in /etc/config/qpkg.conf, links the service script into
# /etc/init.d, /etc/rcS.d and /etc/rcK.d, and starts it. TG_LOGIN_SERVER and TG_AUTH_KEY in the
# environment (install from a shell: `TG_LOGIN_SERVER=… TG_AUTH_KEY=… sh tailgate_….qpkg`) go
# into the configuration and the auth key file.
. ./qpkg.cfg
. ./qpkg-functions
QPKG_DIR="${QPKG_INSTALL_PATH:?}/$QPKG_NAME"
VAR="$QPKG_DIR/var"
CONFIG="$VAR/tailgate.toml"

fail() {
    echo "$QPKG_NAME: $1" >&2
    echo -1 >/tmp/update_process 2>/dev/null
    exit 1
}

case "$TG_LOGIN_SERVER" in
    "") ;;
    tg://*)
        case "$TG_LOGIN_SERVER" in
            *[\"\'\\\|\&\;\`\$\ ]*) fail "TG_LOGIN_SERVER has characters a login URL does not have" ;;
        esac ;;
    *) fail "TG_LOGIN_SERVER must look like tg://HOST:PORT#KEY" ;;
esac
case "$TG_AUTH_KEY" in
    *[!A-Za-z0-9._~+/=-]*) fail "TG_AUTH_KEY has characters an auth key does not have" ;;
esac

if [ -x "/etc/init.d/$QPKG_SERVICE_PROGRAM" ]; then
    "/etc/init.d/$QPKG_SERVICE_PROGRAM" stop
fi
mkdir -p "$QPKG_DIR" || fail "cannot create $QPKG_DIR"
tar -xzf data.tar.gz -C "$QPKG_DIR" || fail "cannot unpack data.tar.gz into $QPKG_DIR"
mkdir -p "$VAR/state" && chmod 700 "$VAR/state" || fail "cannot create $VAR/state"
if [ ! -f "$CONFIG" ]; then
    sed "s|@STATE_DIR@|$VAR/state|" "$QPKG_DIR/share/tailgate.toml" >"$CONFIG" ||
        fail "cannot write $CONFIG"
fi
if [ -n "$TG_LOGIN_SERVER" ]; then
    awk -v url="$TG_LOGIN_SERVER" '
        /^\[control\]/ { section = 1 }
        /^\[/ && !/^\[control\]/ { section = 0 }
        section && !done && /^#? *login_server *=/ { print "login_server = \"" url "\""; done = 1; next }
        { print }
    ' "$CONFIG" >"$CONFIG.new" && mv "$CONFIG.new" "$CONFIG" || fail "cannot write $CONFIG"
fi
if [ -n "$TG_AUTH_KEY" ]; then
    (umask 077 && printf '%s\n' "$TG_AUTH_KEY" >"$VAR/authkey") || fail "cannot write $VAR/authkey"
fi

qpkg_setcfg "$QPKG_NAME" Name "$QPKG_NAME"
qpkg_setcfg "$QPKG_NAME" Display_Name "$QPKG_DISPLAY_NAME"
qpkg_setcfg "$QPKG_NAME" Version "$QPKG_VER"
qpkg_setcfg "$QPKG_NAME" Author "$QPKG_AUTHOR"
qpkg_setcfg "$QPKG_NAME" QPKG_File "$QPKG_NAME.qpkg"
qpkg_setcfg "$QPKG_NAME" Date "$(date +%F)"
qpkg_setcfg "$QPKG_NAME" Shell "$QPKG_DIR/$QPKG_SERVICE_PROGRAM"
qpkg_setcfg "$QPKG_NAME" Install_Path "$QPKG_DIR"
qpkg_setcfg "$QPKG_NAME" RC_Number "$QPKG_RC_NUM"
qpkg_setcfg "$QPKG_NAME" Service_Port "$QPKG_SERVICE_PORT"
qpkg_setcfg "$QPKG_NAME" Pid_File "$QPKG_DIR/$QPKG_SERVICE_PIDFILE"
qpkg_setcfg "$QPKG_NAME" Timeout "$QPKG_TIMEOUT"
qpkg_setcfg "$QPKG_NAME" FW_Ver_Min "$QTS_MINI_VERSION"
qpkg_setcfg "$QPKG_NAME" Enable TRUE

mkdir -p /etc/init.d /etc/rcS.d /etc/rcK.d
ln -sf "$QPKG_DIR/$QPKG_SERVICE_PROGRAM" "/etc/init.d/$QPKG_SERVICE_PROGRAM"
ln -sf "/etc/init.d/$QPKG_SERVICE_PROGRAM" "/etc/rcS.d/QS${QPKG_RC_NUM}${QPKG_NAME}"
ln -sf "/etc/init.d/$QPKG_SERVICE_PROGRAM" "/etc/rcK.d/QK$((1000 - QPKG_RC_NUM))${QPKG_NAME}"
echo "$QPKG_NAME $QPKG_VER installed in $QPKG_DIR"
"/etc/init.d/$QPKG_SERVICE_PROGRAM" start || echo "$QPKG_NAME: the service did not start; see $VAR/tailgate.log" >&2
echo 100 >/tmp/update_process 2>/dev/null
exit 0
