[tailgate]
title="tailgate"
desc="tailgate WireGuard tunnel"
port_forward="yes"
src.ports="41641/udp"
dst.ports="41641/udp"
