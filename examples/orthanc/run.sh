#!/bin/sh
# Runs examples/orthanc end to end on this machine, loopback only:
#   1. starts Orthanc (Debian packages orthanc, orthanc-dicomweb) on
#      127.0.0.1:8042 with a throw-away configuration and storage,
#   2. uploads the demo studies (examples/demo/studies),
#   3. builds and starts the gateway with examples/orthanc/Caddyfile on
#      http://localhost:8080,
#   4. searches and retrieves through it with curl,
# then serves until Ctrl-C (or exits at once with --check) and stops what
# it started. Run it from anywhere:
#   sh examples/orthanc/run.sh [--check]
# ORTHANC_USER, ORTHANC_PASSWORD and SMART_IMAGING_KEY may be set; a
# random password and key are made otherwise. CADDY_ADMIN moves the
# gateway's admin endpoint off localhost:2019 if that is taken.
set -eu

check=false
case "${1:-}" in
--check) check=true ;;
"") ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac

ORTHANC=/usr/sbin/Orthanc
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
PACS=http://127.0.0.1:8042
GATEWAY=http://localhost:8080
PATIENT=87a339d0-8cae-418e-89c7-8651e6aab3c6

cd "$(dirname "$0")/../.."
if [ ! -x "$ORTHANC" ] || [ ! -f "$PLUGIN" ]; then
	echo "Orthanc or its DICOMweb plugin is missing: apt-get install orthanc orthanc-dicomweb" >&2
	exit 1
fi
for url in "$PACS" "$GATEWAY"; do
	if curl -s -o /dev/null --max-time 2 "$url/"; then
		echo "something already answers on $url; stop it first" >&2
		exit 1
	fi
done

ORTHANC_USER=${ORTHANC_USER:-smart}
ORTHANC_PASSWORD=${ORTHANC_PASSWORD:-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')}
SMART_IMAGING_KEY=${SMART_IMAGING_KEY:-$(head -c 32 /dev/urandom | base64)}
export ORTHANC_USER ORTHANC_PASSWORD SMART_IMAGING_KEY
case "$ORTHANC_USER$ORTHANC_PASSWORD" in
*'"'* | *'\'*)
	echo "ORTHANC_USER and ORTHANC_PASSWORD must not hold \" or \\" >&2
	exit 1
	;;
esac

dir=$(mktemp -d "${TMPDIR:-/tmp}/sia-orthanc.XXXXXX")
orthanc_pid=
caddy_pid=
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$caddy_pid" ]; then
		kill "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
	fi
	if [ -n "$orthanc_pid" ]; then
		echo "stopping Orthanc (a few seconds)"
		kill "$orthanc_pid" 2>/dev/null || true
		wait "$orthanc_pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Orthanc: HTTP on port 8042 only (Orthanc 1.10 binds every IPv4
# address; RemoteAccessAllowed false answers 401 to any peer that is not
# 127.0.0.1), no DICOM port, no web UI, no compression (the gateway
# rewrites the PACS's URLs in the answers).
mkdir -p "$dir/conf" "$dir/storage"
cat >"$dir/conf/orthanc.json" <<JSON
{
  "Name": "SMART-IMAGING-EXAMPLE",
  "StorageDirectory": "$dir/storage",
  "IndexDirectory": "$dir/storage",
  "TemporaryDirectory": "$dir",
  "Plugins": ["$PLUGIN"],
  "HttpPort": 8042,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true,
  "RegisteredUsers": { "$ORTHANC_USER": "$ORTHANC_PASSWORD" },
  "HttpCompressionEnabled": false,
  "OrthancExplorerEnabled": false,
  "WebDavEnabled": false,
  "DicomServerEnabled": false,
  "DicomWeb": {
    "Enable": true,
    "Root": "/dicom-web/",
    "EnableWado": false,
    "Ssl": false,
    "StudiesMetadata": "Full",
    "SeriesMetadata": "Full"
  }
}
JSON
chmod 600 "$dir/conf/orthanc.json"
"$ORTHANC" --logfile="$dir/orthanc.log" "$dir/conf" >/dev/null 2>&1 &
orthanc_pid=$!
i=0
until curl -fsS -o /dev/null -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "$PACS/system" 2>/dev/null; do
	i=$((i + 1))
	if [ "$i" -gt 100 ] || ! kill -0 "$orthanc_pid" 2>/dev/null; then
		echo "Orthanc did not start; its log:" >&2
		tail -20 "$dir/orthanc.log" >&2
		exit 1
	fi
	sleep 0.1
done
echo "Orthanc is up on $PACS (pid $orthanc_pid)"

# 2. The demo studies.
n=0
for f in $(find examples/demo/studies -name '*.dcm' | sort); do
	curl -fsS -o /dev/null -u "$ORTHANC_USER:$ORTHANC_PASSWORD" \
		-H 'Content-Type: application/dicom' --data-binary "@$f" "$PACS/instances"
	n=$((n + 1))
done
echo "uploaded $n instances"

# 3. The gateway.
go build -o "$dir/caddy" ./cmd/caddy
"$dir/caddy" run --config examples/orthanc/Caddyfile >"$dir/caddy.log" 2>&1 &
caddy_pid=$!
i=0
until curl -fsS -o /dev/null "$GATEWAY/pacs/fhir/metadata" 2>/dev/null; do
	i=$((i + 1))
	if [ "$i" -gt 100 ] || ! kill -0 "$caddy_pid" 2>/dev/null; then
		echo "the gateway did not start; its log:" >&2
		tail -20 "$dir/caddy.log" >&2
		exit 1
	fi
	sleep 0.1
done
echo "the gateway is up on $GATEWAY (pid $caddy_pid)"

# 4. Search, then ask for one study by identifier and follow its Endpoint.
bundle=$(curl -fsS "$GATEWAY/pacs/fhir/ImagingStudy?patient=$PATIENT")
uids=$(printf '%s' "$bundle" | grep -o '"value":"urn:oid:[^"]*"' | sed 's/.*urn:oid:\([^"]*\)"/\1/')
echo "search: the patient's studies are" $uids
study=$(printf '%s\n' $uids | head -1)
one=$(curl -fsS "$GATEWAY/pacs/fhir/ImagingStudy?patient=$PATIENT&identifier=urn:oid:$study")
wado=$(printf '%s' "$one" | grep -o '"address":"[^"]*"' | sed 's/"address":"\([^"]*\)"/\1/')
echo "Endpoint of $study: $(printf '%s' "$wado" | cut -c1-60)…"
meta=$(curl -fsS -H 'Accept: application/dicom+json' "$wado/studies/$study/metadata")
echo "metadata of $study: $(printf '%s' "$meta" | grep -o '"00080018"' | wc -l) instances;" \
	"first BulkDataURI: $(printf '%s' "$meta" | grep -o '"BulkDataURI" *: *"[^"]*"' | head -1 | sed 's/.*"\(http[^"]*\)"/\1/' | cut -c1-60)…"
curl -fsS -H 'Accept: multipart/related; type="application/dicom"' -o "$dir/study.multipart" "$wado/studies/$study"
echo "study retrieve: $(wc -c <"$dir/study.multipart") bytes of multipart/related DICOM"

if $check; then
	exit 0
fi
echo "serving; try: curl '$GATEWAY/pacs/fhir/ImagingStudy?patient=$PATIENT'"
echo "Ctrl-C stops the gateway and Orthanc"
wait "$caddy_pid"
