"""What a person uses: the Python API (:mod:`nas.app.api`), the ``embnas`` command, the summary and the report."""
