#!/usr/bin/env bash
# Install the whole mlla_mm stack into the active Python environment, then mlla_mm itself in editable mode.
#
#   bash tools/setup_env.sh [--wheel-dir DIR]
#
# Versions come from constraints.txt. mmcv 2.1.0 has no wheel for torch 2.14, so it is built from its sdist
# against the installed torch (about 20 minutes on 2 cores) unless DIR holds a matching mmcv wheel. A built wheel
# is kept in ~/.cache/mlla_mm/wheels, so a rebuild is never needed twice. Running it again when everything is in
# place takes seconds.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
WHEEL_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel-dir) WHEEL_DIR="${2:?--wheel-dir needs a directory}"; shift 2 ;;
    --wheel-dir=*) WHEEL_DIR="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -n "$WHEEL_DIR" ] && [ ! -d "$WHEEL_DIR" ]; then
  echo "setup_env.sh: --wheel-dir '$WHEEL_DIR' is not a directory" >&2; exit 2
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS="$ROOT/constraints.txt"
CACHE_WHEELS="${MLLA_MM_WHEEL_CACHE:-$HOME/.cache/mlla_mm/wheels}"
PY="${PYTHON:-python}"
PIP=("$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")
step() { echo; echo "==> [setup $1] $2"; }

pinned() { grep -E "^$1==" "$CONSTRAINTS" | cut -d= -f3; }

# Prints the pinned packages that are missing or at another version (nothing when all match).
unmet() {
  "$PY" - "$CONSTRAINTS" "$@" <<'EOF'
import sys
from importlib import metadata
pins = dict(line.split('==') for line in open(sys.argv[1]).read().split('\n')
            if '==' in line and not line.startswith('#'))
for name in sys.argv[2:]:
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or have.split('+')[0] != pins[name]:
        print(f'{name} (have {have}, want {pins[name]})')
EOF
}

"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || echo "setup_env.sh: warning: tested with Python 3.11, this is $("$PY" --version 2>&1)"

BASE_PKGS=(setuptools torch torchvision triton mmengine timm pycocotools numpy opencv-python scipy shapely
           terminaltables matplotlib prettytable ftfy regex pillow psutil pytest)
step 1/5 "base packages: torch, torchvision, mmengine, timm and the runtime deps of mmdet/mmseg"
missing="$(unmet "${BASE_PKGS[@]}")"
if [ -z "$missing" ]; then
  echo "already installed at the pinned versions"
else
  echo "to install: $(echo "$missing" | tr '\n' ' ')"
  "${PIP[@]}" "${BASE_PKGS[@]}"
fi

step 2/5 "mmcv $(pinned mmcv) with its compiled ops"
if [ -z "$(unmet mmcv)" ] && "$PY" -c 'import mmcv.ops' 2>/dev/null; then
  echo "already installed, mmcv.ops imports"
else
  wheel=""
  for dir in "$WHEEL_DIR" "$CACHE_WHEELS"; do
    [ -n "$dir" ] || continue
    wheel="$(ls "$dir"/mmcv-"$(pinned mmcv)"-cp311-*.whl 2>/dev/null | head -n 1 || true)"
    [ -n "$wheel" ] && break
  done
  if [ -n "$wheel" ]; then
    echo "using prebuilt wheel $wheel"
  else
    echo "no prebuilt mmcv wheel found: building from the sdist (about 20 minutes on 2 cores)"
    build_dir="$(mktemp -d)"
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
      -d "$build_dir" "mmcv==$(pinned mmcv)"
    tar -xzf "$build_dir"/mmcv-*.tar.gz -C "$build_dir"
    src="$(ls -d "$build_dir"/mmcv-*/ | head -n 1)"
    # torch >= 2.14 headers need C++20; mmcv hard-codes C++17 for every compiler it drives.
    if "$PY" -c 'import torch, sys; sys.exit(0 if tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 14) else 1)'; then
      sed -i 's/c++17/c++20/g' "$src/setup.py"
      echo "patched mmcv setup.py: -std=c++17 -> -std=c++20"
    fi
    mkdir -p "$CACHE_WHEELS"
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip wheel --disable-pip-version-check --no-deps \
      --no-build-isolation -v -w "$CACHE_WHEELS" "$src" 2>&1 \
      | awk '/ -c [^ ]+\.(cpp|cu) / { n++; match($0, /[^ \/]+\.(cpp|cu) /)
                                        printf "[mmcv build] %d: %s\n", n, substr($0, RSTART, RLENGTH - 1); fflush(); next }
             /building|Stored|Successfully|[Ee]rror/ { print; fflush() }'
    wheel="$(ls "$CACHE_WHEELS"/mmcv-"$(pinned mmcv)"-*.whl 2>/dev/null | head -n 1 || true)"
    [ -n "$wheel" ] || { echo "setup_env.sh: the mmcv build produced no wheel (see the output above)" >&2; exit 1; }
    rm -rf "$build_dir"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$wheel"
  # mmcv's own dependencies, which --no-deps skipped
  "${PIP[@]}" addict mmengine numpy packaging pillow pyyaml yapf opencv-python
fi

step 3/5 "mmdet $(pinned mmdet) and mmsegmentation $(pinned mmsegmentation)"
if [ -z "$(unmet mmdet mmsegmentation)" ]; then
  echo "already installed at the pinned versions"
else
  "${PIP[@]}" mmdet mmsegmentation
fi

step 4/5 "mlla_mm (editable)"
if "$PY" -c 'import mlla_mm, pathlib, sys; sys.exit(0 if pathlib.Path(mlla_mm.__file__).parent.parent == pathlib.Path(sys.argv[1]) else 1)' "$ROOT" 2>/dev/null \
   && "$PY" -c 'import mlla_mm.kernels' 2>/dev/null; then
  echo "already installed from $ROOT"
else
  "$PY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
fi

step 5/5 "check: import the stack and print versions"
"$PY" - <<'EOF'
import importlib
for name in ['torch', 'torchvision', 'mmengine', 'mmcv', 'mmcv.ops', 'mmdet', 'mmdet.models', 'mmseg',
             'mmseg.models', 'timm', 'triton', 'mlla_mm']:
    module = importlib.import_module(name)
    version = getattr(module, '__version__', '')
    if version:
        print(f'{name:<14}{version}')
import mlla_mm.mm  # registers the backbones into mmdet and mmseg
print('setup complete')
EOF
