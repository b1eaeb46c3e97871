#!/usr/bin/env bash
# The real-GPU check of fcsup's GPU functions (issue 13), for a machine with an NVIDIA GPU and
# its driver, and either a CDI spec for nvidia.com/gpu or NVIDIA's container toolkit
# (nvidia-ctk, to generate one; or nvidia-container-runtime-hook for the legacy path).
# Run as root from the repository root:  bash tests/gpu/run-on-gpu.sh
# It needs cc and python3 (no network). It shows:
#   1. a function granted the GPU runs `nvidia-smi -L`;
#   2. a CUDA function keeps its device memory across a freeze and thaw;
#   3. with gpuHibernateAfter, it disappears from nvidia-smi while hibernated (cuda-checkpoint,
#      driver 570+) and answers correctly after waking, with the wake-up time.
# What it prints at the end goes into README (machine, driver, figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf '\n== %s\n' "$*"; }
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this is not a GPU machine" >&2; exit 2; }
command -v cc >/dev/null && command -v python3 >/dev/null || { echo "needs cc and python3" >&2; exit 2; }
work=$(mktemp -d /tmp/fcsup-gpu.XXXXXX)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null; sleep 1; rm -rf "$work"' EXIT

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$work/gpu.txt"
uname -r

FCSUP=${FCSUP:-target/release/fcsup}
[ -x "$FCSUP" ] || cargo build --release --bins
"$FCSUP" check | grep -Ei 'gpu|cdi|nvidia|cuda|device' || true

say "CDI spec"
cdi_args=()
if ! grep -qs 'nvidia.com/gpu' /etc/cdi/* /var/run/cdi/* 2>/dev/null; then
  if command -v nvidia-ctk >/dev/null; then
    mkdir -p "$work/cdi"
    nvidia-ctk cdi generate --output="$work/cdi/nvidia.yaml" >/dev/null
    cdi_args=(--cdi-spec-dir "$work/cdi")
    echo "generated $work/cdi/nvidia.yaml"
  else
    echo "no nvidia.com/gpu CDI spec and no nvidia-ctk: fcsup uses the legacy hook if installed"
  fi
fi

say "the function's image (OCI layout)"
root="$work/rootfs"
mkdir -p "$root/app" "$root/tmp" "$root/bin"
cc -O2 -o "$root/app/cuda_fn" tests/gpu/cuda_fn.c -ldl
cp "$(readlink -f /bin/sh)" "$root/bin/sh"
for f in "$root/app/cuda_fn" "$root/bin/sh"; do
  ldd "$f" | grep -o '/[^ ]*' | while read -r lib; do mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; done
done
python3 - "$root" "$work/layout" <<'PY'
import hashlib, io, json, os, sys, tarfile
root, out = sys.argv[1], sys.argv[2]
blobs = os.path.join(out, "blobs", "sha256"); os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest(); open(os.path.join(blobs, d), "wb").write(data); return "sha256:" + d, len(data)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    t.add(root, arcname=".")
layer = buf.getvalue()
ldig, lsize = put(layer)
config = {"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/app/cuda_fn"], "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/app"},
          "rootfs": {"type": "layers", "diff_ids": [ldig]}}
cdig, csize = put(json.dumps(config).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldig, "size": lsize}]}
mdig, msize = put(json.dumps(manifest).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
           "annotations": {"org.opencontainers.image.ref.name": "gpu"}}]}, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
PY

cat > "$work/s.yaml" <<YAML
edition: 3.0.0
resources:
  cuda:
    props:
      runtime: custom-container
      memorySize: 8192
      cpu: 2
      timeout: 60
      customContainerConfig:
        image: oci:$work/layout:gpu
        port: 9000
      gpuConfig: {gpuType: fc.gpu.ada.1, gpuMemorySize: 8192}
      fcsup:
        gpus: [0]
        gpuHibernateAfter: 5
        startTimeout: 120
YAML
port=19187
"$FCSUP" serve -f "$work/s.yaml" --listen 127.0.0.1:$port --image-cache "$work/images" "${cdi_args[@]}" > "$work/fcsup.log" 2>&1 &
echo $! > "$work/pid"
for _ in $(seq 100); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/metrics')" 2>/dev/null && break; sleep 0.2; done
invoke() { python3 - "$port" "$1" <<'PY'
import sys, time, urllib.request as u
t = time.monotonic()
r = u.urlopen(u.Request(f"http://127.0.0.1:{sys.argv[1]}/2023-03-30/functions/cuda/invocations", data=sys.argv[2].encode()))
body = r.read().decode()
print(f"{body.strip()} [{(time.monotonic() - t) * 1000:.1f} ms end to end, error type: {r.headers.get('x-fc-error-type') or '-'}]")
PY
}

say "1. nvidia-smi -L inside the function"
invoke smi
say "2. device memory across freeze and thaw"
invoke check
sleep 2
invoke check
say "3. GPU hibernation (gpuHibernateAfter: 5)"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tee "$work/apps-awake.txt"
for _ in $(seq 60); do grep -q 'GPU hibernated' "$work/fcsup.log" && break; sleep 0.5; done
grep 'GPU hibernated' "$work/fcsup.log" | tail -1 || { echo "it did not hibernate:"; tail -20 "$work/fcsup.log"; }
echo "compute apps while hibernated (expected: none of the function's):"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
invoke check
grep 'GPU woken' "$work/fcsup.log" | tail -1 || true
say "done; fcsup's log: $work/fcsup.log (kept until exit)"
