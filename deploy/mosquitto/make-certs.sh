#!/bin/sh
# A private CA, a broker certificate and optional client certificates (mutual TLS), with openssl.
#
# usage: make-certs.sh DIR BROKER_HOST [CLIENT_NAME...]
#   DIR          output folder: ca.crt/ca.key, broker.crt/broker.key, CLIENT.crt/CLIENT.key
#   BROKER_HOST  the name (or IP address) gates use in mqtt.url; it goes in subjectAltName
#
# An existing CA in DIR is reused, so new clients can be added later. Keys are EC P-256.
# Keep ca.key off the broker if you can: it only signs certificates.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR BROKER_HOST [CLIENT_NAME...]" >&2; exit 2; }
dir=$1
host=$2
shift 2
command -v openssl >/dev/null || { echo "$0: openssl not found" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077

case $host in
    *[!0-9.]*) san="DNS:$host" ;;
    *) san="IP:$host" ;;
esac

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME CN EXTENSIONS: a certificate for NAME.key signed by the CA
sign() {
    printf '%s\n' "$3" > "$1.ext"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

if [ ! -f ca.key ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -subj "/CN=maskgate CA" -days 3650 -sha256 -out ca.crt
fi
key broker.key
sign broker "$host" "subjectAltName=$san
extendedKeyUsage=serverAuth"
for client in "$@"; do
    key "$client.key"
    sign "$client" "$client" "extendedKeyUsage=clientAuth"
done
chmod 644 ca.crt broker.crt
echo "certificates in $dir: ca.crt, broker.crt/broker.key${*:+, and for $*}"
