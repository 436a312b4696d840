"""The search pipeline: configuration, tasks, supernet, evaluators, trials, run folders and the search stages.

It sits above :mod:`nas.core` and :mod:`nas.artifact` and reaches search spaces and
controllers only through the registries of :mod:`nas.core.registry`.
"""
