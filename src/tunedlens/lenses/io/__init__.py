"""Lenses on disk: file formats, where lenses live, and the one loader.

- :mod:`~tunedlens.lenses.io.files`: the tuned-lens formats (``native`` safetensors and the
  reference's ``tuned-lens``), read and written without the model;
- :mod:`~tunedlens.lenses.io.jlens_files`: the J-lens formats (``jlens-native``, the published
  ``jlens-artifact`` and the reference estimator's ``jlens-checkpoint``);
- :mod:`~tunedlens.lenses.io.formats`: :func:`detect_format` and the registries keyed by format
  (loaders, describers, converters, packagers);
- :mod:`~tunedlens.lenses.io.locations`: lens locations (local paths and hub sources);
- :mod:`~tunedlens.lenses.io.load`: :func:`load_lens`, the one loader;
- :mod:`~tunedlens.lenses.io.info`: what ``lens info`` reports;
- :mod:`~tunedlens.lenses.io.index`: the ``INDEX.json`` of a lens collection.
"""
