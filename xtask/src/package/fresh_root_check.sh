#!/bin/sh
# Runs as a oneshot service inside the fresh Debian root booted with systemd-nspawn (see
# check.rs), after `apt-get install ./tailgate_….deb` put the package (and nftables, which it
# recommends) there. Exercises the package as an administrator would: the unit as installed,
# a start with a real configuration under the unit's sandbox, an upgrade, removal, purge, a
# second install and the first-run steps of control mode. Writes /root/package-check.ok when
# every step passed; the log goes to /root/package-check.log.
set -eu

DEB=$(ls /srv/tailgate_*.deb)
UNIT=tailgate.service

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*"; exit 1; }
expect_state() { # expect_state is-enabled|is-active WANTED
	got=$(systemctl "$1" "$UNIT" 2>/dev/null || true)
	[ "$got" = "$2" ] || fail "systemctl $1 $UNIT: $got (expected $2)"
}
wait_until() { # wait_until COMMAND...: up to 10 s for COMMAND to succeed
	i=0
	until "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		[ "$i" -lt 100 ] || { journalctl -u "$UNIT" --no-pager; fail "timed out waiting for: $*"; }
		sleep 0.1
	done
}

step "installed by apt: disabled and stopped until configured"
dpkg-query -W -f '${Package} ${Version} ${Status}\n' tailgate
tailgate --version
expect_state is-enabled disabled
expect_state is-active inactive
for f in /usr/bin/tailgate /usr/lib/systemd/system/$UNIT /etc/tailgate/tailgate.toml \
	/usr/share/man/man1/tailgate.1.gz /usr/share/doc/tailgate/copyright; do
	[ -e "$f" ] || fail "$f is missing"
done
grep -qx /etc/tailgate/tailgate.toml /var/lib/dpkg/info/tailgate.conffiles ||
	fail "/etc/tailgate/tailgate.toml is not a conffile"

step "systemd-analyze verify $UNIT"
out=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify reported: $out"
echo "no findings"

step "man tailgate"
out=$(man --warnings tailgate 2>&1 >/dev/null) || fail "man tailgate: $out"
[ -z "$out" ] || fail "man tailgate: $out"
echo "renders without warnings"

step "configure a subnet router and systemctl enable --now"
if systemctl -q is-active systemd-resolved; then
	dns=systemd-resolved
else
	# A resolv.conf of our own, to see it rewritten and put back.
	dns=resolv.conf
	rm -f /etc/resolv.conf
	printf 'nameserver 192.0.2.53\nsearch example.internal\n' >/etc/resolv.conf
	cp /etc/resolv.conf /root/resolv.conf.orig
fi
echo "system DNS: $dns"
# The WAN link the wan_ingress XDP program attaches to, and a LAN for the subnet route.
for link in wan:192.0.2.1/24 lan:192.168.77.1/24; do
	ip link add "${link%%:*}0" type veth peer name "${link%%:*}1"
	ip addr add "${link#*:}" dev "${link%%:*}0"
	ip link set "${link%%:*}0" up
	ip link set "${link%%:*}1" up
done
umask 077
tailgate genkey >/etc/tailgate/private.key
umask 022
peer=$(tailgate genkey | tailgate pubkey)
cat >/etc/tailgate/tailgate.toml <<EOF
[interface]
name = "tg0"
private_key_file = "private.key"
address = ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
xdp = "generic"
xdp_interface = "wan0"
lan_interface = "lan0"
advertise_routes = ["192.168.77.0/24"]

[[peer]]
public_key = "$peer"
endpoint = "192.0.2.2:41641"
allowed_ips = ["100.64.0.2/32"]
EOF
systemctl enable --now "$UNIT"
wait_until tailgate status
expect_state is-active active
pid=$(systemctl show -P MainPID "$UNIT")
grep -E '^Cap(Eff|Bnd)' "/proc/$pid/status"
tailgate status | tee /root/status.txt
journal=$(journalctl -u "$UNIT" --no-pager -o cat)
# What needs the unit's capabilities and writable paths: XDP (CAP_BPF, CAP_PERFMON,
# CAP_NET_ADMIN), the forwarding sysctls (/proc/sys/net), nft (CAP_NET_ADMIN, in a child),
# MagicDNS on port 53 (CAP_NET_BIND_SERVICE), the UAPI socket (/run/wireguard).
grep -q "xdp: wan_ingress on wan0" /root/status.txt ||
	fail "the wan_ingress XDP program is not attached: $journal"
