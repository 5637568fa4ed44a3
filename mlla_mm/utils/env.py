"""Environment report for benchmark headers: device, library versions, CUDA/cuDNN and the git commit.

Versions are read from the installed package metadata, so this imports neither triton nor the OpenMMLab libraries.
"""
import importlib.metadata
import os
import platform
import re
import subprocess

import torch

# Distribution names of the libraries a benchmark result depends on.
PACKAGES = ('torch', 'triton', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mlla_mm')


def package_version(name: str):
    """Installed version of the distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            found = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if device.type == 'cpu':
        return f'{cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)'
    return device.type


def git_state(path: str = None) -> dict:
    """{'commit': sha or None, 'dirty': whether tracked files differ from it} for the checkout holding ``path``
    (default: this package's source tree)."""
    path = path or os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(['git', '-C', path, *args], capture_output=True, text=True, timeout=30)

    try:
        head = git('rev-parse', 'HEAD')
        if head.returncode != 0:
            return {'commit': None, 'dirty': None}
        status = git('status', '--porcelain', '--untracked-files=no')
    except (OSError, subprocess.TimeoutExpired):
        return {'commit': None, 'dirty': None}
    return {'commit': head.stdout.strip(), 'dirty': bool(status.stdout.strip())}


def environment_report(device='cpu') -> dict:
    """Everything a benchmark table needs to be reproducible, as a JSON-serialisable dict."""
    device = torch.device(device)
    report = {
        'device': device_name(device),
        'device_type': device.type,
        'python': platform.python_version(),
        'platform': platform.platform(),
        # torch's own string keeps the local build tag (e.g. +cu130) that the package metadata may drop.
        'versions': {**{name: package_version(name) for name in PACKAGES}, 'torch': torch.__version__},
        'torch_cuda': torch.version.cuda,
        'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        'tf32_matmul': torch.backends.cuda.matmul.allow_tf32,
        'tf32_cudnn': torch.backends.cudnn.allow_tf32,
    }
    if device.type == 'cuda':
        properties = torch.cuda.get_device_properties(device)
        report['device_memory_gib'] = round(properties.total_memory / 2 ** 30, 1)
        report['compute_capability'] = f'{properties.major}.{properties.minor}'
    report.update(git_state())
    return report
