# PKI and kubeconfigs of the local cluster, made with openssl (sourced by up.sh). ECDSA P-256
# keys: generated in milliseconds, accepted by every component. Existing files are kept, so a
# second up.sh reuses the cluster's identity.
# shellcheck shell=bash

_vg_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# _vg_cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
_vg_cert() {
  local pki=$VG_DIR/pki name=$1 subj=$2 eku=$3 san=${4:-}
  [ -s "$pki/$name.crt" ] && return 0
  _vg_key "$pki/$name.key"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } > "$pki/$name.ext"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$pki/$name.ext" \
    -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# _vg_kubeconfig FILE CERT_NAME: a kubeconfig for the client certificate pki/CERT_NAME.
_vg_kubeconfig() {
  local file=$1 pki=$VG_DIR/pki name=$2
  vg_write "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: voltgrid
  cluster:
    server: https://127.0.0.1:$VG_APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $pki/$name.crt
    client-key: $pki/$name.key
contexts:
- name: voltgrid
  context: {cluster: voltgrid, user: $name, namespace: default}
current-context: voltgrid
EOF
}

vg_certs() {
  local pki=$VG_DIR/pki
  mkdir -p "$pki"
  chmod 700 "$pki"
  if [ ! -s "$pki/ca.crt" ]; then
    _vg_key "$pki/ca.key"
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=voltgrid-local-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" -out "$pki/ca.crt"
  fi
  local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  sans+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$VG_SERVICE_IP,IP:$VG_NODE_IP"
  _vg_cert apiserver "/CN=kube-apiserver" serverAuth "$sans"
  _vg_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  _vg_cert admin "/O=system:masters/CN=voltgrid-admin" clientAuth
  _vg_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  _vg_cert scheduler "/CN=system:kube-scheduler" clientAuth
  _vg_cert kubelet "/O=system:nodes/CN=system:node:$VG_NODE_NAME" clientAuth
  _vg_cert kubelet-serving "/CN=$VG_NODE_NAME" serverAuth "DNS:$VG_NODE_NAME,IP:127.0.0.1,IP:$VG_NODE_IP"
  _vg_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  if [ ! -s "$pki/sa.key" ]; then
    _vg_key "$pki/sa.key"
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  fi
  _vg_kubeconfig "$VG_DIR/kubeconfig" admin
  local c
  for c in controller-manager scheduler kubelet kube-proxy; do
    _vg_kubeconfig "$VG_DIR/config/$c.kubeconfig" "$c"
  done
}
