"""Evaluation: sample grids (:mod:`fastui.eval.grid`) and FID with the standard Inception network
(:mod:`fastui.eval.fid`, command ``fastui eval`` in :mod:`fastui.eval.cli`).

``fastui.eval.fid`` is imported lazily by its users (it needs scipy), so importing the grid utilities never pulls
in the FID dependencies.
"""
