"""What tools/train.py and tools/test.py share: config lookup, library detection, checkpoint loading under
torch >= 2.6, backbone swapping, distributed runs on CPUs, the demo data, and what makes a run survive: autocast on
CPUs, exact resume (random states in the checkpoint), stopping cleanly on SIGINT/SIGTERM, and loss/metric plots."""
import contextlib
import json
import os
import os.path as osp
import random
import signal
import time

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner import CheckpointLoader, IterBasedTrainLoop
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


def enable_amp(cfg: Config, log=print):
    """--amp: mmengine's AmpOptimWrapper (fp16 with dynamic loss scaling) on CUDA. On a CPU, where AmpOptimWrapper
    refuses to run, bf16 autocast of the backbone and neck (bf16 has fp32's exponent range, so it needs no loss
    scaling); the heads stay in fp32, since mmcv's CPU ops (NMS, RoIAlign) take fp32 only."""
    if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        log(f'--amp: the config already uses {cfg.optim_wrapper.type}')
    elif torch.cuda.is_available():
        cfg.optim_wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
    else:
        log('--amp on a CPU: bf16 autocast of the backbone and neck (AutocastOptimWrapper)')
        cfg.optim_wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16', modules=('backbone', 'neck'))


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose training forward (optim_context) runs under ``torch.autocast(device_type, dtype)``, without
    loss scaling: for bf16, and for devices mmengine's AmpOptimWrapper does not accept (CPUs). ``modules`` (names of
    the model's children, e.g. ('backbone', 'neck')) limits autocast to those, whose outputs are cast back to fp32;
    None autocasts the whole forward."""

    def __init__(self, dtype='bfloat16', device_type='cpu', modules=None, **kwargs):
        super().__init__(**kwargs)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.device_type, self.modules, self.active, self.wrapped = device_type, modules, False, set()

    @contextlib.contextmanager
    def optim_context(self, model):
        model = getattr(model, 'module', model)  # under DistributedDataParallel
        for name in self.modules or ():
            if name not in self.wrapped and getattr(model, name, None) is not None:
                self._autocast_forward(getattr(model, name))
                self.wrapped.add(name)
        autocast = torch.autocast(self.device_type, dtype=self.dtype, enabled=self.modules is None)
        self.active = True
        try:
            with super().optim_context(model), autocast:
                yield
        finally:
            self.active = False

    def _autocast_forward(self, module):
        forward = module.forward

        def autocast_forward(*args, **kwargs):
            if not self.active:  # validation and testing run in fp32, as under AmpOptimWrapper
                return forward(*args, **kwargs)
            with torch.autocast(self.device_type, dtype=self.dtype):
                outputs = forward(*args, **kwargs)
            if isinstance(outputs, torch.Tensor):
                return outputs.float()
            return type(outputs)(output.float() for output in outputs)
        module.forward = autocast_forward


def add_run_hooks(cfg: Config):
    """The hooks every tools/train.py run gets (see below), after the config's own custom_hooks."""
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='RandomStateHook'), dict(type='StopOnSignalHook'),
                        dict(type='CurvePlotHook')]


def random_states() -> dict:
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict):
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


class _RestoreAfterSkip:
    """Wraps the loop's data iterator: after the ``skip`` batches a resumed IterBasedTrainLoop draws to catch up
    (running the data pipeline, which uses the random generators), it restores ``states``, then yields as usual."""

    def __init__(self, iterator, skip, states):
        self.iterator, self.skip, self.states = iterator, skip, states

    def __next__(self):
        if self.skip == 0 and self.states is not None:
            set_random_states(self.states)
            self.states = None
        self.skip -= 1
        return next(self.iterator)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Exact resume: the python, numpy, torch (and CUDA) random states go into every checkpoint and are restored
    where the saving run stood, so a resumed run draws the same augmentations, samples and drop-path masks as one
    that never stopped. Validation runs on a copy of the states, so how often a run validates does not change its
    training."""

    def __init__(self):
        self.pending = self.before_val_states = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['random_states'] = random_states()

    def after_load_checkpoint(self, runner, checkpoint):
        self.pending = checkpoint.get('random_states', {})

    def before_train_epoch(self, runner):
        states, self.pending = self.pending, None
        if states is None or runner.iter == 0:  # nothing loaded, or weights only (load_from without resume)
            return
        if not states:
            runner.logger.warning('the checkpoint holds no random states: the resumed run will not repeat the '
                                  'random draws of an uninterrupted one')
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreAfterSkip(loop.dataloader_iterator, loop.iter, states)
        else:
            set_random_states(states)

    def before_val(self, runner):
        self.before_val_states = random_states()

    def after_val(self, runner):
        set_random_states(self.before_val_states)


@HOOKS.register_module()
class StopOnSignalHook(Hook):
    """SIGINT / SIGTERM during training: finish the current iteration (and any checkpoint it saves), then exit
    with status 128 + signal number, so no checkpoint is left half-written; ``--resume`` continues from the last
    one. A second signal exits at once."""

    priority = 'LOWEST'  # after the CheckpointHook of the same iteration

    def before_train(self, runner):
        self.received = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum

    def _check(self, runner):
        if self.received is not None:
            runner.logger.warning(f'{signal.Signals(self.received).name} received: stopping after iteration '
                                  f'{runner.iter}; resume with --resume')
            raise SystemExit(128 + self.received)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._check(runner)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._check(runner)

    def after_train(self, runner):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@HOOKS.register_module()
class CurvePlotHook(Hook):
    """Writes WORK_DIR/loss_curve.png and WORK_DIR/metric_curve.png from the run's logged scalars
    (LocalVisBackend's vis_data/scalars.json) after every validation and at the end of training."""

    priority = 'LOWEST'  # after the LoggerHook has written the scalars

    @master_only
    def _plot(self, runner):
        path = osp.join(runner.log_dir, 'vis_data', 'scalars.json')
        if osp.isfile(path):
            by_epoch = not isinstance(runner.train_loop, IterBasedTrainLoop)
            plot_curves(path, runner.work_dir, 'epoch' if by_epoch else 'iteration')

    def after_val_epoch(self, runner, metrics=None):
        self._plot(runner)

    def after_train(self, runner):
        self._plot(runner)


def plot_curves(scalars_json: str, out_dir: str, val_unit: str = 'iteration') -> list:
    """Plot the training losses against the iteration and the validation metrics against ``val_unit`` from an
    mmengine scalars.json; returns the PNG paths written."""
    from mlla_mm.utils.plot import line_plot
    with open(scalars_json) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'loss' not in r]
    skip = {'step', 'iter', 'epoch', 'lr', 'time', 'data_time', 'memory', 'grad_norm'}
    curves = (('loss_curve.png', train, lambda k: k.startswith('loss'), 'iteration', 'loss'),
              ('metric_curve.png', val, lambda k: k not in skip, val_unit, 'validation metric'))
    written = []
    for name, rows, wanted, x_label, y_label in curves:
        keys = sorted({k for r in rows for k, v in r.items() if wanted(k) and isinstance(v, (int, float))})
        if keys:
            written.append(osp.join(out_dir, name))
            line_plot(written[-1], {key: [(r['step'], r[key]) for r in rows if key in r] for key in keys},
                      x_label, y_label)
    return written
