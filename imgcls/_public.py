"""The names of the public functions, said once: `imgcls` imports them from `imgcls.api` on first use (so
`imgcls --help` and config checks stay instant) and `imgcls.api` exports exactly these."""

API = (
    "train",
    "evaluate",
    "report",
    "load",
    "predict",
    "export",
    "serve",
    "lr_find",
    "check_data",
    "pack_data",
    "manifest_data",
    "review_labels",
    "apply_review",
    "make_config",
)
