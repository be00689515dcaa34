"""Training as a library: scan datasets, the synthetic phantom, k-fold training of the CNN-LSTM, evaluation.

``data`` reads scan folders and labels and checks them (``check_dataset``,
the one check ``load_dataset`` also runs), ``synth`` writes a synthetic
phantom dataset, ``config`` holds the training and check settings, ``cache``
the on-disk feature cache, ``folds`` scan-grouped splits, ``trainer`` packs
of heads fitted together, ``kfold`` the whole cross-validated run that ends
in a bundle, ``merge`` combines fold runs made on separate machines,
``evaluate`` scores a bundle on other scans, ``metrics`` and ``report``
the figures and the report folder, ``files`` atomic result files. Settings
are frozen dataclasses and progress goes through ``models.progress``;
nothing here parses flags or draws (``tools`` does both), and nothing
imports ``stream``.
"""
