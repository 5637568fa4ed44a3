import os

# Triton kernels run on the CPU through the interpreter; 'auto' still picks the PyTorch reference on CPU tensors.
# Set before anything imports triton, since it reads the variable when kernels are defined.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402


@pytest.fixture
def mm_batch():
    """The synthetic mm batch builder (mlla_mm.utils.demo_data.synthetic_batch): ``mm_batch(library, batch=2,
    size=(64, 64), num_classes=3, with_mask=True)`` gives uint8 images with DetDataSamples (boxes, labels, masks) or SegDataSamples
    (label maps), ready for a model's data_preprocessor / train_step / test_step."""
    import numpy as np

    from mlla_mm.utils.demo_data import synthetic_batch
    np.random.seed(0)  # mmdet's demo inputs draw their boxes with numpy: the same batches in every run
    return synthetic_batch
