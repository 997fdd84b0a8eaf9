#!/bin/busybox sh
# The init of vm-test's initramfs (xtask/src/vm/): mounts what tally-agent
# needs, loads the kernel modules the guest uses (listed in load order in
# /etc/tally-vm/modules), brings up the NIC on QEMU's user network (the host
# is 10.0.2.2), runs the scenarios (tally-vm-guest) and powers off. Every
# line that starts with "tally-vm: " is read by the host.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "tally-vm: booted $(uname -r) $(uname -m), $(nproc) CPUs"
while read -r module; do
	insmod "/lib/modules/$module" || echo "tally-vm: FAIL insmod $module"
done < /etc/tally-vm/modules
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
	|| echo "tally-vm: FAIL network"
/bin/tally-vm-guest /etc/tally-vm/config.json
echo "tally-vm: exit $?"
poweroff -f
