"""Train an MMDetection or MMSegmentation config (the library is read from the config).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]
                                 [--backbone NAME [--pretrained PATH]] [--launcher {none,pytorch,slurm,mpi}]

CONFIG is a path or a config packaged with a library, e.g. ``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``.
Demo configs (configs/demo) create their synthetic dataset when it is missing.

Every run saves the random states in its checkpoints (``--resume`` then repeats an uninterrupted run exactly),
stops cleanly after the current iteration on SIGINT / SIGTERM, and draws WORK_DIR/loss_curve.png and
WORK_DIR/metric_curve.png (mlla_mm.mm.runner).
"""
import argparse

from mlla_mm.mm.runner import (add_common_args, add_run_hooks, build_runner, enable_amp, ensure_demo_data,
                                load_config, trust_checkpoints)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='config file path, or mmdet::NAME / mmseg::NAME')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 with dynamic loss scaling on CUDA, bf16 autocast on a CPU')
    parser.add_argument('--resume', nargs='?', const='auto',
                        help='resume from CKPT, or with no value from the latest checkpoint in the work dir')
    return add_common_args(parser).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    add_run_hooks(cfg)
    # Our own checkpoints: the work dir (--resume auto) and the files named on the command line or in load_from.
    trust_checkpoints(cfg.work_dir, cfg.get('load_from'))
    ensure_demo_data(cfg)
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
