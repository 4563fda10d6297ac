#!/bin/sh
# Run a command trusting the base image's CA store plus, when the build got one, the BuildKit secret
# `ca_bundle` (e.g. a TLS-intercepting proxy's CA). The secret is only mounted for the RUN step, so it
# never lands in a layer. Used inside the Dockerfile's builder stage only.
set -eu
bundle=/tmp/build-ca-bundle.pem
: > "$bundle"
for f in /etc/ssl/certs/ca-certificates.crt /run/secrets/ca_bundle; do
  if [ -r "$f" ]; then cat "$f" >> "$bundle"; fi
done
if [ -s "$bundle" ]; then
  export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
fi
status=0
"$@" || status=$?
rm -f "$bundle"
exit "$status"
