"""Data: NPZ formats (load, validate, windows, splits; never pickle by default), text sources,
embedders and the dataset builders."""
