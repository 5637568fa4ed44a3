import os

# Triton kernels run on the CPU through the interpreter; 'auto' still picks the PyTorch reference on CPU tensors.
# Set before anything imports triton, since it reads the variable when kernels are defined.
os.environ.setdefault('TRITON_INTERPRET', '1')