grep -q "forwarding: XDP for 192.168.77.0/24" /root/status.txt ||
	fail "the XDP forwarding path does not serve the subnet route: $journal"
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail "IP forwarding was not turned on"
nft list table inet tailgate_tg0 >/dev/null || fail "no nftables table tailgate_tg0"
echo "$journal" | grep -q "MagicDNS resolver listening on 100.100.100.100:53" ||
	fail "MagicDNS is not listening: $journal"
wg show tg0 >/dev/null || fail "wg cannot reach the UAPI socket in /run/wireguard"
if [ "$dns" = systemd-resolved ]; then
	resolvectl dns tg0 | grep -q 100.100.100.100 ||
		fail "systemd-resolved does not send tg0's queries to MagicDNS: $(resolvectl dns tg0)"
else
	grep -q '^nameserver 100.100.100.100' /etc/resolv.conf ||
		fail "/etc/resolv.conf does not point at MagicDNS: $(cat /etc/resolv.conf)"
fi
# A system call, file or capability the sandbox denies shows as an OS error in a warning.
if echo "$journal" | grep -E " (WARN|ERROR) .*os error"; then
	fail "the daemon hit OS errors under the unit's sandbox"
fi
systemd-analyze security --no-pager "$UNIT" | tail -n 1

step "upgrade (dpkg -i of the same version) restarts the running daemon"
dpkg -i "$DEB"
wait_until tailgate status
expect_state is-active active
expect_state is-enabled enabled
[ "$(systemctl show -P MainPID "$UNIT")" != "$pid" ] || fail "the daemon was not restarted"

step "dpkg -r stops the daemon and keeps the configuration"
dpkg -r tailgate
expect_state is-active inactive
[ ! -e /usr/bin/tailgate ] || fail "/usr/bin/tailgate is still there"
[ -e /etc/tailgate/tailgate.toml ] || fail "the conffile went with dpkg -r"
! ip link show tg0 >/dev/null 2>&1 || fail "tg0 is still there after the daemon stopped"
! nft list table inet tailgate_tg0 >/dev/null 2>&1 || fail "the nftables table is still there"
if [ "$dns" = resolv.conf ]; then
	cmp /etc/resolv.conf /root/resolv.conf.orig || fail "/etc/resolv.conf was not put back"
fi

step "dpkg --purge removes configuration, state and enablement"
rm -f /etc/tailgate/private.key
dpkg --purge tailgate
for f in /etc/tailgate /var/lib/tailgate /etc/systemd/system/multi-user.target.wants/$UNIT; do
	[ ! -e "$f" ] || fail "$f is still there after purge"
done

step "dpkg -i on the purged system"
dpkg -i "$DEB"
expect_state is-enabled disabled
expect_state is-active inactive
tailgate --version

step "first run in control mode, as docs/packaging.md describes"
# A coordination server on loopback for the node to join.
systemd-run --quiet --unit=tailgate-control-server \
	tailgate control serve --listen 127.0.0.1:7443 --public-addr 127.0.0.1:7443
wait_until tailgate control info
url=$(tailgate control info | sed -n 's/^login URL: *//p')
key=$(tailgate control authkey create | head -n 1)
cat >/etc/tailgate/tailgate.toml <<EOF
[interface]
name = "tailgate0"

[control]
login_server = "$url"
EOF
systemctl enable --now "$UNIT"
wait_until tailgate status
tailgate up --auth-key "$key"
wait_until sh -c 'tailgate status | grep -q "control: running"'
tailgate status | grep -E "control:|name:"
[ "$(stat -c %a /var/lib/tailgate)" = 700 ] || fail "/var/lib/tailgate is not mode 700"
[ "$(stat -c %a /var/lib/tailgate/control-node.json)" = 600 ] ||
	fail "the node state is not mode 600"
echo "restart: the session resumes without an auth key"
systemctl restart "$UNIT"
wait_until sh -c 'tailgate status | grep -q "control: running"'
journal=$(journalctl -u "$UNIT" --no-pager -o cat)
if echo "$journal" | grep -E " (WARN|ERROR) .*os error"; then
	fail "the daemon hit OS errors under the unit's sandbox"
fi
systemctl disable --now "$UNIT"

touch /root/package-check.ok
step "all steps passed"
