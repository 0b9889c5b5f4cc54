#!/bin/sh
# tailgate's QPKG uninstaller (installed as .uninstall.sh; App Center runs it on removal):
# stops the service, removes the links, the qpkg.conf entry and the package directory with
# its configuration, node key and registration.
QPKG_NAME="tailgate"
QPKG_DIR="$(dirname "$(readlink -f "$0")")"
. "$QPKG_DIR/qpkg-functions"
"$QPKG_DIR/tailgate.sh" stop
rm -f /etc/init.d/tailgate.sh /etc/rcS.d/QS*"$QPKG_NAME" /etc/rcK.d/QK*"$QPKG_NAME"
qpkg_rmcfg "$QPKG_NAME"
case "$QPKG_DIR" in
    */"$QPKG_NAME") rm -rf "$QPKG_DIR" ;;
esac
echo "$QPKG_NAME removed"
