#!/bin/bash
# make-tls-certs.sh DIR NAME...: a throwaway x509 set for QEMU's
# migration TLS in DIR, in the layout libvirt's *_tls_x509_cert_dir wants
# (ca-cert.pem; server-cert.pem, server-key.pem for the destination QEMU;
# client-cert.pem, client-key.pem for the source QEMU): a CA, and server
# and client certificates it signs, valid for the host NAMEs and IP
# addresses given (subjectAltName).  QEMU runs as libvirt-qemu (group
# kvm) and reads the files itself: the keys are 0640, group kvm.
# Used by test-libvirt-migrate.c (tls case).
set -euo pipefail

dir=$1
shift
[[ $# -ge 1 ]] || { echo "usage: $0 DIR NAME..." >&2; exit 2; }
san=
for n in "$@"; do
    if [[ $n =~ ^[0-9.]+$ ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}
install -d -m 0755 "$dir"
cd "$dir"
days=2
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem \
    -days "$days" -subj "/CN=migproxy test CA" \
    -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server client; do
    usage=serverAuth
    [[ $who == client ]] && usage=clientAuth
    openssl req -newkey rsa:2048 -nodes -keyout "$who-key.pem" \
        -out "$who.csr" -subj "/CN=$1" 2>/dev/null
    cat >"$who.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$usage
subjectAltName=$san
EOF
    openssl x509 -req -in "$who.csr" -CA ca-cert.pem -CAkey ca-key.pem \
        -CAcreateserial -days "$days" -extfile "$who.ext" \
        -out "$who-cert.pem" 2>/dev/null
    rm -f "$who.csr" "$who.ext"
done
rm -f ca-key.pem ca-cert.srl
chmod 0644 ca-cert.pem server-cert.pem client-cert.pem
chgrp kvm server-key.pem client-key.pem
chmod 0640 server-key.pem client-key.pem
