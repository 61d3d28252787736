#!/usr/bin/env bash
# Credentials for a Flower deployment with TLS and SuperNode authentication (flwr 1.42):
#   ca.crt                    the CA every SuperNode and `flwr` trusts (--root-certificates)
#   server.pem, server.key    the SuperLink's TLS certificate, signed by the CA, whose SANs are
#                             127.0.0.1, localhost and every HOST given
#   node-K, node-K.pub        SuperNode K's authentication key pair (ECDSA P-384, OpenSSH format:
#                             flwr 1.42 reads node keys only in that format, hence ssh-keygen)
#
# Usage: scripts/flower_certs.sh [HOST...] [--out DIR] [--nodes N]
#   HOST   an IP address or DNS name the SuperNodes will use to reach the SuperLink
#   DIR    where to write (default: flower-certs); existing files are replaced
#   N      how many SuperNode key pairs (default: 2)
set -euo pipefail

out=flower-certs
nodes=2
hosts=()
while (($#)); do
    case "$1" in
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | cut -c3-; exit 0 ;;
        -*) echo "flower_certs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) hosts+=("$1"); shift ;;
    esac
done
[[ $nodes =~ ^[0-9]+$ ]] || { echo "flower_certs.sh: --nodes must be a number, got '$nodes'" >&2; exit 2; }
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "flower_certs.sh: $tool is required" >&2; exit 1; }
done

sans="IP:127.0.0.1,DNS:localhost"
for host in "${hosts[@]+"${hosts[@]}"}"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then sans+=",IP:$host"; else sans+=",DNS:$host"; fi
done

mkdir -p "$out"
cd "$out"
umask 077  # private keys readable by their owner only

openssl req -x509 -newkey rsa:4096 -nodes -days 365 -sha256 -subj "/CN=fedlora Flower CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:4096 -nodes -sha256 -subj "/CN=fedlora SuperLink" \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$sans" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.pem

for ((k = 0; k < nodes; k++)); do
    rm -f "node-$k" "node-$k.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedlora-node-$k" -f "node-$k"
    chmod 644 "node-$k.pub"
done
echo "wrote CA, SuperLink certificate (SANs $sans) and $nodes SuperNode key pairs to $PWD"
