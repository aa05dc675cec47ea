#!/bin/busybox sh
# The /init that made docs/nested-stacks-flamegraph.svg and the README's --than and --guest-rips
# examples: the nested SVM L1 of `cargo xtask nested --kernel 6.1` (its initramfs tree in
# target/nested/initramfs-6.1) with this file as /init, booted as xtask's l1::boot does:
#   cp -a target/nested/initramfs-6.1 /tmp/demo && cp docs/nested-demo-init.sh /tmp/demo/init
#   (cd /tmp/demo && find . | cpio -o -H newc | gzip -1 > /tmp/demo.cpio.gz)
#   qemu-system-x86_64 -accel tcg,thread=single -cpu max -m 2G -machine pc -smp 2 -nodefaults \
#     -no-user-config -display none -serial stdio -net none -no-reboot \
#     -kernel target/nested/kernel-6.1/boot/vmlinuz-* -initrd /tmp/demo.cpio.gz \
#     -append "console=ttyS0 panic=-1 loglevel=3 mitigations=off" > demo.log
# then the report is between the DEMO-TEXT markers, the SVG (gzip, base64) between DEMO-SVG.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
while read -r m; do insmod /lib/modules/$(uname -r)/$m; done < /modules.load
cd /tmp
/kvmtrace-testvm -name guest=vm01 --system-map /tmp/vm01.System.map --loop --timeout 300 \
  --run "pio_out,port=0x70,count=3000;mmio_w,count=1000;pio_out,port=0x71,count=2,vmm_us=20000;cpuid,count=500;hlt,count=100" >/dev/null 2>&1 &
sleep 5
/kvmtrace record -d vm01 --duration 20s --stacks=199 --than 10ms --guest-rips -o /tmp/demo.kvmtrace --quiet --no-watch > /dev/null 2>&1
echo DEMO-TEXT-BEGIN
/kvmtrace report -i /tmp/demo.kvmtrace --guest-symbols vm01=/tmp/vm01.System.map
echo DEMO-TEXT-END
/kvmtrace report -i /tmp/demo.kvmtrace --format flamegraph --weight samples -o /tmp/stacks.svg
echo DEMO-SVG-BEGIN
gzip -c /tmp/stacks.svg | base64
echo DEMO-SVG-END
sync
poweroff -f
