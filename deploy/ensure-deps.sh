#!/usr/bin/env bash
# Sourced by tests/run.sh and deploy/demo.sh: makes sure the system packages rollgate builds and
# tests with are present (etcd-server for etcd, protobuf-compiler for protoc, iproute2 for the
# network-namespace fault tests, systemd and dbus-user-session for the agent's systemd backend
# tests, docker.io, podman, runc and busybox-static for its container backend tests, g++ for
# libFuzzer in the fuzz step, chromium and chromium-driver for the dashboard's browser tests,
# docker-registry and apache2-utils for the registry the container backend pulls from).
# As root
# it installs them with apt; otherwise it says exactly what to install.
#
#   rollgate_ensure_deps        # build + demo: protobuf-compiler, etcd-server
#   rollgate_ensure_deps test   # everything the test suite needs
rollgate_ensure_deps() {
  local missing=()
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  if [ -z "${ETCD_BIN:-}" ] && ! command -v etcd >/dev/null 2>&1; then
    missing+=(etcd-server)
  fi
  if [ "${1:-}" = test ]; then
    rollgate_test_deps
  fi
  rollgate_install_missing
}

# Adds what only the tests need to `missing`.
rollgate_test_deps() {
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  # The agent's systemd backend is tested against a real `systemd --user` manager, which
  # needs systemd itself and dbus-user-session (the user manager's session bus).
  [ -x /lib/systemd/systemd ] && command -v systemd-notify >/dev/null 2>&1 || missing+=(systemd)
  [ -e /usr/lib/systemd/user/dbus.socket ] || missing+=(dbus-user-session)
  # The container backend is tested against a real dockerd (docker.io: dockerd and the docker
  # CLI) and rootful podman's Docker-compatible API (podman, runc); the test images are built
  # from the static /bin/busybox (busybox-static) with no registry.
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
  # A coordinator replica whose wall clock is off (clock tests) runs under libfaketime.
  ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing+=(faketime)
  # The server-identity tests play a rogue coordinator with `openssl s_server`.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  # The big-artifact benchmark's reference receives over TLS with curl (tests/src/bin/bench).
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # The least-privilege tests score the units with `systemd-analyze security`.
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  # The metrics tests scrape the fleet with a real Prometheus server and lint with promtool.
  [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
  # The package tests build the .debs (cargo-deb reads their dependencies with
  # dpkg-shlibdeps) and install them in a Debian container with systemd as PID 1, made by
  # debootstrap and booted by systemd-nspawn.
  command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
  # The fuzz step (tests/fuzz.sh) builds libFuzzer, which is C++ (libfuzzer-sys), with the
  # system's C++ compiler.
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  # The dashboard tests drive a real headless Chromium through chromedriver (WebDriver).
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  # The container backend pulls from a real registry (docker-registry: CNCF distribution) over
  # https with htpasswd users, whose bcrypt entries htpasswd makes (apache2-utils).
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
}

rollgate_install_missing() {
  command -v cargo >/dev/null 2>&1 || {
    echo "rollgate: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
    return 1
  }
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "rollgate: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "rollgate: missing ${missing[*]}. Install them first:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    echo "(or point ETCD_BIN at an etcd binary)" >&2
    return 1
  fi
}
