#!/usr/bin/env bash
# Builds the Debian packages of the two daemons from this repository:
#   cartable-node         the node, its systemd unit, /etc/cartable/node.toml
#   cartable-coordinator  the coordinator and the admin CLI `cartable`, its unit,
#                         /etc/cartable/coordinator.toml
# Each runs as its own system user, keeps its data in /var/lib/PACKAGE, and
# ships its configuration as a conffile: an upgrade keeps the operator's edits.
#
#   scripts/package.sh [--profile release|dev] [--no-build] [--version V]
#                      [--out DIR] [--fast]
#
# --no-build packages binaries already built; --fast skips compression (tests).
# Needs only dpkg-deb, objdump and strip (Debian's dpkg and binutils).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
out=""
fast=0
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)-1"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) fast=1; shift ;;
    *) echo "package.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) bin_dir=release ;;
  dev) bin_dir=debug ;;
  *) echo "package.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
target="${CARGO_TARGET_DIR:-target}"
out="${out:-$target/debian}"
bins="$target/$bin_dir"
arch="$(dpkg --print-architecture)"

if [ "$build" = 1 ]; then
  cargo build --profile "$profile" --bins \
    -p cartable-node -p cartable-coordinator -p cartable-cli
fi

# Debian package names of the shared libraries a Rust binary links; anything
# else is a surprise that needs a new Depends, not a silent omission.
depends_of() {
  local bin="$1" lib glibc
  for lib in $(objdump -p "$bin" | awk '/NEEDED/ {print $2}'); do
    case "$lib" in
      libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux*) ;;
      libgcc_s.so.1) ;;
      *) echo "package.sh: $bin links $lib: add its package to Depends" >&2; return 1 ;;
    esac
  done
  glibc="$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
  echo "libc6 (>= $glibc), libgcc-s1"
}

# fill PKG NAME ROLE CONFIG < TEMPLATE: a template of packaging/ for one package.
# A coordinator is not started on install: its first start makes the key every
# member trusts, so its operator configures it (or restores a backup) first.
fill() {
  local start=yes
  [ "$1" = cartable-coordinator ] && start=no
  sed -e "s|@PKG@|$1|g" -e "s|@NAME@|$2|g" -e "s|@ROLE@|$3|g" -e "s|@CONFIG@|$4|g" \
    -e "s|@START@|$start|g"
}

# package PKG NAME ROLE CONFIG SUMMARY BINARY...
package() {
  local pkg="$1" name="$2" role="$3" config="$4" summary="$5"
  shift 5
  local stage
  stage="$(mktemp -d)"
  chmod 0755 "$stage"
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/cartable" \
    "$stage/usr/lib/systemd/system" "$stage/usr/lib/sysusers.d" \
    "$stage/usr/lib/tmpfiles.d" "$stage/usr/lib/sysctl.d" "$stage/usr/share/doc/$pkg"
  local bin
  for bin in "$@"; do
    [ -x "$bins/$bin" ] || { echo "package.sh: no $bins/$bin (build it, or drop --no-build)" >&2; return 1; }
    strip --strip-debug -o "$stage/usr/bin/$bin" "$bins/$bin"
    chmod 0755 "$stage/usr/bin/$bin"
  done

  # The configuration: `init`'s commented template, with the data folder the
  # unit grants write access to.
  local scratch="$stage/init-scratch" file="$stage/etc/cartable/$config"
  "$bins/$1" --data-dir "$scratch" init "$file" >/dev/null 2>&1
  rm -rf "$scratch"
  # `init --data-dir` made the line live, with the scratch folder.
  grep -q '^data_dir = ' "$file" || { echo "package.sh: no data_dir line in $1's template" >&2; return 1; }
  {
    echo "# Installed by the $pkg package. Edit it, then \`systemctl restart $pkg\`;"
    echo "# upgrades keep your edits. Run commands as the service's user:"
    echo "#   sudo -u $pkg $1 --config /etc/cartable/$config COMMAND"
    echo "#"
    sed "s|^data_dir = .*|data_dir = \"/var/lib/$pkg\"|" "$file"
  } >"$file.new"
  mv "$file.new" "$file"
  chmod 0640 "$file"

  fill "$pkg" "$name" "$role" "$config" <packaging/service.in >"$stage/usr/lib/systemd/system/$pkg.service"
  fill "$pkg" "$name" "$role" "$config" <packaging/sysusers.conf.in >"$stage/usr/lib/sysusers.d/$pkg.conf"
  fill "$pkg" "$name" "$role" "$config" <packaging/tmpfiles.conf.in >"$stage/usr/lib/tmpfiles.d/$pkg.conf"
  fill "$pkg" "$name" "$role" "$config" <packaging/sysctl.conf.in >"$stage/usr/lib/sysctl.d/10-$pkg.conf"
  local script
  for script in postinst prerm postrm; do
    fill "$pkg" "$name" "$role" "$config" <"packaging/$script.in" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
  done
  cp README.md "$stage/usr/share/doc/$pkg/README.md"
  printf 'Cartable, %s\nLicense: AGPL-3.0-or-later\n' "$pkg" >"$stage/usr/share/doc/$pkg/copyright"
  echo "/etc/cartable/$config" >"$stage/DEBIAN/conffiles"
  cat >"$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: Cartable developers <cartable@localhost>
Section: net
Priority: optional
Depends: $(depends_of "$stage/usr/bin/$1"), systemd
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Description: $summary
$(fold -s -w 72 <<<"Cartable keeps school lessons reachable through floods and fires: each lesson is an immutable, content-addressed bundle, copied to nodes that schools host and served to browsers over HTTPS. This package is the $name: it $role." | sed 's/ *$//; s/^/ /')
EOF
  mkdir -p "$out"
  local deb="$out/${pkg}_${version}_${arch}.deb" compress=(-Zxz)
  [ "$fast" = 1 ] && compress=(-Znone)
  dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >/dev/null
  echo "$deb"
}

package cartable-node node \
  "keeps lesson bundles and serves them to browsers over HTTPS, copying them from its peers over QUIC" \
  node.toml "Cartable node: lesson bundles served to browsers over HTTPS" \
  cartable-node
package cartable-coordinator coordinator \
  "places lesson copies on the nodes across sites and regions, repairs them and sends browsers to them; the admin CLI cartable comes with it" \
  coordinator.toml "Cartable coordinator: places lesson copies on school nodes" \
  cartable-coordinator cartable
