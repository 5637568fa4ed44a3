import os

# Triton kernels run on the CPU through the interpreter; 'auto' still picks the PyTorch reference on CPU tensors.
# Set before anything imports triton, since it reads the variable when kernels are defined.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402


def _interpreter_does_bf16_as_a_gpu():
    """Triton 3.8's interpreter truncates fp32 -> bf16 casts (``x.to(tl.bfloat16)``) where a GPU rounds to nearest,
    ties to even, and multiplies bf16 ``tl.dot`` operands as their raw uint16 bits. Both are mended here, once for
    every kernel, so the tests see a GPU's bf16 arithmetic and the kernels carry no interpreter-only code
    (tests/test_interpreter_bf16.py checks both against torch)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    convert_float, create_dot = interpreter._convert_float, interpreter.InterpreterBuilder.create_dot

    def convert_rounding_to_nearest(values, input_dtype, output_dtype, rounding_mode):
        if not (input_dtype == tl.float32 and output_dtype == tl.bfloat16
                and rounding_mode != interpreter._ir.ROUNDING_MODE.RTZ):
            return convert_float(values, input_dtype, output_dtype, rounding_mode)
        bits = np.frombuffer(np.ascontiguousarray(values, np.float32).tobytes(), np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded[nan] = (bits[nan] >> 16) | 0x40  # quiet NaN, sign kept
        return rounded.astype(np.uint16).reshape(np.shape(values))

    def as_float32(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot_of_values(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    interpreter._convert_float = convert_rounding_to_nearest
    interpreter.InterpreterBuilder.create_dot = dot_of_values


if os.environ['TRITON_INTERPRET'] == '1':
    _interpreter_does_bf16_as_a_gpu()


@pytest.fixture
def mm_batch():
    """The synthetic mm batch builder (mlla_mm.utils.demo_data.synthetic_batch): ``mm_batch(library, batch=2,
    size=(64, 64), num_classes=3, with_mask=True)`` gives uint8 images with DetDataSamples (boxes, labels, masks) or
    SegDataSamples (label maps), ready for a model's data_preprocessor / train_step / test_step."""
    import numpy as np

    from mlla_mm.utils.demo_data import synthetic_batch
    np.random.seed(0)  # mmdet's demo inputs draw their boxes with numpy: the same batches in every run
    return synthetic_batch
