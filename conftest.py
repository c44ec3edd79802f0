# The conformance plugin adds --backend, --device, --dtype, --report and --clauses to runs started
# in this repository. It is not registered globally (no pytest11 entry point), so other projects'
# pytest runs never see these options. For an installed copy:
#   pytest -p attnspec.conformance.plugin --pyargs attnspec.conformance --backend=...
pytest_plugins = ["attnspec.conformance.plugin"]
