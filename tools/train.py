"""Train an MMDetection or MMSegmentation config (the library is read from the config).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]
                                 [--backbone NAME [--pretrained PATH]] [--launcher {none,pytorch,slurm,mpi}]

CONFIG is a path or a config packaged with a library, e.g. ``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``.
Demo configs (configs/demo) create their synthetic dataset when it is missing.
"""
import argparse

from mlla_mm.mm.runner import (add_common_args, build_runner, ensure_demo_data, load_config,
                                trust_checkpoints)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='config file path, or mmdet::NAME / mmseg::NAME')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (CUDA only)')
    parser.add_argument('--resume', nargs='?', const='auto',
                        help='resume from CKPT, or with no value from the latest checkpoint in the work dir')
    return add_common_args(parser).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('--amp: the config already uses AmpOptimWrapper')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    # Our own checkpoints: the work dir (--resume auto) and the files named on the command line or in load_from.
    trust_checkpoints(cfg.work_dir, cfg.get('load_from'))
    ensure_demo_data(cfg)
    runner = build_runner(cfg)
    runner.train()



if __name__ == '__main__':
    main()
