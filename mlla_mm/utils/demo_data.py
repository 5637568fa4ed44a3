"""A small, seeded synthetic dataset in the real COCO-instances and ADE20K layouts, for the CPU demo and the tests.

Each image holds a few non-overlapping shapes (circle, square, triangle) in random colours, sizes and rotations on a
textured background (smooth colour noise plus stripes), so the class is given by the shape, not by its colour.

Layout under ``root`` (the defaults of ``configs/demo``)::

    coco/{train,val}/NNNNNN.jpg
    coco/annotations/instances_{train,val}.json      polygon masks, category ids 1..3
    ade/images/{training,validation}/NNNNNN.jpg
    ade/annotations/{training,validation}/NNNNNN.png label map: 0 unused (ADE20K's "other", ignored by
                                                      reduce_zero_label), 1 background, 2 circle, 3 square, 4 triangle
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('circle', 'square', 'triangle')
SEG_CLASSES = ('background',) + SHAPES
# Written last: its presence means the set is complete (other processes of a distributed run wait for it).
DONE_MARKER = '.complete'


def _background(rng, size):
    """Smooth random colour field (bilinear upsampling of a coarse grid) plus stripes and pixel noise, uint8 HxWx3."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 20)
    yy, xx = np.mgrid[:size, :size]
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    field += stripes[..., None] * rng.uniform(10, 30) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(field, 0, 255).astype(np.uint8)


def _polygon(rng, shape, cx, cy, radius):
    """Vertices [(x, y), ...] of a shape centred at (cx, cy) that fits in a circle of ``radius``."""
    start = rng.uniform(0, 2 * math.pi)
    corners = {'circle': 32, 'square': 4, 'triangle': 3}[shape]
    return [(cx + radius * math.cos(start + 2 * math.pi * i / corners),
             cy + radius * math.sin(start + 2 * math.pi * i / corners)) for i in range(corners)]


def _place_shapes(rng, size, min_radius, max_radius, max_shapes):
    """Non-overlapping (shape index, cx, cy, radius) tuples, 1..max_shapes of them."""
    placed = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            radius = rng.uniform(min_radius, max_radius)
            cx, cy = rng.uniform(radius, size - radius, size=2)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for _, x, y, r in placed):
                placed.append((int(rng.integers(len(SHAPES))), cx, cy, radius))
                break
    return placed


def _render(rng, size, min_radius, max_radius, max_shapes):
    """One image (PIL RGB), its label map (PIL L, values as in the module docstring) and its instances."""
    image = Image.fromarray(_background(rng, size))
    labels = Image.new('L', (size, size), 1)
    draw_image, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    instances = []
    for shape, cx, cy, radius in _place_shapes(rng, size, min_radius, max_radius, max_shapes):
        points = _polygon(rng, SHAPES[shape], cx, cy, radius)
        draw_image.polygon(points, fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
        draw_labels.polygon(points, fill=2 + shape)
        instances.append((shape, points))
    return image, labels, instances


def _polygon_area(points):
    xs, ys = np.array(points).T
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _coco_split(rng, out_dir, split, count, size, **shape_args):
    images, annotations = [], []
    os.makedirs(os.path.join(out_dir, 'coco', split), exist_ok=True)
    for index in range(count):
        image, _, instances = _render(rng, size, **shape_args)
        file_name = f'{index:06d}.jpg'
        image.save(os.path.join(out_dir, 'coco', split, file_name), quality=95)
        images.append(dict(id=index + 1, file_name=file_name, width=size, height=size))
        for shape, points in instances:
            xs, ys = np.array(points).T
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index + 1, category_id=shape + 1, iscrowd=0,
                segmentation=[[round(float(c), 2) for point in points for c in point]],
                area=round(_polygon_area(points), 2),
                bbox=[round(float(v), 2) for v in (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())]))
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(SHAPES)]
    path = os.path.join(out_dir, 'coco', 'annotations', f'instances_{split}.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return len(annotations)


def _ade_split(rng, out_dir, split, count, size, **shape_args):
    image_dir = os.path.join(out_dir, 'ade', 'images', split)
    label_dir = os.path.join(out_dir, 'ade', 'annotations', split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for index in range(count):
        image, labels, _ = _render(rng, size, **shape_args)
        image.save(os.path.join(image_dir, f'{index:06d}.jpg'), quality=95)
        labels.save(os.path.join(label_dir, f'{index:06d}.png'))


def demo_data_exists(root):
    return os.path.isfile(os.path.join(root, DONE_MARKER))


def make_demo_data(root='data/demo', train=300, val=50, size=128, seed=0, min_radius=12, max_radius=30,
                   max_shapes=3, log=print):
    """Write the COCO and ADE20K-layout demo sets (``train`` / ``val`` images each, ``size`` x ``size`` pixels)."""
    if size < 2 * max_radius + 4:
        raise ValueError(f'image size {size} is too small for shapes of radius up to {max_radius}')
    shape_args = dict(min_radius=min_radius, max_radius=max_radius, max_shapes=max_shapes)
    rng = np.random.default_rng(seed)
    log(f'making the synthetic demo dataset in {root}/ ({train} train + {val} val images of {size}x{size}, '
        f'classes {", ".join(SHAPES)}, seed {seed})')
    for split, count in (('train', train), ('val', val)):
        instances = _coco_split(rng, root, split, count, size, **shape_args)
        log(f'  coco/{split}: {count} images, {instances} instances')
    for split, count in (('training', train), ('validation', val)):
        _ade_split(rng, root, split, count, size, **shape_args)
        log(f'  ade/{split}: {count} images and label maps')
    with open(os.path.join(root, DONE_MARKER), 'w') as f:
        json.dump(dict(train=train, val=val, size=size, seed=seed), f)


def synthetic_batch(library: str, batch: int = 2, size=(64, 64), num_classes: int = 3, with_mask: bool = True,
                    device='cpu', seed: int = 0) -> dict:
    """An in-memory batch for an mm model's train_step / test_step / data_preprocessor (the tests' ``mm_batch``
    fixture, the benchmark's config subjects): uint8 images with DetDataSamples (mmdet.testing.demo_mm_inputs: random
    boxes, labels and masks) or SegDataSamples (random label maps)."""
    import torch
    height, width = (size, size) if isinstance(size, int) else size
    if library == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch, image_shapes=(3, height, width), num_classes=num_classes, with_mask=with_mask,
                              device=device)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator, images, samples = torch.Generator().manual_seed(seed), [], []
    for _ in range(batch):
        images.append(torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).to(device))
        samples.append(SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                                   pad_shape=(height, width))))
        labels = torch.randint(0, num_classes, (1, height, width), generator=generator)
        samples[-1].gt_sem_seg = PixelData(data=labels.to(device))
    return dict(inputs=images, data_samples=samples)
