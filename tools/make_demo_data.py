"""Write the synthetic demo dataset (COCO instances + ADE20K layout) that configs/demo trains on.

    python tools/make_demo_data.py [--root data/demo] [--train 300] [--val 50] [--size 128] [--seed 0]

tools/train.py and tools/test.py call the same function when a demo config's data is missing.
"""
import argparse

from mlla_mm.utils.demo_data import make_demo_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', default='data/demo', help='output folder (default: data/demo)')
    parser.add_argument('--train', type=int, default=300, help='training images per set')
    parser.add_argument('--val', type=int, default=50, help='validation images per set')
    parser.add_argument('--size', type=int, default=128, help='square image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    make_demo_data(args.root, train=args.train, val=args.val, size=args.size, seed=args.seed)


if __name__ == '__main__':
    main()
