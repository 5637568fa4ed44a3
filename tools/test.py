"""Test (evaluate) a checkpoint of an MMDetection or MMSegmentation config (the library is read from the config).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl] [--show-dir DIR]
                                           [--cfg-options k=v ...] [--backbone NAME] [--launcher ...]
"""
import argparse
import os.path as osp

from mlla_mm.mm.runner import (add_common_args, build_runner, ensure_demo_data, load_config,
                                trust_checkpoints)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a detector or segmentor')
    parser.add_argument('config', help='config file path, or mmdet::NAME / mmseg::NAME')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the raw predictions to this .pkl file')
    parser.add_argument('--show-dir', help='save drawn predictions under WORK_DIR/TIMESTAMP/SHOW_DIR (mmdet) or '
                        'WORK_DIR/SHOW_DIR (mmseg); an absolute path is used as it is')
    return add_common_args(parser).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        _enable_drawing(cfg, args.show_dir)
    trust_checkpoints(args.checkpoint)
    ensure_demo_data(cfg)
    runner = build_runner(cfg)
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out}')
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


def _enable_drawing(cfg, show_dir):
    """Turn on the library's visualization hook to save drawn predictions (mmdet: the hook's test_out_dir, under
    the run's log folder; mmseg: the visualizer's save_dir, which is taken relative to the current folder)."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show-dir: the config has no default_hooks.visualization hook to draw with')
    hook.draw = True
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = show_dir
    else:
        hook.interval = 1
        cfg.visualizer.save_dir = osp.join(cfg.work_dir, show_dir)


if __name__ == '__main__':
    main()
