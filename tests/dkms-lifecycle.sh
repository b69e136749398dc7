#!/bin/bash
# The DKMS lifecycle of a pfq-omatic-dkms package, run inside a disposable Debian 12 system
# holding dkms and the headers and images of two kernels. tests/test_dkms.py runs it and
# reads what it records: one `key=value` per line in /out/results; every command's output
# goes to /out/log.
#   $1: the .deb   $2: a driver of the package   $3: a kernel of a series it has, to add
set -u
deb=$1 driver=$2 added=$3
exec >>/out/log 2>&1
say() { echo "$1=$2" >> /out/results; }
where() { modinfo -k "$1" -F filename "$2" 2>/dev/null; }
export DEBIAN_FRONTEND=noninteractive

kernels=$(ls /lib/modules | tr '\n' ' ')
kernels=${kernels% }
say kernels "$kernels"

echo "== 2. installing the package builds and installs for every kernel"
apt-get install -y -q "$deb" > /out/install.log 2>&1
say install_exit $?
for k in $kernels; do
    for m in pfq "$driver"; do
        say "file:$k:$m" "$(where "$k" "$m")"
        say "version:$k:$m" "$(modinfo -k "$k" -F version "$m")"
        say "signer:$k:$m" "$(modinfo -k "$k" -F signer "$m")"
    done
done
say mok_pub "$(test -f /var/lib/dkms/mok.pub && echo yes)"
cp /var/lib/dkms/mok.pub /out/ 2>/dev/null
# For step 3 (the lab, on the host): what DKMS installed, where it installed it.
for k in $kernels; do
    mkdir -p "/out/root/lib/modules/$k/updates"
    cp -a "/lib/modules/$k/updates/dkms" "/out/root/lib/modules/$k/updates/"
done

echo "== 4. a kernel arrives: DKMS builds, checks and installs for it unasked"
apt-get update -q > /out/added.log 2>&1
apt-get install -y -q "linux-headers-$added" "linux-image-$added" >> /out/added.log 2>&1
say added_exit $?
say "file:$added:$driver" "$(where "$added" "$driver")"

echo "== 5. a kernel outside the package's series: skipped, dpkg's hook does not fail"
outside=9.9.0-1-amd64
mkdir -p "/lib/modules/$outside"
ln -s "$(readlink -f "/lib/modules/${kernels%% *}/build")" "/lib/modules/$outside/build"
/etc/kernel/postinst.d/dkms "$outside" > /out/outside.log 2>&1
say outside_hook_exit $?
dkms build -m pfq-omatic -v "$(dpkg-query -W -f '${Version}' pfq-omatic-dkms)" \
    -k "$outside" >> /out/outside.log 2>&1
say outside_build_exit $?
rm -rf "/lib/modules/$outside"

version=$(dpkg-query -W -f '${Version}' pfq-omatic-dkms)
first=${kernels%% *} last=${kernels##* }
echo "== 6a. a module that fails verification is not installed"
dkms remove -m pfq-omatic -v "$version" -k "$first" > /dev/null
say "after_remove:$first" "$(where "$first" "$driver")"
dkms build -m pfq-omatic -v "$version" -k "$first"
symvers=/var/lib/dkms/pfq-omatic/$version/$first/x86_64/log/Module.symvers
sed -i -E 's/^0x[0-9a-f]{8}(\tpfq_)/0x12345678\1/' "$symvers"
dkms install -m pfq-omatic -v "$version" -k "$first" > /out/tampered.log 2>&1
say tampered_exit $?
say "tampered_file:$first" "$(where "$first" "$driver")"
say "untouched_file:$last" "$(where "$last" "$driver")"

echo "== 6b. a driver that fails to compile for one kernel"
dkms remove -m pfq-omatic -v "$version" -k "$first" > /dev/null
series=$(echo "$first" | grep -oE '^[0-9]+\.[0-9]+')
victim=$(find "/usr/src/pfq-omatic-$version/series/$series" -name '*.c' -path "*$driver*" \
         | head -n 1)
echo '#error "a driver that does not compile"' >> "$victim"
dkms install -m pfq-omatic -v "$version" -k "$first" > /out/broken.log 2>&1
say broken_exit $?
say "broken_file:$first" "$(where "$first" "$driver")"
say "unaffected_file:$last" "$(where "$last" "$driver")"
sed -i '$d' "$victim"

echo "== 7. removing the package leaves the system as it was"
apt-get purge -y -q pfq-omatic-dkms > /out/purge.log 2>&1
say purge_exit $?
say dkms_status "$(dkms status 2>/dev/null | grep -c pfq-omatic)"
say var_lib_dkms "$(ls /var/lib/dkms | grep -c pfq-omatic)"
say usr_src "$(ls /usr/src | grep -c pfq-omatic)"
for k in $kernels $added; do
    say "purged_file:$k:$driver" "$(where "$k" "$driver")"
done
say done yes
