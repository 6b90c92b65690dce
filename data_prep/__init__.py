"""data_prep: a folder of footage -> the dataset hhtune trains on (``python -m data_prep build ...``)."""
