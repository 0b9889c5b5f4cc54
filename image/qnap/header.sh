#!/bin/sh
# tailgate QPKG: a self-extracting installer. This script is followed by a tar holding
# control.tar.gz (qinstall.sh, qpkg.cfg, qpkg-functions), then data.tar.gz (the files of
# $QPKG_INSTALL_PATH/tailgate), then QNAP's 100-byte trailer. QTS's App Center runs it with sh
# as root; so can you: `sh tailgate_<version>_x86_64.qpkg`.
QPKG_NAME="tailgate"
script_len=@SCRIPT_LEN@
control_len=@CONTROL_LEN@
data_len=@DATA_LEN@
if [ "$(uname -m)" != "@ARCH@" ]; then
    echo "$QPKG_NAME: this package is for @ARCH@, not $(uname -m)" >&2
    echo -1 >/tmp/update_process 2>/dev/null
    exit 1
fi
# Where QTS keeps packages: the volume App Center chose, else the Public share's volume.
if [ -z "$QINSTALL_PATH" ] && [ -x /sbin/getcfg ]; then
    public="$(/sbin/getcfg Public path -f /etc/config/smb.conf)"
    [ -n "$public" ] && QINSTALL_PATH="$(dirname "$public")/.qpkg"
fi
QPKG_INSTALL_PATH="${QINSTALL_PATH:-/share/CACHEDEV1_DATA/.qpkg}"
if [ ! -d "$(dirname "$QPKG_INSTALL_PATH")" ]; then
    echo "$QPKG_NAME: no volume for packages ($(dirname "$QPKG_INSTALL_PATH") is missing)" >&2
    echo -1 >/tmp/update_process 2>/dev/null
    exit 1
fi
export QPKG_INSTALL_PATH
_EXTRACT_DIR="$QPKG_INSTALL_PATH/.tmp-$QPKG_NAME"
rm -rf "$_EXTRACT_DIR"
mkdir -p "$_EXTRACT_DIR" || exit 1
tail -c +$((script_len + 1)) "$0" | head -c "$control_len" | tar -xOf - | tar -xzf - -C "$_EXTRACT_DIR" || exit 1
tail -c +$((script_len + control_len + 1)) "$0" | head -c "$data_len" >"$_EXTRACT_DIR/data.tar.gz" || exit 1
(cd "$_EXTRACT_DIR" && /bin/sh ./qinstall.sh)
status=$?
rm -rf "$_EXTRACT_DIR"
exit $status
