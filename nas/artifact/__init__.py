"""The deployable artifact: the budget-checked export and its import-free serving loader.

:mod:`nas.artifact.export` writes the packed tables of an allocation; :mod:`nas.artifact.serving`
reads them back importing only torch, safetensors and the standard library.
"""
