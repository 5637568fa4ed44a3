"""What tools/train.py and tools/test.py share: config lookup, library detection, checkpoint loading under
torch >= 2.6, backbone swapping, distributed runs on CPUs and the demo data."""
import os
import os.path as osp
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import CheckpointLoader
from mmengine.utils import get_installed_path

LIBRARIES = ('mmdet', 'mmseg')


def add_common_args(parser):
    """The flags both tools take (mmdet's CLI plus --backbone / --pretrained)."""
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_iters=100 (key=value pairs)')
    parser.add_argument('--backbone', help='replace the config\'s backbone by a registered one, e.g. mlla_t '
                        '(mlla_mm.mm.swap_backbone)')
    parser.add_argument('--pretrained', help='with --backbone: checkpoint to initialise the new backbone from')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torchrun sets LOCAL_RANK; torch.distributed.launch passes --local_rank / --local-rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def resolve_config(name: str) -> str:
    """A config path, or ``mmdet::path/in/configs.py`` / ``mmseg::...`` for a config packaged with that library."""
    if '::' in name:
        package, relative = name.split('::', 1)
        if package not in LIBRARIES:
            raise ValueError(f'config {name!r}: unknown package {package!r}; use one of {", ".join(LIBRARIES)}')
        path = osp.join(get_installed_path(package), '.mim', 'configs', relative)
        if not osp.isfile(path):
            raise FileNotFoundError(f'config {name!r}: {package} has no config {relative!r} (looked for {path})')
        return path
    if not osp.isfile(name):
        raise FileNotFoundError(f'config file not found: {name}')
    return name


def detect_library(cfg: Config) -> str:
    """'mmdet' or 'mmseg', from the config's default_scope, else from which registry knows its model type."""
    scope = cfg.get('default_scope')
    if scope in LIBRARIES:
        return scope
    model_type = cfg.get('model', {}).get('type', '')
    if '::' in model_type:
        return model_type.split('::', 1)[0]
    import mlla_mm.mm  # noqa: F401  (the registries must be complete before asking them)
    found = [lib for lib, registry in registries().items() if registry.get(model_type) is not None]
    if len(found) != 1:
        raise ValueError(f'cannot tell whether this is an mmdet or an mmseg config: default_scope={scope!r}, '
                         f'model type {model_type!r} is known to {found or "neither library"}')
    return found[0]


def registries():
    from mlla_mm.mm import REGISTERED_IN
    return REGISTERED_IN


def load_config(args) -> Config:
    """Load ``args.config``, apply --cfg-options, --backbone/--pretrained, --launcher and --work-dir."""
    import mlla_mm.mm  # noqa: F401  registers the backbones, so configs without custom_imports work
    cfg = Config.fromfile(resolve_config(args.config))
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.pretrained and not args.backbone:
        raise ValueError('--pretrained needs --backbone (to initialise the config\'s own backbone from a file, '
                         'use --cfg-options model.backbone.init_cfg.checkpoint=PATH)')
    if args.backbone:
        from mlla_mm.mm import swap_backbone  # being written in mlla_mm/mm/swap.py; only needed for this flag
        cfg = swap_backbone(cfg, args.backbone, pretrained=args.pretrained)
    cfg.default_scope = detect_library(cfg)
    if args.launcher != 'none' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config.split('::')[-1]))[0])
    return cfg


def trust_checkpoints(*locations):
    """Let mmengine load the checkpoints of our own runs under torch >= 2.6.

    torch >= 2.6 loads with weights_only=True by default, and mmengine 0.10.7 calls torch.load without the argument.
    Its training checkpoints pickle more than tensors (the message hub's HistoryBuffers with numpy arrays and, through
    ``getattr``, their statistics methods), so resuming or testing one fails. Allow-listing those globals would have
    to include ``builtins.getattr``, which defeats the restricted unpickler; instead mmengine's loader for local
    files is replaced by one that uses weights_only=False only for files in ``locations`` (the run's work dir, and
    checkpoints the user named on the command line) and keeps torch's default everywhere else (e.g. a pretrained
    file named in a config)."""
    trusted = [osp.realpath(location) for location in locations if location]

    def is_trusted(path):
        path = osp.realpath(path)
        return any(path == t or path.startswith(t.rstrip(os.sep) + os.sep) for t in trusted)

    def load_from_local(filename, map_location=None):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'checkpoint file not found: {filename}')
        if is_trusted(filename):
            return torch.load(filename, map_location=map_location, weights_only=False)
        return torch.load(filename, map_location=map_location)

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def ensure_demo_data(cfg: Config, log=print, timeout_s=600):
    """Demo configs name their data folder in ``demo_data``; create the dataset there when it is missing. In a
    distributed run rank 0 writes it and the other ranks wait for it."""
    root = cfg.get('demo_data')
    if root is None:
        return
    from mlla_mm.utils.demo_data import demo_data_exists, make_demo_data
    if demo_data_exists(root):
        return
    if int(os.environ.get('RANK', '0')) == 0:
        log(f'demo data not found in {root}/: creating it')
        make_demo_data(root, log=log)
        return
    deadline = time.monotonic() + timeout_s
    while not demo_data_exists(root):
        if time.monotonic() > deadline:
            raise TimeoutError(f'rank {os.environ["RANK"]}: rank 0 did not finish the demo data in {root}/ '
                               f'within {timeout_s} s')
        time.sleep(1)


def build_runner(cfg: Config):
    """mmengine's Runner, or the config's own ``runner_type``."""
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg)


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes: mmengine's Runner always passes ``device_ids=[LOCAL_RANK]``, which
    DistributedDataParallel rejects for a CPU module."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def setup_cpu_distributed(cfg: Config):
    """Distributed training without GPUs (e.g. torchrun with gloo on a CPU machine). mmengine's init_dist calls
    torch.cuda.set_device, so the gloo process group is created here first (the Runner then keeps it), and the
    model is wrapped with CPUDistributedDataParallel. SyncBN has no CPU implementation: configs that use it fail."""
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'nccl')
        if backend != 'gloo':
            print(f'no CUDA device: distributed backend {backend!r} -> gloo')
        dist.init_process_group(backend='gloo')
    cfg.setdefault('model_wrapper_cfg', dict(type='CPUDistributedDataParallel',
                                             broadcast_buffers=False,
                                             find_unused_parameters=cfg.get('find_unused_parameters', False)))
