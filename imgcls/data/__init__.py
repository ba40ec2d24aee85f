"""Data: built-in datasets, folders and CSV manifests, decoded robustly into uniform batches."""
