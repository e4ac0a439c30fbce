#!/usr/bin/env bash
# Debian packages used as real peers by the integration tests: Orthanc with its DICOMweb plugin,
# dcmtk, dicom3tools, the WAN kit's nftables / iproute2, Chromium for the PWA's browser tests and
# promtool for the alert rules, debootstrap for the agent installer's clean Debian root, nginx as
# the load balancer in front of hub replicas.
# Installed only when missing; the Orthanc service is not started (tests start their own Orthanc
# processes on free ports).
set -euo pipefail
need=()
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -f /usr/share/orthanc/plugins/libOrthancPython.so ] || need+=(orthanc-python)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Headless Chromium for the PWA's browser tests (Playwright drives Debian's build; test tools
# cannot download browsers here).
[ -x /usr/bin/chromium ] || need+=(chromium)
# promtool (Debian's prometheus package) checks and unit-tests the alert rules; its service is
# not started.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The agent installer's test installs into a clean Debian bookworm root made by debootstrap.
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
# nginx balances hub replicas in the load benchmark and its replica-kill test; its service is not
# started.
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting the packaged Orthanc and nginx services on their default ports.
policy_created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  policy_created=1
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
if [ $policy_created -eq 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
