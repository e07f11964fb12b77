"""The ramdisk's own shell scripts: /init (PID 1) and the udhcpc hook.

/init prints ``bootforge-init: [<seconds since boot>] <what>`` at each step on the serial console, so a
slow boot shows where its time went. Steps: mount the kernel file systems; load the modules of the
devices present (PCI and virtio modaliases through busybox modprobe and modules.alias, repeated
because loading virtio_pci makes the virtio devices appear); find the NIC whose MAC is BOOTIF; DHCP on
it (udhcpc retries forever, then stays in the background to renew), or set the static addresses a
virtual-media boot passes as ``bootforge.net=`` (bootforge_agent.netconfig) instead, or, when the API
(``bootforge.api=``) is an IPv6 literal, wait for a SLAAC global address; then run the
agent, restarted 5 s after it exits, forever (PID 1 must not exit).
"""

from __future__ import annotations

__all__ = ["INIT", "UDHCPC_SCRIPT"]

INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /root
mount -t devpts devpts /dev/pts
say() { read -r up _ < /proc/uptime; echo "bootforge-init: [$up] $*"; }
say "init started ($(uname -r))"
# Module and driver chatter would interleave with the agent's lines: errors only from here on.
dmesg -n 3

# Python blocks in getrandom() until the kernel's random pool is seeded. CPUs with RDRAND seed it at
# boot; elsewhere (QEMU's TCG CPU) the kernel's jitter entropy does it, but only once someone waits:
# wait now, in the background, so that runs while drivers load and DHCP runs.
(head -c 1 /dev/random > /dev/null; say "random pool ready") &

# Drivers for the devices present, by modalias, in rounds: loading virtio_pci makes the virtio devices
# appear. Storage controllers (PCI class 01, virtio blk/scsi) load in the background: a RAID
# controller's firmware may take seconds to come up, time the NIC spends on its link and DHCP.
STORAGE='bc01|^virtio:d0000000[28]v'
load_modules() {
  seen=/run/modalias.$1
  echo "-" > $seen  # a sentinel: busybox grep -f with an empty pattern file matches every line
  for round in 1 2 3 4; do
    cat /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias 2>/dev/null | sort -u \
      | grep -vxF -f $seen | grep -E $2 "$STORAGE" > $seen.new
    [ -s $seen.new ] || break
    modprobe -qa $(cat $seen.new)
    cat $seen.new >> $seen
  done
}
(
  load_modules storage ""
  # SCSI/SATA/SAS disks come from a scan of each host: the disk driver goes with any host.
  [ -n "$(ls /sys/class/scsi_host 2>/dev/null)" ] && modprobe -q sd_mod
  # NVMe controllers come up after their driver has loaded (a reset that may take seconds); their
  # namespaces are scanned once they are live. Wait up to 15 s for that.
  n=0
  while grep -qvx live /sys/class/nvme/*/state 2>/dev/null && [ $n -lt 75 ]; do
    sleep 0.2
    n=$((n + 1))
  done
  say "storage drivers loaded"
) &
storage=$!
load_modules other -v
say "other drivers loaded"

mac=""
api=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    BOOTIF=*) mac=${word#BOOTIF=} ;;
    bootforge.api=*) api=${word#bootforge.api=} ;;
  esac
done
# iPXE and PXELINUX pass 01-aa-bb-cc-dd-ee-ff (01 is the ARP hardware type); the kernel lists aa:bb:...
mac=$(echo "$mac" | tr 'A-F-' 'a-f:')
case "$mac" in ??:??:??:??:??:??:??) mac=${mac#??:} ;; esac

find_nic() {
  ifc=""
  for d in /sys/class/net/*; do
    read -r address < "$d/address" 2>/dev/null || continue
    [ "$address" = "$mac" ] && { ifc=${d##*/}; return; }
  done
}
# A NIC appears when its driver has probed it; real ones may take a few seconds. Wait up to 30 s.
read -r now _ < /proc/uptime
deadline=$((${now%.*} + 30))
find_nic
while [ -n "$mac" ] && [ -z "$ifc" ] && [ "${now%.*}" -lt $deadline ]; do
  sleep 0.2
  find_nic
  read -r now _ < /proc/uptime
done
if [ -z "$ifc" ]; then
  ifc=$(ls /sys/class/net | grep -vx lo | head -n 1)
  say "no NIC has BOOTIF's MAC '$mac'; using ${ifc:-nothing} (NICs: $(ls /sys/class/net | tr '\n' ' '))"
fi
say "NIC $ifc ($mac)"
ip link set lo up
ip link set "$ifc" up
static=""
case " $(cat /proc/cmdline) " in *" bootforge.net="*) static=1 ;; esac
# An API on an IPv6 literal means an IPv6 provisioning network, maybe with no DHCPv4 at all (udhcpc
# would wait there forever).
ipv6=""
case "$api" in *://\[*) ipv6=1 ;; esac
global6() { ip -6 addr show dev "$ifc" | grep "scope global" | grep -v tentative; }
# A virtual-media boot on a network without DHCP: the addresses are on the kernel command line
# (bootforge_agent/netconfig.py reads them); if they cannot be set up, DHCP is the fallback.
if [ -n "$static" ] && python3 -m bootforge_agent.netconfig; then
  :
elif [ -n "$ipv6" ]; then
  [ -n "$static" ] && say "static network failed; waiting for router advertisements"
  # The kernel takes a global address from the router advertisements (SLAAC; the agent has no
  # DHCPv6 client); wait for one past duplicate address detection. After 60 s go on: the agent's
  # lookup retries then say on the console what is missing.
  n=0
  until global6 > /dev/null || [ $n -ge 300 ]; do
    sleep 0.2
    n=$((n + 1))
  done
  global6 | sed -n 's/.*inet6 \([^ ]*\).*/\1/p' | head -n 1 > /run/ipv6
  [ -s /run/ipv6 ] || say "no global IPv6 address on $ifc after 60 s"
else
  [ -n "$static" ] && say "static network failed; trying DHCP"
  # Without -n/-b udhcpc retries until it has a lease, then forks and renews it in the background.
  udhcpc -i "$ifc" -s /etc/udhcpc.script -t 3 -T 1 -A 1 -V bootforge-ramdisk
fi
say "network up: $(cat /run/ipv4 /run/ipv6 2>/dev/null | tr '\n' ' ')"
# The agent's inventory must list every disk: wait for the storage drivers.
wait $storage
say "modules: $(cut -d ' ' -f 1 /proc/modules | sort | tr '\n' ' ')"

while :; do
  say "starting the agent"
  python3 -m bootforge_agent
  say "the agent exited with status $?; restarting it in 5 s"
  sleep 5
done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    cidr="$ip/${mask:-24}"
    [ "$1" = renew ] && [ "$(cat /run/ipv4 2>/dev/null)" = "$cidr" ] && exit 0
    ip -4 addr flush dev "$interface"
    ip addr add "$cidr" ${broadcast:+broadcast $broadcast} dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
    echo "$cidr" > /run/ipv4
    echo "bootforge-init: lease $cidr on $interface, router ${router:-none}"
    ;;
  leasefail|nak)
    echo "bootforge-init: DHCP $1 on $interface"
    ;;
esac
exit 0
"""
