#!/bin/sh
# Fetches OHIF's built viewer (the dist/ the npm package @ohif/app ships)
# into examples/ohif/dist. The bundle is never committed. --prefer-offline:
# a copy already in npm's cache is used without asking the registry (a
# fresh clone on a machine that fetched it before, or one without network).
set -eu
cd "$(dirname "$0")"
version=$(cat OHIF_VERSION)
[ -f dist/.version ] && [ "$(cat dist/.version)" = "$version" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --prefer-offline --silent "@ohif/app@$version" >/dev/null)
rm -rf dist
tar -xzf "$tmp"/ohif-app-"$version".tgz -C "$tmp"
mv "$tmp"/package/dist dist
rm -f dist/app-config.js # ours is served instead
echo "$version" > dist/.version
