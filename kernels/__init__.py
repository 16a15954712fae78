"""Triton kernels of fastui, installed as ``fastui.kernels``. Import is lazy: Triton is optional."""
